"""What the command-line tools (``tinyclip.train``, ``tinyclip.evaluate``) share."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import warnings


@contextlib.contextmanager
def one_line_warnings():
    """Show every warning as one ``warning: ...`` line on stderr, without the source line Python adds."""
    with warnings.catch_warnings():
        warnings.simplefilter("once")  # a repeated warning (an overflow in every step) shows once
        warnings.showwarning = lambda message, *args, **kwargs: print(f"warning: {message}", file=sys.stderr)
        yield


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind, test, wanted):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value
    parse.__name__ = wanted  # argparse names the type in some messages
    return parse


# argparse ``type=`` checkers: the message names the flag (argparse adds it) and what it wants.
positive_int = _number(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
at_least_two = _number(int, lambda v: v >= 2, "an integer >= 2")
positive_float = _number(float, lambda v: v > 0, "a finite number > 0")
nonnegative_float = _number(float, lambda v: v >= 0, "a finite number >= 0")
probability = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def int_list(value, low: int = 1) -> tuple:
    """``"16,32,64"`` (or a sequence of integers) → ``(16, 32, 64)``; ValueError unless there is at least
    one value and each is an integer >= ``low``."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        values = tuple(int(v) for v in parts if str(v).strip())
    except (TypeError, ValueError):
        values = ()
    if not values or min(values) < low:
        raise ValueError(f"expected comma-separated integers >= {low}, got {value!r}")
    return values


def positive_int_list(text: str) -> tuple:
    """argparse ``type=`` for comma-separated positive integers, e.g. ``--conv-channels 16,32,64``."""
    try:
        return int_list(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def choice(*values: str):
    """argparse ``type=`` for one of ``values`` (case-insensitive), e.g. ``choice("clip", "pixels")``."""
    wanted = " or ".join(values)

    def parse(text: str) -> str:
        if text.strip().lower() not in values:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return text.strip().lower()
    parse.__name__ = wanted
    return parse


def switch(text: str) -> bool:
    """An on/off value as text: 1/0, true/false, yes/no, on/off."""
    text = text.strip().lower()
    if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, got {text!r}")
    return text in ("1", "true", "yes", "on")


def flag_value(value) -> str:
    """A default as the command line writes it, for --help: ``16,32,64`` for a sequence, ``on``/``off`` for a switch."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)
