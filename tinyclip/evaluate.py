"""``python -m tinyclip.evaluate``: score a trained run on the downstream tasks.

    python -m tinyclip.evaluate --run runs/demo --task retrieval
    python -m tinyclip.evaluate --run runs/demo --task all --chest-dir ../shared/data/chest_xray

Steps: load the run's ``best`` (or ``last``) checkpoint, or with ``--checkpoint init``
the untrained model the run started from (``initial_model``: the random-tower
baseline of the same configuration and seed); rebuild the evaluation
pairs; run each task's ``run(ctx) -> dict`` (``tinyclip.tasks``); merge the
results into ``OUT/metrics.json`` (one key per task, so tasks run one at a time
accumulate) and print a short table. Figures go to ``OUT`` (default
``RUN_DIR/eval``; ``RUN_DIR/eval-init`` for ``--checkpoint init``).

Which pairs (``--split``):

* ``test`` (default): the test part of the run's own split. The pairs are
  rebuilt exactly as training built them (``load_pairs`` with the run's saved
  data source, folder, sample count and seed) and indexed with the saved split;
  the rebuilt pair ids must equal the ids saved in the checkpoint, so evaluation
  can never silently use other data. ``--data-dir`` may point at the same data
  in a new place.
* ``all``: every pair of the folder given by ``--data``/``--data-dir`` (default:
  the run's own data, all of it, training pairs included).

Tasks that fit something on training data (``cui``) get the run's training part.
Wrong input (no such run, unknown task, missing data) ends with one line on
stderr and a non-zero exit status: 2 for a bad command line, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np

from . import backend
from .cli import nonnegative_int, one_line_warnings, positive_int
from .data.pairs import check_ids, load_pairs
from .io import atomic_write
from .tasks import DESCRIPTIONS, TASKS, TaskSkipped, get_task

PROG = "python -m tinyclip.evaluate"
NEEDS_TRAIN = ("cui",)  # tasks that read ctx.train_frame / ctx.train_images


def _int(text, low=1):
    return int(text) >= low


def _ints(text):
    return all(int(v) >= 1 for v in text.split(","))


def _number(text):
    return 0 < float(text) < math.inf


# The --option KEY=VALUE settings the tasks read: a check of the value, and what it wants.
OPTIONS = {
    "head_steps": (_int, "a positive integer"), "head_lr": (_number, "a finite number > 0"),
    "head_hidden": (_ints, "comma-separated positive integers"), "features": ({"clip", "pixels"}, "clip or pixels"),
    "synthetic_n": (lambda v: _int(v, 2), "an integer >= 2"), "cui_init": ({"clip", "scratch"}, "clip or scratch"),
    "cui_epochs": (_int, "a positive integer"), "cui_lr": (_number, "a finite number > 0"),
    "cui_balance": ({"0", "1", "true", "false", "yes", "no", "on", "off"}, "0 or 1"),
    "seeds_large": (_int, "a positive integer"), "val_n": (lambda v: _int(v, 2), "an integer >= 2"),
    "compare_init": ({"0", "1", "true", "false", "yes", "no", "on", "off"}, "0 or 1"),
}
CHECKPOINTS = ("best", "last", "init")


def _valid_option(key: str, value: str) -> bool:
    check = OPTIONS[key][0]
    try:
        return value.lower() in check if isinstance(check, set) else bool(check(value))
    except ValueError:
        return False


class UsageError(Exception):
    """A bad command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: MESSAGE (see --help)``."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    tasks = "\n".join(textwrap.fill(text, 100, initial_indent=f"  {name:<20}", subsequent_indent=" " * 22)
                      for name, text in DESCRIPTIONS.items())
    p = _Parser(
        prog=PROG,
        description=textwrap.fill(
            "Evaluate a trained tinyclip run on downstream tasks. Writes metrics.json (merged with an existing "
            "one: one key per task, so tasks run one at a time accumulate) and PNG figures to --out, and prints "
            "a short table. Exit status: 0 when the tasks ran (of several tasks, one that lacks its data is "
            "skipped and reported), 1 when a task failed, none ran, or the input is wrong, 2 for a bad "
            "command line.", 100),
        epilog=f"tasks:\n{tasks}\n  {'all':<20}every task above (one that lacks its data is skipped)\n\n"
               "examples:\n"
               f"  {PROG} --run runs/demo --task retrieval\n"
               f"  {PROG} --run runs/roco --task modality --prompts my_prompts.json\n"
               f"  {PROG} --run runs/roco --task pneumonia-zeroshot --chest-dir ../shared/data/chest_xray\n"
               f"  {PROG} --run runs/demo --task fewshot --shots 10,50,all --seeds 3\n"
               f"  {PROG} --run runs/demo --task fewshot --option compare_init=1\n"
               f"  {PROG} --run runs/demo --task all --checkpoint init\n"
               f"  {PROG} --run runs/roco --task modality --split all --data-dir OTHER_ROCO_FOLDER",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by tinyclip.train")
    p.add_argument("--task", required=True, metavar="TASK",
                   help=f"one of {', '.join(TASKS)}, or all; several: comma-separated")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best",
                   help="which checkpoint of the run (default: best, the lowest validation loss); init: the "
                        "untrained model of the run's configuration and seed, what training started from")
    p.add_argument("--out", metavar="DIR", help="where metrics.json and figures go (default: RUN_DIR/eval, "
                   "with --checkpoint init RUN_DIR/eval-init)")
    d = p.add_argument_group("evaluation pairs")
    d.add_argument("--split", choices=("test", "all"), default="test",
                   help="test: the test part of the run's own split; all: every pair of --data/--data-dir "
                        "(default: test)")
    d.add_argument("--data", choices=("synthetic", "roco"),
                   help="data source for --split all (default: the run's)")
    d.add_argument("--data-dir", metavar="DIR",
                   help="ROCO folder (captions.txt, cuis.txt, images/); with --split test: where the run's "
                        "data is now, if it moved")
    d.add_argument("--num-samples", type=positive_int, help="synthetic pairs for --split all (default: the run's)")
    d.add_argument("--cache-dir", help="decoded-image cache (default: $TINYCLIP_CACHE or ~/.cache/tinyclip)")
    r = p.add_argument_group("running")
    r.add_argument("--device", choices=backend.DEVICES, default=os.environ.get("TINYCLIP_DEVICE", "auto").lower(),
                   help="cpu (NumPy), cuda (CuPy) or auto: cuda when CuPy sees a GPU (default: $TINYCLIP_DEVICE, "
                        "else auto)")
    r.add_argument("--batch-size", type=positive_int, default=128, help="images/captions embedded at once (default: 128)")
    r.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of the tasks' own randomness (samples, heads) (default: 0)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar while decoding images (default: off)")
    t = p.add_argument_group("task options")
    t.add_argument("--prompts", metavar="FILE", help="modality: JSON prompt sets {set: {class: [prompts]}} "
                   "(default: tinyclip/prompts/modality.json)")
    t.add_argument("--pneumonia-prompts", metavar="TEXT",
                   help="pneumonia-zeroshot: 'normal prompt; pneumonia prompt' or a JSON file "
                        "{\"normal\": [...], \"pneumonia\": [...]} (default: 'normal; pneumonia')")
    t.add_argument("--chest-dir", metavar="DIR", help="pneumonia-zeroshot, fewshot: Kermany chest_xray folder "
                   "(train/, test/ with NORMAL/ and PNEUMONIA/)")
    t.add_argument("--pneumonia-npz", metavar="FILE", help="pneumonia-zeroshot, fewshot: pneumoniamnist.npz")
    t.add_argument("--shots", help="fewshot: labelled images per run, comma-separated counts or all "
                   "(default: 10,20,50,100,200,500,1000,all)")
    t.add_argument("--seeds", help="fewshot: draws per n up to 200, a count or a list of seeds (e.g. 0,1,2); "
                   "larger n use the first K of them, --option seeds_large=K, 5 if not given (default: 20)")
    t.add_argument("--top-k", type=positive_int, help="cui: number of concept classes (default: 10)")
    t.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help=f"any other task option (repeatable), e.g. --option head_steps=100; one of: "
                        f"{', '.join(OPTIONS)} (default: none)")
    return p


