"""Executors: run one list of steps over shards of the input (locally, or on Ray Data)."""
