"""The docs cannot rot: every command and Python example in README.md and docs/*.md is exercised.

- Every `evalsuite …` command, in fenced bash blocks (line continuations joined, `&&`/`;`
  chains split, `torchrun … -m evalsuite …` and `python -m evalsuite …` included) and in inline
  code spans, is parsed against the real click CLI: the subcommand is resolved and its context
  made from the arguments, so an unknown command or option, or a bad value, fails. Paths are not
  required to exist (released `.pt` files and CUDA are not here). Inline spans holding `...` or
  `…` are descriptions, not commands, and are skipped.
- Bash blocks preceded by the line `<!-- doc-test: run -->` are also run, command by command in
  one temporary folder, and must exit 0: they must be cheap (the zoo, a few samples).
- Every fenced python block is executed in a temporary folder (`<!-- doc-test: parse -->` before
  a block only compiles it, for examples that need files or a GPU).
- `python/bash path` lines must name a script that exists in the repository.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from evalsuite.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_MARK = "<!-- doc-test: run -->"
PARSE_MARK = "<!-- doc-test: parse -->"
SEPARATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    mark: str | None  # RUN_MARK / PARSE_MARK when the last non-blank line before it is one

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    blocks, lines = [], path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^```(\w*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        end = next(j for j in range(index + 1, len(lines)) if lines[j].startswith("```"))
        before = [line.strip() for line in lines[:index] if line.strip()]
        mark = before[-1] if before and before[-1] in (RUN_MARK, PARSE_MARK) else None
        text = "\n".join(lines[index + 1 : end])
        blocks.append(Block(path, index + 1, opening.group(1), text, mark))
        index = end + 1
    return blocks


def shell_segments(text: str) -> Iterator[list[str]]:
    """Simple commands of a shell block: continuations joined, chains split, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in lexer:
            if token in SEPARATORS:
                if segment:
                    yield segment
                segment = []
            else:
                segment.append(token)
        if segment:
            yield segment


def evalsuite_args(segment: list[str]) -> list[str] | None:
    """The arguments after `evalsuite` (or `torchrun … -m evalsuite`, `python -m evalsuite`)."""
    if Path(segment[0]).name == "evalsuite":
        return segment[1:]
    for index in range(len(segment) - 1):
        if segment[index] == "-m" and segment[index + 1] == "evalsuite":
            return segment[index + 2 :]
    return None


def script_paths(segment: list[str]) -> list[str]:
    """Repository scripts a `python x.py` / `bash x.sh` segment runs."""
    if Path(segment[0]).name not in ("python", "python3", "bash"):
        return []
    return [token for token in segment[1:2] if token.endswith((".py", ".sh"))]


def inline_commands(path: Path) -> list[tuple[str, list[str]]]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    found = []
    for span in re.findall(r"`(evalsuite [^`]+)`", text):
        if "..." in span or "…" in span:
            continue
        found.append((f"{path.relative_to(ROOT)} `{span}`", shlex.split(span)[1:]))
    return found


def all_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for path in DOCS:
        for block in fenced_blocks(path):
            if block.lang not in ("bash", "sh", "shell", "console"):
                continue
            for segment in shell_segments(block.text):
                args = evalsuite_args(segment)
                if args is not None:
                    commands.append((f"{block.where} evalsuite {' '.join(args)}", args))
        commands.extend(inline_commands(path))
    return commands


@contextlib.contextmanager
def paths_need_not_exist(command: click.Command) -> Iterator[None]:
    """Parse as if every file named existed: turn off click.Path's existence check for a while."""
    types = [p.type for p in command.params if isinstance(p.type, click.Path) and p.type.exists]
    for path_type in types:
        path_type.exists = False
    try:
        yield
    finally:
        for path_type in types:
            path_type.exists = True


def parse(args: list[str]) -> click.Command:
    """Resolve the subcommand of `args` and make its context; raises click errors on bad input."""
    command: click.Command = main
    context = click.Context(main, info_name="evalsuite")
    rest, name = list(args), "evalsuite"
    while isinstance(command, click.Group):
        if not rest:
            raise click.UsageError(f"`{name}` needs a subcommand")
        name = rest.pop(0)
        found = command.get_command(context, name)
        if found is None:
            raise click.UsageError(f"no such command {name!r}")
        command = found
    with paths_need_not_exist(command):
        try:
            command.make_context(name, rest, parent=context)
        except click.exceptions.Exit as done:  # --help parses and exits 0
            if done.exit_code != 0:
                raise
    return command


