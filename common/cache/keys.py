"""The Redis keys of a counter's repair protocol, in one place.

Each key carries its counter's key as a hash tag (``{count:user:followers}:runs``), so a
script touching several of them touches one hash slot: one node of a Redis Cluster.
"""

#: The run lock of the release before leases; a run refuses to start while one holds it.
LEGACY_LOCK = "lock:stats:fix"
#: The staging registry of the release before; its keys are freed once no old run holds the lock.
LEGACY_STAGING = "stats:fix:staging"


def tag(key: str) -> str:
    """Return the prefix of every protocol key of the counter ``key``."""
    return f"{{{key}}}:"


def runs(key: str) -> str:
    """ZSET of the runs working on the counter: ``token scope holder`` -> lease deadline (ms)."""
    return tag(key) + "runs"


def track(key: str, token: str) -> str:
    """SET of the ids traffic touched while run ``token`` tracked the counter."""
    return tag(key) + "track:" + token


def late(key: str, token: str) -> str:
    """SET of the ids whose unannounced increment was left to run ``token``."""
    return tag(key) + "late:" + token


def staging(key: str, token: str) -> str:
    """ZSET where run ``token`` builds a replacement of the counter."""
    return tag(key) + "staging:" + token


def rebuild_claim(key: str) -> str:
    """STRING naming the run that rebuilds the counter, so one run at a time does."""
    return tag(key) + "rebuild"


def inflight(key: str) -> str:
    """HASH id -> increments announced (committing or committed) and not yet applied."""
    return tag(key) + "inflight"


def inflight_ops(key: str) -> str:
    """ZSET ``op:id`` -> deadline (ms) of each announced increment, so a dead writer's expire."""
    return tag(key) + "inflight:ops"


def canary(key: str) -> str:
    """SET the previous release's increment script adds ids to while it exists: a run keeps
    it holding ``*`` alone, so any other member shows a writer of that release at work."""
    return tag(key) + "dirty"
