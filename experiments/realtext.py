"""Real English text for the experiments: prose from Debian packages, as plain lines.

The distinct text (about 60 MB) comes from Debian bookworm packages fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` (no other network):

* ``dict-gcide``: the GNU Collaborative International Dictionary of English
  (Webster's 1913 and later): definitions and quotations; the pronunciation
  ``\\...\\`` spans, ``{}`` braces and source tags (``[1913 Webster]``) are removed;
* ``python3.11-doc``: the reStructuredText sources of the Python docs
  (directive lines and ``:role:`` markup removed);
* ``perl-doc``: the Perl manual's POD (command lines and ``X<...>`` codes removed);
* ``fortunes``: the fortune cookie files (``%`` separators removed, ascii-art skipped);
* ``jargon-text``: the Jargon File; ``gnu-standards``: the GNU coding and
  maintainer standards (HTML tags removed).

Each package's text is cut at line boundaries into ~4 MB pieces, the
``distinct`` set, cached under experiments/data/realtext/.  ``real_corpus(mb)``
copies those pieces, whole and in a fixed order, into ``mb`` MB of files; **when
``mb`` exceeds the distinct text, the pieces are repeated** (the same words again:
the number of distinct words stops growing, the counts grow), and the last piece
is cut at a line boundary to hit the size.  The script prints how much is distinct.

    python experiments/realtext.py [--mb 200]   # build (or reuse) the corpus, print its shape
"""

from __future__ import annotations

import argparse
import gzip
import html
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "realtext"
PIECE = 4_000_000  # bytes per distinct piece (cut at a newline)


class Unavailable(Exception):
    """The packages cannot be fetched here (no apt-get, no Debian mirror)."""


def _gcide(root: Path) -> Iterator[str]:
    raw = gzip.open(root / "usr/share/dictd/gcide.dict.dz").read().decode("utf-8", "replace")
    pron = re.compile(r"\\[^\\\n]*\\")
    tag = re.compile(r"^\s*\[[^\]\n]*\]\s*$")
    for line in raw.splitlines():
        if tag.match(line) or line.startswith("00-database"):
            continue
        yield pron.sub("", line).replace("{", "").replace("}", "")


def _python_docs(root: Path) -> Iterator[str]:
    role = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^`>]*>)?`")
    rule = re.compile(r"^\s*([=\-~^\"'*+#.:_])\1{3,}\s*$")
    for p in sorted((root / "usr/share/doc/python3.11/html/_sources").rglob("*.rst.txt")):
        for line in p.read_text("utf-8", "replace").splitlines():
            s = line.strip()
            if s.startswith(".. ") or s == ".." or rule.match(line) or re.match(r"^:\w[\w-]*:", s):
                continue
            yield role.sub(r"\1", line).replace("``", "").replace("**", "")


def _perl_docs(root: Path) -> Iterator[str]:
    code = re.compile(r"[A-Z]<+\s?([^<>]*?)\s?>+")
    for p in sorted(root.rglob("*.pod")):
        for line in p.read_text("utf-8", "replace").splitlines():
            if line.startswith("="):
                continue
            for _ in range(3):  # nested codes, innermost first
                line = code.sub(r"\1", line)
            yield line


def _fortunes(root: Path) -> Iterator[str]:
    d = root / "usr/share/games/fortunes"
    for p in sorted(d.iterdir()):
        if p.suffix or p.is_symlink() or not p.is_file() or p.name == "ascii-art":
            continue
        for line in p.read_text("utf-8", "replace").splitlines():
            if line.strip() != "%":
                yield line


def _jargon(root: Path) -> Iterator[str]:
    yield from gzip.open(root / "usr/share/doc/jargon-text/jargon.txt.gz").read().decode(
        "utf-8", "replace").splitlines()


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self.skip -= tag in ("script", "style") and self.skip > 0

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def _gnu_standards(root: Path) -> Iterator[str]:
    for p in sorted((root / "usr/share/doc/gnu-standards").glob("*.html")):
        t = _Text()
        t.feed(p.read_text("utf-8", "replace"))
        yield from html.unescape("".join(t.parts)).splitlines()


