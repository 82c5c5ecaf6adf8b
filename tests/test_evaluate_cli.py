"""``python -m tinyclip.evaluate``: every bad input is one line on stderr naming it, a non-zero exit, no traceback."""

import shutil

import numpy as np
import pytest

from tinyclip import evaluate

from test_evaluate import run_main, tiny_run  # noqa: F401  (tiny_run is a fixture)
from test_reliability import _damage


def one_line(code, err, *needles):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("extra, needles", [
    (["--batch-size", "0"], ["--batch-size"]),
    (["--batch-size", "-4"], ["--batch-size"]),
    (["--top-k", "0"], ["--top-k"]),
    (["--seed", "x"], ["--seed"]),
    (["--num-samples", "0"], ["--num-samples"]),
    (["--seeds", "abc"], ["--seeds", "abc"]),
    (["--shots", "1"], ["--shots"]),
    (["--shots", "ten"], ["--shots", "ten"]),
    (["--option", "head_steps=abc"], ["head_steps", "positive integer"]),
    (["--option", "head_lr=-1"], ["head_lr"]),
    (["--option", "features=colour"], ["features", "clip or tower or pixels"]),
    (["--option", "no_such_thing=1"], ["no_such_thing", "unknown", "head_steps"]),
    (["--option", "compare_init=maybe"], ["compare_init", "0 or 1"]),
    (["--option", "seeds_large=0"], ["seeds_large", "positive integer"]),
    (["--option", "val_n=1"], ["val_n"]),
    (["--head-steps", "abc"], ["--head-steps", "positive integer"]),
    (["--head-lr", "-1"], ["--head-lr"]),
    (["--head-hidden", "32,0"], ["--head-hidden"]),
    (["--features", "colour"], ["--features", "clip or tower or pixels"]),
    (["--seeds-large", "0"], ["--seeds-large", "positive integer"]),
    (["--val-n", "1"], ["--val-n", "integer >= 2"]),
    (["--compare-init", "1"], ["unrecognized arguments: 1"]),  # a switch: no value
    (["--cui-init", "bert"], ["--cui-init", "clip or scratch"]),
])
def test_bad_flags(tiny_run, capsys, extra, needles):  # noqa: F811
    code, _, err = run_main("--run", tiny_run, "--task", "fewshot", *extra, capsys=capsys)
    one_line(code, err, *needles)
    assert code == 2  # a bad command line, found before the run is loaded


@pytest.mark.parametrize("task, needles", [
    ("cui", ["no_such_thing", "the options of cui are top_k, cui_init", "head_lr"]),
    ("retrieval,modality", ["no_such_thing", "the options of retrieval, modality are prompts"]),
    ("retrieval", ["no_such_thing", "no task options for retrieval"]),
])
def test_unknown_option_names_the_options_of_the_tasks_asked_for(tiny_run, capsys, task, needles):  # noqa: F811
    code, _, err = run_main("--run", tiny_run, "--task", task, "--option", "no_such_thing=1", capsys=capsys)
    one_line(code, err, *needles)
    assert code == 2 and "shots" not in err  # not the options of tasks that were not asked for


@pytest.mark.parametrize("alias, flags", [
    (["--option", "head_steps=5"], ["--head-steps", "5"]),
    (["--option", "compare_init=1", "--option", "cui-balance=yes"], ["--compare-init", "--cui-balance"]),
    (["--option", "seeds=0,1", "--option", "shots=10,all", "--option", "head_hidden=32"],
     ["--seeds", "0,1", "--shots", "10,all", "--head-hidden", "32"]),
    (["--option", "features=pixels", "--option", "cui_init=scratch", "--option", "head_lr=0.5"],
     ["--features", "pixels", "--cui-init", "scratch", "--head-lr", "0.5"]),
])
def test_option_alias_gives_the_same_options_as_the_flag(alias, flags):
    """``--option KEY=VALUE`` (README commands, users' scripts) and the typed flag give equal Options objects."""
    tasks = ["fewshot", "cui"]

    def options(argv):
        return evaluate.task_options(evaluate.build_parser().parse_args(["--run", "r", "--task", "all", *argv]), tasks)
    assert options(alias) == options(flags) != options([])


def test_options_not_given_are_the_tasks_defaults():
    from tinyclip.tasks import cui, fewshot
    options = evaluate.task_options(evaluate.build_parser().parse_args(["--run", "r", "--task", "all"]),
                                    ["fewshot", "cui", "retrieval"])
    assert options["fewshot"] == fewshot.Options() and options["cui"] == cui.Options()
    assert options["fewshot"].seeds == 20 and options["cui"].head_steps == 600 and not options["fewshot"].compare_init


def test_compare_init_of_the_untrained_model_is_refused(tiny_run, capsys):  # noqa: F811
    code, _, err = run_main("--run", tiny_run, "--task", "fewshot", "--checkpoint", "init", "--option",
                            "compare_init=1", capsys=capsys)
    one_line(code, err, "compare_init", "untrained one")


def test_shots_larger_than_the_pool(tiny_run, tmp_path, capsys):  # noqa: F811
    code, _, err = run_main("--run", tiny_run, "--task", "fewshot", "--shots", "100000", "--seeds", "1",
                            "--synthetic-n", "40", "--out", tmp_path, capsys=capsys)
    one_line(code, err, "shots", "larger than")


@pytest.mark.parametrize("how", ["truncated", "zero bytes", "bit flips", "npy", "random"])
def test_corrupt_checkpoint(tiny_run, tmp_path, capsys, how):  # noqa: F811
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("eval"))
    _damage(copy / "best.npz", how)
    code, _, err = run_main("--run", copy, "--task", "retrieval", capsys=capsys)
    one_line(code, err, "best.npz")


def test_checkpoint_without_its_json_copy_loads(tiny_run, tmp_path, capsys):  # noqa: F811
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("eval"))
    (copy / "best.json").unlink()  # the JSON is only for people: a crash may leave it out of date or absent
    code, _, err = run_main("--run", copy, "--task", "retrieval", "--out", tmp_path / "e", capsys=capsys)
    assert code == 0, err


@pytest.mark.parametrize("content", ["npy", "text"])
def test_pneumonia_npz_that_is_not_an_npz(tiny_run, tmp_path, capsys, content):  # noqa: F811
    bad = tmp_path / "p.npz"
    if content == "npy":
        np.save(tmp_path / "x.npy", np.zeros(3))
        bad.write_bytes((tmp_path / "x.npy").read_bytes())
    else:
        bad.write_text("not an archive\n")
    code, _, err = run_main("--run", tiny_run, "--task", "pneumonia-zeroshot", "--pneumonia-npz", bad,
                            "--out", tmp_path / "e", capsys=capsys)
    one_line(code, err, "p.npz")


def test_device_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TINYCLIP_DEVICE", "cuda")
    assert evaluate.build_parser().parse_args(["--run", "r", "--task", "retrieval"]).device == "cuda"
