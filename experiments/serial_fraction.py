"""Serial fraction: how much of a word count's CPU the coordinator and the
server spend (work no number of workers can share), bytes vs splits.

A private server (embedded Valkey/Redis), 2 workers started as separate
processes (`rainstorm worker --job J`), and the coordinator as a separate
process too (`rainstorm submit`, output to /dev/null), over the same corpus
(4 large files).  CPU seconds (user + system) of each process are read from
/proc/<pid>/stat: the coordinator's when it has exited (before it is
reaped), the workers' when the job is done, the server's as the difference
over the run.  serial = (coordinator + server) / total.  The same job on a
one-line input gives the fixed cost of a job (the coordinator's interpreter
start and imports, ~0.8 s here, and the server's share of submitting):
``serial_fraction_beyond_fixed`` leaves it out of both sides, i.e. the part
that grows with the input.  The result is
checked against collections.Counter (`rainstorm result J --json`, not timed).

    python experiments/serial_fraction.py [--quick] [--mb 100] [--transport split,bytes]
        [--state-partitions 64,16] [--compress-state off,on] [--repeat 1]
        [--corpus generated|real]

``--corpus real``: realtext.py's real English text instead of the generated
corpus (4 large files).

The floor: ``libs_import_cpu_s`` is the CPU of a process that only starts
Python and imports the libraries the coordinator is built on (click,
redis-py, pydantic, PyYAML, msgpack; the median of 5), and
``libs_import_fraction`` that over the run's total: the serial fraction of
a coordinator that did nothing at all, with a server that did nothing.

Prints, per configuration (its median row with ``--repeat``), PASS or FAIL
against the issue's target (serial <= 5 %), with the floor beside it.

``--state-partitions`` runs each transport once per value of
``settings.state_partitions`` (default: the spec's default, 64).

``--repeat N`` runs every configuration (and its one-line twin) N times,
the configurations taking turns, and adds a row ``repeat = median`` per
configuration: each column's median over the N runs, the fractions computed
from the medians.  This host's noise moves one run's fixed cost by ~0.1 s,
which alone moves "beyond the fixed cost" by a third; the plot shows the
medians.

Writes experiments/results/serial_fraction.csv and .png.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, corpus, finish, parser, positive_int, pyplot, reference  # noqa: E402
from realtext import real_corpus  # noqa: E402

from rainstorm.local.server import EmbeddedRedis  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")

SPEC = """name: serial
source: {{type: text, batch_bytes: 1048576, transport: {transport}}}
pipeline:
  - {{op: flat_map, fn: split_words}}
  - {{op: count}}
