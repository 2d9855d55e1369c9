"""A job's core: submit it, drive it to its end, fold its state, read its result, write
its sinks."""
