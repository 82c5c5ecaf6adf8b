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
  can never silently use other data.
* ``all``: every pair of the folder given by ``--data``/``--eval-data-dir``
  (default: the run's own data, all of it, training pairs included).

``--data-dir`` only ever says where the run's own data is now, if it moved (the
test part, and the training part that ``cui`` fits on, with either split).
Task options: each task's ``Options`` dataclass (``tinyclip.tasks``) becomes one
flag per field (``--head-steps N``, ``--compare-init``); ``--option KEY=VALUE``
is the same as the flag, for scripts written before the flags existed.

Tasks that fit something on training data (``cui``) get the run's training part.
Wrong input (no such run, unknown task, missing data) ends with one line on
stderr and a non-zero exit status: 2 for a bad command line, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from .cli import flag_value, nonnegative_int, one_line_warnings, positive_int
from .data.pairs import check_ids, load_pairs
from .io import atomic_write
from .tasks import DESCRIPTIONS, TASKS, TaskSkipped, get_task

PROG = "python -m tinyclip.evaluate"
NEEDS_TRAIN = ("cui",)  # tasks that read ctx.train_frame / ctx.train_images


CHECKPOINTS = ("best", "last", "init")


class UsageError(Exception):
    """A bad command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: MESSAGE (see --help)``."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def option_fields() -> dict:
    """``{name: [(task, field), ...]}``: the fields of every task's ``Options``, in task order.

    Tasks may share a name (``head_steps``): one flag then sets it for each of them,
    so they must read its text the same way.
    """
    declared = {}
    for task in TASKS:
        for f in dataclasses.fields(get_task(task).Options):
            declared.setdefault(f.name, []).append((task, f))
    for name, fields in declared.items():
        assert len({f.metadata["parse"] for _, f in fields}) == 1, f"tasks read option {name} differently"
    return declared


def _option_help(fields) -> str:
    """``TASKS: HELP (default: D)``, D per task where the tasks' defaults differ."""
    defaults = [(task, f.metadata["shown"] or flag_value(f.default)) for task, f in fields]
    shown = (defaults[0][1] if len({d for _, d in defaults}) == 1
             else "; ".join(f"{task} {d}" for task, d in defaults))
    return f"{', '.join(t for t, _ in fields)}: {fields[0][1].metadata['help']} (default: {shown})"


def _flag_type(parse):
    """argparse ``type=`` of an option's ``parse``: its ValueError (or a missing file) names what it expects."""
    def read(text):
        try:
            return parse(text)
        except (ValueError, OSError) as e:
            raise argparse.ArgumentTypeError(_message(e)) from None
    return read


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
               f"  {PROG} --run runs/demo --task fewshot --shots 10,50,all --seeds 3 --compare-init\n"
               f"  {PROG} --run runs/demo --task all --checkpoint init\n"
               f"  {PROG} --run runs/roco --task modality --split all --eval-data-dir OTHER_ROCO_FOLDER",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by tinyclip.train")
    p.add_argument("--task", required=True, metavar="TASK",
                   help=f"one of {', '.join(TASKS)}, or all; several: comma-separated")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best",
                   help="which checkpoint of the run (default: best, the best epoch by the run's --select); init: the "
                        "untrained model of the run's configuration and seed, what training started from")
    p.add_argument("--out", metavar="DIR", help="where metrics.json and figures go (default: RUN_DIR/eval, "
                   "with --checkpoint init RUN_DIR/eval-init)")
    d = p.add_argument_group("evaluation pairs")
    d.add_argument("--split", choices=("test", "all"), default="test",
                   help="test: the test part of the run's own split; all: every pair of --data/--eval-data-dir "
                        "(default: test)")
    d.add_argument("--data", choices=("synthetic", "roco"),
                   help="data source for --split all (default: the run's)")
    d.add_argument("--eval-data-dir", metavar="DIR",
                   help="ROCO folder (captions.txt, cuis.txt, images/) to evaluate on with --split all "
                        "(default: the run's)")
    d.add_argument("--num-samples", type=positive_int, help="synthetic pairs for --split all (default: the run's)")
    d.add_argument("--data-dir", metavar="DIR",
                   help="where the run's own ROCO data is now, if it moved (default: the folder saved in the run)")
    d.add_argument("--cache-dir", type=Path,
                   help="decoded-image cache (default: $TINYCLIP_CACHE or ~/.cache/tinyclip)")
    r = p.add_argument_group("running")
    r.add_argument("--device", choices=backend.DEVICES, default=os.environ.get("TINYCLIP_DEVICE", "auto").lower(),
                   help="cpu (NumPy), cuda (CuPy) or auto: cuda when CuPy sees a GPU (default: $TINYCLIP_DEVICE, "
                        "else auto)")
    r.add_argument("--batch-size", type=positive_int, default=128, help="images/captions embedded at once (default: 128)")
    r.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of the tasks' own randomness (samples, heads) (default: 0)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar while decoding images (default: off)")
    c = p.add_argument_group("chest X-rays (pneumonia-zeroshot, fewshot; without them, synthetic ones for a "
                             "synthetic run)")
    c.add_argument("--chest-dir", metavar="DIR", type=Path,
                   help="Kermany chest_xray folder (train/, test/ with NORMAL/ and PNEUMONIA/)")
    c.add_argument("--pneumonia-npz", metavar="FILE", type=Path, help="pneumoniamnist.npz")
    t = p.add_argument_group("task options (each task reads its own)")
    for name, fields in option_fields().items():
        flag, f = "--" + name.replace("_", "-"), fields[0][1]
        if isinstance(f.default, bool):  # an on/off switch; None when not given, so the task's default stands
            t.add_argument(flag, action="store_true", default=None, help=_option_help(fields))
        else:
            t.add_argument(flag, type=_flag_type(f.metadata["parse"]), metavar=f.metadata["metavar"],
                           help=_option_help(fields))
    t.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a task option above as KEY=VALUE (repeatable): --option head_steps=100 is --head-steps "
                        "100, --option compare_init=1 is --compare-init (default: none)")
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


