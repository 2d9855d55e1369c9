"""What the processes of a job agree on, one owner per schema.

``counters``: every field name of a job's counters hash (``rs:{job}:counters``).
``heartbeat``: a worker's heartbeat (its value in ``rs:workers``).
"""