# ---------------------------------------------------------------------------
# command line → tasks and options
# ---------------------------------------------------------------------------

def parse_tasks(text: str) -> list:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UsageError("--task is empty")
    out = []
    for name in names:
        if name == "all":
            out += list(TASKS)
        elif name in TASKS:
            out.append(name)
        else:
            raise UsageError(f"unknown task {name!r}: choose from {', '.join(TASKS)}, all")
    return list(dict.fromkeys(out))  # drop repeats, keep order


def task_options(args) -> dict:
    """The options every task receives in ``ctx.options`` (only those that were given)."""
    options = {"batch_size": args.batch_size, "cache_dir": args.cache_dir, "prompts": args.prompts,
               "pneumonia_prompts": args.pneumonia_prompts, "chest_dir": args.chest_dir,
               "pneumonia_npz": args.pneumonia_npz, "shots": args.shots, "seeds": args.seeds, "top_k": args.top_k}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option expects KEY=VALUE, got {item!r}")
        key, value = key.strip().replace("-", "_"), value.strip()
        if key not in OPTIONS:
            raise UsageError(f"--option {key}: unknown option; the options are {', '.join(OPTIONS)}")
        if not _valid_option(key, value):
            raise UsageError(f"--option {key}={value}: expected {OPTIONS[key][1]}")
        options[key] = value
    from .tasks.fewshot import parse_seeds, parse_shots
    for flag, parse in (("shots", parse_shots), ("seeds", parse_seeds)):
        if options.get(flag) is not None:
            try:
                parse(options[flag])
            except ValueError as e:
                raise UsageError(f"--{flag} {options[flag]}: {e}") from None
    for key in ("prompts", "chest_dir", "pneumonia_npz"):
        if options.get(key) and not Path(options[key]).exists():
            raise FileNotFoundError(f"--{key.replace('_', '-')}: {options[key]} does not exist")
    return {k: v for k, v in options.items() if v is not None}


