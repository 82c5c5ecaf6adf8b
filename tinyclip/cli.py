"""What the command-line tools (``tinyclip.train``, ``tinyclip.evaluate``) share."""

from __future__ import annotations

import contextlib
import sys
import warnings


@contextlib.contextmanager
def one_line_warnings():
    """Show every warning as one ``warning: ...`` line on stderr, without the source line Python adds."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: print(f"warning: {message}", file=sys.stderr)
        yield
