"""Choosing the loader of a job's source: files, a Redis stream (copied,
cut into ranges the workers read, or only watched when the workers read it
directly), or a growing file."""

from __future__ import annotations

import redis

from rainstorm.job import Job
from rainstorm.sources.direct import DirectWatch
from rainstorm.sources.loader import BaseLoader, Loader
from rainstorm.sources.ranges import RangeLoader
from rainstorm.sources.state_source import StateLoader
from rainstorm.sources.unbounded import StreamLoader, TailLoader
from rainstorm.sources.upstream import UpstreamLoader


def loader_for(r: redis.Redis, job: Job) -> BaseLoader:
    """The loader of the job's source (files, a Redis stream, a growing file)."""
    if job.spec.source.type == "text":
        return Loader(r, job)
    if job.spec.source.type == "state":
        return StateLoader(r, job)
    if job.spec.source.type == "upstream":
        return UpstreamLoader(r, job)
    if job.direct:
        return DirectWatch(r, job)
    if job.stream_ranges:
        return RangeLoader(r, job)
    return StreamLoader(r, job) if job.spec.source.type == "stream" else TailLoader(r, job)