# ---------------------------------------------------------------------------
# the untrained model of a run
# ---------------------------------------------------------------------------

def initial_model(state: dict):
    """The untrained CLIP a run started from: ``CLIP.initial`` of its configuration, tokenizer and seed.

    ``state``: a checkpoint's state (its ``config``, ``tokenizer`` and ``args["seed"]``;
    the weights are not used). ``tinyclip.train`` builds its model the same way, so on
    the device the run trained on these are its weights before the first step (the
    initialisers draw from that device's generator). Eval mode.
    """
    from .models import CLIP, CLIPConfig
    from .text import Tokenizer
    config, tokenizer = CLIPConfig.from_dict(state["config"]), Tokenizer.from_dict(state["tokenizer"])
    model = CLIP.initial(config, tokenizer, int((state.get("args") or {}).get("seed", 0)))
    model.eval()
    return model


# ---------------------------------------------------------------------------
# the evaluation pairs
# ---------------------------------------------------------------------------

def _load(source, data_dir, num_samples, seed, image_size, cache_dir, progress):
    if source == "roco" and data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    return load_pairs(source, data_dir, image_size=image_size, num_samples=num_samples, seed=seed,
                      cache_dir=cache_dir, progress=progress)


def load_run_pairs(state, data_dir=None, cache_dir=None, progress: bool = False):
    """``(frame, images)``: every pair of a run, rebuilt as training built them and checked against
    the ids saved in its checkpoint. ``data_dir`` overrides the saved ROCO folder (data that moved).
    Index with ``state["split"]["test"]`` (or train/val) for a part of the run's split."""
    run_args = state.get("args") or {}
    source = run_args.get("data", "synthetic")
    data_dir = data_dir or run_args.get("data_dir")
    where = data_dir if source == "roco" else f"synthetic data (seed {run_args.get('seed', 0)})"
    frame, images = _load(source, data_dir, run_args.get("num_samples", 2000), run_args.get("seed", 0),
                          int(state["config"]["image_size"]), cache_dir, progress)
    check_ids(frame, state.get("ids", []), where, hint="point --data-dir at the run's data, or use --split all")
    return frame, images


def evaluation_data(args, state, need_train: bool, progress: bool):
    """``(frame, images, train_frame, train_images, description)`` for ``args.split``."""
    run_args = state.get("args") or {}
    image_size = int(state["config"]["image_size"])
    run_source = run_args.get("data", "synthetic")

    def run_pairs():
        # --data-dir says where the run's own data is now only with --split test; with --split all it names
        # the folder to evaluate on, and the run's training part (if a task needs it) comes from the saved one.
        return load_run_pairs(state, args.data_dir if args.split == "test" else None, args.cache_dir, progress)

    split = state.get("split") or {}
    if args.split == "test":
        if args.data and args.data != run_source:
            raise UsageError(f"--split test evaluates on the run's own data ({run_source}); "
                             f"use --split all for --data {args.data}")
        if "test" not in split:
            raise ValueError("the checkpoint has no saved split")
        frame, images = run_pairs()
        test, train = np.asarray(split["test"], dtype=np.int64), np.asarray(split.get("train", []), dtype=np.int64)
        return (frame.iloc[test].reset_index(drop=True), np.asarray(images[test]),
                frame.iloc[train].reset_index(drop=True), np.asarray(images[train]),
                f"test split of the run's {run_source} data: {len(test)} pairs")

    source = args.data or run_source
    data_dir = args.data_dir if args.data_dir else (run_args.get("data_dir") if source == run_source else None)
    if source == "roco" and not data_dir:
        raise UsageError("--split all with --data roco needs --data-dir")
    num_samples = args.num_samples or run_args.get("num_samples", 2000)
    frame, images = _load(source, data_dir, num_samples, run_args.get("seed", 0), image_size, args.cache_dir, progress)
    where = data_dir if source == "roco" else f"{num_samples} synthetic pairs"
    train_frame, train_images = frame.iloc[:0], images[:0]
    if need_train:
        run_frame, run_images = run_pairs()
        train = np.asarray(split.get("train", []), dtype=np.int64)
        train_frame, train_images = run_frame.iloc[train].reset_index(drop=True), np.asarray(run_images[train])
    return frame, images, train_frame, train_images, f"all {len(frame)} pairs of {where}"


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------

