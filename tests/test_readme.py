"""Every shell command in the README's ```bash blocks still works, so none can rot.

The commands are checked in README order, in one temporary working directory (a ``train``
command creates the run that the following ``evaluate`` command reads):

* ``python -m tinyclip.train ...`` on synthetic data runs for real, with tiny size flags
  appended (argparse lets a later flag override an earlier one); a command that needs data a
  fresh clone lacks (``--data roco``) or a GPU this machine lacks is parsed by the real parser
  and its model config validated instead.
* ``python -m tinyclip.evaluate ...`` runs for real, with tiny task options, when its ``--run``
  folder was made by an earlier command; otherwise it is parsed and its task names checked.
* ``pip install`` and ``pytest`` lines must be the lines of ``.ci/run`` (which CI runs for real),
  except for other extras/markers that ``pyproject.toml`` declares (``.[gpu]``, ``-m gpu``).
* ``python examples/NN_*.py`` must exist and be one of the examples that ``test_examples.py``
  runs; its flags, if any, must appear in its ``--help``.
* Anything else must at least answer ``--help`` with exit status 0 (and list the flags used).

Commands for other projects' tools (ROCO's download script) are in ```text blocks and not run.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
TIMEOUT = 120

TINY_TRAIN = ["--num-samples", "48", "--image-size", "16", "--conv-channels", "4,8", "--text-layers", "1",
              "--width", "16", "--heads", "2", "--ff-dim", "16", "--embed-dim", "8", "--max-len", "16",
              "--epochs", "1", "--batch-size", "16", "--patience", "0", "--no-progress"]
TINY_EVAL = ["--shots", "10", "--seeds", "1", "--top-k", "3", "--no-progress", "--synthetic-n", "40",
             "--head-steps", "5", "--cui-epochs", "1"]


def bash_commands(text: str) -> list:
    """The commands of the ```bash blocks, one per line (``\\`` continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"^```bash[ \t]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def ci_commands() -> list:
    """The commands that .ci/run executes (its lines that start with ``python``)."""
    return [line.strip() for line in CI.read_text().splitlines() if line.strip().startswith("python")]


def ci_command(word: str) -> str:
    matches = [c for c in ci_commands() if word in c]
    assert len(matches) == 1, f".ci/run should have exactly one {word!r} line, has {matches}"
    return matches[0]


def pyproject_extras() -> set:
    """Names of the optional-dependency groups (``pip install -e ".[NAME]"``) in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # 3.10: the section's "name = [" lines are enough
        section = text.split("[project.optional-dependencies]", 1)[-1].split("\n[", 1)[0]
        return set(re.findall(r"^(\w+)\s*=", section, flags=re.M))
    return set(tomllib.loads(text)["project"]["optional-dependencies"])


def pyproject_markers() -> set:
    """Names of the pytest markers that pyproject.toml declares ("slow: ..." → "slow")."""
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("markers = [", 1)[-1].split("]", 1)[0]
    return set(re.findall(r"[\"']([\w-]+)\s*:", block))


COMMANDS = bash_commands(README.read_text(encoding="utf-8")) if README.exists() else []


# ---------------------------------------------------------------------------
# the README as a whole
# ---------------------------------------------------------------------------

def test_readme_has_the_ci_setup_commands_verbatim():
    """The two set-up commands, install then test, exactly as CI runs them."""
    install, tests = ci_command("pip install"), ci_command("pytest")
    assert install in COMMANDS, f"README lacks the install command of .ci/run: {install}"
    assert tests in COMMANDS, f"README lacks the test command of .ci/run: {tests}"
    assert COMMANDS.index(install) < COMMANDS.index(tests)


def test_readme_references_exist():
    """Local files and pictures the README links to are there."""
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    picture = ROOT / "docs" / "loss_curve.png"
    assert picture.stat().st_size < 100_000, f"{picture} is {picture.stat().st_size} bytes (keep it < 100 KB)"


# ---------------------------------------------------------------------------
# each command
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One working directory for all commands, so a run trained by one is evaluated by the next."""
    return tmp_path_factory.mktemp("readme")


def split_env(command: str):
    """``VAR=value ... program args`` → ({VAR: value}, [program, args...])."""
    tokens = shlex.split(command, comments=True)
    env = {}
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        env[name] = value
    return env, tokens


