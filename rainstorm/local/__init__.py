"""The local runtime: the embedded server, a replica set, local worker processes
(forked, or autoscaled), a `rainstorm worker`'s options, and `rainstorm run`."""
