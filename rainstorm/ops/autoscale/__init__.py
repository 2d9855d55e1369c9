"""The autoscaler: a pure policy, the loop that applies it, and where workers run."""
