"""Per-word updates as soon as a word is read, against one update per file
(word-count lab 2).

The same words, counted four ways by rainstorm (2 workers, an embedded
Valkey started before the timer), each result compared with
``collections.Counter``:

* **per word**: every word is its own record of a Redis stream (one XADD
  per word, all appended before the job starts), read one record per entry
  (``batch_records: 1``) and committed one entry at a time
  (``batch_entries: 1``): the shared count changes once per word;
* **per word, batched**: the same stream, 100 records per entry, 8 entries
  per commit (the streaming defaults);
* **per 1 kB**: the text files as a batch job, 1 kB entries, one commit each;
* **per file**: the text files as a batch job, one entry per file
  (``batch_bytes`` 16 MB, the cap), one commit per file.

A streaming job never ends by itself: it is stopped (as Ctrl-C does) once
every word is committed, and its final counts are the result.  Measured:
words per second, the number of updates (commits), the time to the first
visible update, and the mean time at which a word's count became visible
(from the job's progress, sampled every ~0.1 s; every word is there at
t = 0).  The latency of one record through a live streaming job, at fixed
input rates, is latency.py's (p50 ~1.2 ms at 1k records/s).

    python experiments/per_word_updates.py [--quick] [--words 200000] [--files 8] [--repeat 3]

Writes experiments/results/per_word_updates.{csv,png}.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import DATA, finish, parser, pyplot, spread, timed_run

from rainstorm.connection import connect
from rainstorm.local.run import LocalRun
from rainstorm.samples import generate_lines
from rainstorm.spec import JobSpec, parse_spec

COUNT = [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}]


def modes() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [("per word", {"type": "stream", "key": "words", "batch_records": 1},
             {"batch_entries": 1, "max_backlog": 1000}),
            ("per word, batched (100/entry)", {"type": "stream", "key": "words",
                                               "batch_records": 100}, {"max_backlog": 1000}),
            ("per 1 kB", {"type": "text", "batch_bytes": 1024}, {"batch_entries": 1}),
            ("per file", {"type": "text", "batch_bytes": 16 << 20}, {"batch_entries": 1})]


def inputs(words: int, n_files: int) -> tuple[list[Path], list[str]]:
    d = DATA / f"pwu-{words}-{n_files}"
    files = [d / f"f{i:02d}.txt" for i in range(n_files)]
    if not (d / ".done").exists():
        d.mkdir(parents=True, exist_ok=True)
        lines, total = [], 0
        for line in generate_lines(words * 8, seed=5):
            n = len(line.split())
            if total + n > words:
                break
            lines.append(line)
            total += n
        per = -(-len(lines) // n_files)
        for i, f in enumerate(files):
            f.write_text("\n".join(lines[i * per:(i + 1) * per]) + "\n", encoding="utf-8")
        (d / ".done").write_text("ok")
    return files, [w for f in files for w in f.read_text(encoding="utf-8").split()]


class Visible:
    """Progress samples: when did each fraction of the records become visible?"""

    def __init__(self, stop_at: int | None) -> None:
        self.t0 = time.perf_counter()
        self.samples: list[tuple[float, int]] = []
        self.stop_at = stop_at
        self.commits = 0

    def __call__(self, status: Any) -> None:
        s = status.stages[0]
        self.commits = s.commits
        self.samples.append((time.perf_counter() - self.t0, s.records_in))
        if self.stop_at is not None and s.records_in >= self.stop_at:
            raise KeyboardInterrupt  # stops the streaming job, as Ctrl-C does

    def first_and_mean(self) -> tuple[float, float]:
        total = max((n for _t, n in self.samples), default=0)
        if not total:
            return float("nan"), float("nan")
        first = next(t for t, n in self.samples if n > 0)
        mean, prev = 0.0, 0
        for t, n in self.samples:
            mean += t * (n - prev)
            prev = n
        return first, mean / total


def one_run(env: LocalRun, name: str, source: dict[str, Any], settings: dict[str, Any],
            files: list[Path], words: list[str], ref: Counter[str]) -> dict[str, Any]:
    spec: JobSpec = parse_spec({"name": "pwu", "source": source, "pipeline": COUNT,
                                "settings": settings})
    streaming = source["type"] == "stream"
    if streaming:
        r = connect(env.url)
        r.delete("words")
        for i in range(0, len(words), 10_000):
            pipe = r.pipeline(transaction=False)
            for w in words[i:i + 10_000]:
                pipe.xadd("words", {"line": w})
            pipe.execute()
        r.close()
    seen = Visible(len(words) if streaming else None)
    _rep, secs, ok, err = timed_run(env, spec, [] if streaming else files, ref,
                                    on_progress=seen, timeout_s=600)
    if err:
        print(f"{name}: {err}", file=sys.stderr)
    first, mean = seen.first_and_mean()
    updates = _rep.status.stages[0].commits if _rep else seen.commits
    return {"seconds": secs, "updates": updates, "first": first, "mean": mean, "ok": ok}


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--words", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    n_words, repeat = (20_000, 1) if a.quick else (a.words, a.repeat)
    files, words = inputs(n_words, a.files)
    ref = Counter(words)
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(repeat):
        for name, source, settings in modes():
            with LocalRun() as env:
                runs.setdefault(name, []).append(one_run(env, name, source, settings, files,
                                                         words, ref))
    rows = []
    for name, rs in runs.items():
        st = spread("seconds", [r["seconds"] for r in rs])
        rows.append({"mode": name, "words": len(words), "files": len(files), "repeats": repeat,
                     **st, "words_per_s": round(len(words) / st["seconds_median"]),
                     "updates": rs[0]["updates"],
                     **spread("first_visible_s", [r["first"] for r in rs]),
                     **spread("mean_visible_s", [r["mean"] for r in rs]),
                     "correct": all(r["ok"] for r in rs)})
    return finish("per_word_updates", rows, a.out, lambda p: plot(rows, p))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    names = [f"{r['mode']}\n({r['updates']} updates)" for r in rows]
    ax.bar(names, [r["words_per_s"] for r in rows], color="#48c")
    ax.set_ylabel("words per second (median run)")
    ax.set_yscale("log")
    ax.set_title(f"throughput, {rows[0]['words']} words, 2 workers", fontsize=9)
    xs = range(len(rows))
    bx.bar([x - 0.2 for x in xs], [r["first_visible_s_median"] for r in rows], 0.4,
           label="first update visible")
    bx.bar([x + 0.2 for x in xs], [r["mean_visible_s_median"] for r in rows], 0.4,
           label="a word's count visible (mean)")
    bx.set_xticks(list(xs), names)
    bx.set_ylabel("seconds after submit")
    bx.set_yscale("log")
    bx.set_title("when counts become visible (all input present at t=0)", fontsize=9)
    bx.legend(fontsize=8)
    for axis in (ax, bx):
        axis.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
