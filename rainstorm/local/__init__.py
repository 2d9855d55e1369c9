"""The local runtime: the embedded server, a replica set, local worker processes and
`rainstorm run`."""
