"""Tools to force interleavings: the engine's checkpoint callable, and a writer that takes
the app's write protocol one step at a time, so a test can put each step between two of
the engine's steps. No sleeps: every interleaving is forced at a named point."""

from __future__ import annotations

import logging
import threading

from redis.exceptions import RedisError
from sqlalchemy import text

from common.cache.statistic import UserFollowersCount, UserFollowingsCount

try:  # the write protocol: announce, commit, then apply
    from common.cache import writes
except ImportError:  # before it existed the app committed, then incremented
    writes = None

log = logging.getLogger(__name__)

FOLLOWERS = UserFollowersCount
FOLLOWINGS = UserFollowingsCount


class Checkpoints:
    """The engine's ``checkpoint`` callable for one test: runs the actions registered for
    named points and records every point reached."""

    def __init__(self):
        self.reached = []
        self._actions = []
        self._lock = threading.Lock()

    def at(self, names, action, *, counter=None, shard=None, nth=1, after=None):
        """Run ``action()`` the ``nth`` time one of ``names`` is reached (for ``counter``, and
        once the point ``after`` has been reached, if given)."""
        names = (names,) if isinstance(names, str) else tuple(names)
        key = counter.key if hasattr(counter, "key") else counter
        self._actions.append(
            {
                "names": names,
                "counter": key,
                "shard": shard,
                "nth": nth,
                "after": after,
                "action": action,
                "seen": 0,
                "fired": False,
            }
        )
        return self

    def __call__(self, name, **context):
        due = []
        with self._lock:
            self.reached.append((name, context))
            for entry in self._actions:
                if entry["fired"] or name not in entry["names"]:
                    continue
                if entry["counter"] and context.get("counter") != entry["counter"]:
                    continue
                if entry["shard"] and context.get("shard") != entry["shard"]:
                    continue
                if entry["after"] and not any(
                    n == entry["after"] and c.get("counter") == context.get("counter") for n, c in self.reached
                ):
                    continue
                entry["seen"] += 1
                if entry["seen"] == entry["nth"]:
                    entry["fired"] = True
                    due.append(entry["action"])
        for action in due:
            action()

    def names(self) -> list:
        return [name for name, _ in self.reached]

    def assert_fired(self):
        """Fail unless every registered action ran: an interleaving that never happened proves nothing."""
        missing = [e["names"] for e in self._actions if not e["fired"]]
        assert not missing, f"never reached: {missing}; reached: {sorted(set(self.names()))}"


class Write:
    """One request of the app's write path, split into its steps.

    ``announce`` (before the commit, so a repair knows an increment is on its way),
    ``commit`` (the database change) and ``increment`` (the counters, after the commit).
    """

    def __init__(self, engine, redis, sql, params, deltas):
        self.engine = engine
        self.redis = redis
        self.sql = sql
        self.params = params
        self.deltas = deltas  # [(counter, member id, amount)]
        self.announcement = None
        self.error = None

    def announce(self):
        if writes is not None:
            self.announcement = writes.announce(self.redis, self._deltas())
        return self

    def commit(self):
        with self.engine.begin() as conn:
            conn.execute(text(self.sql), self.params)
        return self

    def increment(self):
        """Bump the counters as the app does: a Redis error is logged, never raised."""
        try:
            if writes is not None:
                writes.apply(self.redis, self.announcement or writes.unannounced(self._deltas()))
            else:
                for counter, member_id, amount in self.deltas:
                    counter.incr(self.redis, member_id, amount)
        except RedisError as exc:
            self.error = exc
            log.info("increment failed as the app's would: %s", exc)
        return self

    def run(self):
        return self.announce().commit().increment()

    def run_as_app(self):
        """As the app's transition does: change the row (locking it), announce, commit, then
        apply. The change waits while a repair holds the rows it would change."""
        with self.engine.begin() as conn:
            conn.execute(text(self.sql), self.params)
            self.announce()
        return self.increment()

    def _deltas(self):
        return writes.deltas(*self.deltas)


def follow(engine, redis, user, target) -> Write:
    """``user`` starts following ``target`` (who it did not follow before)."""
    sql = (
        "INSERT INTO user_relation (user_id, target_user_id, relation) VALUES (:u, :t, 1) "
        "ON DUPLICATE KEY UPDATE relation = 1"
    )
    return Write(engine, redis, sql, {"u": user, "t": target}, [(FOLLOWINGS, user, 1), (FOLLOWERS, target, 1)])


def unfollow(engine, redis, user, target) -> Write:
    """``user`` stops following ``target`` (whom it followed)."""
    sql = "UPDATE user_relation SET relation = 0 WHERE user_id = :u AND target_user_id = :t"
    return Write(engine, redis, sql, {"u": user, "t": target}, [(FOLLOWINGS, user, -1), (FOLLOWERS, target, -1)])


def seed_followers(engine, followers: dict, first_user: int = 1000):
    """Give each target its number of followers (users ``first_user``, ``first_user + 1``...)."""
    rows, user = [], first_user
    for target, count in followers.items():
        for _ in range(count):
            rows.append({"u": user, "t": target})
            user += 1
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO user_relation (user_id, target_user_id, relation) VALUES (:u, :t, 1)"), rows)


def expire_leases(redis, counter):
    """Make every run's lease on ``counter`` expire now, as a partition or a failover would."""
    runs = f"{{{counter.key}}}:runs"
    members = redis.zrange(runs, 0, -1)
    if members:
        redis.zadd(runs, {member: 0 for member in members})


def attempt(func):
    """Call ``func``; return the exception it raised (or None), for outcomes a test checks later."""
    try:
        func()
    except Exception as exc:  # the caller asserts on it
        return exc
    return None


def plant_run(redis, counters, holder="deadhost:1", ttl_ms=1500, scope="*"):
    """Leave the leases of a run that died (OOM kill, lost node) on ``counters``: they expire
    after ``ttl_ms`` as the dead run's would."""
    seconds, micros = redis.time()
    deadline = seconds * 1000 + micros // 1000 + ttl_ms
    for counter in counters:
        redis.zadd(f"{{{counter.key}}}:runs", {f"dead00000000 {scope} {holder}": deadline})


def live_runs(redis) -> list:
    """The counters' lease keys holding a lease still live (by the server's clock)."""
    seconds, micros = redis.time()
    now = seconds * 1000 + micros // 1000
    return sorted(key for key in redis.scan_iter("{count:*}:runs") if redis.zcount(key, now, "+inf"))
