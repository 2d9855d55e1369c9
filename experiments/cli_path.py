"""The path users type, timed end to end, against the fastest Pool(2) word count.

    python experiments/cli_path.py [--quick] [--mb 200] [--repeat 3]

``rainstorm run examples/wordcount.yaml --input 'DIR/*.txt' --workers 2 --json
> out.json`` as a subprocess (interpreter start, embedded server start, the
job, the JSON output: all inside the time), against plain-Python word counts
with ``multiprocessing.Pool(2)`` in this process, on two corpora of the same
size: real English text (experiments/realtext.py: Debian dictionary, docs,
fortunes; repeated when larger than its ~54 MB of distinct text) and the
generated corpus of common.corpus.  Every repeat runs every contender once,
in an order that rotates from repeat to repeat.

Pool variants (the best median is the baseline of the ratio; both reported):

* ``pool-share``: the files cut into ~1 MiB blocks at newlines; each process
  counts an interleaved share of the blocks into one Counter, the parent
  merges 2 Counters (experiments/bench_wordcount.py's variant);
* ``pool-chunks``: ``imap_unordered`` over 4 MiB blocks, a Counter per block,
  merged in the parent while the others are counted.

``rainstorm, Python code``: the same command with RAINSTORM_NATIVE=0, the
per-key work done by Python instead of rainstorm.native's C (word count's
split and count, the cut into state partitions, the folds): the Pool is
plain Python, so this row is the like-for-like one.

Breakdown rows: ``rainstorm (no --json)`` prints only the top 10 (the JSON
output's cost is the difference); ``job_s`` is the job's own time from the
CLI's summary line (submit to result; the rest of the wall time is the
interpreter, the server start and stop and the output); ``pool_start_s`` is
the time to start Pool(2), inside the Pool rows' times; ``cli_start_s``
(``rainstorm --help``) is the interpreter + CLI import.

The rainstorm result must equal the Pool Counters (and, with --quick or
--serial-check, a serial Counter): exit 1 otherwise.  Writes
experiments/results/cli_path.csv and .png.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_wordcount import _count_blocks as _count  # noqa: E402
from common import ROOT, corpus, finish, parser, pyplot, reference  # noqa: E402
from proc_watch import Watch  # noqa: E402
from realtext import Unavailable, describe, real_corpus  # noqa: E402

SHARE_BLOCK = 1 << 20
CHUNK_BLOCK = 4 << 20
RS = "rainstorm (--json > file)"
RS_NOJSON = "rainstorm (no --json)"
RS_PY = "rainstorm, Python code (RAINSTORM_NATIVE=0)"
SHARE, CHUNKS = "pool-share", "pool-chunks"


def rainstorm_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("rainstorm")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "rainstorm"]


def blocks(files: list[Path], size: int) -> list[tuple[str, int, int]]:
    """(path, offset, length) blocks of about ``size`` bytes, cut after a newline
    (found by reading a little past each cut, not the whole file)."""
    out = []
    for f in files:
        total = f.stat().st_size
        with f.open("rb") as fh:
            start = 0
            while start < total:
                end = min(start + size, total)
                while end < total:
                    fh.seek(end)
                    window = fh.read(1 << 16)
                    nl = window.find(b"\n")
                    if nl >= 0:
                        end += nl + 1
                        break
                    end += len(window)
                out.append((str(f), start, end - start))
                start = end
    return out


def _count_one(task: tuple[str, int, int]) -> Counter[str]:
    return _count([task])


def pool_share(files: list[Path], procs: int = 2) -> tuple[Counter[str], float]:
    """(the counts, seconds to start the Pool): each of ``procs`` processes counts
    an interleaved share of ~1 MiB blocks into one Counter; the parent merges them."""
    t = time.perf_counter()
    with Pool(procs) as p:
        started = time.perf_counter() - t
        bs = blocks(files, SHARE_BLOCK)
        parts = p.map(_count, [bs[i::procs] for i in range(procs)])
    total = parts[0]
    for part in parts[1:]:
        total.update(part)
    return total, started


def pool_chunks(files: list[Path]) -> tuple[Counter[str], float]:
    t = time.perf_counter()
    with Pool(2) as p:
        started = time.perf_counter() - t
        total: Counter[str] = Counter()
        for c in p.imap_unordered(_count_one, blocks(files, CHUNK_BLOCK)):
            total.update(c)
    return total, started


def run_cli(files: list[Path], as_json: bool, tmp: Path, python: bool = False,
            workers: int = 2, cpu: dict[str, float] | None = None,
            extra: tuple[str, ...] = (), phases: dict[str, float] | None = None,
            pythonpath: Path | None = None, watch_period_s: float = 0.1,
            rss: dict[str, float] | None = None, also_watch: tuple[int, ...] = ()
            ) -> tuple[float, float, Counter[str]]:
    """(wall seconds, the job's own seconds, result or empty) of one `rainstorm run`;
    ``python``: with the native code turned off (RAINSTORM_NATIVE=0); ``cpu``:
    filled with the CPU seconds of each role's processes (proc_watch.Watch,
    sampled every ``watch_period_s``); ``extra``: more arguments (``--set
    k=v``); ``phases``: run with -v and filled with ``output_s`` and
    ``rest_s`` from the line it logs at its end (the result's output;
    interpreter, imports, server); ``pythonpath``: the rainstorm of that tree
    (``python -m rainstorm`` with PYTHONPATH set: ab_revisions.py); ``rss``:
    filled with the peak RSS (MB) of each process watched, the command's and
    ``also_watch``'s (a server of its own: high_cardinality.py).  A failed
    run prints its error and gives NaN as the job's seconds and an empty result."""
    out = tmp / "out.json"
    verbose = ["-v"] if phases is not None else []
    cmd = [sys.executable, "-m", "rainstorm"] if pythonpath else rainstorm_cmd()
    args = [*cmd, *verbose, "run", str(ROOT / "examples" / "wordcount.yaml"),
            "--input", str(files[0].parent / "*.txt"), "--workers", str(workers), *extra]
    env = dict(os.environ, RAINSTORM_NATIVE="0" if python else "1")
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    t = time.perf_counter()
    with open(out if as_json else os.devnull, "wb") as fh:
        proc = subprocess.Popen([*args, "--json"] if as_json else args, stdout=fh,
                                stderr=subprocess.PIPE, cwd=tmp, env=env)
        watch = Watch(proc.pid, also_watch, period_s=watch_period_s) \
            if cpu is not None or rss is not None else None
        try:
            _, raw = proc.communicate(timeout=1800)
        finally:
            if watch is not None:
                peaks = watch.stop()
                if rss is not None:
                    rss.update(peaks)
                if cpu is not None:
                    cpu.update(watch.cpu_s())
    wall = time.perf_counter() - t
    err = raw.decode(errors="replace")
    if proc.returncode != 0:
        print(f"rainstorm run failed (exit {proc.returncode}): {err.strip()[-400:]}",
              file=sys.stderr)
        return wall, float("nan"), Counter()
    m = re.search(r" MB in ([0-9.]+) s", err)
    job_s = float(m.group(1)) if m else float("nan")
    spent = re.search(r"the result's output ([0-9.]+) s, the rest ([0-9.]+) s", err)
    if phases is not None and spent:
        phases.update(output_s=float(spent.group(1)), rest_s=float(spent.group(2)))
    result = Counter(json.loads(out.read_text())) if as_json else Counter()
    out.unlink(missing_ok=True)
    return wall, job_s, result


