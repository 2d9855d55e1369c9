"""Where `rainstorm mapreduce` word count spends its CPU, per process.

Runs the CLI as users type it (`python -m rainstorm mapreduce --mapper
tests.ops:wc_map --reducer tests.ops:wc_reduce`, 2 workers) under py-spy
(`pip install py-spy`; it samples the forked workers too, --subprocesses)
over ``--mb`` of generated text, then sorts the samples by process (the CLI
process: coordinator, shuffle, part files; map workers; reduce workers) and
by cost (the leaf frame's function), in % of all non-idle samples.  Not in
CI (it needs py-spy); the figures are in experiments/README.md.

    python experiments/profile_mapreduce.py [--mb 20] [--raw data/prof/mr.raw]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from common import DATA, ROOT

from rainstorm.samples import write_corpus

# (cost, substrings of the leaf frame), first match wins; "idle" is left out of the shares
COSTS = [
    ("idle (a waiting thread)", ["Condition.wait", "Event.wait"]),
    ("record-wise chain: the mapper (wc_map), flat_map/key_by, pair_key, split_lines",
     ["wc_map", "chain.py", "pair_key", "pair_value", "builtins.py"]),
    ("group aggregate: every value appended to its key's list", ["Group.add"]),
    ("msgpack encoding", ["packb", "encode.<locals>"]),
    ("Redis I/O (redis-py, hiredis)", ["redis/", "hiredis"]),
    ("the reducer call", ["wc_reduce", "external.py"]),
    ("JSON decoding (shuffle lines)", ["json/decoder", "loads (json"]),
    ("result.top(): sorting every key of the map result", ["top (rainstorm/coordinator/result"]),
    ("checking + merging group lists (_checked, from_wire, merge)",
     ["_checked", "from_wire", "merge_checked", "merge_pairs", "Group.merge", "checked ("]),
    ("shuffle: crc32 partition_of / key_bytes per key", ["partition_of", "key_bytes"]),
    ("shuffle: json.dumps per key", ["json/encoder", "dumps (json"]),
    ("shuffle: write_shuffle's loop", ["write_shuffle"]),
    ("part files: collect, sort, write (run_mapreduce)", ["run_mapreduce"]),
    ("imports", ["importlib", "_compile_bytecode"]),
]


def record(mb: float, raw: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    corpus = write_corpus(DATA / f"prof-wc-{mb:g}mb", mb, files=4)
    out = raw.parent / "mr-out"
    shutil.rmtree(out, ignore_errors=True)
    raw.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([spy, "record", "--subprocesses", "--rate", "200", "--format", "raw",
                    "-o", str(raw), "--", sys.executable, "-m", "rainstorm", "mapreduce",
                    "--mapper", "tests.ops:wc_map", "--reducer", "tests.ops:wc_reduce",
                    "--input", str(corpus[0].parent / "part-*.txt"), "--output", str(out),
                    "--allow-module", "tests"], cwd=ROOT, check=True,
                   env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    shutil.rmtree(out, ignore_errors=True)


def analyse(raw: Path) -> dict[str, Counter[str]]:
    """process -> cost -> samples."""
    by_pid: dict[str, Counter[str]] = defaultdict(Counter)
    role: dict[str, str] = {}
    for line in raw.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        procs = [i for i, f in enumerate(frames) if f.startswith("process ")]
        m = re.match(r"process (\d+)", frames[procs[-1]])
        pid = m.group(1) if m else "?"
        if len(procs) == 1:
            role[pid] = "CLI process (coordinator, shuffle, part files)"
        elif "make_reduce" in stack:
            role[pid] = "reduce workers"
        else:
            role.setdefault(pid, "map workers")
        cost = next((c for c, pats in COSTS if any(p in frames[-1] for p in pats)), "other")
        by_pid[pid][cost] += int(n)
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for pid, costs in by_pid.items():
        out[role.get(pid, "map workers")].update(costs)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--raw", type=Path, default=DATA / "prof" / "mr.raw")
    ap.add_argument("--analyse-only", action="store_true", help="reuse an earlier --raw")
    a = ap.parse_args()
    if not a.analyse_only:
        record(a.mb, a.raw)
    roles = analyse(a.raw)
    idle = COSTS[0][0]
    busy = sum(sum(c.values()) - c[idle] for c in roles.values())
    for who, costs in sorted(roles.items(), key=lambda kv: -sum(kv[1].values())):
        mine = sum(costs.values()) - costs[idle]
        print(f"{who}: {100 * mine / busy:.1f} % of all non-idle samples")
        for cost, n in costs.most_common():
            if cost != idle:
                print(f"  {100 * n / busy:5.1f} %  ({100 * n / mine:4.1f} % of this)  {cost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
