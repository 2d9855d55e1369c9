"""What a dataflow graph costs and saves, on the path users type.

    python experiments/graph_overhead.py [--quick] [--mb 50] [--repeat 2]

Each contender is ``rainstorm run SPEC --workers 2 --json > out.json`` as a
subprocess (interpreter, embedded server, job(s), output all timed), on real
English text (experiments/realtext.py) and on the generated corpus
(common.corpus), in an order rotating from repeat to repeat:

* ``wordcount job``: one job, flat_map(split_words) -> count;
* ``wordcount graph``: the same as a graph of two steps, ``words`` ->
  ``counts``: every word crosses a step boundary (copied by the
  coordinator from one job's output stream into the next one's input);
* ``two jobs``: word count, then a count of word lengths, as two runs (the
  way to get two outputs without a graph: the split runs twice);
* ``branch graph``: one graph, ``words`` read by ``counts`` and ``lens``
  (the split runs once; its records are copied to both readers).

Every result is checked against collections.Counter over the same files:
exit 1 on a wrong one.  Writes experiments/results/graph_overhead.csv/.png.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_path import rainstorm_cmd  # noqa: E402
from common import corpus, finish, parser, pyplot  # noqa: E402
from realtext import Unavailable, describe, real_corpus  # noqa: E402

JOB, GRAPH, TWO, BRANCH = "wordcount job", "wordcount graph", "two jobs", "branch graph"
SPLIT = [{"op": "flat_map", "fn": "split_words"}]


def specs(files: list[Path], tmp: Path) -> dict[str, list[Path]]:
    """Each contender's spec files (two for ``two jobs``)."""
    src = {"type": "text", "paths": [str(f) for f in files]}
    docs: dict[str, list[dict[str, Any]]] = {
        JOB: [{"name": "wc", "source": src, "pipeline": [*SPLIT, {"op": "count"}]}],
        GRAPH: [{"name": "wcg", "steps": {
            "words": {"source": src, "pipeline": SPLIT},
            "counts": {"input": "words", "pipeline": [{"op": "count"}]}}}],
        TWO: [{"name": "wc", "source": src, "pipeline": [*SPLIT, {"op": "count"}]},
              {"name": "lens", "source": src,
               "pipeline": [*SPLIT, {"op": "map", "fn": "length"}, {"op": "count"}]}],
        BRANCH: [{"name": "br", "steps": {
            "words": {"source": src, "pipeline": SPLIT},
            "counts": {"input": "words", "pipeline": [{"op": "count"}]},
            "lens": {"input": "words", "pipeline": [{"op": "map", "fn": "length"},
                                                    {"op": "count"}]}}}],
    }
    out: dict[str, list[Path]] = {}
    for who, docs_ in docs.items():
        out[who] = []
        for i, doc in enumerate(docs_):
            p = tmp / f"{who.replace(' ', '_')}{i}.yaml"
            p.write_text(yaml.safe_dump(doc))
            out[who].append(p)
    return out


def run(spec: Path, tmp: Path) -> tuple[float, Any]:
    out = tmp / "out.json"
    t = time.perf_counter()
    with out.open("wb") as fh:
        res = subprocess.run([*rainstorm_cmd(), "run", str(spec), "--workers", "2", "--json",
                              "--no-progress"], stdout=fh, stderr=subprocess.PIPE, cwd=tmp,
                             timeout=1800)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        print(f"{spec.name} failed: {res.stderr.decode(errors='replace')[-300:]}",
              file=sys.stderr)
        return wall, None
    return wall, json.loads(out.read_text())


def measure(name: str, files: list[Path], repeat: int, tmp: Path) -> list[dict[str, Any]]:
    words: Counter[str] = Counter()
    for f in files:
        words.update(f.read_bytes().decode("utf-8", "replace").split())
    lens: Counter[str] = Counter()
    for w, n in words.items():
        lens[str(len(w))] += n
    want_words, want_lens = dict(words), dict(lens)
    mb = sum(f.stat().st_size for f in files) / 1e6
    spec_files = specs(files, tmp)
    order = [JOB, GRAPH, TWO, BRANCH]
    rows = []
    for rep in range(repeat):
        turn = order[rep % 4:] + order[:rep % 4]
        for who in turn:
            seconds, ok = 0.0, True
            for i, spec in enumerate(spec_files[who]):
                wall, got = run(spec, tmp)
                seconds += wall
                if who in (JOB, GRAPH):
                    ok = ok and got is not None and (got if who == JOB else got.get("counts")
                                                     ) == want_words
                elif who == TWO:
                    ok = ok and got == (want_words if i == 0 else want_lens)
                else:
                    ok = ok and got is not None and got.get("counts") == want_words \
                        and got.get("lens") == want_lens
            rows.append({"corpus": name, "mb": round(mb, 1), "repeat": rep, "contender": who,
                         "seconds": round(seconds, 3), "correct": ok})
            print(f"{name} repeat {rep}: {who} {seconds:.2f} s correct={ok}", flush=True)
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for name in dict.fromkeys(r["corpus"] for r in rows):
        def med(who: str, name: str = name) -> float:
            return statistics.median(float(r["seconds"]) for r in rows
                                     if r["corpus"] == name and r["contender"] == who)
        lines.append(f"{name}: step boundary {med(GRAPH) / med(JOB):.2f}x of one job "
                     f"({med(GRAPH):.2f} vs {med(JOB):.2f} s); branch graph "
                     f"{med(BRANCH) / med(TWO):.2f}x of two jobs ({med(BRANCH):.2f} vs "
                     f"{med(TWO):.2f} s)")
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    names = list(dict.fromkeys(r["corpus"] for r in rows))
    order = [JOB, GRAPH, TWO, BRANCH]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(order)
    for i, who in enumerate(order):
        vals = [statistics.median(float(r["seconds"]) for r in rows
                                  if r["corpus"] == n and r["contender"] == who) for n in names]
        ax.bar([j + i * width for j in range(len(names))], vals, width, label=who)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax.set_ylabel("seconds (rainstorm run ... --json > file, median)")
    ax.set_title("Dataflow graphs: a step boundary, and a branch against two jobs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = parser(__doc__, mb=50)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    mb, repeat = (1.0, 1) if args.quick else (args.mb, args.repeat)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as td:
        try:
            real = real_corpus(mb)
            print(describe(real))
            rows += measure("real text", real, repeat, Path(td))
        except Unavailable as exc:
            print(f"real text unavailable here ({exc}); generated corpus only")
        rows += measure("generated", corpus("large", mb), repeat, Path(td))
    for line in summarize(rows):
        print(line)
    return finish("graph_overhead", rows, args.out, lambda p: plot(rows, p))


if __name__ == "__main__":
    sys.exit(main())