def task_options(args, tasks) -> dict:
    """``{task: its Options}`` for ``tasks``: the defaults, replaced by the option flags and ``--option
    KEY=VALUE`` given (an option of other tasks only is left to them)."""
    declared = option_fields()
    given = {name: getattr(args, name) for name in declared if getattr(args, name) is not None}
    for item in args.option:
        key, sep, value = item.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {item!r}")
        if key not in declared:
            mine = list(dict.fromkeys(f.name for t in tasks for f in dataclasses.fields(get_task(t).Options)))
            raise UsageError(f"--option {key}: unknown option; " + (
                f"the options of {', '.join(tasks)} are {', '.join(mine)}" if mine
                else f"no task options for {', '.join(tasks)}"))
        try:
            given[key] = declared[key][0][1].metadata["parse"](value)
        except (ValueError, OSError, argparse.ArgumentTypeError) as e:
            raise UsageError(f"--option {key}={value}: {_message(e)}") from None
    options = {}
    for task in tasks:
        cls = get_task(task).Options
        names = {f.name for f in dataclasses.fields(cls)}
        options[task] = cls(**{k: v for k, v in given.items() if k in names})
    return options


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
    check_ids(frame, state.get("ids", []), where,
              hint="point --data-dir at the run's data, or evaluate another folder with --split all --eval-data-dir")
    return frame, images


def evaluation_data(args, state, need_train: bool, progress: bool):
    """``(frame, images, train_frame, train_images, description)`` for ``args.split``."""
    run_args = state.get("args") or {}
    image_size = int(state["config"]["image_size"])
    run_source = run_args.get("data", "synthetic")

    def run_pairs():
        return load_run_pairs(state, args.data_dir, args.cache_dir, progress)

    split = state.get("split") or {}
    if args.split == "test":
        if args.data and args.data != run_source:
            raise UsageError(f"--split test evaluates on the run's own data ({run_source}); "
                             f"use --split all for --data {args.data}")
        if args.eval_data_dir:
            raise UsageError("--eval-data-dir is the folder of --split all; --split test evaluates on the run's "
                             "own data (--data-dir: where it is now, if it moved)")
        if "test" not in split:
            raise ValueError("the checkpoint has no saved split")
        frame, images = run_pairs()
        test, train = np.asarray(split["test"], dtype=np.int64), np.asarray(split.get("train", []), dtype=np.int64)
        return (frame.iloc[test].reset_index(drop=True), np.asarray(images[test]),
                frame.iloc[train].reset_index(drop=True), np.asarray(images[train]),
                f"test split of the run's {run_source} data: {len(test)} pairs")

    if args.data_dir and not args.eval_data_dir:  # what --data-dir meant with --split all before --eval-data-dir
        raise UsageError(f"--split all evaluates on --eval-data-dir {args.data_dir}; --data-dir only says where "
                         f"the run's own data is now")
    source = args.data or run_source
    data_dir = args.eval_data_dir or (run_args.get("data_dir") if source == run_source else None)
    if source == "roco" and not data_dir:
        raise UsageError("--split all with --data roco needs --eval-data-dir")
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
    options = task_options(args, tasks)
    # the files and folders the flags name must exist; checked here, not by the parser, so that a command
    # line can be checked anywhere (tests/test_readme.py parses the README's commands)
    paths = {"chest_dir": args.chest_dir, "pneumonia_npz": args.pneumonia_npz,
             **{f.name: getattr(o, f.name) for o in options.values() for f in dataclasses.fields(o)}}
    for name, path in paths.items():
        if isinstance(path, Path) and not path.exists():
            raise FileNotFoundError(f"--{name.replace('_', '-')}: {path} does not exist")
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
                      train_images=train_images, out=out, seed=args.seed, batch_size=args.batch_size,
                      cache_dir=args.cache_dir, chest_dir=args.chest_dir, pneumonia_npz=args.pneumonia_npz)

    results, problems = {}, []
    for name in tasks:
        t0 = time.perf_counter()
        try:
            result = dict(get_task(name).run(ctx, options[name]))
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
