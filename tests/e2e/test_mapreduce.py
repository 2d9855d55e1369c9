"""MapReduce with worker processes: a worker SIGKILLed during the reduce
phase (part files equal Counter), the CLI's refusals, a phase that
dead-letters input failing the run instead of writing a partial output, and
the default number of reducers growing with the input.  The word counts
themselves run in-process: tests/integration/test_apps_in_process.py."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest

from rainstorm.apps.mapreduce import PhaseIncomplete, run_mapreduce
from rainstorm.lua import LIMITS
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import AWK_MAP, AWK_REDUCE, ROOT, children, cmdline, read_parts
from tests.ops import POISON


@pytest.mark.chaos
def test_worker_killed_during_reduce(tmp_path: Path, url: str) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=20)
    out = tmp_path / "out"
    killed: list[int] = []

    def chaos(phase: str, status: object) -> None:
        if phase == "reduce" and not killed:
            workers = [k for k in children(os.getpid())
                       if "python" in cmdline(k) and "rainstorm" not in cmdline(k)]
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])

    rep = run_mapreduce("tests.ops:wc_map", "tests.ops:slow_wc_reduce", [str(tmp_path / "in")],
                        out, partitions=2, redis_url=url, allow_modules=("tests",),
                        on_progress=chaos, timeout_s=120)
    assert killed
    assert read_parts(out, 2) == reference_wordcount(paths)
    assert rep.output_lines == len(reference_wordcount(paths))


def test_cli_refuses_programs_without_allow_exec(tmp_path: Path) -> None:
    write_corpus(tmp_path / "in", n_files=1, kb=2)
    res = subprocess.run([sys.executable, "-m", "rainstorm", "mapreduce", "--mapper", AWK_MAP,
                          "--reducer", AWK_REDUCE, "--input", str(tmp_path / "in" / "f"),
                          "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "--allow-exec" in res.stderr
    assert not (tmp_path / "out").exists()


def _poisoned_corpus(tmp_path: Path) -> Path:
    """Two files of words, one line of which holds the word POISON."""
    paths = write_corpus(tmp_path / "in", n_files=2, kb=10)
    with paths[1].open("a", encoding="utf-8") as fh:
        fh.write(f"a {POISON} line\n")
    return tmp_path / "in"


def test_cli_fails_a_map_that_dead_letters_input_and_writes_no_parts(tmp_path: Path,
                                                                      url: str) -> None:
    """A mapper raising on one line sends its entry to the dead letters: the
    run fails (exit 3, one line naming the phase and the first error) rather
    than reduce what is left into parts that silently miss it."""
    inp = _poisoned_corpus(tmp_path)
    res = subprocess.run([sys.executable, "-m", "rainstorm", "mapreduce",
                          "--mapper", "tests.ops:wc_map_boom_on_poison",
                          "--reducer", "tests.ops:wc_reduce", "--input", str(inp / "f"),
                          "--output", str(tmp_path / "out"), "--redis", url,
                          "--allow-module", "tests"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "the map job" in last and "dead letter" in last and "poisoned line" in last, last
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_a_reducer_that_dead_letters_a_partition_fails_the_run(tmp_path: Path,
                                                               url: str) -> None:
    inp = _poisoned_corpus(tmp_path)
    with pytest.raises(PhaseIncomplete) as err:
        run_mapreduce("tests.ops:wc_map", "tests.ops:wc_reduce_boom_on_poison",
                      [str(inp / "f*")], tmp_path / "out", partitions=2, redis_url=url,
                      allow_modules=("tests",), timeout_s=120)
    text = str(err.value)
    assert err.value.exit_code == 3 and "\n" not in text
    assert "the reduce job" in text and "poisoned key" in text, text
    assert not (tmp_path / "out").exists()


def _url_reference(log: Path) -> dict[str, float]:
    import re

    rx = re.compile(r'"[A-Z]+ (\S+) HTTP/[0-9.]+"')
    counts = Counter(m.group(1) for line in log.read_text().splitlines()
                     if (m := rx.search(line)))
    total = sum(counts.values())
    return {u: n / total for u, n in counts.items()}


def _shares(out: Path) -> dict[str, float]:
    lines = (out / "part-00000").read_text().splitlines()
    return {u: float(s) for u, s in (ln.split("\t") for ln in lines)}


@pytest.mark.parametrize("flavour", ["python", "shell"])
def test_url_share_two_jobs(tmp_path: Path, url: str, flavour: str) -> None:
    sys.path.insert(0, str(ROOT))
    from examples.gen_access_log import generate

    log = generate(tmp_path / "access.log", 5000)
    if flavour == "python":
        kw = dict(redis_url=url, allow_modules=("examples",), timeout_s=120)
        run_mapreduce("examples.mr.urls:count_map", "examples.mr.urls:count_reduce",
                      [str(log)], tmp_path / "counts", partitions=3, **kw)  # type: ignore[arg-type]
        run_mapreduce("examples.mr.urls:share_map", "examples.mr.urls:share_reduce",
                      [str(tmp_path / "counts")], tmp_path / "share", partitions=1,
                      **kw)  # type: ignore[arg-type]
    else:  # the script users run, with the rainstorm command of this environment
        env = dict(os.environ, RAINSTORM_REDIS=url,
                   PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        res = subprocess.run(["bash", str(ROOT / "examples" / "mr" / "url_share.sh"), str(log),
                              str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=180)
        assert res.returncode == 0, res.stderr[-2000:]
    got, want = _shares(tmp_path / "share"), _url_reference(log)
    assert got.keys() == want.keys() and len(want) > 100
    assert all(abs(got[u] - want[u]) < 1e-9 for u in want)
    assert abs(sum(got.values()) - 1) < 1e-6


@pytest.mark.slow
def test_default_reducers_fit_many_distinct_keys(tmp_path: Path) -> None:
    """700,000 distinct 60-byte keys (43 MB): with 2 reducers each part's
    lines alone would be over the one-call cap, so the old default of 2
    failed (exit 3, "run it with more --partitions"); without --partitions
    the CLI takes one reducer per 8 MiB of input and every key comes out
    once, in its part."""
    keys = [f"/page/{i:09d}/" + "x" * 45 for i in range(700_000)]
    random.Random(7).shuffle(keys)
    (tmp_path / "in").mkdir()
    for f in range(2):
        (tmp_path / "in" / f"part-{f}.txt").write_text("\n".join(keys[f::2]) + "\n")
    size = sum(p.stat().st_size for p in (tmp_path / "in").iterdir())
    two = [0, 0]
    for k in keys:
        two[zlib.crc32(k.encode()) % 2] += len(f"{k}\t1\n")
    assert min(two) > LIMITS.bytes  # what 2 reducers would have had to commit, each
    res = subprocess.run([sys.executable, "-m", "rainstorm", "mapreduce", "--allow-exec",
                          "--mapper", "tests.ops:wc_map", "--combiner", "sum",
                          "--reducer", AWK_REDUCE, "--input", str(tmp_path / "in"),
                          "--output", str(tmp_path / "out"), "--allow-module", "tests"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr[-2000:]
    parts = math.ceil(size / (8 << 20))
    assert parts > 2 and len(list((tmp_path / "out").iterdir())) == parts
    got = read_parts(tmp_path / "out", parts)
    assert len(got) == len(keys) and set(got.values()) == {1} and got.keys() == set(keys)
