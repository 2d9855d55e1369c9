"""Generate a realistic CSV log: a city's traffic-sign inventory.

Columns: X, Y, OBJECTID, Sign_Type, Sign_Post, Category, Install_Year, Notes.
Notes are free text, often quoted with commas inside; about 1 row in 500 is
malformed (a broken quote or a missing field), as real exports have.

    python examples/gen_signs.py --rows 200000 --out data/signs.csv
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

COLUMNS = ["X", "Y", "OBJECTID", "Sign_Type", "Sign_Post", "Category", "Install_Year", "Notes"]
SIGN_TYPES = ["Stop", "Yield", "Speed Limit 25", "Speed Limit 35", "No Parking", "One Way",
              "School Zone", "Pedestrian Crossing", "Do Not Enter", "Bike Lane", "Detour"]
POSTS = ["Punched Telespar", "Round", "Wood", "U-Channel", "Mast Arm", "Signal Pole"]
CATEGORIES = ["Regulatory", "Warning", "Guide", "School", "Construction", "Parking"]
NOTES = ["", "", "", "replaced after storm", "faded, needs repaint", "bent post, leaning",
         "near hydrant, visible from 50 ft", "graffiti, cleaned 2021", "obstructed by tree",
         "requested by council, approved", "temporary, remove after works"]


def row(rng: random.Random, oid: int) -> str:
    note = rng.choice(NOTES)
    note = f'"{note}"' if "," in note or rng.random() < 0.3 else note
    fields = [f"{-88.25 + rng.random() * 0.1:.6f}", f"{40.08 + rng.random() * 0.1:.6f}",
              str(oid), rng.choice(SIGN_TYPES), rng.choice(POSTS), rng.choice(CATEGORIES),
              str(rng.randint(1985, 2024)), note]
    r = rng.random()
    if r < 0.001:
        fields[-1] = '"unterminated, quote'  # malformed: broken quoting
    elif r < 0.002:
        fields = fields[:-2]  # malformed: missing fields
    return ",".join(fields)


def generate(path: Path, rows: int, seed: int = 3) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write(",".join(COLUMNS) + "\n")
        for oid in range(1, rows + 1):
            fh.write(row(rng, oid) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=Path("data/signs.csv"))
    a = ap.parse_args()
    p = generate(a.out, a.rows)
    print(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB, {a.rows} rows)")


if __name__ == "__main__":
    main()
