"""A long-lived operator speaking rainstorm's framed protocol (for tests):
uppercases every record; exits on a record holding CRASH, hangs on HANG.
Appends its pid to $FRAMED_PIDS at start, so tests can count processes."""

import os
import sys
import time

if os.environ.get("FRAMED_PIDS"):
    with open(os.environ["FRAMED_PIDS"], "a") as fh:
        fh.write(f"{os.getpid()}\n")
while True:
    header = sys.stdin.readline()
    if not header:
        break
    n = int(header.split()[1])
    records = [sys.stdin.readline().rstrip("\n") for _ in range(n)]
    out = []
    for r in records:
        if "CRASH" in r:
            print(f"cannot digest {r!r}", file=sys.stderr)
            sys.exit(4)
        if "HANG" in r:
            time.sleep(60)
        out.append(r.upper())
    sys.stdout.write(f"#RAINSTORM-OUT {len(out)}\n" + "".join(o + "\n" for o in out))
    sys.stdout.flush()
