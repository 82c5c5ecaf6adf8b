"""The command-line tools' shared parts: their --help texts and the integer-list parser."""

import re

import pytest

from tinyclip import evaluate, train
from tinyclip.cli import int_list
from tinyclip.models import CLIPConfig


def help_entries(parser) -> dict:
    """``{--flag: its help text on one line}`` from ``parser.format_help()`` (wrapped lines rejoined)."""
    entries, flag = {}, None
    for line in parser.format_help().splitlines():
        if re.match(r"  -", line):  # an option's first line: "  --flag METAVAR   help ..."
            flag = re.findall(r"--?[\w-]+", re.split(r"\s{2,}", line.strip())[0])[-1]
            assert flag not in entries, f"{flag} has two entries (a group description that starts with it?)"
            entries[flag] = line.strip()
        elif flag and re.match(r"   ", line):  # its help continues, indented
            joiner = "" if entries[flag].endswith("-") else " "  # argparse wraps after hyphens too
            entries[flag] += joiner + line.strip()
        else:
            flag = None
    return entries


def as_written(value) -> str:
    """A default as the help should show it: the form the flag accepts."""
    if isinstance(value, bool):
        return "off" if not value else "on"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)


@pytest.mark.parametrize("tool", [train, evaluate], ids=["train", "evaluate"])
def test_help_shows_every_default_once(tool, monkeypatch):
    monkeypatch.delenv("TINYCLIP_DEVICE", raising=False)  # --device's default then is auto
    parser = tool.build_parser()
    assert "(default: None)" not in parser.format_help()
    entries = help_entries(parser)
    assert len(entries) > 15 and "--device" in entries and "--batch-size" in entries
    for flag, text in entries.items():
        assert text.count("default") <= 1, f"{flag} states its default more than once: {text}"
        default = parser.get_default(flag.lstrip("-").replace("-", "_"))
        if flag == "--help" or default is None:
            continue
        assert "default:" in text, f"{flag} does not show its default {default!r}: {text}"
        assert as_written(default) in text.split("default:", 1)[1], f"{flag}: default {default!r} not shown: {text}"


def test_help_writes_conv_channels_as_the_flag_takes_them():
    text = help_entries(train.build_parser())["--conv-channels"]
    assert "default: " + ",".join(map(str, CLIPConfig().conv_channels)) in text and "(16, 32" not in text


def test_help_shows_the_recipe_values_of_recipe_flags():
    entries = help_entries(train.build_parser())
    assert "default from --recipe: report=5e-05, small-data=0.0005" in entries["--lr"]
    assert "default from --recipe: 0.5 in both" in entries["--concept-alpha"]


def test_int_list():
    assert int_list("16,32,64") == (16, 32, 64)
    assert int_list(" 4, 8 ,") == (4, 8)
    assert int_list([0, 1], low=0) == (0, 1)
    for bad in ("", ",", "0,4", "a,b", "4.5", [None]):
        with pytest.raises(ValueError, match="comma-separated integers >= 1"):
            int_list(bad)
