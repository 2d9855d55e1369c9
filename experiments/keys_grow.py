"""MapReduce as the number of keys grows: `rainstorm mapreduce` against
PySpark local[2] (standing in for Hadoop, which cannot be installed here) and
serial Python (collections.Counter), on the same files, side by side.

(a) word count over ``--mb`` of generated text (tests.ops:wc_map/wc_reduce);
(b) URL frequency over access-log lines (examples.mr.urls:count_map/
    count_reduce) as the number of distinct URLs grows 10^3 ... 10^7, at a
    fixed input of ``--lines`` lines (a point with more distinct URLs than
    that needs one line per URL: its input is ``distinct`` lines, see the
    ``lines`` column).

rainstorm runs as users type it (`python -m rainstorm mapreduce ... --workers 2`,
embedded server included); PySpark's job time excludes creating its
SparkSession (``startup_s``, reported apart).  Every output is checked:
rainstorm's and Spark's parts must each be sorted by key, no key in two
parts, and their content equal to the counts the generator knows (URLs) or
to a Counter over the files (words).

    python experiments/keys_grow.py [--quick] [--mb 100] [--lines 1000000]
        [--distinct 1e3,1e4,1e5,1e6,1e7] [--repeat 3] [--spark-python PY]

PySpark is found as --spark-python, $SPARK_PYTHON, this Python, or
data/spark-venv/bin/python (``python3 -m venv data/spark-venv &&
data/spark-venv/bin/pip install pyspark``; Java from `apt-get install
default-jre-headless`).  Without it its rows say why; --quick skips it unless
--spark-python is given (its start-up alone would exceed the 60 s).  Writes
experiments/results/keys_grow.{csv,png}.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import DATA, ROOT, finish, parser, pyplot

from rainstorm.apps.mapreduce import SUM_COMBINER
from rainstorm.samples import write_corpus

SECTIONS = ["blog", "docs", "shop", "api/v1", "static/img", "news", "about", "item"]
STEP = 7919  # a prime: line i requests URL (i * STEP) % distinct, a permutation per cycle
FILES = 4
MR_TIMEOUT_S = 1800
URL_RE = re.compile(r"^/[a-z/0-9]+/page-(\d+)\.html$")
# a reducer commits its partition's output in one call (20 MiB at most: the
# library's cap), ~35-45 bytes a URL: 2 reducers up to 10^6 URLs, then one more
# per 500,000 (the same number for PySpark's reduceByKey, so both write as
# many parts)
KEYS_PER_REDUCER = 500_000


def reducers(distinct: int) -> int:
    return max(2, -(-distinct // KEYS_PER_REDUCER))


# ---- inputs and their known answers ------------------------------------------------

def url_of(j: int) -> str:
    return f"/{SECTIONS[j & 7]}/page-{j}.html"


def url_corpus(lines: int, distinct: int) -> Path:
    """``lines`` access-log lines over ``FILES`` files, exactly ``distinct``
    URLs (each ``lines // distinct`` or one more times).  Cached under data/."""
    d = DATA / f"urls-{lines}-{distinct}"
    if (d / ".done").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    per = -(-lines // FILES)
    for f in range(FILES):
        with (d / f"part-{f:03d}.log").open("w", encoding="utf-8") as fh:
            buf = []
            for i in range(f * per, min(lines, (f + 1) * per)):
                buf.append(f"10.{i & 255}.{(i >> 8) & 255}.{(i >> 16) & 255} - - "
                           f'[23/Nov/2026:10:00:00 +0000] "GET {url_of(i * STEP % distinct)} '
                           f'HTTP/1.1" 200 {1000 + i % 9000}\n')
                if len(buf) == 100_000:
                    fh.write("".join(buf))
                    buf.clear()
            fh.write("".join(buf))
    (d / ".done").write_text("ok")
    return d


def url_answer(lines: int, distinct: int) -> Callable[[str, int], bool]:
    """Whether (url, count) is right, by arithmetic (no pass over the files):
    URL j is requested by the lines i = j * STEP^-1 (mod distinct)."""
    inv = pow(STEP, -1, distinct)

    def ok(url: str, n: int) -> bool:
        m = URL_RE.match(url)
        if not m or url != url_of(int(m.group(1))) or int(m.group(1)) >= distinct:
            return False
        first = int(m.group(1)) * inv % distinct
        return n == lines // distinct + (1 if first < lines % distinct else 0)
    return ok


# ---- the contenders ------------------------------------------------------------------

def serial_words(files: list[Path], out: Path) -> float:
    t = time.perf_counter()
    c: Counter[str] = Counter()
    for f in files:
        c.update(f.read_bytes().decode("utf-8", "replace").split())
    write_part(c, out)
    return time.perf_counter() - t


def serial_urls(files: list[Path], out: Path) -> float:
    t = time.perf_counter()
    c: Counter[str] = Counter()
    for f in files:
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    c[line.split('"', 2)[1].split()[1]] += 1
                except IndexError:
                    pass
    write_part(c, out)
    return time.perf_counter() - t


def write_part(c: Counter[str], out: Path) -> None:
    out.mkdir()
    (out / "part-00000").write_text("".join(f"{k}\t{v}\n" for k, v in sorted(c.items())),
                                    encoding="utf-8")


def rainstorm_mr(mapper: str, reducer: str, module: str, glob: str, out: Path,
                 combiner: str, parts: int = 2) -> dict[str, float]:
    """The CLI as users type it, with a map-side combiner (PySpark's
    reduceByKey combines on the map side by itself, as Hadoop does with a
    combiner); wall time, and map/reduce times from its report line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "rainstorm", "mapreduce", "--mapper", mapper,
                          "--reducer", reducer, "--combiner", combiner,
                          "--input", glob, "--output", str(out),
                          "--workers", "2", "--partitions", str(parts), "--allow-module", module],
                         cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=MR_TIMEOUT_S)
    wall = time.perf_counter() - t
    m = re.search(r"map ([\d.]+) s .*reduce ([\d.]+) s", res.stderr)
    if res.returncode or not m:
        raise RuntimeError(f"rainstorm mapreduce failed: {res.stderr.strip()[-300:]}")
    job = float(m.group(1)) + float(m.group(2))
    return {"seconds": job, "wall_s": wall, "startup_s": wall - job,
            "map_s": float(m.group(1)), "reduce_s": float(m.group(2))}


def spark_mr(python: str, job: str, inp: str, out: Path, parts: int = 2) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        js = Path(d) / "out.json"
        t = time.perf_counter()
        res = subprocess.run([python, str(ROOT / "experiments" / "spark_jobs.py"), job, inp,
                              str(out), str(js), str(parts)], capture_output=True, text=True,
                             timeout=MR_TIMEOUT_S)
        wall = time.perf_counter() - t
        if res.returncode:
            raise RuntimeError(f"spark failed: {res.stderr.strip()[-300:]}")
        data = json.loads(js.read_text())
    return {"seconds": float(data["seconds"]), "wall_s": wall,
            "startup_s": float(data["startup_s"])}


def find_spark(explicit: str | None) -> tuple[str | None, str]:
    """(a Python with pyspark, '') or (None, why not)."""
    if shutil.which("java") is None:
        return None, "no java on PATH (apt-get install default-jre-headless)"
    for py in (explicit, os.environ.get("SPARK_PYTHON"), sys.executable,
               str(ROOT / "data" / "spark-venv" / "bin" / "python")):
        if py and Path(py).exists() and subprocess.run(
                [py, "-c", "import pyspark"], capture_output=True).returncode == 0:
            return py, ""
    return None, ("pyspark not installed (python3 -m venv data/spark-venv && "
                  "data/spark-venv/bin/pip install pyspark)")


# ---- checking the parts -----------------------------------------------------------

def read_parts(out: Path) -> tuple[dict[str, int], str]:
    """(content, '' or what breaks Hadoop's output rules)."""
    got: dict[str, int] = {}
    parts = sorted(p for p in out.iterdir() if p.name.startswith("part-"))
    if not parts:
        return got, "no part files"
    for p in parts:
        keys = []
        for line in p.read_text(encoding="utf-8").splitlines():
            k, n = line.rsplit("\t", 1)
            if k in got:
                return got, f"key {k!r} in two parts or twice"
            got[k] = int(n)
            keys.append(k)
        if keys != sorted(keys):
            return got, f"{p.name} is not sorted by key"
    return got, ""


def check_words(out: Path, ref: Counter[str]) -> bool:
    got, bad = read_parts(out)
    if bad:
        print(f"  {out.name}: {bad}", file=sys.stderr)
    return not bad and got == ref


def check_urls(out: Path, lines: int, distinct: int) -> bool:
    got, bad = read_parts(out)
    ok = url_answer(lines, distinct)
    wrong = [u for u, n in got.items() if not ok(u, n)]
    if bad or wrong or len(got) != distinct:
        print(f"  {out.name}: {bad} {len(wrong)} wrong counts, {len(got)} of {distinct} URLs",
              file=sys.stderr)
        return False
    return True


# ---- the experiment -------------------------------------------------------------------

def median_row(base: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = dict(base)
    secs = [r["seconds"] for r in runs if "seconds" in r]
    row["repeats"] = len(secs)
    for k in ("seconds", "wall_s", "startup_s"):
        vals = [r[k] for r in runs if k in r]
        row[f"{k}_median" if k == "seconds" else k] = round(statistics.median(vals), 2) \
            if vals else ""
        if k == "seconds":
            row["seconds_min"] = round(min(vals), 2) if vals else ""
            row["seconds_max"] = round(max(vals), 2) if vals else ""
    row["note"] = "; ".join(sorted({r["note"] for r in runs if r.get("note")}))
    row["failed_loudly"] = bool(row["note"]) and not secs
    row["correct"] = bool(secs) and all(r["correct"] for r in runs if "seconds" in r)
    return row


# the same job with the built-in summing combiner (Hadoop's LongSumReducer as
# a combiner; what PySpark's reduceByKey(add) does)
SUMMED = "rainstorm mapreduce --combiner sum, 2 workers"


def point(workload: str, distinct: int | str, lines: int, mb: float, inp: Path,
          spark_py: str | None, why_no_spark: str, repeat: int) -> list[dict[str, Any]]:
    """Every contender ``repeat`` times, interleaved (one run each per round)."""
    systems = ["serial Python (Counter)", "rainstorm mapreduce, 2 workers",
               SUMMED, "PySpark local[2]"]
    if workload == "wordcount":
        files = sorted(inp.glob("part-*.txt"))
        ref = Counter[str]()
        for f in files:
            ref.update(f.read_bytes().decode("utf-8", "replace").split())
    else:
        files = sorted(inp.glob("part-*.log"))
    parts = reducers(distinct) if isinstance(distinct, int) else 2
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for _ in range(repeat):
        for s in systems:
            with tempfile.TemporaryDirectory(dir=DATA) as d:
                out = Path(d) / "out"
                try:
                    if s.startswith("serial"):
                        fn = serial_words if workload == "wordcount" else serial_urls
                        r: dict[str, Any] = {"seconds": fn(files, out)}
                        r["wall_s"] = r["seconds"]
                    elif s.startswith("rainstorm"):
                        summed = s == SUMMED
                        r = (rainstorm_mr("tests.ops:wc_map", "tests.ops:wc_reduce", "tests",
                                          str(inp / "part-*.txt"), out,
                                          SUM_COMBINER if summed else "tests.ops:wc_combine")
                             if workload == "wordcount" else
                             rainstorm_mr("examples.mr.urls:count_map",
                                          "examples.mr.urls:count_reduce", "examples.mr.urls",
                                          str(inp / "part-*.log"), out,
                                          SUM_COMBINER if summed else
                                          "examples.mr.urls:count_combine", parts))
                    elif spark_py is None:
                        runs[s].append({"note": why_no_spark, "correct": False})
                        continue
                    else:
                        r = spark_mr(spark_py, "mr-words" if workload == "wordcount"
                                     else "mr-urls", str(inp), out, parts)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    runs[s].append({"note": str(exc).splitlines()[0][:200], "correct": False})
                    continue
                r["correct"] = (check_words(out, ref) if workload == "wordcount"
                                else check_urls(out, lines, int(distinct)))
                runs[s].append(r)
                print(f"  {workload} {distinct} {s}: {r['seconds']:.2f} s "
                      f"(wall {r['wall_s']:.2f} s) correct={r['correct']}", flush=True)
    return [median_row({"workload": workload, "distinct": distinct, "lines": lines,
                        "input_mb": round(mb, 1), "reducers": parts, "system": s}, runs[s])
            for s in systems]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 2]})
    wc = [r for r in rows if r["workload"] == "wordcount" and r["seconds_median"] != ""]
    names = [r["system"] for r in wc]
    med = [r["seconds_median"] for r in wc]
    err = [[m - r["seconds_min"] for m, r in zip(med, wc, strict=True)],
           [r["seconds_max"] - m for m, r in zip(med, wc, strict=True)]]
    a1.barh(names, med, xerr=err, color=["#3a7" if "rainstorm" in n else "#888" for n in names])
    for y, v in enumerate(med):
        a1.text(v, y, f" {v:.1f} s", va="center", fontsize=8)
    a1.invert_yaxis()
    a1.set_xlim(0, max(med, default=1) * 1.4)
    a1.set_xlabel("job seconds, median (min-max); start-up excluded")
    a1.set_title(f"word count, {wc[0]['input_mb'] if wc else '?'} MB")
    urls = [r for r in rows if r["workload"] == "urls"]
    for s in dict.fromkeys(r["system"] for r in urls):
        pts = [r for r in urls if r["system"] == s and r["seconds_median"] != ""]
        xs = [int(r["distinct"]) for r in pts]
        med = [r["seconds_median"] for r in pts]
        a2.errorbar(xs, med, yerr=[[m - r["seconds_min"] for m, r in zip(med, pts, strict=True)],
                                   [r["seconds_max"] - m for m, r in zip(med, pts, strict=True)]],
                    marker="o", capsize=3, label=s)
    bigger: dict[int, dict[str, Any]] = {}  # one label per point with more lines
    for r in urls:
        if int(r["lines"]) != int(urls[0]["lines"]) and r["seconds_median"] != "":
            top = bigger.setdefault(int(r["distinct"]), r)
            if r["seconds_median"] > top["seconds_median"]:
                bigger[int(r["distinct"])] = r
    for d, r in bigger.items():
        a2.annotate(f"{int(r['lines']) / 1e6:g}M lines, {r['reducers']} reducers",
                    (d, r["seconds_median"]), textcoords="offset points", xytext=(-60, 8),
                    fontsize=7)
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("distinct URLs")
    a2.set_ylabel("job seconds (median)")
    a2.set_title(f"URL frequency, {int(urls[0]['lines']) / 1e6:g}M log lines"
                 if urls else "URL frequency")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def findings(rows: list[dict[str, Any]]) -> None:
    def med(workload: str, distinct: Any, system: str) -> float | None:
        for r in rows:
            if (r["workload"], str(r["distinct"])) == (workload, str(distinct)) and \
                    r["system"].startswith(system):
                return r["seconds_median"] or None
        return None
    for w, ds in (("wordcount", ["-"]),
                  ("urls", [r["distinct"] for r in rows if r["workload"] == "urls"])):
        for d in dict.fromkeys(ds):
            sp, se = med(w, d, "PySpark"), med(w, d, "serial")
            parts = [f"{w} {d}:"]
            for tag, name in (("rainstorm", "rainstorm mapreduce, 2"),
                              ("rainstorm --combiner sum", SUMMED)):
                rs = med(w, d, name)
                if rs and sp:
                    parts.append(f"{tag}/PySpark {rs / sp:.2f}x")
                if rs and se:
                    parts.append(f"{tag}/serial {rs / se:.2f}x")
            print(" ".join(parts))
    startups(rows)


def startups(rows: list[dict[str, Any]]) -> None:
    """The start-up medians, and every failed row with its reason."""
    st = [r["startup_s"] for r in rows if r["system"].startswith("PySpark") and r["startup_s"]]
    if st:
        print(f"PySpark session start-up (not in its job time): median "
              f"{statistics.median(st):.1f} s")
    st = [r["startup_s"] for r in rows if r["system"].startswith("rainstorm") and r["startup_s"]]
    if st:
        print(f"rainstorm CLI outside map+reduce (start, server, part files): median "
              f"{statistics.median(st):.1f} s")
    for r in rows:
        if r["note"]:
            print(f"{r['workload']} {r['distinct']} {r['system']}: FAILED: {r['note']}")


def main() -> int:
    ap = parser(__doc__, 100.0)
    ap.add_argument("--lines", type=int, default=1_000_000, help="URL input lines (fixed)")
    ap.add_argument("--distinct", default="1e3,1e4,1e5,1e6,1e7")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--big-repeat", type=int, default=1,
                    help="repeats of the points whose input exceeds --lines")
    ap.add_argument("--spark-python", default=None)
    a = ap.parse_args()
    mb, lines, repeat = (2.0, 30_000, 1) if a.quick else (a.mb, a.lines, a.repeat)
    ladder = [1000, 10_000, 100_000] if a.quick else [int(float(x)) for x in
                                                      a.distinct.split(",")]
    spark_py, why = find_spark(a.spark_python)
    if a.quick and spark_py and not a.spark_python:
        spark_py, why = None, "--quick: PySpark skipped (its session alone takes 10-25 s here)"
    if spark_py is None:
        print(f"PySpark skipped: {why}")
    DATA.mkdir(parents=True, exist_ok=True)
    rows = []
    wc_dir = DATA / f"kg-wc-{mb:g}mb"
    files = write_corpus(wc_dir, mb, files=FILES)
    wc_mb = sum(f.stat().st_size for f in files) / 1e6
    rows += point("wordcount", "-", 0, wc_mb, wc_dir, spark_py, why, repeat)
    for distinct in ladder:
        n = max(lines, distinct)
        d = url_corpus(n, distinct)
        size = sum(f.stat().st_size for f in d.glob("part-*.log")) / 1e6
        rows += point("urls", distinct, n, size, d, spark_py, why,
                      repeat if n == lines else min(repeat, a.big_repeat))
    findings(rows)
    return finish("keys_grow", rows, a.out, lambda p: plot(rows, p))


if __name__ == "__main__":
    sys.exit(main())
