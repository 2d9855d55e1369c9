"""rainstorm: exactly-once stream and batch processing on Redis streams."""

__version__ = "0.1.0"
