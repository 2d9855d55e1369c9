"""rainstorm: exactly-once stream and batch processing on Redis streams."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rainstorm.apps.dataset import Dataset

__version__ = "0.1.0"

__all__ = ["Dataset", "__version__"]


def __getattr__(name: str) -> object:
    # lazy: `import rainstorm` (the CLI, workers) does not load the Dataset API
    if name == "Dataset":
        from rainstorm.apps.dataset import Dataset

        return Dataset
    raise AttributeError(f"module 'rainstorm' has no attribute {name!r}")
