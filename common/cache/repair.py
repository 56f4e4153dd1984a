"""The repair of one counter by one run (README, "How the repair works").

The run holds a lease on the counter (:mod:`common.cache.lease`): from then on the app's
increments note the ids they touch in the run's tracking set, and announce themselves
before their commit (:mod:`common.cache.writes`). An id is *quiet* when no increment of
it is announced and none touched it since the run last looked; a quiet id's score can be
compared with the database's count, and written by a script that checks the lease and
the quietness again (:mod:`common.cache.candidates`).

- ``reconcile``: stream the counter's GROUP BY in id order and compare each batch with
  Redis in one MULTI (announcements, scores, tracking). A quiet id whose score differs
  is written from the streamed count at once: quiet since before the snapshot, its
  count is still the database's. Any other id becomes a candidate. Then sweep: members
  Redis holds that the stream did not count (a walk in the set's order): junk is removed, quiet strays are
  removed, the others become candidates. No walk when the set provably holds only the
  streamed ids (no traffic touched it, and it has as many members as the stream ids).
- ``check``: the same, writing nothing (a key of the wrong type: all of it is wrong).
- ``rebuild`` (a missing or wrong-type key, or ``--rebuild``): build the whole counter
  under a staging key and swap it in (UNLINK + RENAME, refused if staging lost a member).
- ``catch_up``: recheck every id traffic touched and every id with an increment announced
  (after a rebuild, whatever its shard), then the ids whose unannounced increments were
  left to this run, then give back the lease, atomically with no id left waiting.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from itertools import chain

from common.cache import keys
from common.cache.candidates import Candidate, Candidates, parts, same
from common.cache.lease import FENCE
from common.cache.members import IdBitmap, owned_by, parse_member, parse_members
from common.cache.report import Drift
from common.cache.script import NOW, Lua
from common.exceptions import LockLost, StagingLost, StatsError

# KEYS: counter, runs. ARGV: lease, members... Junk is never touched by the app.
_REMOVE = Lua(NOW + FENCE + "return redis.call('ZREM', KEYS[1], unpack(ARGV, 2))")

# KEYS: counter, runs, staging. ARGV: lease, members written. UNLINK first, so the old
# value is freed in the background rather than by RENAME's blocking DEL. Returns
# {1, size of the old value (-1 when it was no sorted set)}; -1 lease lost; -3 staging short.
_SWAP = Lua(
    NOW
    + FENCE
    + """
if redis.call('ZCARD', KEYS[3]) ~= tonumber(ARGV[2]) then return -3 end
local old = -1
if redis.call('TYPE', KEYS[1])['ok'] == 'zset' then old = redis.call('ZCARD', KEYS[1]) end
redis.call('UNLINK', KEYS[1])
if tonumber(ARGV[2]) > 0 then redis.call('RENAME', KEYS[3], KEYS[1]) end
return {1, old}
"""
)

# KEYS: rebuild claim, runs. ARGV: lease, token. 1 claimed, 0 another run's, -1 lease lost.
_CLAIM = Lua(
    NOW
    + FENCE
    + """
if redis.call('SET', KEYS[1], ARGV[2], 'NX') then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[2] then return 1 end
return 0
"""
)

# KEYS: inflight, inflight ops. ARGV: limit. Forget announcements whose writer is gone.
_REAP_INFLIGHT = Lua(
    NOW
    + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, op in ipairs(gone) do
  redis.call('ZREM', KEYS[2], op)
  local member = string.match(op, '^[^:]*:(.*)$')
  if redis.call('HINCRBY', KEYS[1], member, -1) <= 0 then redis.call('HDEL', KEYS[1], member) end
end
return #gone
"""
)

#: Members of each page of the sweep that may anchor the next (their scores come back).
ANCHORS = 16

# KEYS: counter. ARGV: page size, then anchors newest first (member, score). Returns
# {members of the page, scores of its last ANCHORS members} for the page after the newest
# anchor that still has its score (the first page without anchors), or -1 when none has.
_PAGE = Lua(
    """
local start = 0
if #ARGV > 1 then
  start = -1
  for i = 2, #ARGV, 2 do
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if score and tonumber(score) == tonumber(ARGV[i + 1]) then
      start = redis.call('ZRANK', KEYS[1], ARGV[i]) + 1
      break
    end
  end
  if start < 0 then return -1 end
end
local page = redis.call('ZRANGE', KEYS[1], start, start + tonumber(ARGV[1]) - 1)
local tail = {}
if #page > 0 then
  tail = redis.call('ZMSCORE', KEYS[1], unpack(page, math.max(1, #page - %d + 1)))
end
return {page, tail}
"""
    % ANCHORS
)

