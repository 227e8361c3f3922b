"""Errors that mean "the user asked for something wrong" (exit code 2, one line, no traceback)."""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in user input (a bad flag, a missing file, an unknown name).

    The command line prints ``str(error)`` on one line to stderr and exits with code 2.
    Library callers can catch it as a ``ValueError``.
    """
