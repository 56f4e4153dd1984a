"""Leases: which runs work on a counter, and the fence on every write they make.

A run takes a lease on each counter it repairs, in the counter's own ``{key}:runs``
sorted set (member ``token scope holder``, score the deadline in the server's
milliseconds), before it reads anything: from that moment the app's increments note
the ids they touch for it. A thread renews the leases every third of their ttl; a lease
that expired is never renewed again, so a run whose lease is live at its release held it
all along. Every write of a run (compare-and-set, junk removal, swap) checks its lease in
the same script, so a run that lost its lease (a partition, a failover, a long pause)
writes nothing more.

Runs over the same members exclude each other: a full run (scope ``*``) excludes every
other run of the counter; shards of one split (``i/N``) run together, other splits and a
second run of the same shard are refused. ``check`` runs exclude nobody. Runs over
different counters never meet.

Taking a lease also frees what runs whose leases are gone left behind (their tracking,
late and staging keys, and a rebuild claim), with UNLINK: nothing is left to expire on
its own, and no key of the protocol carries a TTL that an eviction policy could pick.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Iterable, Optional

from redis.exceptions import RedisError

from common.cache import keys
from common.cache.members import Shard
from common.cache.script import NOW, Lua
from common.exceptions import LockHeld, LockLost, PreviousWriters

log = logging.getLogger(__name__)

#: Seconds between two attempts to take leases another run holds (with ``wait``).
WAIT_STEP = 0.5

# Free what dead runs left: KEYS[1] = runs. Shared by acquire and by cleanup.
_REAP = """
local prefix = string.sub(KEYS[1], 1, -5)
local reaped = 0
for _, run in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 100)) do
  reaped = reaped + 1
  local token = string.match(run, '^(%S+)')
  redis.call('UNLINK', prefix .. 'track:' .. token, prefix .. 'late:' .. token, prefix .. 'staging:' .. token)
  if redis.call('GET', prefix .. 'rebuild') == token then redis.call('DEL', prefix .. 'rebuild') end
  redis.call('ZREM', KEYS[1], run)
end
local function fixing_runs()
  local count = 0
  for _, run in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
    if string.match(run, '^%S+ (%S+)') ~= 'check' then count = count + 1 end
  end
  return count
end
"""

# KEYS[1] = runs. ARGV: member, scope, ttl ms. Returns {1, dead runs freed} or {0, holder, ms left}.
_ACQUIRE = Lua(
    NOW
    + _REAP
    + """
local function split(scope)
  local index, total = string.match(scope, '^(%d+)/(%d+)$')
  return index, total
end
local function conflict(mine, theirs)
  if theirs == 'check' or mine == 'check' then return false end
  if mine == '*' or theirs == '*' then return true end
  local i, n = split(mine)
  local j, m = split(theirs)
  return n ~= m or i == j
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'WITHSCORES')
for at = 1, #live, 2 do
  local scope, holder = string.match(live[at], '^%S+ (%S+) (%S+)')
  if conflict(ARGV[2], scope) then return {0, holder, tonumber(live[at + 1]) - now} end
end
local canary = prefix .. 'dirty'
if ARGV[2] ~= 'check' then
  if fixing_runs() == 0 then redis.call('DEL', canary) end
  redis.call('SADD', canary, '*')
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return {1, reaped}
"""
)

# KEYS[1] = runs. ARGV: member, ttl ms. 1 renewed, 0 gone or expired.
_RENEW = Lua(
    NOW
    + """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not deadline) or tonumber(deadline) < now then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS[1] = runs. ARGV: member, token, '1' to insist that nothing is left to recheck.
# 1 released, 0 ids still wait in the late set, -1 the lease was lost before, -2 released
# but a writer of the release before bumped the counter meanwhile (its canary has ids).
_RELEASE = Lua(
    NOW
    + _REAP
    + """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
local lost = (not deadline) or tonumber(deadline) < now
if (not lost) and ARGV[3] == '1' and redis.call('SCARD', prefix .. 'late:' .. ARGV[2]) > 0 then return 0 end
local fixing = string.match(ARGV[1], '^%S+ (%S+)') ~= 'check'
local old_writers = fixing and redis.call('SCARD', prefix .. 'dirty') > 1
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('UNLINK', prefix .. 'track:' .. ARGV[2], prefix .. 'late:' .. ARGV[2], prefix .. 'staging:' .. ARGV[2])
if redis.call('GET', prefix .. 'rebuild') == ARGV[2] then redis.call('DEL', prefix .. 'rebuild') end
if fixing_runs() == 0 then redis.call('UNLINK', prefix .. 'dirty') end
if lost then return -1 end
if old_writers then return -2 end
return 1
"""
)

#: Lua lines that end a write script with -1 unless the run's lease is live: every write
#: script takes the counter's runs key as KEYS[2] and the run's lease member as ARGV[1].
FENCE = """
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
if (not deadline) or tonumber(deadline) < now then return -1 end
"""


def previous_writers(key: str) -> str:
    return (
        f"a writer with the previous increment script (web pods not yet upgraded) bumped {key} "
        "during the run, so it may be off; finish rolling out the web app, then run the fix again"
    )