#: Walks of the sweep started again because every anchor moved, before the counter fails.
RESTARTS = 5

#: Rounds of rechecking late ids before a release that keeps finding new ones gives up.
LATE_ROUNDS = 50


class CounterRepair:
    """One counter's repair within a run: the candidates, the ids seen, the connection."""

    def __init__(self, run, counter, result):
        self.run = run
        self.redis = run.redis
        self.counter = counter
        self.key = counter.key
        self.result = result
        self.lease = run.leases.member
        self.dry_run = run.dry_run
        self.all_shards = False
        self.seen = IdBitmap()
        self.streamed = 0  # ids the reconcile's stream counted (each once)
        self.track = keys.track(self.key, run.token)
        self.late = keys.late(self.key, run.token)
        self.inflight = keys.inflight(self.key)
        self.conn = None
        self.candidates = Candidates(self)

    def close(self, failed: bool = False):
        """Hand the re-count connection back (a failed one is dropped: it may be broken)."""
        if self.conn is not None:
            if failed:
                self.conn.invalidate()
            self.conn.close()
            self.conn = None

    def counts(self, member_ids, rows: int = 0) -> dict:
        """Re-count ids (holding about ``rows`` rows) in the database, on a connection opened
        the first time it is needed."""
        if self.conn is None:
            self.conn = self.run.source.connect()
        return self.run.source.counts(self.conn, self.counter, member_ids, rows)

    @contextmanager
    def snapshot(self):
        """Hold a snapshot of the database on the re-count connection while the block runs
        (:meth:`Source.snapshot`): :meth:`counts` inside it answers from that instant."""
        if self.conn is None:
            self.conn = self.run.source.connect()
        with self.run.source.snapshot(self.conn):
            yield

    def at(self, name, **context):
        self.run.at(name, self.counter, **context)

    def stream(self, shard):
        """The counter's stream over ``shard``: the one the run started ahead, or a new one."""
        return self.run.take_stream(self.counter, shard) or self.run.source.stream(
            self.counter, shard, on_snapshot=lambda: self.at("snapshot")
        )

    # -- the reconcile pass -------------------------------------------------------------

    def reconcile(self):
        """Compare the counter with the database, writing (or, checking, reporting) what differs."""
        self.result.mode = "check" if self.dry_run else "reconcile"
        with self.stream(self.run.shard) as batches:
            for chunk in batches:
                self.run.begin_next(self.counter)  # its rows arrive: the next query may start
                self.run.beat()
                self._compare(chunk)
                self.streamed += len(chunk)
                self.result.scanned += len(chunk)
                self.run.on_progress(self.key, len(chunk))
                self.candidates.settle(force=False)
        self.run.begin_next(self.counter)
        if not self._nothing_stray():
            self._sweep()
        self.candidates.settle(force=True)

    def _compare(self, chunk):
        ids, counts = chunk.ids, chunk.counts
        members = list(map(str, ids))
        pending, scores, touched = self.candidates.look(members)
        self.at("stream_batch", members=members)
        self.seen.add_many(ids)
        if pending is None:  # nothing announced or tracked: every member is quiet
            if scores == counts:
                return
            stable = [
                (Candidate(members[at], ids[at], 0.0), scores[at], counts[at])
                for at, (score, count) in enumerate(zip(scores, counts))
                if score != count
            ]
            self.candidates.write(stable, counter_quiet=True)
            return
        stable = []
        for member_id, count, member, busy, score, moved in zip(ids, counts, members, pending, scores, touched):
            if busy or moved:
                self.candidates.queue(member, member_id, fresh=False)
            elif score != count:
                stable.append((Candidate(member, member_id, 0.0), score, count))
        self.candidates.write(stable)

    def _nothing_stray(self) -> bool:
        """Tell, without walking the set, that it holds no member the stream did not count.

        So when no increment touched the counter since its tracking began (its tracking set
        is empty and none of its ids ever became a candidate, whose second look would
        have emptied it) and none is announced: then only this run wrote the set, every
        streamed id is in it with its count, and a set of as many members as the stream
        counted ids holds those and nothing else. A sharded run shares the set with the
        other shards, and a check leaves wrong members as they were: both walk it.
        """
        size = tracked = announced = None
        if self.run.shard is None and not self.dry_run and not self.candidates.disturbed:
            pipe = self.redis.pipeline(transaction=True)
            pipe.zcard(self.key)
            pipe.scard(self.track)
            pipe.hlen(self.inflight)
            size, tracked, announced = pipe.execute()
        self.at("stray_count", size=size, streamed=self.streamed, tracked=tracked)
        return tracked == 0 and announced == 0 and size == self.streamed

    def _sweep(self):
        """Remove what Redis holds that the stream did not count: junk, and quiet strays.

        The members are walked in the set's order a page at a time (ZRANGE by rank, no
        scores: a fifth of ZSCAN's cost in Redis), each page starting after an *anchor*:
        the newest member of the pages before that still has the score it had then, so
        its place in the order is unchanged. Every member present all along with an
        unchanged score is then met (members changed by traffic are tracked and rechecked
        in the final pass); one met twice is harmless. A walk whose every anchor moved
        starts again from the first member.
        """
        anchors: deque = deque(maxlen=4 * ANCHORS)  # the tails of the last pages
        restarts = removed = 0
        while True:
            self.run.beat()
            answer = _PAGE(self.redis, [self.key], [self.run.batch_size, *chain.from_iterable(reversed(anchors))])
            if answer == -1:  # every anchor moved: walk again from the start
                restarts += removed == 0  # a walk that removed strays has progressed
                if restarts > RESTARTS:
                    raise StatsError(f"{self.key} kept changing under the sweep for strays; run the fix again")
                anchors.clear()
                removed = 0
                continue
            members, tail = answer
            self.at("sweep_batch", members=members)
            ids = parse_members(members)
            junk, strays = [], []
            if self.run.shard is None and None not in ids:
                strays = [members[at] for at in self.seen.absent(ids)]
            else:
                junk = [m for m, i in zip(members, ids) if i is None and owned_by(self.run.shard, None)]
                strays = [m for m, i in zip(members, ids) if self._stray(i)]
            # Any member may anchor: one the sweep removes or writes is passed over later.
            anchors.extend(list(zip(members[len(members) - len(tail) :], tail))[-ANCHORS:])
            removed += len(strays) + len(junk)
            for part in parts(strays):
                self._strays(part)
            for part in parts(junk):
                self._remove_junk(list(zip(part, self.redis.zmscore(self.key, part))))
            self.candidates.settle(force=False)
            if len(members) < self.run.batch_size:
                return

    def _stray(self, member_id) -> bool:
        return member_id is not None and owned_by(self.run.shard, member_id) and member_id not in self.seen

    def _strays(self, members):
        self.result.scanned += len(members)
        pending, scores, touched = self.candidates.look(members)
        counter_quiet = pending is None
        if counter_quiet:
            pending = touched = [None] * len(members)
        stable = []
        for member, busy, score, moved in zip(members, pending, scores, touched):
            if busy or moved:
                self.candidates.queue(member, parse_member(member), fresh=False)
            elif score is not None:  # quiet since before the snapshot, which did not count it
                stable.append((Candidate(member, parse_member(member), 0.0), score, None))
        self.candidates.write(stable, counter_quiet=counter_quiet)

    def _remove_junk(self, junk):
        self.result.scanned += len(junk)
        self.result.wrong += len(junk)
        for member, score in junk:
            self.example(member, score, 0)
        if not self.dry_run:
            removed = _REMOVE(self.redis, [self.key, keys.runs(self.key)], [self.lease, *[m for m, _ in junk]])
            if removed == -1:
                raise LockLost(f"lost the lease on {self.key} (expired or taken over); stopping")
            self.result.removed += removed

    def count_unreadable(self, kind: str):
        """Check a key of the wrong type: every member the database counts is wrong."""
        self.result.mode = "check"
        self.result.note = f"key holds a {kind}, not a sorted set"
        with self.stream(self.run.shard) as batches:
            for chunk in batches:
                self.run.begin_next(self.counter)
                self.run.beat()
                self.result.scanned += len(chunk)
                self.result.wrong += len(chunk)
                for member_id, count in zip(chunk.ids, chunk.counts):
                    self.example(member_id, f"<{kind} key>", count)
        self.run.begin_next(self.counter)

    # -- candidates ---------------------------------------------------------------------

    def example(self, member, score, right):
        if len(self.result.examples) < self.run.max_examples:
            self.result.examples.append(Drift(self.key, str(member), score, int(right)))

    # -- rebuild --------------------------------------------------------------------------

    def claim(self) -> bool:
        """Claim the rebuild of this counter, so one run at a time rebuilds it."""
        answer = _CLAIM(self.redis, [keys.rebuild_claim(self.key), keys.runs(self.key)], [self.lease, self.run.token])
        if answer == -1:
            raise LockLost(f"lost the lease on {self.key} (expired or taken over); stopping")
        self.at("claim", claimed=bool(answer))
        return bool(answer)

    def rebuild(self, kind: str, reason: str):
        """Build the whole counter under a staging key and swap it in atomically."""
        result = self.result
        result.mode, result.note = "rebuild", reason
        staging = keys.staging(self.key, self.run.token)
        written = present = 0
        swapped = False
        try:
            with self.stream(None) as batches:
                for chunk in batches:
                    self.run.begin_next(self.counter)
                    self.run.beat()
                    members = list(map(str, chunk.ids))
                    pieces = list(parts(list(zip(members, chunk.counts))))
                    pipe = self.redis.pipeline(transaction=False)  # the batch's commands in one round trip
                    for part in pieces:
                        if kind == "zset":
                            pipe.zmscore(self.key, [member for member, _ in part])
                        pipe.execute_command("ZADD", staging, *chain.from_iterable((c, m) for m, c in part))
                    replies = pipe.execute()
                    for at, part in enumerate(pieces):
                        if kind == "zset":
                            for (member, count), score in zip(part, replies[2 * at]):
                                present += score is not None
                                if not same(score, count):
                                    result.wrong += 1
                                    result.added += score is None
                                    result.changed += score is not None
                                    self.example(member, score, count)
                        else:
                            result.wrong += len(part)
                            result.added += len(part)
                    self.at("rebuild_batch", members=members)
                    written += len(members)
                    result.scanned += len(members)
                    self.run.on_progress(self.key, len(members))
            self.run.begin_next(self.counter)
            self.run.beat()
            answer = _SWAP(self.redis, [self.key, keys.runs(self.key), staging], [self.lease, written])
            if answer == -1:
                raise LockLost(f"lost the lease on {self.key} (expired or taken over); stopping")
            if answer == -3:
                raise StagingLost(
                    f"the staging key {staging} lost members before the swap "
                    "(something freed it); the live counter was left as it was"
                )
            swapped = True
            self.at("swap")
            old = answer[1]
            if kind == "zset" and old > present:
                result.wrong += old - present
                result.removed += old - present
        finally:
            if not swapped:
                self.redis.unlink(staging)
        self.all_shards = True  # the swap replaced every shard's members

    # -- the end ----------------------------------------------------------------------------

    def reap_inflight(self):
        reap_inflight(self.run, self.key)

    def catch_up(self):
        """Recheck what traffic touched, then give back the lease once no id waits as late."""
        self.at("final_pass")
        self.candidates.final = True
        # An id may be unresolved, announced and touched at once: check it once. The ids
        # kept aside are few (skips and increments in flight); the touched ones are not.
        queued = set(self.candidates.unresolved)
        for member in self.candidates.unresolved:
            self.candidates.queue(member, parse_member(member))
        self.candidates.unresolved = []
        # Ids with an increment on its way: one committed before the snapshot hides drift
        # until it lands (and after a rebuild it would land on top of a count that has it).
        self._queue_set(self.inflight, self.redis.hscan, shard_only=not self.all_shards, once=queued)
        self._queue_set(self.track, self.redis.sscan, shard_only=not self.all_shards, once=queued, remember=False)
        self.candidates.settle(force=True)
        for _ in range(LATE_ROUNDS):
            if not self.dry_run:
                self._queue_set(self.late, self.redis.sscan, shard_only=False, once=set())
                self.candidates.settle(force=True)
            if self.run.leases.release(self.counter):
                self.at("release")
                return
        raise StatsError(f"ids of {self.key} kept arriving with unannounced increments; run the fix again")

    def _queue_set(self, name, scan, shard_only: bool, once: set, remember: bool = True):
        """Make the ids of a set (or hash) candidates, but not those in ``once`` (to which
        they are added, with ``remember``)."""
        cursor = 0
        while True:
            self.run.beat()
            cursor, items = scan(name, cursor, count=self.run.batch_size)
            for member in items:
                member_id = parse_member(member)
                if member_id is None or member in once or (shard_only and not owned_by(self.run.shard, member_id)):
                    continue
                if remember:
                    once.add(member)
                self.candidates.queue(member, member_id)
            self.candidates.settle(force=False)
            if cursor == 0:
                return


def reap_inflight(run, key: str, limit: int = 500):
    """Forget the announcements on ``key`` whose deadline passed: their writers died or gave up."""
    while _REAP_INFLIGHT(run.redis, [keys.inflight(key), keys.inflight_ops(key)], [limit]) >= limit:
        run.beat()
