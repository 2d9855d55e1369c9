"""Operating jobs: status, tasks, dead letters, following output, the autoscaler, the dashboard."""
