"""What the processes of a job agree on, one owner per schema.

``counters``: every field name of a job's counters hash (``rs:{job}:counters``).
``heartbeat``: a worker's heartbeat (its value in ``rs:workers``).
``entries``: stream entry fields, uids and routing.
``meta``: the field names of a job's meta hash (``rs:{job}:meta``) and the
reader of its state.
``deadletter``: the fields of a dead letter (``rs:{job}:dlq``) and its typed row.
``digests``: how a seal frames the pieces it digests.
"""