def cli_start_s() -> float:
    t = time.perf_counter()
    subprocess.run([*rainstorm_cmd(), "--help"], stdout=subprocess.DEVNULL, check=True,
                   timeout=60)
    return time.perf_counter() - t


def measure(name: str, files: list[Path], repeat: int, serial: Counter[str] | None,
            tmp: Path) -> list[dict[str, Any]]:
    mb = sum(f.stat().st_size for f in files) / 1e6
    contenders = [RS, SHARE, RS_NOJSON, CHUNKS, RS_PY]
    rows = []
    for rep in range(repeat):
        order = contenders[rep % len(contenders):] + contenders[:rep % len(contenders)]
        got: dict[str, dict[str, Any]] = {}
        for who in order:
            if who in (RS, RS_NOJSON, RS_PY):
                wall, job_s, res = run_cli(files, who != RS_NOJSON, tmp, python=who == RS_PY)
                got[who] = {"seconds": wall, "job_s": job_s, "pool_start_s": "",
                            "result": res}
            else:
                t = time.perf_counter()
                res, started = (pool_share if who == SHARE else pool_chunks)(files)
                got[who] = {"seconds": time.perf_counter() - t, "job_s": "",
                            "pool_start_s": round(started, 3), "result": res}
        truth = serial if serial is not None else got[SHARE]["result"]
        pools_agree = got[SHARE]["result"] == got[CHUNKS]["result"] == truth
        for who in contenders:
            g = got[who]
            correct = pools_agree and (who == RS_NOJSON or g["result"] == truth)
            rows.append({"corpus": name, "mb": round(mb, 1), "repeat": rep, "contender": who,
                         "order": order.index(who), "seconds": round(g["seconds"], 3),
                         "job_s": g["job_s"], "pool_start_s": g["pool_start_s"],
                         "distinct_words": len(truth), "correct": correct})
        print(f"{name} repeat {rep}: " + ", ".join(
            f"{w} {got[w]['seconds']:.2f} s" for w in contenders), flush=True)
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for name in dict.fromkeys(r["corpus"] for r in rows):
        mine = [r for r in rows if r["corpus"] == name]

        def times(who: str, mine: list[dict[str, Any]] = mine) -> list[float]:
            return [float(r["seconds"]) for r in mine if r["contender"] == who]

        best = min((SHARE, CHUNKS), key=lambda w: statistics.median(times(w)))
        ratios = [a / b for a, b in zip(times(RS), times(best), strict=True)]
        py = [a / b for a, b in zip(times(RS_PY), times(best), strict=True)]
        nojson = [a / b for a, b in zip(times(RS), times(RS_NOJSON), strict=True)]
        job = [float(r["job_s"]) for r in mine if r["contender"] == RS]
        start = [float(r["pool_start_s"]) for r in mine if r["contender"] == best]
        lines.append(
            f"{name} ({mine[0]['mb']} MB, {mine[0]['distinct_words']:,} distinct words): "
            f"rainstorm {statistics.median(times(RS)):.2f} s (job "
            f"{statistics.median(job):.2f} s of it), {best} "
            f"{statistics.median(times(best)):.2f} s (Pool start "
            f"{statistics.median(start):.3f} s of it), other Pool "
            f"{statistics.median(times(SHARE if best == CHUNKS else CHUNKS)):.2f} s; "
            f"ratio rainstorm/{best} median {statistics.median(ratios):.2f} "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f}); --json costs "
            f"{statistics.median(nojson):.2f}x of no --json; with the native code off "
            f"{statistics.median(times(RS_PY)):.2f} s, ratio median "
            f"{statistics.median(py):.2f} (min {min(py):.2f}, max {max(py):.2f})")
    return lines


