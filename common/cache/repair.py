"""The repair of one counter by one run (README, "How the repair works").

The run holds a lease on the counter, so the app's increments note the ids they touch in
the run's tracking set, and announce the increments they are about to make. An id is
*quiet* when no increment of it is announced and none touched it since the run last
looked: then Redis and the database can be compared, and a compare-and-set script
(which checks the lease and quietness again, atomically) writes the database's count.

1. ``reconcile``: stream the counter's GROUP BY in id order and compare each batch with
   Redis in one MULTI (announcements, scores, tracking). A quiet id whose score differs
   from the streamed count is written at once: quiet since before the snapshot, its count
   is still the database's. Any other id becomes a candidate.
2. Sweep: members Redis holds that the stream did not count are found with ZSCAN; junk
   (not an id) is removed, quiet strays are removed, others become candidates.
3. Candidates are looked at again after ``settle`` seconds: observed in Redis (which
   resets their tracking), re-counted in the database, then written or confirmed, all
   only while they stay quiet. One that never does is left for the final pass, then
   reported as skipped.
4. ``rebuild`` (a missing or wrong-type key, or ``--rebuild``): build the whole counter
   under a staging key and swap it in (UNLINK + RENAME, refused if staging lost a member).
5. ``finish``: recheck every id traffic touched and every id with an increment announced
   (after a rebuild, whatever its shard), then the ids whose unannounced increments were
   left to this run, then give back the lease, atomically with the late set being empty.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from common.cache import keys
from common.cache.lease import FENCE, previous_writers
from common.cache.members import IdBitmap, owned_by, parse_member
from common.cache.report import Drift
from common.cache.script import NOW, Lua
from common.exceptions import LockLost, PreviousWriters, StagingLost, StatsError

# KEYS: counter, runs, track, inflight, canary. ARGV: lease, id, expected score ('' absent),
# new count ('' remove). 1 written, 0 not quiet or changed, -1 lease lost, -2 old writers.
_CAS = Lua(NOW + FENCE + """
if redis.call('SCARD', KEYS[5]) > 1 then return -2 end
if redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[4], ARGV[2]) == 1 then return 0 end
local cur = redis.call('ZSCORE', KEYS[1], ARGV[2])
if ARGV[3] == '' then
  if cur then return 0 end
elseif (not cur) or tonumber(cur) ~= tonumber(ARGV[3]) then return 0 end
if ARGV[4] == '' then redis.call('ZREM', KEYS[1], ARGV[2]) else redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2]) end
return 1
""")

# KEYS: counter, runs. ARGV: lease, members... Junk is never touched by the app.
_REMOVE = Lua(NOW + FENCE + "return redis.call('ZREM', KEYS[1], unpack(ARGV, 2))")

# KEYS: counter, runs, staging. ARGV: lease, members written. UNLINK first, so the old
# value is freed in the background rather than by RENAME's blocking DEL. Returns
# {1, size of the old value (-1 when it was no sorted set)}; -1 lease lost; -3 staging short.
_SWAP = Lua(NOW + FENCE + """
if redis.call('ZCARD', KEYS[3]) ~= tonumber(ARGV[2]) then return -3 end
local old = -1
if redis.call('TYPE', KEYS[1])['ok'] == 'zset' then old = redis.call('ZCARD', KEYS[1]) end
redis.call('UNLINK', KEYS[1])
if tonumber(ARGV[2]) > 0 then redis.call('RENAME', KEYS[3], KEYS[1]) end
return {1, old}
""")

# KEYS: rebuild claim, runs. ARGV: lease, token. 1 claimed, 0 another run's, -1 lease lost.
_CLAIM = Lua(NOW + FENCE + """
if redis.call('SET', KEYS[1], ARGV[2], 'NX') then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[2] then return 1 end
return 0
""")

# KEYS: inflight, inflight ops. ARGV: limit. Forget announcements whose writer is gone.
_REAP_INFLIGHT = Lua(NOW + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, op in ipairs(gone) do
  redis.call('ZREM', KEYS[2], op)
  local member = string.match(op, '^[^:]*:(.*)$')
  if redis.call('HINCRBY', KEYS[1], member, -1) <= 0 then redis.call('HDEL', KEYS[1], member) end
end
return #gone
""")

