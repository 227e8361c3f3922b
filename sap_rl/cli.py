"""The ``sap-rl`` command line.

Each domain registers its own sub-commands (``sap_rl.rl.commands``, ``sap_rl.vision.commands``);
this module only builds the parser and turns user mistakes into a one-line error with exit code 2.
Heavy imports (torch, gymnasium, stable-baselines3) happen inside the command handlers, so that
``sap-rl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from sap_rl import __version__
from sap_rl.errors import UserError
from sap_rl.memory import keep_freed_memory

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are a single line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the full ``sap-rl`` parser with every sub-command registered."""
    from sap_rl import report_command, status_command
    from sap_rl.rl import commands as rl_commands
    from sap_rl.vision import commands as vision_commands

    parser = _Parser(prog="sap-rl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sap-rl {__version__}")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    rl_commands.register(subparsers)
    vision_commands.register(subparsers)
    report_command.register(subparsers)
    status_command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sap-rl`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.log_level != "ERROR":
        # Long phases (30 whole games) report each game: a bar on a terminal, else these lines.
        logging.getLogger("sap_rl.progress").setLevel(logging.INFO)
    keep_freed_memory()
    handler: Handler = args.func
    try:
        code = handler(args)
        # Flushed here, a closed pipe (`sap-rl agents | head -1`) is caught below and not at exit.
        sys.stdout.flush()
        return code
    except UserError as err:
        print(f"sap-rl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sap-rl: interrupted; finished results are kept and a rerun resumes", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout is gone, which is not an error of sap-rl; as Python's docs advise,
        # point stdout at devnull so the flush at exit does not fail again, and exit with 1.
        _stdout_to_devnull()
        return 1


def _stdout_to_devnull() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