SOURCES: dict[str, Callable[[Path], Iterator[str]]] = {
    "dict-gcide": _gcide, "python3.11-doc": _python_docs, "perl-doc": _perl_docs,
    "fortunes": _fortunes, "jargon-text": _jargon, "gnu-standards": _gnu_standards,
}


def distinct_pieces() -> list[Path]:
    """The cleaned text of every package, in ~4 MB pieces (built once, cached)."""
    d = DATA / "distinct"
    marker = d / ".done"
    if marker.exists():
        return sorted(d.glob("*.txt"))
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise Unavailable("needs apt-get and dpkg-deb (Debian) to fetch the text")
    d.mkdir(parents=True, exist_ok=True)
    debs = DATA / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    versions = []
    for pkg, clean in SOURCES.items():
        if not list(debs.glob(f"{pkg}_*.deb")):
            res = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True,
                                 text=True, timeout=600)
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or ["?"])[-1]
                raise Unavailable(f"apt-get download {pkg} failed: {last}")
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        versions.append(deb.name)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True, timeout=600)
            _write_pieces(d, pkg, (s.rstrip() for s in clean(Path(tmp))))
    (d / "SOURCES").write_text("\n".join(versions) + "\n")
    marker.write_text("ok")
    return sorted(d.glob("*.txt"))


def _write_pieces(d: Path, pkg: str, lines: Iterator[str]) -> None:
    n, buf, size = 0, [], 0
    for line in lines:
        if not line.strip():
            continue
        buf.append(line)
        size += len(line.encode()) + 1
        if size >= PIECE:
            (d / f"{pkg}-{n:02d}.txt").write_text("\n".join(buf) + "\n", encoding="utf-8")
            n, buf, size = n + 1, [], 0
    if buf:
        (d / f"{pkg}-{n:02d}.txt").write_text("\n".join(buf) + "\n", encoding="utf-8")


def _interleaved(pieces: list[Path]) -> list[Path]:
    """Round robin over the packages, so that even a small corpus mixes them."""
    by_pkg = [[p for p in pieces if p.name.startswith(pkg + "-")] for pkg in SOURCES]
    longest = max(len(b) for b in by_pkg)
    return [b[i] for i in range(longest) for b in by_pkg if i < len(b)]


def distinct_bytes() -> int:
    return sum(p.stat().st_size for p in distinct_pieces())


def real_corpus(mb: float) -> list[Path]:
    """``mb`` MB of real text in several files: the distinct pieces, whole, in
    order, repeated as often as needed (see the module doc); cached."""
    pieces = _interleaved(distinct_pieces())
    d = DATA / f"corpus-{mb:g}mb"
    marker = d / ".done"
    if marker.exists():
        return sorted(d.glob("*.txt"))
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    want, have, i = int(mb * 1e6), 0, 0
    while have < want:
        src = pieces[i % len(pieces)]
        data = src.read_bytes()
        if have + len(data) > want:  # cut the last piece at a line boundary
            cut = data.rfind(b"\n", 0, want - have)
            data = data[:cut + 1] if cut >= 0 else data[:0]
            if not data:
                break
        (d / f"{i:04d}-{src.name}").write_bytes(data)
        have += len(data)
        i += 1
    marker.write_text("ok")
    return sorted(d.glob("*.txt"))


def describe(paths: list[Path]) -> str:
    """One line: size, files, and how much of it is distinct text."""
    total = sum(p.stat().st_size for p in paths)
    distinct = distinct_bytes()
    rep = f"repeated {total / distinct:.2f}x" if total > distinct else "no repetition"
    return (f"real text: {total / 1e6:.1f} MB in {len(paths)} files; distinct text "
            f"{distinct / 1e6:.1f} MB from {len(SOURCES)} Debian packages ({rep})")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=200.0)
    a = ap.parse_args()
    try:
        paths = real_corpus(a.mb)
    except Unavailable as exc:
        print(f"realtext: {exc}", file=sys.stderr)
        return 1
    print(describe(paths))
    print(f"distinct pieces: {DATA / 'distinct'} ({len(distinct_pieces())} files)")
    for pkg in SOURCES:
        size = sum(p.stat().st_size for p in distinct_pieces() if p.name.startswith(pkg + "-"))
        print(f"  {pkg:15} {size / 1e6:6.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