def scope_of(shard: Optional[Shard], dry_run: bool) -> str:
    if dry_run:
        return "check"
    return "*" if shard is None else str(shard)


class Leases:
    """The leases of one run on its counters (see the module docstring)."""

    def __init__(self, redis, token: str, scope: str, ttl: float, holder: Optional[str] = None):
        self.redis = redis
        self.token = token
        self.scope = scope
        self.ttl_ms = int(ttl * 1000)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.member = f"{token} {scope} {self.holder}"
        self.held: list = []
        self._lock = threading.Lock()
        self._lost = threading.Event()
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- taking and giving back ---------------------------------------------------------

    def acquire(self, counters: Iterable, wait: float = 0.0, beat: Callable[[], None] = lambda: None):
        """Take a lease on every counter (in key order, so two runs never deadlock), or none.

        Another run's lease makes this raise :class:`LockHeld`, at once or, with ``wait``
        seconds, once that long has passed without all of them coming free.
        """
        ordered = sorted(counters, key=lambda c: c.key)
        deadline = time.monotonic() + wait
        while True:
            refused = self._try_all(ordered)
            if refused is None:
                break
            if time.monotonic() + WAIT_STEP > deadline:
                raise refused
            beat()
            time.sleep(WAIT_STEP)
        self._thread = threading.Thread(target=self._renew_loop, name="stats-lease", daemon=True)
        self._thread.start()
        return self

    def _try_all(self, counters) -> Optional[LockHeld]:
        legacy = self.redis.get(keys.LEGACY_LOCK) if self.scope != "check" else None
        if legacy:
            return LockHeld(
                str(legacy).split(" ")[0], self.redis.pttl(keys.LEGACY_LOCK), "every counter (release before)"
            )
        for counter in counters:
            answer = _ACQUIRE(self.redis, [keys.runs(counter.key)], [self.member, self.scope, self.ttl_ms])
            if answer[0] != 1:
                self._give_back(list(self.held))
                return LockHeld(_text(answer[1]), int(answer[2]), counter.key)
            if answer[1]:
                log.warning("freed what %d run(s) whose lease on %s ran out left behind", answer[1], counter.key)
            with self._lock:
                self.held.append(counter.key)
        return None

    def release(self, counter, insist: bool = True) -> int:
        """Give back the lease on ``counter`` and free the run's keys of it.

        With ``insist``, refuse (return 0) while ids wait in the run's late set: the
        caller rechecks them and asks again. Return 1 when released; raise
        :class:`LockLost` when the lease had expired before, since tracking for this run
        may have stopped then.
        """
        answer = _RELEASE(self.redis, [keys.runs(counter.key)], [self.member, self.token, "1" if insist else "0"])
        if answer == 0:
            return 0
        with self._lock:
            if counter.key in self.held:
                self.held.remove(counter.key)
        if answer == -1 and insist:
            raise LockLost(f"lost the lease on {counter.key} (expired or taken over); stopping")
        if answer == -2 and insist:
            raise PreviousWriters(previous_writers(counter.key))
        return 1

    def close(self):
        """Stop renewing and give back every lease still held (after a failure or a stop)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._give_back(list(self.held))

    def _give_back(self, held_keys):
        for key in held_keys:
            try:
                _RELEASE(self.redis, [keys.runs(key)], [self.member, self.token, "0"])
            except RedisError as exc:
                log.warning("could not give back the lease on %s (it will expire): %s", key, exc)
            with self._lock:
                if key in self.held:
                    self.held.remove(key)

    # -- keeping ------------------------------------------------------------------------

    def check(self):
        """Raise :class:`LockLost` if renewing a lease failed."""
        if self._lost.is_set():
            raise LockLost("lost a lease (expired or taken over); stopping")

    def _renew_loop(self):
        interval = self.ttl_ms / 3000
        while not self._done.wait(interval):
            with self._lock:
                held = list(self.held)
            for key in held:
                try:
                    if not _RENEW(self.redis, [keys.runs(key)], [self.member, self.ttl_ms]):
                        with self._lock:
                            still = key in self.held
                        if still:
                            self._lost.set()
                except RedisError as exc:
                    log.warning("could not renew the lease on %s: %s", key, exc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


_REAP_ONLY = Lua(NOW + _REAP + "return 1")


def reap_dead(redis, counter) -> None:
    """Free what runs whose lease on ``counter`` is gone left behind (a rebuild claim too)."""
    _REAP_ONLY(redis, [keys.runs(counter.key)])


def free_legacy_staging(redis, batch: int = 1000) -> int:
    """Free the staging keys a run of the release before left, once no such run holds its lock."""
    if redis.exists(keys.LEGACY_LOCK) or not redis.exists(keys.LEGACY_STAGING):
        return 0
    freed, cursor = 0, 0
    while True:
        cursor, names = redis.sscan(keys.LEGACY_STAGING, cursor, count=batch)
        if names:
            freed += redis.unlink(*names)
            redis.srem(keys.LEGACY_STAGING, *names)
        if cursor == 0:
            return freed


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
