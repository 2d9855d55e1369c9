"""RainStorm against Spark (and serial Python, Pool(2), Dask) on two
datasets shaped like the seeds', throughput with its spread over repeats.

Datasets, generated deterministically (cached under data/experiments):
* **traffic signs** (examples/gen_signs.py, like Champaign's sign inventory):
  X, Y, OBJECTID, Sign_Type, Sign_Post, Category, Install_Year, Notes;
  11 sign types, 6 post types, 6 categories (uniform), years 1985-2024,
  Notes free text often quoted with commas, ~1 row in 500 malformed;
  ~92 bytes a row (``--signs-rows``, default 500,000: ~46 MB);
* **lyrics** (examples/gen_lyrics.py): id, title, artist, genre, year,
  views, lyrics; 150,000 songs (~53 MB), genres weighted, year skewed to
  recent, views log-normal, 20-80 words of lyrics per song.

Apps (the same on both datasets, as in the seeds' RainStorm lab):
* App 1, filter + project: signs with Sign_Post = Punched Telespar ->
  (OBJECTID, Sign_Type); songs with genre = rock -> (title, artist, views);
* App 2, filter + count per category: signs with Sign_Post = Wood, count
  per Category; songs with genre = pop, count per year;
* and a batch word count over ``--wc-mb`` of generated text in 4 files
  (examples/wordcount.yaml; the peers split on whitespace and count), for
  the head-to-head table of REPORT.md.

Contenders, all checked against a serial Python pass (strict csv.reader
per line, as rainstorm's parse_csv): rainstorm's CLI (`rainstorm run
SPEC --workers 2 --json > file`; its job time, the rest of the command --
interpreter, embedded server, output -- is ``startup_s``), rainstorm's
Dataset API (``read_csv(...).filter(lambda ...)...collect()``, embedded
server and 2 workers included), and peer_apps.py under each peer's Python:
serial, Pool(2), Dask bag (2 processes; data/dask-venv, found
automatically), PySpark local[2] RDD (same per-line parse) and DataFrame
(Spark's CSV reader; lyrics only: it reads the signs' malformed rows
differently).  Peers' start-up (Spark session, Dask import) is reported
apart and not in their seconds.  --quick: small inputs, no Spark or Dask.

    python experiments/rainstorm_vs_spark.py [--quick] [--signs-rows 500000]
        [--lyrics-rows 150000] [--wc-mb 50 | --wc-dir DIR] [--repeat 3]
        [--apps signs1,...,wordcount] [--spark-python PY] [--dask-python PY] [--name NAME]

Writes experiments/results/rainstorm_vs_spark.{csv,png}.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import peer_apps
from cli_path import rainstorm_cmd
from common import DATA, ROOT, corpus, finish, parser, pyplot, spread
from keys_grow import find_spark

from rainstorm import Dataset

sys.path.insert(0, str(ROOT / "examples"))
import gen_lyrics  # noqa: E402
import gen_signs  # noqa: E402

SPEC = """name: {app}
source: {{type: text}}
pipeline:
  - op: flat_map
    fn: parse_csv
    args: {{columns: {cols}, malformed: skip}}
  - {{op: filter, fn: equals, args: {{name: {fcol}, value: "{value}"}}}}
{tail}
"""


def spec_text(app: str) -> str:
    if app == "wordcount":
        return (ROOT / "examples" / "wordcount.yaml").read_text()
    cols, fcol, value, out = peer_apps.APPS[app]
    tail = (f"  - {{op: map, fn: select, args: {{columns: {json.dumps(out)}}}}}"
            if app.endswith("1") else
            f"  - {{op: key_by, fn: field, args: {{name: {out[0]}}}}}\n  - {{op: count}}")
    return SPEC.format(app=app, cols=json.dumps(cols), fcol=fcol, value=value, tail=tail)


def canon(app: str, result: Any) -> Any:
    """Results of every engine in one form: a Counter of row tuples or of keys."""
    if app.endswith("1"):
        return Counter(tuple(str(v) for v in row) for row in result)
    return Counter({str(k): int(v) for k, v in dict(result).items()})


def run_cli(app: str, path: Path, tmp: Path) -> tuple[float, float, Any]:
    spec = tmp / f"{app}.yaml"
    spec.write_text(spec_text(app))
    out = tmp / "out.json"
    t = time.perf_counter()
    with out.open("wb") as fh:
        inp = str(path / "*.txt") if path.is_dir() else str(path)
        res = subprocess.run([*rainstorm_cmd(), "run", str(spec), "--input", inp,
                              "--workers", "2", "--json"], stdout=fh, stderr=subprocess.PIPE,
                             cwd=tmp, timeout=1800)
    wall = time.perf_counter() - t
    err = res.stderr.decode(errors="replace")
    m = re.search(r" in ([0-9.]+) s", err)
    if res.returncode or not m:
        raise RuntimeError(f"rainstorm run failed: {err.strip()[-300:]}")
    return wall, float(m.group(1)), json.loads(out.read_text())


def run_dataset(app: str, path: Path) -> Any:
    if app == "wordcount":
        return dict(Dataset.read_text(str(path / "*.txt")).flat_map(str.split)
                    .count_by_value().collect(workers=2, timeout_s=1800))
    cols, fcol, value, out = peer_apps.APPS[app]
    ds = Dataset.read_csv(str(path), columns=cols).filter(lambda r: r[fcol] == value)
    if app.endswith("1"):
        return ds.map(lambda r: [r[c] for c in out]).collect(workers=2, timeout_s=1800)
    return dict(ds.key_by(lambda r: r[out[0]]).count_by_key().collect(workers=2,
                                                                       timeout_s=1800))


def run_peer(python: str, engine: str, app: str, path: Path, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.json"
        res = subprocess.run([python, str(ROOT / "experiments" / "peer_apps.py"), engine, app,
                              str(path), str(repeat), str(out)], capture_output=True, text=True,
                             timeout=3600)
        if res.returncode:
            raise RuntimeError(f"{engine} failed: {res.stderr.strip()[-300:]}")
        data: dict[str, Any] = json.loads(out.read_text())
    return data


def find_dask(explicit: str | None) -> tuple[str | None, str]:
    for py in (explicit, sys.executable, str(ROOT / "data" / "dask-venv" / "bin" / "python")):
        if py and Path(py).exists() and subprocess.run(
                [py, "-c", "import dask.bag"], capture_output=True).returncode == 0:
            return py, ""
    return None, ("dask not installed (python3 -m venv data/dask-venv && "
                  "data/dask-venv/bin/pip install dask)")


def datasets(signs_rows: int, lyrics_rows: int) -> dict[str, Path]:
    signs = DATA / f"vs-signs-{signs_rows}.csv"
    lyrics = DATA / f"vs-lyrics-{lyrics_rows}.csv"
    if not signs.exists():
        gen_signs.generate(signs.with_suffix(".part"), signs_rows).rename(signs)
    if not lyrics.exists():
        gen_lyrics.generate(lyrics.with_suffix(".part"), lyrics_rows).rename(lyrics)
    return {"signs": signs, "lyrics": lyrics}


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--signs-rows", type=int, default=500_000)
    ap.add_argument("--lyrics-rows", type=int, default=150_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--apps", default="signs1,signs2,lyrics1,lyrics2,wordcount")
    ap.add_argument("--wc-mb", type=float, default=50.0, help="word count input (4 files)")
    ap.add_argument("--wc-dir", type=Path, default=None,
                    help="word count over this directory's .txt files instead (e.g. "
                         "high_cardinality.py's ids: experiments/data/high_cardinality/ids-100mb)")
    ap.add_argument("--spark-python", default=None)
    ap.add_argument("--dask-python", default=None)
    ap.add_argument("--name", default="rainstorm_vs_spark",
                    help="results as NAME.csv and NAME.png (e.g. for a --wc-dir run)")
    a = ap.parse_args()
    repeat = 2 if a.quick else a.repeat
    paths = datasets(*((20_000, 15_000) if a.quick else (a.signs_rows, a.lyrics_rows)))
    paths["wordcount"] = (a.wc_dir.resolve() if a.wc_dir
                          else corpus("large", 2.0 if a.quick else a.wc_mb)[0].parent)
    spark_py, why_spark = find_spark(a.spark_python)
    dask_py, why_dask = find_dask(a.dask_python)
    if a.quick:
        spark_py = dask_py = None
        why_spark = why_dask = "--quick: peers with a runtime to start are skipped"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for app in a.apps.split(","):
            path = paths[app.rstrip("12")]
            mb = sum(f.stat().st_size for f in
                     (path.glob("*.txt") if path.is_dir() else [path])) / 1e6
            ref = canon(app, peer_apps.serial(app, str(path)))

            def add(name: str, secs: list[float], startup: float | str, results: list[Any],
                    note: str = "", app: str = app, mb: float = mb,
                    ref: Counter[Any] = ref) -> None:
                st = spread("seconds", secs)
                rows.append({"app": app, "mb": round(mb, 1), "contender": name,
                             "repeats": len(secs), **st,
                             "mb_per_s": round(mb / st["seconds_median"], 2) if secs else "",
                             **spread("mb_per_s", [mb / s for s in secs], 2),
                             "startup_s": startup if isinstance(startup, str)
                             else round(startup, 2),
                             "output": sum(ref.values()),
                             "correct": bool(results) and all(canon(app, r) == ref
                                                               for r in results),
                             "failed_loudly": False, "note": note})

            cli = [run_cli(app, path, tmp) for _ in range(repeat)]
            add("rainstorm CLI", [c[1] for c in cli], min(c[0] - c[1] for c in cli),
                [c[2] for c in cli])
            ds_secs, ds_res = [], []
            for _ in range(repeat):
                t = time.perf_counter()
                ds_res.append(run_dataset(app, path))
                ds_secs.append(time.perf_counter() - t)
            add("rainstorm Dataset API", ds_secs, "in seconds", ds_res,
                "embedded server start and workers' fork included")
            peers = [("serial Python", sys.executable, "serial", ""),
                     ("Pool(2)", sys.executable, "pool", ""),
                     ("Dask bag, 2 processes", dask_py, "dask", why_dask),
                     ("PySpark RDD local[2]", spark_py, "spark-rdd", why_spark),
                     ("PySpark DataFrame local[2]", spark_py, "spark-df", why_spark)]
            for name, py, engine, why in peers:
                if engine == "spark-df" and not app.startswith("lyrics"):
                    continue  # Spark's CSV reader parses the signs' malformed rows its own way
                if py is None:
                    print(f"{name} skipped: {why}")
                    continue
                data = run_peer(py, engine, app, path, repeat)
                add(name, data["seconds"], data["startup_s"], [data["result"]])
    for why, name in ((why_spark, "PySpark"), (why_dask, "Dask")):
        if why:
            rows.append({**{k: "" for k in rows[0]}, "contender": name, "correct": True,
                         "failed_loudly": False, "note": f"skipped: {why}"})
    return finish(a.name, rows, a.out, lambda p: plot(rows, p))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    rows = [r for r in rows if r["app"]]
    apps = list(dict.fromkeys(r["app"] for r in rows))
    names = list(dict.fromkeys(r["contender"] for r in rows))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs, ys, err = [], [], []
        for i, app in enumerate(apps):
            r = next((r for r in rows if r["app"] == app and r["contender"] == name), None)
            if r:
                xs.append(i + j * width)
                ys.append(r["mb_per_s_median"])
                err.append(r["mb_per_s_std"])
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=name)
    labels = {"signs1": "signs App 1\nfilter + project", "signs2": "signs App 2\ncount/category",
              "lyrics1": "lyrics App 1\nfilter + project", "lyrics2": "lyrics App 2\ncount/year",
              "wordcount": "word count\n(4 text files)"}
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(apps))], [labels[a] for a in apps])
    ax.set_ylabel("MB/s (median, +- std over repeats)")
    ax.set_title("2 cores; start-up of peers (Spark session, Dask import) not included",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
