"""An I/O-bound operator for the autoscaling experiment: each line waits as
if for a remote lookup (RAINSTORM_ENRICH_MS, default 2 ms) and is then split
into words.  Waiting, not computing, so adding workers helps even on a
2-core machine, as it would for a real enrichment call."""

from __future__ import annotations

import os
import time

DELAY_S = float(os.environ.get("RAINSTORM_ENRICH_MS", "2")) / 1000


def enrich_words(line: str) -> list[str]:
    time.sleep(DELAY_S)
    return line.split()
