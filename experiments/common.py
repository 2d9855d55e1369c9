"""Shared pieces of the experiments: corpora, specs, chaos, CSV and plots.

Every experiment checks its result against collections.Counter over the same
files and records ``correct`` per run, so a plot can never hide a wrong answer.
"""

from __future__ import annotations

import argparse
import compileall
import csv
import os
import random
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rainstorm.local.run import LocalRun, RunReport
from rainstorm.samples import generate_lines
from rainstorm.spec import JobSpec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
DATA = ROOT / "data" / "experiments"


def compiled(tree: Path = ROOT) -> None:
    """Write fresh bytecode for ``tree``'s ``rainstorm`` package, as pip does
    when it installs one.  Without it, a process whose environment sets
    PYTHONDONTWRITEBYTECODE (this host's shell does), or one started from a
    fresh worktree, compiles every module changed since its bytecode was last
    written, at every start: ~0.07 s of CPU per process for the whole package,
    which an A/B would count against the side with more changed files."""
    try:
        done = compileall.compile_dir(str(tree / "rainstorm"), quiet=1)
    except OSError as exc:  # a read-only tree: measured as it is, and said so
        print(f"experiments: could not write {tree / 'rainstorm'}'s bytecode ({exc}); its "
              "processes may compile modules at every start", file=sys.stderr)
        return
    if not done:
        print(f"experiments: {tree / 'rainstorm'} did not compile completely", file=sys.stderr)


compiled()


def corpus(kind: str, mb: float, seed: int = 11) -> list[Path]:
    """``small``: many 20 kB files; ``large``: 4 big files.  Cached under data/."""
    n_files = max(1, int(mb * 1e6 / 20_000)) if kind == "small" else 4
    d = DATA / f"{kind}-{mb:g}mb"
    marker = d / ".done"
    paths = [d / f"f{i:05d}.txt" for i in range(n_files)]
    if marker.exists():
        return paths
    d.mkdir(parents=True, exist_ok=True)
    lines = generate_lines(int(mb * 1e6), seed)
    per = max(1, len(lines) // n_files)
    for i, p in enumerate(paths):
        chunk = lines[i * per:(i + 1) * per] if i < n_files - 1 else lines[i * per:]
        p.write_text("\n".join(chunk) + "\n", encoding="utf-8")
    marker.write_text("ok")
    return paths


def reference(paths: list[Path]) -> Counter[str]:
    c: Counter[str] = Counter()
    for p in paths:
        c.update(p.read_bytes().decode("utf-8", "replace").split())
    return c


def wordcount(**settings: Any) -> JobSpec:
    source = {"type": "text", "batch_bytes": settings.pop("batch_bytes", 1 << 20)}
    return parse_spec({"name": "exp", "source": source,
                       "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}],
                       "settings": settings})


def timed_run(env: LocalRun, spec: JobSpec, paths: list[Path], ref: Counter[str],
              workers: int = 2, on_progress: Callable[[Any], None] | None = None,
              timeout_s: float = 600, **fields: Any
              ) -> tuple[RunReport | None, float, bool, str]:
    """(report, seconds, correct, error): a failed job is a row, not a crash.
    ``fields``: more RunOptions (e.g. connect_timeout_s)."""
    t = time.perf_counter()
    try:
        rep = env.run(spec, inputs=[str(p) for p in paths], workers=workers,
                      on_progress=on_progress, timeout_s=timeout_s, **fields)
    except Exception as exc:  # noqa: BLE001 -- an experiment records failures as data
        return None, time.perf_counter() - t, False, str(exc).splitlines()[0][:120]
    return rep, rep.seconds, rep.result == ref, ""


class Every:
    """Call ``action`` every ``period_s`` from a progress callback."""

    def __init__(self, period_s: float, action: Callable[[], None], limit: int = 10**9) -> None:
        self.period_s = period_s
        self.action = action
        self.limit = limit
        self.count = 0
        self.last = time.monotonic()

    def __call__(self, _status: Any = None) -> None:
        if self.count < self.limit and time.monotonic() - self.last >= self.period_s:
            self.last = time.monotonic()
            self.count += 1
            self.action()


def kill_a_worker(env: LocalRun, rng: random.Random) -> Callable[[], None]:
    """SIGKILL a random local worker and start a replacement."""
    def action() -> None:
        if env.pool and env.pool.alive:
            victim = rng.choice(env.pool.alive)
            if victim.pid:
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it had just exited (the job finished)
                victim.join(5)
            env.pool.spawn()
    return action


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


def print_rows(rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))


def percentile(sorted_ms: list[float], q: float) -> float:
    """The q-quantile of sorted values (nearest rank below); nan if none."""
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (one line naming it otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parser(doc: str | None, mb: float | None = None) -> argparse.ArgumentParser:
    """The options every experiment takes: --quick (for CI), --out, maybe --mb."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny inputs, few runs (for CI)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where CSV and PNG go")
    if mb is not None:
        ap.add_argument("--mb", type=float, default=mb, help="input size")
    return ap


def finish(name: str, rows: list[dict[str, Any]], out: Path,
           plot: Callable[[Path], None]) -> int:
    """Print, write CSV and PNG, and return the exit status (1 on a wrong result)."""
    print_rows(rows)
    write_csv(out / f"{name}.csv", rows)
    plot(out / f"{name}.png")
    print(f"wrote {out / f'{name}.png'}")
    return all_correct(rows)


def all_correct(rows: list[dict[str, Any]]) -> int:
    """Exit status: 1 if a run gave a wrong result (a loud failure is not wrong)."""
    wrong = [r for r in rows if not r["correct"] and not r.get("failed_loudly")]
    if wrong:
        print(f"WRONG RESULTS in {len(wrong)} runs", file=sys.stderr)
        return 1
    return 0


def spread(prefix: str, values: list[float], digits: int = 3) -> dict[str, float]:
    """Median, min, max and standard deviation of repeats, as CSV columns."""
    if not values:
        return {f"{prefix}_{k}": float("nan") for k in ("median", "min", "max", "std")}
    return {f"{prefix}_median": round(statistics.median(values), digits),
            f"{prefix}_min": round(min(values), digits),
            f"{prefix}_max": round(max(values), digits),
            f"{prefix}_std": round(statistics.stdev(values), digits) if len(values) > 1 else 0.0}


def text_file(path: Path, n_bytes: int, seed: int = 11) -> Path:
    """A file of generated words, ``n_bytes`` long or one line more. Cached."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_text("\n".join(generate_lines(max(n_bytes, 1), seed)) + "\n",
                       encoding="utf-8")
        tmp.rename(path)
    return path
