"""Every code block of README.md and docs/*.md runs (Python) or parses (shell) as written.

- ```` ```python ```` blocks are executed, each in a fresh namespace, in a temporary working
  directory that links the repository's ``agents/`` and ``configs/`` (so ``agents/krull-ddqn``
  resolves as on a fresh clone) and with one torch thread (the shared 2-core machine).
- Shell blocks (```` ``` ````, ```` ```bash ````): every ``sap-rl`` command is parsed by the real
  argument parser, its ``--config`` files and ``--agent`` names must exist on a fresh clone (paths
  under ``runs/`` are outputs of earlier commands and are not checked), ``python benchmarks/*.py``
  scripts must exist, and the cheap commands (``sap-rl agents``, ``--help``) are run.
- The examples in every sub-command's ``--help`` are checked the same way.
- The README's Atari study tables are the committed ``results/rl/<agent>/summary.csv`` means.

A block that is an excerpt and cannot run alone is marked in the markdown by the line
``<!-- no-test: <why> -->`` right before its fence; it is reported as skipped with that reason.
``<!-- slow-test -->`` runs a block only under ``pytest -m slow``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from sap_rl.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = ("", "bash", "sh", "shell")
#: Folders a fresh clone has that the examples read; linked into the temporary working directory.
LINKED = ("agents", "configs")
#: Sub-commands cheap enough to run from the docs (seconds, nothing written).
CHEAP = (["agents"],)
_MARKER = re.compile(r"^<!--\s*(no-test|slow-test)\s*(?::\s*(?P<reason>.*?))?\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # "no-test", "slow-test" or None
    reason: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` with the marker on the line just before each, if any."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        previous = lines[i - 1].strip() if i > 0 else ""
        marker = _MARKER.match(previous)
        blocks.append(
            Block(
                path=path,
                line=i + 1,
                lang=fence.group(1),
                code="\n".join(lines[i + 1 : end]) + "\n",
                marker=marker.group(1) if marker else None,
                reason=(marker.group("reason") or "") if marker else "",
            )
        )
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in code_blocks(path)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "python"]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in SHELL_LANGS]


def _param(block: Block) -> object:
    marks = [pytest.mark.slow] if block.marker == "slow-test" else []
    return pytest.param(block, id=block.id, marks=marks)


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    # contextlib.chdir is Python 3.11+; the project supports 3.10.
    cwd = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)


@contextlib.contextmanager
def _fresh_clone_cwd(tmp_path: Path) -> Iterator[Path]:
    """Work in ``tmp_path`` with the repository's shipped folders linked in, one torch thread."""
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    cwd, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(tmp_path)
    torch.set_num_threads(1)
    try:
        yield tmp_path
    finally:
        torch.set_num_threads(threads)
        os.chdir(cwd)


def test_the_docs_have_code_blocks_and_every_skip_says_why() -> None:
    assert len(PYTHON_BLOCKS) >= 4 and len(SHELL_BLOCKS) >= 10
    readme_python = [b for b in PYTHON_BLOCKS if b.path.name == "README.md"]
    assert readme_python and all(b.marker is None for b in readme_python)
    for block in ALL_BLOCKS:
        if block.marker == "no-test":
            assert block.reason, f"{block.id}: <!-- no-test: ... --> needs a reason"
    # A marker must sit right before a fence: one anywhere else would silently mark nothing.
    for path in DOCS:
        marked = [i for i, line in enumerate(path.read_text().splitlines()) if _MARKER.match(line)]
        fences = {b.line - 2 for b in code_blocks(path)}  # 0-based index of the line before
        assert set(marked) <= fences, f"{path.name}: a test marker is not right before a fence"


