"""External programs as operators, run in-process (rainstorm.testing: no
worker process; the programs are real child processes of the workers):
Unix filters unchanged, crashes and hangs dead-lettered with their stderr.
Results against collections.Counter.  Moved here from
tests/e2e/test_external.py, which keeps what needs a worker process
(refusals by workers started without --allow-exec, the CLI's exit code).
A framed program (long-lived) is stopped when its in-process worker closes."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import msgpack
import pytest
import redis

from rainstorm import keys
from rainstorm.local.run import RunOptions, RunReport
from rainstorm.spec import JobSpec
from rainstorm.testing import OperatorFailed, run_in_process
from tests.conftest import write_corpus
from tests.helpers import ROOT, children, cmdline, external_spec, lines_of

CRASH = ["sh", "-c", 'while IFS= read -r l; do case "$l" in *POISON*) '
         'echo "cannot digest: $l" >&2; exit 3;; esac; printf "%s\\n" "$l"; done']
HANG = ["sh", "-c", 'while IFS= read -r l; do case "$l" in *HANG*) sleep 30;; esac; '
        'printf "%s\\n" "$l"; done']


def run(spec: JobSpec, paths: list[Path], url: str) -> RunReport:
    return run_in_process(spec, RunOptions(redis_url=url, inputs=tuple(map(str, paths)),
                                           workers=2, allow_exec=True, timeout_s=120))


def poisoned(tmp_path: Path, line: int, marker: str) -> tuple[list[Path], list[str], str]:
    """One input file whose line ``line`` carries ``marker``: (paths, lines, that line)."""
    paths = write_corpus(tmp_path, n_files=1, kb=6)
    lines = paths[0].read_text().splitlines()
    bad = f"{lines[line]} {marker}"
    lines[line] = bad
    paths[0].write_text("\n".join(lines) + "\n")
    return paths, lines, bad


def only_dead_letter(r: redis.Redis, failed: OperatorFailed) -> dict[str, str]:
    dead = r.xrange(keys.dlq(failed.job_id))
    assert len(dead) == 1 == failed.dead_letters
    letter: dict[str, str] = msgpack.unpackb(dead[0][1][b"d"])
    return letter


def test_grep_and_awk_unchanged(tmp_path: Path, url: str) -> None:
    paths = write_corpus(tmp_path, n_files=2, kb=20)
    # grep exits 1 on batches without a match: that is not a failure
    rep = run(external_spec({"cmd": ["grep", "-E", "^(The|Zorglub) "]}), paths, url)
    ref = Counter(w for ln in lines_of(paths) if ln.startswith("The ") for w in ln.split())
    assert rep.result == ref and ref
    rep = run(external_spec({"cmd": ["awk", "NF {print $NF, NF}"]}), paths, url)  # last word, NF
    ref = Counter()
    for ln in lines_of(paths):
        if ln.split():
            ref.update([ln.split()[-1], str(len(ln.split()))])
    assert rep.result == ref


@pytest.mark.parametrize("cmd, marker, needle", [
    (CRASH, "POISON", "exited with status 3; stderr: 'cannot digest"),
    (HANG, "HANG", "ran past its timeout of 0.5 s"),
])
def test_failing_program_dead_letters_only_its_record(
    tmp_path: Path, url: str, r: redis.Redis, cmd: list[str], marker: str, needle: str
) -> None:
    paths, lines, bad = poisoned(tmp_path, 10, marker)
    spec = external_spec({"cmd": cmd, "timeout_s": 0.5}, max_deliveries=2, claim_idle_ms=150)
    with pytest.raises(OperatorFailed) as failed:
        run(spec, paths, url)
    assert failed.value.result == Counter(w for ln in lines if ln != bad for w in ln.split())
    letter = only_dead_letter(r, failed.value)
    assert letter["record"] == bad and needle in letter["error"], letter["error"]


def _children_running(marker: str) -> list[int]:
    """Pids of this process's children whose command line contains ``marker``."""
    return [k for k in children(os.getpid()) if marker in cmdline(k)]


def test_framed_programs_stop_with_their_in_process_worker(tmp_path: Path, url: str) -> None:
    paths = write_corpus(tmp_path, n_files=2, kb=20)
    seen: list[int] = []
    framed = [sys.executable, str(ROOT / "tests" / "framed_upper.py")]

    def look(_status: object) -> None:  # the programs while the job runs
        seen.extend(_children_running("framed_upper.py"))

    rep = run_in_process(external_spec({"cmd": framed, "mode": "framed"}),
                         RunOptions(redis_url=url, inputs=tuple(map(str, paths)), workers=2,
                                    allow_exec=True, timeout_s=120, on_progress=look))
    assert rep.result == Counter(w.upper() for ln in lines_of(paths) for w in ln.split())
    assert seen, "no framed program was seen running"
    assert not _children_running("framed_upper.py"), "framed programs outlived their workers"
