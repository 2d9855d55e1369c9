"""`rainstorm ui`: a live web dashboard and a Prometheus ``/metrics`` endpoint.

:mod:`rainstorm.ops.dashboard.server` samples Redis through :mod:`rainstorm.monitor`
in one background thread and serves the page, ``/api/state``, ``/metrics`` and
``/healthz`` from the last sample; :mod:`rainstorm.ops.dashboard.metrics` renders
a snapshot in the Prometheus text format.
"""
