"""Inputs: files and their splits, Redis streams, tailed files, and loading them into stage 0."""
