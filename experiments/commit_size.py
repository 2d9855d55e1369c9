"""Why a worker does not combine more input per commit: counting slows as
the Counter outgrows the CPU caches, and real text keeps adding words.

    python experiments/commit_size.py [--quick] [--mb 100] [--entries 2,4,8,16,32] [--repeat 2]

Two measurements, on real English text (experiments/realtext.py; the
generated corpus of common.corpus where it cannot be built, and always with
--quick):

* ``counter`` rows: the corpus cut into 1 MiB chunks, split into words
  once; then the words of the first k chunks counted into one Counter
  (best of 3): nanoseconds per word, and the Counter's keys, for k = 1, 2,
  4, ... (k = 8 is what one commit of the default 8 splits of 1 MiB counts
  into one delta).  The distinct words of a k-chunk delta are what a commit
  partitions, encodes and folds.
* ``run`` rows: ``rainstorm run examples/wordcount.yaml --workers 2 --json >
  file --set settings.batch_entries=N`` for each N, timed end to end (wall
  and the CPU of the command and every process it started, from
  getrusage), every N once per repeat in a rotating order; the median per N.
  Each result must equal a Counter of the corpus (exit 1 otherwise).

Writes experiments/results/commit_size.csv and .png.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, corpus, finish, parser, pyplot, reference  # noqa: E402
from realtext import Unavailable, real_corpus  # noqa: E402

CHUNK = 1 << 20


def counter_rows(paths: list[Path], kind: str, most: int) -> list[dict[str, Any]]:
    """ns per word counted into one Counter over the first k chunks."""
    words: list[list[str]] = []
    for p in paths:
        data = p.read_bytes()
        for i in range(0, len(data), CHUNK):
            words.append(data[i:i + CHUNK].decode("utf-8", "replace").split())
            if len(words) >= most:
                break
        if len(words) >= most:
            break
    rows, k = [], 1
    while k <= len(words):
        best, keys = float("inf"), 0
        for _ in range(3):
            c: Counter[str] = Counter()
            t = time.perf_counter()
            for w in words[:k]:
                c.update(w)
            best = min(best, time.perf_counter() - t)
            keys = len(c)
        n = sum(len(w) for w in words[:k])
        rows.append({"kind": kind, "measure": "counter", "chunks_or_entries": k, "keys": keys,
                     "ns_per_word": round(1e9 * best / n, 1), "wall_s": "", "cpu_s": "",
                     "correct": True})
        k *= 2
    return rows


def run_once(paths: list[Path], entries: int, tmp: Path) -> tuple[float, float, Counter[str]]:
    """(wall s, CPU s of the command and its children, result) of one run."""
    out = tmp / "out.json"
    cmd = [sys.executable, "-m", "rainstorm", "run", str(ROOT / "examples" / "wordcount.yaml"),
           "--input", str(paths[0].parent / "*.txt"), "--workers", "2", "--json",
           "--set", f"settings.batch_entries={entries}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    with out.open("wb") as fh:
        res = subprocess.run(cmd, stdout=fh, stderr=subprocess.PIPE, cwd=tmp, timeout=1200,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if res.returncode != 0:
        print(f"run failed (exit {res.returncode}): {res.stderr.decode()[-300:]}",
              file=sys.stderr)
        return wall, cpu, Counter()
    return wall, cpu, Counter(json.loads(out.read_text()))


def run_rows(paths: list[Path], kind: str, entries: list[int], repeat: int
             ) -> list[dict[str, Any]]:
    ref = reference(paths)
    got: dict[int, list[tuple[float, float, bool]]] = {n: [] for n in entries}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeat):
            shift = rep % len(entries)
            for n in entries[shift:] + entries[:shift]:
                wall, cpu, result = run_once(paths, n, Path(tmp))
                got[n].append((wall, cpu, result == ref))
                print(f"  batch_entries={n}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    return [{"kind": kind, "measure": "run", "chunks_or_entries": n, "keys": len(ref),
             "ns_per_word": "",
             "wall_s": round(statistics.median(w for w, _, _ in got[n]), 2),
             "cpu_s": round(statistics.median(c for _, c, _ in got[n]), 2),
             "correct": all(ok for _, _, ok in got[n])} for n in entries]


def main() -> int:
    ap = parser(__doc__, mb=100)
    ap.add_argument("--entries", default="2,4,8,16,32", help="batch_entries values to run")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    mb = 5.0 if args.quick else args.mb
    entries = [2, 8] if args.quick else [int(x) for x in args.entries.split(",")]
    repeat = 1 if args.quick else args.repeat
    kind = "generated"
    paths = corpus("large", mb)
    if not args.quick:
        try:
            paths, kind = real_corpus(mb), "real text"
        except Unavailable as exc:
            print(f"real text unavailable ({exc}): the generated corpus only", file=sys.stderr)
    rows = counter_rows(paths, kind, 4 if args.quick else 64)
    rows += run_rows(paths, kind, entries, repeat)
    return finish("commit_size", rows, args.out, lambda p: plot(rows, p))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    cnt = [r for r in rows if r["measure"] == "counter"]
    a.plot([r["chunks_or_entries"] for r in cnt], [r["ns_per_word"] for r in cnt], "o-")
    for r in cnt:
        a.annotate(f"{r['keys'] // 1000}k keys", (r["chunks_or_entries"], r["ns_per_word"]),
                   fontsize=7, xytext=(3, -10), textcoords="offset points")
    a.set_xscale("log", base=2)
    a.set_xlabel("1 MiB chunks counted into one Counter")
    a.set_ylabel("ns per word")
    a.set_title(f"Counter.update ({cnt[0]['kind'] if cnt else ''})", fontsize=9)
    run = [r for r in rows if r["measure"] == "run"]
    xs = [r["chunks_or_entries"] for r in run]
    b.plot(xs, [r["wall_s"] for r in run], "o-", label="wall s")
    b.plot(xs, [r["cpu_s"] for r in run], "s--", label="CPU s (all processes)")
    b.set_xscale("log", base=2)
    b.set_xlabel("settings.batch_entries (1 MiB splits per commit)")
    b.set_title("rainstorm run --workers 2 --json > file", fontsize=9)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
