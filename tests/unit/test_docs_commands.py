"""The commands the README and docs/ show exist as typed: every `rainstorm
SUBCOMMAND` line in a code block names a real subcommand, every option it
shows is one that subcommand takes, and every file under examples/ it names
is there; every `python experiments/X.py` line names a script whose --help
lists each option shown.  Nothing is run: a usage line may hold
placeholders (``JOB``, ``URL``, ``[--json]``)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from rainstorm.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "experiments" / "README.md"]


def code_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, command) of every line in a fenced code block, with
    backslash continuations joined, comments and a leading ``$ `` dropped,
    and commands joined by ``;`` or ``&&`` apart."""
    inside, held, start = False, "", 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside, held = not inside, ""
            continue
        if not inside:
            continue
        text = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not held:
            start = n
        if text.endswith("\\"):
            held += text[:-1] + " "
            continue
        for part in re.split(r";|&&", held + text):
            part = part.strip().removeprefix("$ ").strip()
            if part:
                yield start, part
        held = ""


def tokens(command: str) -> list[str]:
    """The words of a command up to a redirection or pipe, brackets of
    optional parts and ``a|b`` alternatives of a placeholder taken apart."""
    try:
        words = shlex.split(command)
    except ValueError:  # an unbalanced quote in prose-like lines: split on blanks
        words = command.split()
    out = []
    for w in words:
        if w in (">", ">>", "|", "2>&1", "<") or w.startswith((">", "2>")):
            break
        out += [p for p in w.strip("[]").split("|") if p] if w.startswith("[") or \
            w.endswith("]") else [w]
    return out


def rainstorm_lines() -> list[tuple[str, int, list[str]]]:
    return [(p.name, n, tokens(c)[1:]) for p in DOCS for n, c in code_lines(p)
            if c.startswith("rainstorm ")]


def experiment_lines() -> list[tuple[str, int, list[str]]]:
    return [(p.name, n, tokens(c)[1:]) for p in DOCS for n, c in code_lines(p)
            if c.startswith("python experiments/")]


def _options(cmd: click.Command) -> set[str]:
    opts = {"--help"}
    for param in cmd.params:
        if isinstance(param, click.Option):
            opts.update(param.opts + param.secondary_opts)
    return opts


def test_the_docs_show_commands_at_all() -> None:
    assert len(rainstorm_lines()) >= 40 and len(experiment_lines()) >= 20


@pytest.mark.parametrize(("doc", "line", "words"), rainstorm_lines(),
                         ids=lambda v: str(v) if not isinstance(v, list) else "")
def test_every_rainstorm_command_shown_exists_with_its_options(
        doc: str, line: int, words: list[str]) -> None:
    where = f"{doc}:{line}: rainstorm {' '.join(words)}"
    if not words or words[0].startswith("-"):  # options of the group itself
        cmd: click.Command = main
        rest = words
    elif not words[0][0].isalpha():  # printed output, e.g. `rainstorm 0.1.0 (...)`
        return
    else:
        sub = main.commands.get(words[0])
        assert sub is not None, f"{where}: no subcommand {words[0]!r}"
        cmd, rest = sub, words[1:]
    known = _options(cmd) | ({"--version"} if cmd is main else set())
    for w in rest:
        if w.startswith("--") or re.fullmatch(r"-[a-zA-Z]", w):
            assert w.split("=", 1)[0] in known, f"{where}: {cmd.name} takes no {w}"
        elif w.startswith("examples/"):
            assert (ROOT / w).exists(), f"{where}: no file {w}"


def _help(script: str) -> str:
    res = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, f"{script} --help: {res.stderr.strip()[-300:]}"
    return res.stdout


@pytest.mark.slow
def test_every_experiment_command_shown_takes_its_options() -> None:
    helps: dict[str, str] = {}
    wrong = []
    for doc, line, words in experiment_lines():
        script = words[0]
        if not (ROOT / script).is_file():
            wrong.append(f"{doc}:{line}: no script {script}")
            continue
        text = helps.get(script) or helps.setdefault(script, _help(script))
        for w in words[1:]:
            flag = w.split("=", 1)[0]
            if flag.startswith("--") and not re.search(rf"{re.escape(flag)}\b", text):
                wrong.append(f"{doc}:{line}: {script} takes no {flag}")
    assert not wrong, "\n".join(wrong)