#: Rounds of rechecking late ids before a release that keeps finding new ones gives up.
LATE_ROUNDS = 50


@dataclass
class _Candidate:
    member: str
    member_id: int
    due: float
    attempts: int = 0


def _count(value):
    """Normalise a database count: 0 means the member is absent."""
    return int(value) if value else None


def _same(score, count) -> bool:
    if score is None or count is None:
        return score is None and count is None
    return score == count


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
        self.pending: deque = deque()
        self.unresolved: list = []
        self.final = False
        self.all_shards = False
        self.seen = IdBitmap()
        self.track = keys.track(self.key, run.token)
        self.late = keys.late(self.key, run.token)
        self.inflight = keys.inflight(self.key)
        self.conn = None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if self.conn is not None:
            if kind is not None:
                self.conn.invalidate()  # it may be broken: do not hand it back to the pool
            self.conn.close()
        return False

    def _counts(self, member_ids) -> dict:
        """Re-count ids in the database, on a connection opened the first time it is needed."""
        if self.conn is None:
            self.conn = self.run.source.connect()
        return self.run.source.counts(self.conn, self.counter, member_ids)

    def at(self, name, **context):
        self.run.at(name, self.counter, **context)

    # -- the reconcile pass -------------------------------------------------------------

    def reconcile(self):
        """Compare the counter with the database, writing (or, checking, reporting) what differs."""
        self.result.mode = "check" if self.dry_run else "reconcile"
        batches = self.run.source.stream(self.counter, self.run.shard, on_snapshot=lambda: self.at("snapshot"))
        for chunk in batches:
            self.run.beat()
            self._compare(chunk)
            self.result.scanned += len(chunk)
            self.run.on_progress(self.key, len(chunk))
            self._settle(force=False)
        self._sweep()
        self._settle(force=True)

    def _compare(self, chunk):
        members = [str(m) for m, _ in chunk]
        pending, scores, touched = self._look(members)
        self.at("stream_batch", members=members)
        stable = []
        for (member_id, count), member, busy, score, moved in zip(chunk, members, pending, scores, touched):
            self.seen.add(int(member_id))
            if busy or moved:
                self._queue(member, int(member_id), fresh=False)
            elif not _same(score, _count(count)):
                stable.append((_Candidate(member, int(member_id), 0.0), score, _count(count)))
        self._write(stable)

    def _sweep(self):
        """Remove what Redis holds that the stream did not count: junk, and quiet strays."""
        cursor = 0
        while True:
            self.run.beat()
            cursor, items = self.redis.zscan(self.key, cursor, count=self.run.batch_size)
            self.at("sweep_batch", members=[m for m, _ in items])
            junk = [(m, s) for m, s in items if parse_member(m) is None and owned_by(self.run.shard, None)]
            strays = [m for m, _ in items if self._stray(parse_member(m))]
            for start in range(0, len(strays), self.run.batch_size):
                self._strays(strays[start : start + self.run.batch_size])
            if junk:
                self._remove_junk(junk)
            self._settle(force=False)
            if cursor == 0:
                return

    def _stray(self, member_id) -> bool:
        return member_id is not None and owned_by(self.run.shard, member_id) and member_id not in self.seen

    def _strays(self, members):
        self.result.scanned += len(members)
        pending, scores, touched = self._look(members)
        stable = []
        for member, busy, score, moved in zip(members, pending, scores, touched):
            if busy or moved:
                self._queue(member, parse_member(member), fresh=False)
            elif score is not None:  # quiet since before the snapshot, which did not count it
                stable.append((_Candidate(member, parse_member(member), 0.0), score, None))
        self._write(stable)

    def _remove_junk(self, junk):
        self.result.scanned += len(junk)
        self.result.wrong += len(junk)
        for member, score in junk:
            self._example(member, score, 0)
        if not self.dry_run:
            removed = _REMOVE(self.redis, [self.key, keys.runs(self.key)], [self.lease, *[m for m, _ in junk]])
            if removed == -1:
                raise LockLost(f"lost the lease on {self.key} (expired or taken over); stopping")
            self.result.removed += removed

    def count_unreadable(self, kind: str):
        """Check a key of the wrong type: every member the database counts is wrong."""
        self.result.mode = "check"
        self.result.note = f"key holds a {kind}, not a sorted set"
        for chunk in self.run.source.stream(self.counter, self.run.shard):
            self.run.beat()
            self.result.scanned += len(chunk)
            self.result.wrong += len(chunk)
            for member_id, count in chunk:
                self._example(member_id, f"<{kind} key>", count)

    # -- candidates ---------------------------------------------------------------------

    def _look(self, members):
        """Read announcements, scores and tracking of ``members`` at one instant (MULTI)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hmget(self.inflight, members)
        pipe.zmscore(self.key, members)
        pipe.smismember(self.track, members)
        return pipe.execute()

    def _queue(self, member, member_id, fresh=True):
        """Make a member a candidate: due now (``fresh``) or after the settle delay."""
        due = 0.0 if fresh else time.monotonic() + self.run.settle
        self.pending.append(_Candidate(member, member_id, due))

    def _settle(self, force: bool):
        """Look at due candidates again, a full batch at a time (every re-count of a counter
        without an index on its member column is a table scan), all of them with ``force``."""
        while self.pending:
            if not force and len(self.pending) < self.run.batch_size:
                return
            wait = self.pending[0].due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            ready = []
            now = time.monotonic()
            while self.pending and len(ready) < self.run.batch_size and self.pending[0].due <= now:
                ready.append(self.pending.popleft())
            if ready:
                self.run.beat()
                self._recheck(ready)

    def _recheck(self, ready):
        members = [c.member for c in ready]
        pipe = self.redis.pipeline(transaction=True)  # observe: reset tracking, read, at one instant
        pipe.srem(self.track, *members)
        if not self.dry_run:
            pipe.srem(self.late, *members)
        pipe.hmget(self.inflight, members)
        pipe.zmscore(self.key, members)
        pending, scores = pipe.execute()[-2:]
        self.at("observe", members=members)
        quiet = []
        for cand, busy, score in zip(ready, pending, scores):
            if busy:
                self._retry(cand)  # its increment is on its way: look again later
            else:
                quiet.append((cand, score))
        if not quiet:
            return
        counts = self._counts([c.member_id for c, _ in quiet])
        self.at("recount", members=[c.member for c, _ in quiet])
        stable, equal = [], []
        for cand, score in quiet:
            count = _count(counts.get(cand.member_id))
            (equal if _same(score, count) else stable).append((cand, score, count))
        self._confirm(equal, report=False)
        self._write(stable)

    def _confirm(self, items, report: bool):
        """Keep the items still quiet and unchanged since they were observed; retry the rest.
        With ``report``, each one kept is drift that a check reports."""
        if not items:
            return
        members = [cand.member for cand, _, _ in items]
        pipe = self.redis.pipeline(transaction=True)
        pipe.smismember(self.track, members)
        pipe.hmget(self.inflight, members)
        pipe.zmscore(self.key, members)
        touched, pending, scores = pipe.execute()
        for (cand, score, count), moved, busy, now in zip(items, touched, pending, scores):
            if moved or busy or not _same(now, score):
                self._retry(cand)
            elif report:
                self.result.wrong += 1
                self._example(cand.member, score, count or 0)

    def _write(self, items):
        """Compare-and-set each ``(candidate, score read, count)``: the count is written only
        if the member is still quiet, its lease live and its score the one read."""
        if not items:
            return
        if self.dry_run:
            self._confirm(items, report=True)
            return
        pipe = self.redis.pipeline(transaction=False)
        counter_keys = [self.key, keys.runs(self.key), self.track, self.inflight, keys.canary(self.key)]
        for cand, score, count in items:
            _CAS(pipe, counter_keys, [self.lease, cand.member, "" if score is None else repr(score),
                                      "" if count is None else str(count)])
        answers = pipe.execute()
        self.at("write", members=[cand.member for cand, _, _ in items])
        for (cand, score, count), answer in zip(items, answers):
            if answer == -1:
                raise LockLost(f"lost the lease on {self.key} (expired or taken over); stopping")
            if answer == -2:
                raise PreviousWriters(previous_writers(self.key))
            if answer == 0:
                self._retry(cand)
                continue
            self.result.wrong += 1
            self._example(cand.member, score, count or 0)
            if count is None:
                self.result.removed += 1
            elif score is None:
                self.result.added += 1
            else:
                self.result.changed += 1

    def _retry(self, cand):
        cand.attempts += 1
        if cand.attempts < self.run.attempts:
            cand.due = time.monotonic() + self.run.settle
            self.pending.append(cand)
        elif self.final:
            self.result.skip(cand.member)
        else:
            self.unresolved.append(cand.member)  # one more round in the final pass

    def _example(self, member, score, right):
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
            for chunk in self.run.source.stream(self.counter, on_snapshot=lambda: self.at("snapshot")):
                self.run.beat()
                mapping = {str(m): int(n) for m, n in chunk}
                if kind == "zset":
                    for (member, count), score in zip(mapping.items(), self.redis.zmscore(self.key, list(mapping))):
                        present += score is not None
                        if not _same(score, count):
                            result.wrong += 1
                            result.added += score is None
                            result.changed += score is not None
                            self._example(member, score, count)
                else:
                    result.wrong += len(mapping)
                    result.added += len(mapping)
                self.redis.zadd(staging, mapping)
                self.at("rebuild_batch", members=list(mapping))
                written += len(mapping)
                result.scanned += len(mapping)
                self.run.on_progress(self.key, len(mapping))
            self.run.beat()
            answer = _SWAP(self.redis, [self.key, keys.runs(self.key), staging], [self.lease, written])
            if answer == -1:
                raise LockLost(f"lost the lease on {self.key} (expired or taken over); stopping")
            if answer == -3:
                raise StagingLost(f"the staging key {staging} lost members before the swap "
                                  "(something freed it); the live counter was left as it was")
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

    def reap_inflight(self, limit: int = 500):
        """Forget announcements whose deadline passed: their writers died or gave up."""
        while _REAP_INFLIGHT(self.redis, [self.inflight, keys.inflight_ops(self.key)], [limit]) >= limit:
            self.run.beat()

    def finish(self):
        """Recheck what traffic touched, then give back the lease once no id waits as late."""
        self.at("final_pass")
        self.final = True
        self._queue_set(self.track, self.redis.sscan, shard_only=not self.all_shards)
        for member in self.unresolved:
            self._queue(member, parse_member(member))
        self.unresolved = []
        # Ids with an increment on its way: one committed before the snapshot hides drift
        # until it lands (and after a rebuild it would land on top of a count that has it).
        self._queue_set(self.inflight, self.redis.hscan, shard_only=not self.all_shards)
        self._settle(force=True)
        for _ in range(LATE_ROUNDS):
            if not self.dry_run:
                self._queue_set(self.late, self.redis.sscan, shard_only=False)
                self._settle(force=True)
            if self.run.leases.release(self.counter):
                self.at("release")
                return
        raise StatsError(f"ids of {self.key} kept arriving with unannounced increments; run the fix again")

    def _queue_set(self, name, scan, shard_only: bool):
        cursor = 0
        while True:
            self.run.beat()
            cursor, items = scan(name, cursor, count=self.run.batch_size)
            for member in items:
                member_id = parse_member(member)
                if member_id is not None and (not shard_only or owned_by(self.run.shard, member_id)):
                    self._queue(member, member_id)
            self._settle(force=False)
            if cursor == 0:
                return
