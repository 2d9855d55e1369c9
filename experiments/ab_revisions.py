"""Two revisions of rainstorm side by side, on the path users type.

    python experiments/ab_revisions.py BASE_REV [--mb 50] [--repeat 3] [--workers 2]
        [--name ab_revisions]

Checks BASE_REV out into a temporary git worktree and runs, alternating,
that revision's and this checkout's ``rainstorm run examples/wordcount.yaml
--input 'DIR/*.txt' --workers N --json > file`` (embedded server start, the job and
the JSON output included) on a generated corpus and on real English text
(realtext.py's corpus; where its Debian packages cannot be fetched, the
docs and Python sources of this machine).  Both use this checkout's virtual
environment.  The CPU seconds of each role (coordinator, workers, server)
are read from /proc while it runs (cli_path.run_cli's proc_watch.Watch,
every 0.05 s).
Results must be equal (exit 1 otherwise).  Writes
experiments/results/NAME.csv (default ab_revisions.csv) and prints, per corpus, the median
wall time and server CPU of each side and their ratios.

Both trees' bytecode is written first (common.compiled), as an install does;
``python experiments/ab_revisions.py HEAD`` is an A/A check whose ratios
should be ~1.00.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_path import run_cli  # noqa: E402
from common import compiled, positive_int  # noqa: E402
from realtext import Unavailable, real_corpus  # noqa: E402

from rainstorm.samples import write_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results"
ROLES = ("coordinator", "worker", "server")


def real_text(dest: Path, limit: int) -> None:
    """Real English-ish text found on this machine: package docs, Python sources."""
    roots = [Path("/usr/share/doc"), Path(sys.base_prefix) / "lib"]
    with open(dest, "wb") as out:
        for root in roots:
            for p in sorted(root.rglob("*")):
                if out.tell() >= limit:
                    return
                if not p.is_file() or p.is_symlink():
                    continue
                try:
                    if p.suffix == ".gz":
                        data = gzip.decompress(p.read_bytes())
                    elif p.suffix in ("", ".txt", ".py", ".md", ".rst") or "copyright" in p.name:
                        data = p.read_bytes()
                    else:
                        continue
                except (OSError, EOFError, gzip.BadGzipFile):
                    continue
                out.write(data[: limit - out.tell()])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the revision to compare with (e.g. a commit id)")
    ap.add_argument("--mb", type=float, default=50.0)
    ap.add_argument("--repeat", type=positive_int, default=3)
    ap.add_argument("--workers", type=positive_int, default=2)
    ap.add_argument("--name", default="ab_revisions", help="the CSV's name in results/")
    a = ap.parse_args()
    known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{a.base}^{{commit}}"],
                           cwd=ROOT, capture_output=True, text=True, check=False)
    if known.returncode != 0:
        print(f"ab_revisions.py: {a.base!r} is not a revision of this repository",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rainstorm-ab-") as tmp_s:
        tmp = Path(tmp_s)
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tmp / "base"), a.base],
                       cwd=ROOT, check=True)
        try:
            build_native(tmp / "base")
            return compare(tmp, a.base, a.mb, a.repeat, a.workers, a.name)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "base")],
                           cwd=ROOT, check=False)


def build_native(tree: Path) -> None:
    """Build a worktree's C extensions in place, as this checkout's are:
    without them its per-key work would run in Python, and the comparison
    would measure that instead of the change.  Its bytecode is written too
    (common.compiled), as this checkout's is."""
    compiled(tree)
    if (tree / "setup.py").exists():
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = subprocess.run([sys.executable, "-m", "rainstorm", "--version"], cwd=tree,
                           env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True,
                           text=True, check=True)
    print(f"{tree.name}: {probe.stdout.strip()}", file=sys.stderr)


def real_inputs(tmp: Path, mb: float) -> list[Path]:
    """``mb`` MB of real text: realtext.py's, else this machine's docs."""
    try:
        return real_corpus(mb)
    except Unavailable as exc:
        print(f"realtext.py's corpus is unavailable ({exc}): using this machine's docs",
              file=sys.stderr)
        (tmp / "real").mkdir()
        real_text(tmp / "real" / "text.txt", int(mb * 1e6))
        return [tmp / "real" / "text.txt"]


def run(pythonpath: Path, files: list[Path], tmp: Path, workers: int
        ) -> tuple[float, dict[str, float], Counter[str]]:
    """(wall seconds, CPU seconds per role, result) of one `rainstorm run`
    of the tree at ``pythonpath`` (cli_path.run_cli)."""
    cpu: dict[str, float] = {}
    wall, job_s, result = run_cli(files, True, tmp, workers=workers, cpu=cpu,
                                  pythonpath=pythonpath, watch_period_s=0.05)
    if math.isnan(job_s):
        raise RuntimeError(f"rainstorm run under {pythonpath} failed")
    return wall, cpu, result


def compare(tmp: Path, base: str, mb: float, repeat: int, workers: int,
            name_: str) -> int:
    corpora = {"generated": write_corpus(tmp / "gen", mb), "real": real_inputs(tmp, mb)}
    sides = {base: tmp / "base", "this checkout": ROOT}
    rows: list[dict[str, Any]] = []
    ok = True
    for rep in range(repeat):
        for name, files in corpora.items():
            results = {}
            order = list(sides.items()) if rep % 2 == 0 else list(sides.items())[::-1]
            for side, code in order:
                secs, cpu, results[side] = run(code, files, tmp, workers)
                rows.append({"repeat": rep, "corpus": name, "mb": mb, "workers": workers,
                             "revision": side, "seconds": round(secs, 3),
                             **{f"{role}_cpu_s": cpu.get(role, 0.0) for role in ROLES}})
            same = results[base] == results["this checkout"]
            ok &= same
            for row in rows[-2:]:
                row["correct"] = same
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{name_}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for name in corpora:
        med = {(s, col): statistics.median(float(r[col]) for r in rows
                                           if r["corpus"] == name and r["revision"] == s)
               for s in sides for col in ("seconds", "server_cpu_s", "worker_cpu_s")}
        this = "this checkout"
        ratio = med[this, "seconds"] / med[base, "seconds"]
        print(f"{name}: wall {base} {med[base, 'seconds']:.2f} s, this checkout "
              f"{med[this, 'seconds']:.2f} s (ratio {ratio:.2f});"
              f" server CPU {med[base, 'server_cpu_s']:.2f} s vs {med[this, 'server_cpu_s']:.2f} s"
              f" (ratio {med[this, 'server_cpu_s'] / max(med[base, 'server_cpu_s'], 0.01):.2f});"
              f" workers' CPU {med[base, 'worker_cpu_s']:.2f} s vs "
              f"{med[this, 'worker_cpu_s']:.2f} s")
    if not ok:
        print("RESULTS DIFFER", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