def run(argv, workdir, env=None):
    full_env = dict(os.environ, MPLBACKEND="Agg", TINYCLIP_CACHE=str(workdir / ".cache"),
                    PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    full_env.update(env or {})
    proc = subprocess.run(argv, cwd=workdir, env=full_env, capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode, proc.stdout + proc.stderr


def flags(args) -> list:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def check_pip(command: str):
    install = ci_command("pip install")
    if command == install:
        return
    extra = re.search(r"\.\[(\w+)\]", command)
    assert extra, f"a pip command that is not .ci/run's: {command!r} (CI runs {install!r})"
    assert extra.group(1) in pyproject_extras(), \
        f"{command!r}: pyproject.toml has no extra {extra.group(1)!r}"
    assert command == re.sub(r"\.\[[\w,]+\]", f".[{extra.group(1)}]", install), \
        f"{command!r} should be .ci/run's install line with the extra changed: {install!r}"


def check_pytest(command: str):
    tests = ci_command("pytest")
    if command == tests:
        return
    rest = command[len(tests):].split() if command.startswith(tests) else None
    markers = pyproject_markers()
    assert rest and len(rest) == 2 and rest[0] == "-m" and rest[1] in markers, \
        f"{command!r} should be .ci/run's {tests!r}, optionally with '-m MARKER' for a marker of pyproject.toml"


def gpu_wanted(env, args) -> bool:
    device = env.get("TINYCLIP_DEVICE")
    if "--device" in args:
        device = args[args.index("--device") + 1]
    return device == "cuda"


def parse_train(args):
    from tinyclip import train
    from tinyclip.models import CLIPConfig
    ns = train.build_parser().parse_args(args)  # SystemExit(2) on a bad flag or value
    CLIPConfig(image_size=ns.image_size, conv_channels=ns.conv_channels, width=ns.width, heads=ns.heads,
               text_layers=ns.text_layers, ff_dim=ns.ff_dim, dropout=ns.dropout, embed_dim=ns.embed_dim,
               max_len=ns.max_len)  # ValueError on sizes that do not fit together
    return ns


def parse_evaluate(args):
    from tinyclip import evaluate
    ns = evaluate.build_parser().parse_args(args)  # raises UsageError (or SystemExit) on a bad command line
    evaluate.parse_tasks(ns.task)
    return ns


def check_train(args, env, workdir):
    from tinyclip import backend
    ns = parse_train(args)
    if ns.data != "synthetic" or (gpu_wanted(env, args) and not backend.cuda_available()):
        return "parsed"  # needs data or a device this machine may not have: the parse above is the check
    rc, out = run([sys.executable, "-m", "tinyclip.train", *args, *TINY_TRAIN], workdir, env)
    assert rc == 0, f"python -m tinyclip.train {' '.join(args)} (+ tiny sizes) failed:\n{out[-3000:]}"
    if ns.out:
        assert (workdir / ns.out / "best.json").is_file(), f"no checkpoint in {ns.out}:\n{out[-2000:]}"
    return "ran"


def check_evaluate(args, env, workdir):
    ns = parse_evaluate(args)
    if not (workdir / ns.run).is_dir():
        return "parsed"  # a run made from data this machine may not have (runs/roco)
    rc, out = run([sys.executable, "-m", "tinyclip.evaluate", *args, *TINY_EVAL], workdir, env)
    assert rc == 0, f"python -m tinyclip.evaluate {' '.join(args)} (+ tiny options) failed:\n{out[-3000:]}"
    out_dir = Path(ns.out) if ns.out else Path(ns.run) / "eval"
    assert (workdir / out_dir / "metrics.json").is_file(), f"no metrics.json in {out_dir}:\n{out[-2000:]}"
    return "ran"


def check_help(argv, used_flags, workdir, env):
    rc, out = run([*argv, "--help"], workdir, env)
    assert rc == 0, f"{' '.join(argv)} --help failed:\n{out[-2000:]}"
    missing = [f for f in used_flags if f not in out]
    assert not missing, f"{' '.join(argv)}: the README uses {missing}, which --help does not list"


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_readme_command(command, workdir):
    env, tokens = split_env(command)
    assert tokens, f"empty command: {command!r}"
    python = tokens[0] in ("python", "python3")
    if tokens[:4] == ["python", "-m", "pip", "install"] or tokens[:2] == ["pip", "install"]:
        check_pip(command)
    elif tokens[:3] == ["python", "-m", "pytest"] or tokens[0] == "pytest":
        check_pytest(command)
    elif python and tokens[1:3] == ["-m", "tinyclip.train"]:
        check_train(tokens[3:], env, workdir)
    elif python and tokens[1:3] == ["-m", "tinyclip.evaluate"]:
        check_evaluate(tokens[3:], env, workdir)
    elif python and len(tokens) > 1 and tokens[1].startswith("examples/"):
        script = ROOT / tokens[1]
        assert script.is_file(), f"{tokens[1]} does not exist"
        assert re.fullmatch(r"[0-9][0-9]_.*\.py", script.name), \
            f"{tokens[1]} is not named NN_*.py, so tests/test_examples.py does not run it"
        if len(tokens) > 2:
            check_help([sys.executable, str(script)], flags(tokens[2:]), workdir, env)
    elif python and len(tokens) > 1 and tokens[1].endswith(".py"):
        script = ROOT / tokens[1]
        assert script.is_file(), f"{tokens[1]} does not exist"
        check_help([sys.executable, str(script)], flags(tokens[2:]), workdir, env)
    else:
        import shutil
        assert shutil.which(tokens[0]), f"{command!r}: {tokens[0]} is not installed here"
        check_help(tokens[:1], flags(tokens[1:]), workdir, env)


def test_tiny_overrides_are_valid():
    """The tiny flags this test appends are real options, so a renamed option fails here, not silently."""
    parse_train(["--out", "x", *TINY_TRAIN])
    parse_evaluate(["--run", "x", "--task", "all", *TINY_EVAL])
