"""A generated English-like corpus for demos, tests and benchmarks.

Words follow a Zipf law over a vocabulary of common English words plus
synthetic ones (30,000 words; about one token in nine carries punctuation), with
capitalised sentence starts, attached punctuation and some non-ASCII words,
so that word counts behave like real text: a few very frequent words and a
long tail.  Deterministic for a given seed.

    python -m rainstorm.samples --mb 20 --out data/sample
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

COMMON = (
    "the of and to a in is it you that he was for on are with as I his they be at one have "
    "this from or had by hot word but what some we can out other were all there when up use "
    "your how said an each she which do their time if will way about many then them write "
    "would like so these her long make thing see him two has look more day could go come did "
    "number sound no most people my over know water than call first who may down side been "
    "now find any new work part take get place made live where after back little only round "
    "man year came show every good me give our under name very through just form sentence "
    "great think say help low line differ turn cause much mean before move right boy old too "
    "same tell does set three want air well also play small end put home read hand port large "
    "spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build self earth "
    "father head stand own page should country found answer school grow study still learn "
    "plant cover food sun four between state keep eye never last let thought city tree cross "
    "farm hard start might story saw far sea draw left late run don't while press close night "
    "real life few north café naïve über façade Zürich 東京 résumé"
).split()
SYLLABLES = ("ka ri to mo ne sa lu ven dor tal mis pre con ex ab ul tra gen ist or al ing "
             "er ed ly ous ment ia qu zh ph str").split()
PUNCT = ("",) * 44 + (",", ",", ",", ".", ".", ";", ":", "!", "?", "'s")


def vocabulary(seed: int = 7, size: int = 30_000) -> list[str]:
    rng = random.Random(seed)
    words = list(dict.fromkeys(COMMON))
    seen = set(words)
    while len(words) < size:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def generate_lines(n_bytes: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    vocab = vocabulary(seed)
    cum = list(itertools.accumulate(1.0 / (r + 2.7) ** 1.1 for r in range(len(vocab))))
    lines: list[str] = []
    size = 0
    while size < n_bytes:
        words = rng.choices(vocab, cum_weights=cum, k=20_000)
        puncts = rng.choices(PUNCT, k=20_000)
        lens = rng.choices(range(6, 18), k=2_000)
        pos = 0
        for ln in lens:
            if pos + ln > len(words):
                break
            toks = [w + p for w, p in zip(words[pos:pos + ln], puncts[pos:pos + ln], strict=True)]
            toks[0] = toks[0].capitalize()
            line = " ".join(toks)
            lines.append(line)
            size += len(line.encode()) + 1
            pos += ln
            if size >= n_bytes:
                break
    return lines


def _write_part(task: tuple[Path, int, int]) -> None:
    path, n_bytes, seed = task
    path.write_text("\n".join(generate_lines(n_bytes, seed)) + "\n", encoding="utf-8")


def write_corpus(out: Path, mb: float, files: int = 4, seed: int = 7,
                 jobs: int = 1) -> list[Path]:
    """Write ``mb`` megabytes over ``files`` files; reuses an identical earlier corpus.
    File i is generated from seed + i alone, so ``jobs`` processes writing the
    files side by side give the same bytes as one."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / ".corpus"
    want = f"v3 mb={mb} files={files} seed={seed}"
    paths = [out / f"part-{i:03d}.txt" for i in range(files)]
    if marker.exists() and marker.read_text() == want and all(p.exists() for p in paths):
        return paths
    per_file = int(mb * 1_000_000 / files)
    tasks = [(p, per_file, seed + i) for i, p in enumerate(paths)]
    if jobs > 1:
        from multiprocessing import Pool

        with Pool(min(jobs, files)) as pool:
            pool.map(_write_part, tasks)
    else:
        for task in tasks:
            _write_part(task)
    marker.write_text(want)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("data/sample"))
    a = ap.parse_args()
    paths = write_corpus(a.out, a.mb, a.files, a.seed)
    print(f"corpus: {len(paths)} files, {sum(p.stat().st_size for p in paths) / 1e6:.1f} MB "
          f"in {a.out}")


if __name__ == "__main__":
    main()
