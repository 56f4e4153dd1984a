"""Redis-side library: the statistic counters, the repair engine and its lock."""