def plot_to(rows: list[dict[str, Any]], title: str) -> Any:
    def plot(path: Path) -> None:
        plt = pyplot()
        names = list(dict.fromkeys(r["corpus"] for r in rows))
        who = [RS, RS_NOJSON, RS_PY, SHARE, CHUNKS]
        fig, ax = plt.subplots(figsize=(10.5, 3.6))
        width = 0.8 / len(who)
        for i, w in enumerate(who):
            for j, n in enumerate(names):
                ts = [float(r["seconds"]) for r in rows if r["corpus"] == n and r["contender"] == w]
                x = j + (i - (len(who) - 1) / 2) * width
                med = statistics.median(ts)
                ax.bar(x, med, width, color=f"C{i}", label=w if j == 0 else None)
                ax.vlines(x, min(ts), max(ts), color="k", lw=1)
                ax.text(x, med, f"{med:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("seconds (bar: median, line: min-max)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    return plot


def main() -> int:
    ap = parser(__doc__, mb=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--serial-check", action="store_true",
                    help="also compare with a serial Counter (always with --quick)")
    a = ap.parse_args()
    mb, repeat = (10.0, 1) if a.quick else (a.mb, a.repeat)
    corpora = []
    try:
        real = real_corpus(mb)
        print(describe(real))
        corpora.append(("real text", real))
    except Unavailable as exc:  # e.g. CI off Debian: say so, measure the rest
        print(f"real text unavailable ({exc}): the generated corpus only")
    corpora.append(("generated", corpus("large", mb)))
    print(f"cli start (rainstorm --help): {cli_start_s():.2f} s")
    print(subprocess.run([*rainstorm_cmd(), "--version"], capture_output=True, text=True,
                         timeout=60).stdout.strip())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rs-cli-") as tmp:
        for name, files in corpora:
            serial = reference(files) if a.quick or a.serial_check else None
            rows += measure(name, files, repeat, serial, Path(tmp))
    status = finish("cli_path", rows, a.out, plot_to(
        rows, f"rainstorm run … --workers 2 --json vs Pool(2) word count, {mb:g} MB, "
              f"{repeat} repeats, {os.cpu_count()} cores"))
    for line in summarize(rows):
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
