"""``sap-rl status``: how far an evaluation's output folder is, from its files alone.

Example::

    sap-rl status runs/evaluate/bankheist-ddqn
"""

from __future__ import annotations

import argparse
import textwrap
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sap_rl.grid.status import FolderStatus

_EXAMPLES = """\
examples:
  sap-rl status runs/evaluate/bankheist-ddqn   # while it runs, or after it stopped
  sap-rl status runs/evaluate/*
"""


def register(subparsers: Any) -> None:
    """Add the ``status`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "status",
        help="show how far an evaluation's output folder is: cells, units, checkpoints",
        description=(
            "Show, for each DIR, the finished cells and, for each unfinished one, its finished\n"
            "units and the last checkpoint of the others (games finished, agent steps of the\n"
            "running games, work seconds, when it was saved), and whether a run writes it now.\n"
            "Reads files only: safe beside a running evaluation. Cells no unit has reached yet\n"
            "are not listed."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="an evaluation's --out folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print each folder's status; a folder that holds no evaluation is a one-line error."""
    from sap_rl.grid.status import folder_status

    statuses = [folder_status(folder) for folder in args.dirs]  # every folder checked first
    print("\n\n".join(format_status(s, now=time.time()) for s in statuses))
    return 0


def format_status(status: FolderStatus, *, now: float) -> str:
    """The lines ``sap-rl status`` prints for one :class:`~sap_rl.grid.status.FolderStatus`.

    Example:
        >>> from pathlib import Path
        >>> from sap_rl.grid.status import CellStatus, FolderStatus, UnitCheckpoint
        >>> cell = CellStatus("dense__pgd-50__3", 5, [1], [UnitCheckpoint(0, 10, 4994.3, 0.0, {})])
        >>> print(format_status(FolderStatus(Path("run"), {"game": "BankHeist"}, ["dense__clean"],
        ...                                  [cell], {"dense__pgd-50__3": 3493.9}, None), now=90))
        run: BankHeist; no run writes it now
        finished: 1 cell (dense__clean)
        dense__pgd-50__3: 1 of 5 units finished (58 min of work)
          unit 0: checkpoint saved 2 min ago; 83 min of work
    """
    from sap_rl.rl.unit_resume import describe_state

    about = [str(status.fingerprint[k]) for k in ("game", "dataset", "agent", "model")
             if isinstance(status.fingerprint.get(k), str)]  # fmt: skip
    owner = status.owner
    writer = (f"pid {owner.get('pid')} on {owner.get('host')} writes it, since "
              f"{owner.get('started')}" if owner else "no run writes it now")  # fmt: skip
    lines = [f"{status.folder}: " + (f"{', '.join(about)}; " if about else "") + writer]
    n = len(status.finished)
    names = f" ({', '.join(status.finished)})" if n else ""
    lines.append(textwrap.fill(f"finished: {n} cell{'s' if n != 1 else ''}{names}", width=100,
                               subsequent_indent="  ", break_on_hyphens=False))  # fmt: skip
    for cell in status.unfinished:
        units = "?" if cell.units is None else str(cell.units)
        line = f"{cell.name}: {len(cell.finished_units)} of {units} units finished"
        if cell.name in status.seconds:
            line += f" ({_duration(status.seconds[cell.name])} of work)"
        lines.append(line)
        for unit in cell.running:
            played = describe_state(unit.state, unit.size)
            saved = f"checkpoint saved {_duration(max(now - unit.saved, 0.0))} ago"
            parts = [played] if played else []
            parts += [saved, f"{_duration(unit.seconds)} of work"]
            lines.append(f"  unit {unit.index}: " + "; ".join(parts))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """``42 s``, ``83 min`` or ``5.2 h``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
