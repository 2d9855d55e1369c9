"""Generate a web access log (Apache combined format) with Zipf-popular URLs.

    python examples/gen_access_log.py --lines 500000 --out data/access.log
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

SECTIONS = ["", "blog", "docs", "shop", "api/v1", "static/img", "news", "about"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.4.0", "Googlebot/2.1",
          "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)"]


def urls(n: int, rng: random.Random) -> list[str]:
    out = []
    for i in range(n):
        sec = rng.choice(SECTIONS)
        out.append(f"/{sec}/{'page' if i % 3 else 'item'}-{i}.html".replace("//", "/"))
    return out


def generate(path: Path, lines: int, seed: int = 5, n_urls: int = 2000) -> Path:
    rng = random.Random(seed)
    pool = urls(n_urls, rng)
    cum = list(itertools.accumulate(1 / (r + 1) for r in range(n_urls)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(lines):
            url = rng.choices(pool, cum_weights=cum)[0]
            ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            status = rng.choice((200, 200, 200, 200, 304, 404, 500))
            fh.write(f'{ip} - - [23/Nov/2026:10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d} +0000] '
                     f'"GET {url} HTTP/1.1" {status} {rng.randrange(200, 50000)} "-" '
                     f'"{rng.choice(AGENTS)}"\n')
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--lines", type=int, default=500_000)
    ap.add_argument("--out", type=Path, default=Path("data/access.log"))
    a = ap.parse_args()
    p = generate(a.out, a.lines)
    print(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
