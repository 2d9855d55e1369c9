"""MapReduce's number of reducers: the old default (2) against the one
`rainstorm mapreduce` picks now without ``--partitions`` (one per 8 MiB of
input, at least 2), on word count and on many distinct keys.

    python experiments/mr_reducers.py [--quick] [--mb 100] [--distinct 700000] [--repeat 3]

Two inputs:
* ``words``: word count over ``--mb`` MB of generated text (4 large files,
  common.corpus);
* ``distinct``: ``--distinct`` distinct 60-byte keys, one per line, shuffled
  into 2 files.  Their state is about the input's size, so 2 reducers
  cannot hold it past ~350,000 keys: each reducer commits its part in one
  call of at most 20 MiB.

Each run is `rainstorm mapreduce` as users type it (its own embedded server,
2 workers, mapper ``tests.ops:wc_map``, ``--combiner sum``), with
``--partitions 2`` or without it (``auto``), and with a Python reducer
(``tests.ops:wc_reduce``) or a program (awk, which needs ``--allow-exec``).
The configurations take turns, ``--repeat`` rounds.  Every output is checked
against collections.Counter over the input: each key once, in the part its
crc32 routes it to, parts sorted.  A run that fails with exit status 3 and
the ``--partitions`` hint is recorded as failed loudly; any other failure,
or a wrong output, makes the script exit 1.

Writes experiments/results/mr_reducers.csv and .png.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ROOT, corpus, finish, parser, positive_int, pyplot, reference  # noqa: E402

AWK_REDUCE = "awk -F'\\t' '{c[$1] += $2} END {for (k in c) print k \"\\t\" c[k]}'"
REDUCERS = {"python": "tests.ops:wc_reduce", "awk": AWK_REDUCE}
PARTITIONS = ("2", "auto")
REPORT = re.compile(r"map ([\d.]+) s \((\d+) keys\), reduce ([\d.]+) s: (\d+) lines in (\d+) parts")
TIMEOUT_S = 1800


def distinct_corpus(n: int) -> list[Path]:
    """``n`` distinct 60-byte keys, one per line, shuffled into 2 files. Cached."""
    d = DATA / f"mr-distinct-{n}"
    paths = [d / f"part-{i}.txt" for i in range(2)]
    if (d / ".done").exists():
        return paths
    d.mkdir(parents=True, exist_ok=True)
    keys = [f"/page/{i:09d}/" + "x" * 45 for i in range(n)]
    random.Random(7).shuffle(keys)
    for i, p in enumerate(paths):
        p.write_text("\n".join(keys[i::2]) + "\n", encoding="utf-8")
    (d / ".done").touch()
    return paths


def read_output(out: Path) -> tuple[Counter[str], str]:
    """The part files as a Counter, and what is wrong with them ('' if nothing)."""
    parts = sorted(out.glob("part-*"))
    got: Counter[str] = Counter()
    for i, p in enumerate(parts):
        lines = p.read_text(encoding="utf-8").splitlines()
        if lines != sorted(lines):
            return got, f"{p.name} is not sorted"
        for line in lines:
            key, n = line.rsplit("\t", 1)
            if zlib.crc32(key.encode()) % len(parts) != i:
                return got, f"{key!r} is in {p.name}, not in its crc32 partition"
            if key in got:
                return got, f"{key!r} is in two reducer calls"
            got[key] = int(n)
    return got, ""


def one_run(inp: list[Path], ref: Counter[str], partitions: str, reducer: str,
            tmp: Path) -> dict[str, Any]:
    out = tmp / f"out-{time.time_ns()}"
    cmd = [sys.executable, "-m", "rainstorm", "mapreduce", "--mapper", "tests.ops:wc_map",
           "--reducer", REDUCERS[reducer], "--combiner", "sum", "--workers", "2",
           "--output", str(out), "--allow-module", "tests",
           *[a for p in inp for a in ("--input", str(p))]]
    if partitions != "auto":
        cmd += ["--partitions", partitions]
    if reducer == "awk":
        cmd.append("--allow-exec")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    wall = time.perf_counter() - t
    row: dict[str, Any] = {"partitions": partitions, "reducer": reducer, "wall_s": round(wall, 2),
                           "parts": "", "map_s": "", "reduce_s": "", "correct": False,
                           "failed_loudly": False, "error": ""}
    last = (res.stderr.strip().splitlines() or [""])[-1]
    m = REPORT.search(last)
    if res.returncode == 3 and "--partitions" in last:
        row.update(failed_loudly=True, error=last[-200:])
        return row
    if res.returncode != 0 or not m:
        row["error"] = f"exit {res.returncode}: {res.stderr.strip()[-300:]}"
        return row
    got, wrong = read_output(out)
    row.update(parts=int(m.group(5)), map_s=float(m.group(1)), reduce_s=float(m.group(3)),
               correct=not wrong and got == ref, error=wrong)
    subprocess.run(["rm", "-rf", str(out)], check=False)
    return row


def main() -> int:
    ap = parser(__doc__, mb=100)
    ap.add_argument("--distinct", type=positive_int, default=700_000,
                    help="distinct keys of the second input")
    ap.add_argument("--repeat", type=positive_int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.mb, args.distinct, args.repeat = 2, 20_000, 1
    inputs: dict[str, list[Path]] = {"words": corpus("large", args.mb),
                                     "distinct": distinct_corpus(args.distinct)}
    refs = {"words": reference(inputs["words"]),
            "distinct": Counter({line: 1 for p in inputs["distinct"]
                                 for line in p.read_text(encoding="utf-8").splitlines()})}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=DATA) as d:
        for rnd in range(args.repeat):
            for name, inp in inputs.items():
                size = sum(p.stat().st_size for p in inp)
                for reducer in REDUCERS:
                    for partitions in PARTITIONS:
                        row = {"round": rnd, "input": name, "mb": round(size / 1e6, 1),
                               "keys": len(refs[name]),
                               **one_run(inp, refs[name], partitions, reducer, Path(d))}
                        print(row, flush=True)
                        rows.append(row)
    findings(rows)
    return finish("mr_reducers", rows, args.out, lambda path: plot(rows, path))


def medians(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], float | None]:
    """Median wall time per (input, reducer, partitions); None where every run failed."""
    out: dict[tuple[str, str, str], float | None] = {}
    for r in rows:
        out.setdefault((r["input"], r["reducer"], r["partitions"]), None)
    for key in out:
        ok = [r["wall_s"] for r in rows if (r["input"], r["reducer"], r["partitions"]) == key
              and r["correct"]]
        out[key] = statistics.median(ok) if ok else None
    return out


def findings(rows: list[dict[str, Any]]) -> None:
    med = medians(rows)
    for (name, reducer, partitions), wall in sorted(med.items()):
        if partitions != "auto":
            continue
        parts = next(r["parts"] for r in rows if (r["input"], r["reducer"], r["partitions"])
                     == (name, reducer, "auto") and r["correct"]) if wall else "-"
        two = med[(name, reducer, "2")]
        print(f"{name}, {reducer} reducer: auto ({parts} reducers) "
              + (f"{wall:.2f} s" if wall else "failed")
              + ", 2 reducers " + (f"{two:.2f} s" if two else "failed loudly")
              + (f" ({wall / two:.2f}x)" if wall and two else ""))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    med = medians(rows)
    labels = sorted({(n, r) for n, r, _ in med})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.38
    for j, partitions in enumerate(PARTITIONS):
        xs = [i + (j - 0.5) * width for i in range(len(labels))]
        ys = [med[(n, r, partitions)] or 0.0 for n, r in labels]
        bars = ax.bar(xs, ys, width, label=f"--partitions {partitions}")
        for x, y, b in zip(xs, ys, bars, strict=True):
            ax.text(x, y, f"{y:.1f}" if y else "failed\n(exit 3)", ha="center",
                    va="bottom", fontsize=8, color=b.get_facecolor())
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([f"{n}\n{r} reducer" for n, r in labels])
    ax.set_ylabel("wall time, median (s)")
    ax.set_title("rainstorm mapreduce: 2 reducers vs one per 8 MiB of input")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
