"""Two revisions of rainstorm side by side, on the path users type.

    python experiments/ab_revisions.py BASE_REV [--mb 50] [--repeat 3]

Checks BASE_REV out into a temporary git worktree and runs, alternating,
that revision's and this checkout's ``rainstorm run examples/wordcount.yaml
--input DIR --workers 2 --json > file`` (embedded server start, the job and
the JSON output included) on a generated corpus and on real text (the
Debian docs and Python sources of this machine, up to --mb MB).  Both use
this checkout's virtual environment.  Results must be equal (exit 1
otherwise).  Writes experiments/results/ab_revisions.csv and prints the
median ratio per corpus.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results"


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


def run(pythonpath: Path, inputs: Path, out: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    t0 = time.perf_counter()
    with open(out, "wb") as fh:
        subprocess.run([sys.executable, "-m", "rainstorm", "run",
                        str(ROOT / "examples" / "wordcount.yaml"), "--input", str(inputs),
                        "--workers", "2", "--json"], stdout=fh, stderr=subprocess.DEVNULL,
                       env=env, cwd=out.parent, check=True, timeout=600)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the revision to compare with (e.g. a commit id)")
    ap.add_argument("--mb", type=float, default=50.0)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rainstorm-ab-") as tmp_s:
        tmp = Path(tmp_s)
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tmp / "base"), a.base],
                       cwd=ROOT, check=True)
        try:
            return compare(tmp, a.base, a.mb, a.repeat)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "base")],
                           cwd=ROOT, check=False)


def compare(tmp: Path, base: str, mb: float, repeat: int) -> int:
    corpora = {"generated": tmp / "gen", "real": tmp / "real"}
    subprocess.run([sys.executable, "-m", "rainstorm.samples", "--mb", str(mb), "--out",
                    str(corpora["generated"])], check=True, stdout=subprocess.DEVNULL)
    corpora["real"].mkdir()
    real_text(corpora["real"] / "text.txt", int(mb * 1e6))
    sides = {base: tmp / "base", "this checkout": ROOT}
    rows, ok = [], True
    for rep in range(repeat):
        for name, path in corpora.items():
            results = {}
            for side, code in sides.items():
                out = tmp / f"out-{rep}.json"
                secs = run(code, path, out)
                results[side] = json.loads(out.read_text())
                rows.append({"repeat": rep, "corpus": name, "revision": side,
                             "seconds": round(secs, 3)})
            same = results[base] == results["this checkout"]
            ok &= same
            for row in rows[-2:]:
                row["correct"] = same
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "ab_revisions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for name in corpora:
        med = {s: statistics.median(r["seconds"] for r in rows
                                    if r["corpus"] == name and r["revision"] == s)
               for s in sides}
        print(f"{name}: {base} {med[base]:.2f} s, this checkout {med['this checkout']:.2f} s "
              f"(ratio {med['this checkout'] / med[base]:.2f})")
    if not ok:
        print("RESULTS DIFFER", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
