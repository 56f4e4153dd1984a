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
    """Another run holds a lease on a counter this run needs."""

    def __init__(self, holder, ttl_ms, counter=""):
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.counter = counter
        on = f" on {counter}" if counter else ""
        super().__init__(f"another stats run holds the lease{on} ({holder}, expires in {max(ttl_ms, 0) / 1000:.0f}s)")


class LockLost(StatsError):
    """The run's lease expired or was taken over while the run was going."""


class Interrupted(StatsError):
    """The run was asked to stop (SIGTERM or SIGINT) and stopped between batches."""

    def __init__(self, signal_name="SIGTERM"):
        self.signal_name = signal_name
        super().__init__(f"stopped by {signal_name} between batches; live counters are intact")


class PreviousWriters(StatsError):
    """A writer of the release before the write protocol bumped the counter during the run."""


class StagingLost(StatsError):
    """The staging key of a rebuild lost members before the swap (something freed it)."""


def one_line(exc: BaseException) -> str:
    """Describe an error in one line: its type and the first line of its message (for a
    database error, the driver's own message)."""
    text = str(getattr(exc, "orig", None) or exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0]}"
