"""URL frequency as two MapReduce jobs (the share of each URL among all requests).

Job 1 counts requests per URL; job 2 sends every (url, count) to one key so a
single reducer knows the total and writes each URL's share.

    rainstorm mapreduce --mapper examples.mr.urls:count_map \\
        --reducer examples.mr.urls:count_reduce --input data/access.log --output out/url-counts
    rainstorm mapreduce --mapper examples.mr.urls:share_map \\
        --reducer examples.mr.urls:share_reduce --input out/url-counts --output out/url-share \\
        --partitions 1
"""

from __future__ import annotations

from collections.abc import Iterator


def count_map(line: str) -> Iterator[tuple[str, int]]:
    """The request path of an access-log line ("GET /x HTTP/1.1" -> /x)."""
    try:
        request = line.split('"', 2)[1]
        url = request.split()[1]
    except IndexError:
        return  # not a log line: no request
    yield url, 1


def count_reduce(url: str, ones: list[int]) -> Iterator[str]:
    yield f"{url}\t{sum(int(n) for n in ones)}"


def count_combine(_url: str, ones: list[int]) -> list[int]:
    """The map side's partial count (Hadoop's combiner; PySpark's
    reduceByKey does the same by itself)."""
    return [sum(int(n) for n in ones)]


def share_map(line: str) -> Iterator[tuple[str, str]]:
    if line.strip():
        yield "all", line


def share_reduce(_key: str, lines: list[str]) -> Iterator[str]:
    counts = [(u, int(n)) for u, n in (ln.rsplit("\t", 1) for ln in lines)]
    total = sum(n for _, n in counts)
    for url, n in sorted(counts):
        yield f"{url}\t{n / total!r}"