sink: {{type: stdout, top: 10}}
settings: {{parallelism: 2{settings}}}
"""


def cpu_s(pid: int) -> float:
    """utime + stime of a process (its own, not its children's), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


def exited_cpu_s(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[float, int]:
    """(CPU seconds, exit status) of a child once it exits, read before it
    is reaped (a zombie keeps its /proc/<pid>/stat)."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is not None:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"the coordinator did not finish in {timeout_s:.0f} s")
        time.sleep(0.02)
    used = cpu_s(proc.pid)
    return used, proc.wait()


LIBS = "import click, msgpack, pydantic.main, redis, yaml"


def libs_import_cpu_s(runs: int = 5) -> float:
    """The median CPU seconds of a Python that only imports the coordinator's
    libraries (LIBS), read as a child's rusage."""
    used = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", LIBS], check=True, timeout=60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(used)


def one_run(paths: list[Path], transport: str, ref: Counter[str], timeout_s: float,
            state_partitions: int | None = None, compress: bool = False) -> dict[str, Any]:
    env = dict(os.environ, RAINSTORM_SECRET=secrets.token_hex(16),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    job = f"serial-{transport}-{os.getpid()}-{time.time_ns() % 10**6}"
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as server:
        assert server.proc is not None
        spec = Path(tmp) / "spec.yaml"
        settings = ("" if state_partitions is None else f", state_partitions: {state_partitions}") \
            + (", compress_state: true" if compress else "")
        spec.write_text(SPEC.format(transport=transport, settings=settings))
        rs = [sys.executable, "-m", "rainstorm"]
        server_t0 = cpu_s(server.proc.pid)
        t0 = time.perf_counter()
        workers = [subprocess.Popen([*rs, "worker", "--redis", server.url, "--job", job],
                                    env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for _ in range(2)]
        try:
            coord = subprocess.Popen(
                [*rs, "submit", str(spec), "--redis", server.url, "--job", job,
                 *[a for p in paths for a in ("--input", str(p))]],
                env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE)
            coord_cpu, rc = exited_cpu_s(coord, timeout_s)
            wall = time.perf_counter() - t0
            worker_cpu = [cpu_s(w.pid) for w in workers]
            server_cpu = cpu_s(server.proc.pid) - server_t0
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(20)
                except subprocess.TimeoutExpired:
                    w.kill()
                    w.wait(10)
        err = coord.stderr.read().decode(errors="replace") if coord.stderr else ""
        out = subprocess.run([*rs, "result", job, "--redis", server.url, "--json"], env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        correct = rc == 0 and out.returncode == 0 and Counter(json.loads(out.stdout)) == ref
        if not correct:
            print(f"run failed: rc={rc} {err.strip()[-300:]} {out.stderr.strip()[-300:]}",
                  file=sys.stderr)
    total = coord_cpu + sum(worker_cpu) + server_cpu
    mb = sum(p.stat().st_size for p in paths) / 1e6
    return {"transport": transport, "state_partitions": state_partitions or "",
            "compress_state": compress,
            "mb": round(mb, 1), "wall_s": round(wall, 2),
            "coordinator_cpu_s": round(coord_cpu, 2),
            "worker1_cpu_s": round(worker_cpu[0], 2), "worker2_cpu_s": round(worker_cpu[1], 2),
            "server_cpu_s": round(server_cpu, 2), "total_cpu_s": round(total, 2),
            "serial_fraction": round((coord_cpu + server_cpu) / total, 3) if total else 0.0,
            "correct": correct}


def main() -> int:
    ap = parser(__doc__, mb=100)
    ap.add_argument("--transport", default="split,bytes",
                    help="comma-separated: split, bytes (each run once, side by side)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument("--corpus", choices=("generated", "real"), default="generated",
                    help="the generated corpus, or realtext.py's real English text")
    ap.add_argument("--repeat", type=positive_int, default=1,
                    help="runs of each configuration, taking turns (adds median rows)")
    ap.add_argument("--compress-state", default="off",
                    help="off, on, or off,on: settings.compress_state (each run once per value)")
    ap.add_argument("--state-partitions", default="",
                    help="comma-separated settings.state_partitions values (each run once per "
                         "transport; default: the spec's default)")
    args = ap.parse_args()
    mb = 5.0 if args.quick else args.mb
    paths = real_corpus(mb) if args.corpus == "real" else corpus("large", mb)
    ref = reference(paths)
    sps: list[int | None] = [int(v) for v in args.state_partitions.split(",") if v.strip()] \
        or [None]
    zs = [v.strip() == "on" for v in args.compress_state.split(",")]
    configs = [(t.strip(), sp, z) for t in args.transport.split(",") for sp in sps for z in zs]
    floor = libs_import_cpu_s()
    with tempfile.TemporaryDirectory() as tmp:  # the same job on one line: the fixed cost
        tiny = Path(tmp) / "one.txt"
        tiny.write_text("one line\n")
        rows: list[dict[str, Any]] = []
        for rep in range(args.repeat):
            for t, sp, z in configs:
                row = one_run(paths, t, ref, args.timeout, sp, z)
                fixed = one_run([tiny], t, reference([tiny]), args.timeout, sp, z)
                row["repeat"] = rep
                row["fixed_coordinator_cpu_s"] = fixed["coordinator_cpu_s"]
                row["fixed_server_cpu_s"] = fixed["server_cpu_s"]
                row["correct"] = row["correct"] and fixed["correct"]
                row["libs_import_cpu_s"] = round(floor, 3)
                rows.append(beyond_fixed(row))
    if args.repeat > 1:
        rows += [median_row([r for r in rows if (r["transport"], r["state_partitions"],
                                                 r["compress_state"]) == (t, sp or "", z)])
                 for t, sp, z in configs]
    shown = [r for r in rows if r["repeat"] == "median"] or rows
    status = finish("serial_fraction", rows, args.out, lambda p: plot(shown, p))
    for r in shown:
        verdict(r)
    return status


TARGET = 0.05  # issue 12: (coordinator + server) / all CPU


def verdict(row: dict[str, Any]) -> None:
    """The issue's target, and the floor under it, in one line."""
    ok = row["serial_fraction"] <= TARGET
    zstd = ", compress_state" if row["compress_state"] else ""
    print(f"{'PASS' if ok else 'FAIL'}  {row['transport']}{zstd}: serial "
          f"{100 * row['serial_fraction']:.1f} % (target <= {100 * TARGET:.0f} %); beyond "
          f"the fixed cost {100 * row['serial_fraction_beyond_fixed']:.1f} %; importing the "
          f"coordinator's libraries alone {100 * row['libs_import_fraction']:.1f} %")


def beyond_fixed(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its serial fraction, overall and beyond its fixed cost."""
    total = row["total_cpu_s"]
    fixed = row["fixed_coordinator_cpu_s"] + row["fixed_server_cpu_s"]
    serial = row["coordinator_cpu_s"] + row["server_cpu_s"]
    row["serial_fraction"] = round(serial / total, 3) if total else 0.0
    row["libs_import_fraction"] = round(row["libs_import_cpu_s"] / total, 3) if total else 0.0
    rest = total - fixed
    row["serial_fraction_beyond_fixed"] = round((serial - fixed) / rest, 3) if rest > 0 else 0.0
    return row


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's runs as one row: the median of each CPU and time
    column, the fractions computed from those medians."""
    row = dict(runs[0], repeat="median", correct=all(r["correct"] for r in runs))
    for col in ("wall_s", "coordinator_cpu_s", "worker1_cpu_s", "worker2_cpu_s", "server_cpu_s",
                "fixed_coordinator_cpu_s", "fixed_server_cpu_s"):
        row[col] = round(statistics.median(r[col] for r in runs), 3)
    row["total_cpu_s"] = round(row["coordinator_cpu_s"] + row["worker1_cpu_s"]
                               + row["worker2_cpu_s"] + row["server_cpu_s"], 3)
    return beyond_fixed(row)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """CPU seconds per process, stacked, one bar per transport; the fixed
    cost (a one-line job's coordinator + server) hatched."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    names = [(f"{r['transport']} p{r['state_partitions']}" if r["state_partitions"]
              else r["transport"]) + (" zstd" if r.get("compress_state") else "") for r in rows]
    left = [0.0] * len(rows)
    parts = [("fixed cost (coordinator + server)",
              [r["fixed_coordinator_cpu_s"] + r["fixed_server_cpu_s"] for r in rows]),
             ("coordinator beyond it", [r["coordinator_cpu_s"] - r["fixed_coordinator_cpu_s"]
                                        for r in rows]),
             ("server beyond it", [r["server_cpu_s"] - r["fixed_server_cpu_s"] for r in rows]),
             ("workers", [r["worker1_cpu_s"] + r["worker2_cpu_s"] for r in rows])]
    for label, widths in parts:
        ax.barh(names, widths, left=left, label=label,
                hatch="//" if label.startswith("fixed") else None)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for i, r in enumerate(rows):
        ax.annotate(f"serial {100 * r['serial_fraction']:.1f} %, beyond the fixed cost "
                    f"{100 * r['serial_fraction_beyond_fixed']:.1f} %\nimporting the libraries "
                    f"alone: {100 * r['libs_import_fraction']:.1f} %", (left[i], i),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel(f"CPU seconds ({rows[0]['mb']} MB word count, 2 workers)")
    ax.set_xlim(0, max(left) * 2.1)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
