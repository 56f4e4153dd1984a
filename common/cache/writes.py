"""The app's side of the counters: announce an increment, commit, then apply it.

A repair compares Redis with the database while the app keeps writing. It cannot tell
a committed row whose increment is still on its way from drift, so the app says so
first: before its commit it *announces* each delta (``{key}:inflight`` counts the
announced, not yet applied increments of an id), and after the commit it *applies*
them, which also settles the announcement. A repair never writes an id with an
announcement pending, and notes (in its ``{key}:track:<run>`` set) every id traffic
touches while it runs; together these make it exact however long an increment takes.

An increment whose announcement is missing (the announce failed, or Redis lost it in
a restart, or it outlived ``ttl``) is *unannounced*: a repair could not have waited for
it. While a repair is fixing the counter it is not applied; the id is left to that
repair (``{key}:late:<run>``), which reads it from the database before it lets go.
With no repair running it is applied as usual.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Optional

from common.cache import keys
from common.cache.script import NOW, Lua

#: The steps of one write, in order (the protocol model, common/cache/model, names them so).
WRITER_STEPS = ("announce", "commit", "apply")

#: Seconds an announcement lives without its increment (a writer that died is forgotten
#: then); it must be longer than any request, so longer than the web server's timeout.
DEFAULT_TTL = 300.0

_ANNOUNCE = Lua(
    NOW
    + """
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2] .. ':' .. ARGV[1])
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"""
)

_SETTLE = """
local function settle(inflight, ops, op, member)
  if op == '' or redis.call('ZREM', ops, op .. ':' .. member) == 0 then return false end
  if redis.call('HINCRBY', inflight, member, -1) <= 0 then redis.call('HDEL', inflight, member) end
  return true
end
"""

# KEYS: counter, runs, inflight, inflight ops. ARGV: id, amount, op ('' when unannounced).
# Settle the announcement; note the id for every live run; then increment, unless the
# increment is unannounced and a fixing run will read the id from the database instead.
# A count reaching 0 leaves the set. Returns 'applied', 'unannounced' or 'late'.
_APPLY = Lua(
    NOW
    + _SETTLE
    + """
local announced = settle(KEYS[3], KEYS[4], ARGV[3], ARGV[1])
local prefix = string.sub(KEYS[2], 1, -5)
local fixing = false
for _, run in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')) do
  local token, scope = string.match(run, '^(%S+) (%S+)')
  redis.call('SADD', prefix .. 'track:' .. token, ARGV[1])
  if scope ~= 'check' then
    fixing = true
    if not announced then redis.call('SADD', prefix .. 'late:' .. token, ARGV[1]) end
  end
end
if fixing and not announced then return 'late' end
local score = redis.pcall('ZINCRBY', KEYS[1], ARGV[2], ARGV[1])
if type(score) == 'table' and score.err then return score end
if tonumber(score) == 0 then redis.call('ZREM', KEYS[1], ARGV[1]) end
if announced then return 'applied' end
return 'unannounced'
"""
)

_RETRACT = Lua(
    _SETTLE
    + """
if settle(KEYS[1], KEYS[2], ARGV[2], ARGV[1]) then return 1 end
return 0
"""
)


@dataclass(frozen=True)
class Delta:
    """Add ``amount`` to the count of ``member_id`` in ``counter``."""

    counter: type
    member_id: int
    amount: int


def deltas(*items) -> list[Delta]:
    """Return the non-zero deltas among ``(counter, member id, amount)`` triples."""
    return [Delta(counter, member_id, amount) for counter, member_id, amount in items if amount]


@dataclass
class Announcement:
    """Deltas announced under ``op`` (None: not announced) and to be applied once committed."""

    deltas: list
    op: Optional[str] = None
    outcomes: list = field(default_factory=list)

    def _op(self, index: int) -> str:
        return f"{self.op}.{index}" if self.op else ""


def announce(redis, found: list, ttl: float = DEFAULT_TTL) -> Announcement:
    """Announce ``found`` before committing the change it comes from; raise RedisError on failure."""
    announcement = Announcement(list(found), uuid.uuid4().hex[:16])
    if not found:
        return announcement
    pipe = redis.pipeline(transaction=False)
    for index, delta in enumerate(announcement.deltas):
        key = delta.counter.key
        _ANNOUNCE(
            pipe,
            [keys.inflight(key), keys.inflight_ops(key)],
            [str(delta.member_id), announcement._op(index), int(ttl * 1000)],
        )
    pipe.execute()
    return announcement


def unannounced(found: list) -> Announcement:
    """Deltas to apply without an announcement (the announce failed)."""
    return Announcement(list(found))


def apply(redis, announcement: Announcement) -> list:
    """Apply committed deltas in one pipeline; return each one's outcome ('applied',
    'unannounced' or 'late'). Raise RedisError when Redis fails."""
    if not announcement.deltas:
        return []
    pipe = redis.pipeline(transaction=False)
    for index, delta in enumerate(announcement.deltas):
        key = delta.counter.key
        _APPLY(
            pipe,
            [key, keys.runs(key), keys.inflight(key), keys.inflight_ops(key)],
            [str(delta.member_id), delta.amount, announcement._op(index)],
        )
    announcement.outcomes = pipe.execute()
    return announcement.outcomes


def retract(redis, announcement: Announcement) -> None:
    """Withdraw the announcement of a change that was not committed."""
    if not announcement.op or not announcement.deltas:
        return
    pipe = redis.pipeline(transaction=False)
    for index, delta in enumerate(announcement.deltas):
        key = delta.counter.key
        _RETRACT(pipe, [keys.inflight(key), keys.inflight_ops(key)], [str(delta.member_id), announcement._op(index)])
    pipe.execute()
