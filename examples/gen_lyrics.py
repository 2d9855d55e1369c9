"""Generate a lyrics-like CSV: one song per line, a numeric field or two.

Columns: id, title, artist, genre, year, views, lyrics.
* genre: pop 30 %, rap 22 %, rock 20 %, rb 10 %, country 10 %, misc 8 %;
* year: 1960-2023, skewed to recent years (1960 + 63 * Beta(3, 1.5));
* views: log-normal (median ~3,000, a long tail into the millions), an int;
* artist: 8,000 names, Zipf-like (a few artists have many songs);
* title: 1-4 words; lyrics: 20-80 words of English-like vocabulary
  (rainstorm.samples) with commas, always quoted, no quote inside.
150,000 rows (the default) are ~57 MB.  Deterministic for a given seed.

    python examples/gen_lyrics.py --rows 150000 --out data/lyrics.csv
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

from rainstorm.samples import vocabulary

COLUMNS = ["id", "title", "artist", "genre", "year", "views", "lyrics"]
GENRES = ["pop", "rap", "rock", "rb", "country", "misc"]
GENRE_WEIGHTS = [30, 22, 20, 10, 10, 8]


def generate(path: Path, rows: int, seed: int = 17) -> Path:
    rng = random.Random(seed)
    vocab = vocabulary(seed)
    cum = list(itertools.accumulate(1.0 / (r + 2.7) ** 1.1 for r in range(len(vocab))))
    artist_cum = list(itertools.accumulate(1.0 / (r + 1) for r in range(8000)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write(",".join(COLUMNS) + "\n")
        for i in range(1, rows + 1):
            words = rng.choices(vocab, cum_weights=cum, k=rng.randint(20, 80))
            for j in range(7, len(words), 9):
                words[j] += ","
            title = " ".join(rng.choices(vocab, cum_weights=cum, k=rng.randint(1, 4)))
            artist = f"artist {rng.choices(range(8000), cum_weights=artist_cum)[0]:04d}"
            genre = rng.choices(GENRES, GENRE_WEIGHTS)[0]
            year = 1960 + int(63 * rng.betavariate(3, 1.5))
            views = int(rng.lognormvariate(8, 2))
            fh.write(f'{i},{title.capitalize()},{artist},{genre},{year},{views},'
                     f'"{" ".join(words)}"\n')
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=150_000)
    ap.add_argument("--out", type=Path, default=Path("data/lyrics.csv"))
    a = ap.parse_args()
    p = generate(a.out, a.rows)
    print(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB, {a.rows} rows)")


if __name__ == "__main__":
    main()
