"""Named errors of the common library; the CLI maps each to a message and an exit code."""


class StatsError(Exception):
    """Base of every error the stats library raises on purpose."""


class UnknownCounter(StatsError):
    """A counter key that no statistic class declares."""

    def __init__(self, key, known):
        self.key = key
        self.known = list(known)
        super().__init__(f"unknown counter {key!r}; known counters: {', '.join(self.known)}")


class LockHeld(StatsError):
    """Another repair run holds the lock."""

    def __init__(self, holder, ttl_ms):
        self.holder = holder
        self.ttl_ms = ttl_ms
        super().__init__(f"another stats run holds the lock ({holder}, expires in {max(ttl_ms, 0) / 1000:.0f}s)")


class LockLost(StatsError):
    """The run's lock expired or was taken over while the run was going."""


class Interrupted(StatsError):
    """The run was asked to stop (SIGTERM or SIGINT) and stopped between batches."""

    def __init__(self, signal_name="SIGTERM"):
        self.signal_name = signal_name
        super().__init__(f"stopped by {signal_name} between batches; live counters are intact")


class CounterFailed(StatsError):
    """A counter's repair failed (database or Redis error mid-run)."""