def jsonable(value):
    """Plain JSON types: NumPy scalars/arrays → numbers/lists, NaN/inf → None, paths → str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def merge_metrics(path: Path, results: dict) -> dict:
    """Update ``path`` (a JSON object, one key per task) with ``results``, written atomically."""
    merged = {}
    if path.is_file():
        try:
            merged = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            warnings.warn(f"{path} was not valid JSON: replaced")
        if not isinstance(merged, dict):
            merged = {}
    merged.update(jsonable(results))
    atomic_write(path, lambda f: f.write(json.dumps(merged, indent=2, allow_nan=False) + "\n"), mode="w")
    return merged


def format_table(results: dict) -> str:
    """Task, metric, value for every top-level number of each task's result."""
    rows = []
    for task, result in results.items():
        for key, value in result.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                                                 np.floating)):
                continue
            if isinstance(value, (float, np.floating)):
                text = "nan" if not math.isfinite(value) else f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
            else:
                text = str(value)
            rows.append((task, key, text))
    if not rows:
        return ""
    w1, w2 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in rows)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def evaluate(args, log=print) -> tuple[dict, list]:
    """Run the tasks of ``args``; returns ``(results of the tasks that ran, [(task, problem)])``."""
    from .models import CLIP
    from .tasks.common import EvalContext

    tasks = parse_tasks(args.task)
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    # init: the configuration, tokenizer, split and seed come from a checkpoint the run has, its weights not at all
    saved = next((n for n in (["best", "last"] if args.checkpoint == "init" else [args.checkpoint])
                  if (run_dir / f"{n}.npz").is_file()), None)
    if saved is None:
        raise FileNotFoundError(f"no '{args.checkpoint}' checkpoint in {run_dir} (expected "
                                f"{'best.npz or last.npz' if args.checkpoint == 'init' else args.checkpoint + '.npz'}"
                                f" from tinyclip.train)")
    options = task_options(args)
    backend.set_default_device(args.device)
    model, state = CLIP.from_checkpoint(run_dir, saved)
    if args.checkpoint == "init":
        model, state = initial_model(state), {**state, "epoch": 0}
    need_train = any(t in NEEDS_TRAIN for t in tasks)
    frame, images, train_frame, train_images, description = evaluation_data(
        args, state, need_train, progress=not args.no_progress)
    # the untrained model's results go apart, so that they never replace the trained model's in metrics.json
    out = Path(args.out) if args.out else run_dir / ("eval-init" if args.checkpoint == "init" else "eval")
    out.mkdir(parents=True, exist_ok=True)
    which = (f"untrained model, seed {(state.get('args') or {}).get('seed', 0)}" if args.checkpoint == "init"
             else f"{args.checkpoint} checkpoint, epoch {state.get('epoch')}")
    log(f"{PROG}: {run_dir} ({which}); {description}; "
        f"tasks: {', '.join(tasks)}; output in {out}")
    ctx = EvalContext(model=model, state=state, frame=frame, images=images, train_frame=train_frame,
                      train_images=train_images, out=out, options=options, seed=args.seed)

    results, problems = {}, []
    for name in tasks:
        t0 = time.perf_counter()
        try:
            result = dict(get_task(name).run(ctx))
        except TaskSkipped as e:
            problems.append((name, f"skipped: {e}"))
            continue
        except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, RuntimeError, OSError,
                ImportError) as e:
            problems.append((name, f"failed: {_message(e)}"))
            continue
        result.update(split=args.split, checkpoint=args.checkpoint, epoch=state.get("epoch"),
                      seconds=round(time.perf_counter() - t0, 2))
        results[name] = result
        merge_metrics(out / "metrics.json", {name: result})
        log(f"{name}: done in {result['seconds']:.1f}s")
    return results, problems


def _message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split()) or type(e).__name__


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with one_line_warnings():
            results, problems = evaluate(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; metrics of finished tasks are kept", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, RuntimeError, OSError, ImportError) as e:
        print(f"{PROG}: error: {_message(e)}", file=sys.stderr)
        return 1
    table = format_table(results)
    if table:
        print(table)
    for name, problem in problems:
        print(f"{PROG}: {name}: {problem}", file=sys.stderr)
    if not results:
        return 1
    return 1 if any(p.startswith("failed") for _, p in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