COMMANDS = all_commands()


def test_the_extractor_finds_the_docs_commands():
    assert len(DOCS) >= 3  # README.md, docs/zoo.md, docs/table4.md
    shown = [where for where, _ in COMMANDS]
    # The README's main command, the table's inline commands and a continued multi-line command.
    assert any(w.startswith("README.md:") and w.endswith("evalsuite sweep") for w in shown)
    assert any("`evalsuite weights fetch torch-fidelity`" in w for w in shown)
    assert any("table4.md" in w and "--num-samples 50000" in w for w in shown)
    assert len(COMMANDS) >= 15


def test_the_extractor_joins_continuations_and_splits_chains():
    text = "a && evalsuite sweep \\\n    --scales 0,1 # note\ntorchrun --nproc_per_node 2 -m evalsuite info"
    assert [evalsuite_args(s) for s in shell_segments(text)] == [
        None,
        ["sweep", "--scales", "0,1"],
        ["info"],
    ]


def test_parse_rejects_what_the_cli_rejects():
    with pytest.raises(click.ClickException):
        parse(["sweep", "--no-such-option"])
    with pytest.raises(click.ClickException):
        parse(["sweep", "--sampler", "euler"])
    with pytest.raises(click.ClickException):
        parse(["no-such-command"])
    assert parse(["weights", "fetch", "nvidia"]).name == "fetch"


@pytest.mark.parametrize(("where", "args"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_parses(where, args):
    parse(args)


def test_every_documented_script_exists():
    for path in DOCS:
        for block in fenced_blocks(path):
            for segment in shell_segments(block.text):
                for script in script_paths(segment):
                    assert (ROOT / script).is_file(), f"{block.where}: {script} does not exist"


RUN_BLOCKS = [
    b for path in DOCS for b in fenced_blocks(path) if b.mark == RUN_MARK and b.lang == "bash"
]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.where for b in RUN_BLOCKS])
def test_marked_blocks_run(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for segment in shell_segments(block.text):
        args = evalsuite_args(segment)
        assert args is not None, f"{block.where}: only evalsuite commands can be run here"
        result = runner.invoke(main, args)
        assert result.exit_code == 0, f"{block.where} evalsuite {' '.join(args)}:\n{result.output}"


PYTHON_BLOCKS = [b for path in DOCS for b in fenced_blocks(path) if b.lang == "python"]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where for b in PYTHON_BLOCKS])
def test_python_examples_run(block, tmp_path, monkeypatch, capsys):
    code = compile(block.text, block.where, "exec")
    if block.mark == PARSE_MARK:
        return
    monkeypatch.chdir(tmp_path)
    exec(code, {"__name__": "__doc_example__"})
    assert capsys.readouterr().out.strip(), f"{block.where} printed nothing"


def test_the_readme_runs_something_and_has_a_python_example():
    assert any(b.path.name == "README.md" for b in RUN_BLOCKS)
    assert any(b.path.name == "README.md" for b in PYTHON_BLOCKS)


CITED_SCRIPT = re.compile(r"\b((?:zoo|benchmarks)/[\w/]+\.(?:py|sh))\b")


def test_every_cited_script_exists_and_the_zoo_diagnostics_start():
    cited = {match for path in DOCS for match in CITED_SCRIPT.findall(path.read_text())}
    assert {"benchmarks/bench_zoo_quality.py", "zoo/diag_zoo_pr.py"} <= cited
    for script in sorted(cited):
        assert (ROOT / script).is_file(), f"{script} is cited in the docs but does not exist"
    # The diagnostics import (one interpreter for all; their main() only runs as __main__).
    diagnostics = sorted(str(ROOT / s) for s in cited if s.startswith("zoo/diag_"))
    code = (
        "import runpy, sys; sys.path.insert(0, sys.argv[1]); "
        "[runpy.run_path(path, run_name='imported') for path in sys.argv[2:]]"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "zoo"), *diagnostics],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