@pytest.mark.parametrize("block", [_param(b) for b in PYTHON_BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    if block.marker == "no-test":
        pytest.skip(f"{block.id}: {block.reason}")
    code = compile(block.code, block.id, "exec")
    with _fresh_clone_cwd(tmp_path):
        exec(code, {"__name__": "__docs__"})


# --------------------------------------------------------------------------- shell commands


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block or help text: continuations joined, comments and ``&&``
    chains split, a leading ``nice -n N`` dropped. Lines with ``...`` (elisions) are skipped."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        if "..." in line:
            continue
        for segment in re.split(r"&&|;|\|\|", line):
            argv = shlex.split(segment, comments=True)
            if argv[:2] == ["nice", "-n"]:
                argv = argv[3:]
            if argv:
                commands.append(argv)
    return commands


def check_command(argv: list[str], where: str) -> None:
    """Parse an ``sap-rl`` command and check that what it reads exists on a fresh clone."""
    from sap_rl.rl.agent_search import resolve_agent

    if argv[0] in ("python", "python3") and len(argv) > 1 and argv[1].endswith(".py"):
        assert (ROOT / argv[1]).is_file(), f"{where}: {argv[1]} does not exist"
        return
    if argv[0] != "sap-rl":
        return
    args = argv[1:]
    parser = build_parser()
    if "--help" in args or "-h" in args:
        with pytest.raises(SystemExit) as exc:  # argparse prints the help and exits 0
            parser.parse_args(args)
        assert exc.value.code == 0, f"{where}: `{shlex.join(argv)}` does not parse"
        return
    try:
        namespace = parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse")
    config = str(getattr(namespace, "config", None) or "")  # a str or a Path, by sub-command
    if config and ("/" in config or config.endswith((".yaml", ".yml"))):
        assert (ROOT / config).is_file(), f"{where}: {config} does not exist"
    agent = str(getattr(namespace, "agent", None) or "")
    if agent and not agent.startswith("runs/"):
        with _chdir(ROOT):
            resolve_agent(agent)  # raises UserError naming the missing agent


@pytest.mark.parametrize("block", [_param(b) for b in SHELL_BLOCKS])
def test_shell_block_parses_and_its_files_exist(
    block: Block, capsys: pytest.CaptureFixture[str]
) -> None:
    if block.marker == "no-test":
        pytest.skip(f"{block.id}: {block.reason}")
    for argv in shell_commands(block.code):
        check_command(argv, block.id)
        if argv[1:] in CHEAP:
            with _chdir(ROOT):
                assert main(argv[1:]) == 0
            assert capsys.readouterr().out.strip(), (
                f"{block.id}: `{shlex.join(argv)}` printed nothing"
            )


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, object]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _subparsers(sub, f"{prefix}{name} ")


def test_help_examples_parse_and_use_shipped_agents() -> None:
    checked = 0
    for name, sub in _subparsers(build_parser()):
        assert isinstance(sub, argparse.ArgumentParser)
        for argv in shell_commands(sub.epilog or ""):
            if argv[0] == "sap-rl":
                check_command(argv, f"sap-rl {name} --help")
                checked += 1
    assert checked >= 5  # evaluate --help has five examples


def test_a_missing_agent_in_an_example_fails_the_check() -> None:
    from sap_rl.errors import UserError

    with pytest.raises(UserError, match="no-such-ddqn"):
        check_command(["sap-rl", "evaluate", "--agent", "no-such-ddqn"], "test")
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_command(["sap-rl", "evaluate", "--no-such-flag"], "test")


# --------------------------------------------------------------------------- result tables

STUDY_FOLDERS = {
    "RoadRunner": "roadrunner-ddqn",
    "KungFuMaster": "kungfumaster-ddqn",
    "Krull": "krull-ddqn",
    "Pong": "pong-ddqn",
}


@pytest.mark.parametrize("game", sorted(STUDY_FOLDERS))
def test_readme_study_captions_give_the_summaries_random_score(game: str) -> None:
    """The caption of each study table names the random score its ``normalized`` column used.

    (The tables themselves are ``sap-rl report --markdown`` output: tests/test_report.py.)
    """
    import json

    folder = ROOT / "results" / "rl" / STUDY_FOLDERS[game]
    random_score = json.loads((folder / "summary.json").read_text())["random_score"]["value"]
    readme = (ROOT / "README.md").read_text()
    caption = next(
        line for line in readme.splitlines() if line.startswith(f"{game} (random policy ")
    )
    assert caption == f"{game} (random policy {random_score:.1f}):"
    lines = readme.splitlines()
    marker = f"<!-- sap-rl report --markdown results/rl/{STUDY_FOLDERS[game]} -->"
    assert lines.index(marker) == lines.index(caption) + 2  # the caption is the table's
