"""A job's core: submit it, drive it to its end, read its result partition by partition,
write its sinks."""
