"""Applications built on the engine: MapReduce jobs and the Dataset API."""
