"""What is going on in a Redis, read one way for every view: jobs, stages,
partitions, workers, dead letters.

``rainstorm status``/``workers``/``list-tasks``, the dashboard, ``/metrics``,
the autoscaler and the coordinator's progress all read through here, so they
agree on what a number means:

* :mod:`~rainstorm.monitor.counts`: the one reader of a job's counters hash
  (:func:`parse_counts`, :func:`read_progress`) -> ``StageCounts``/``JobCounts``;
* :mod:`~rainstorm.monitor.views`: the typed views (``WorkerView``,
  ``JobView``, ``StageView``, ``PartitionView``, ``GraphView``, ``Snapshot``),
  each with the ``to_json()`` that ``--json`` and the dashboard's API print;
* :mod:`~rainstorm.monitor.look`: one look at Redis (:func:`snapshot`,
  :func:`job_view`, :func:`workers`; :func:`graph_named`: the dataflow graph
  an id names, whose step jobs a snapshot of that id holds);
* :mod:`~rainstorm.monitor.rates`: :class:`RateTracker`, per-second rates
  from successive snapshots;
* :mod:`~rainstorm.monitor.deadletters`: dead letters as rows (``DeadLetter``);
* :mod:`~rainstorm.monitor.source` and :mod:`~rainstorm.monitor.stream_lag`:
  a stream source's backlog (read directly) and how far behind its stream a
  job is (every transport: ``StreamLag``).

All reads are plain read commands, so a restricted ACL user can run the
dashboard.
"""

from __future__ import annotations

from rainstorm.monitor.counts import (
    JobCounts,
    JobProgress,
    StageCounts,
    parse_counts,
    read_max_event,
    read_progress,
)
from rainstorm.monitor.deadletters import dead_letter_row, dead_letters
from rainstorm.monitor.look import (
    graph_named,
    graph_view,
    job_ids,
    job_view,
    serving,
    snapshot,
    worker_view,
    workers,
)
from rainstorm.monitor.rates import HistoryPoint, RateTracker
from rainstorm.monitor.source import SourceLag, read_source, with_source
from rainstorm.monitor.views import (
    DEAD_AFTER_S,
    GraphStepView,
    GraphView,
    JobView,
    PartitionView,
    Rates,
    Snapshot,
    StageView,
    WorkerView,
    graph_state,
)

__all__ = [
    "DEAD_AFTER_S", "GraphStepView", "GraphView", "HistoryPoint", "JobCounts", "JobProgress",
    "JobView", "PartitionView",
    "RateTracker", "Rates", "Snapshot", "SourceLag", "StageCounts", "StageView", "WorkerView",
    "dead_letter_row", "dead_letters", "graph_named", "graph_state", "graph_view", "job_ids",
    "job_view", "parse_counts", "read_max_event", "read_progress", "read_source",
    "serving", "snapshot", "with_source", "worker_view", "workers",
]
