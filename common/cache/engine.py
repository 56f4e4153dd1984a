"""The repair engine: make every Redis counter equal to what the database says.

How one counter is repaired (see README, "How the repair works"):

1. Reconcile pass. Stream the counter's GROUP BY from the database in member order,
   ``batch_size`` rows at a time, and compare each batch with one ZMSCORE. A mismatch is
   only a *candidate*: the app commits first and bumps Redis a moment later, so a
   difference may be an increment in flight.
2. Settle. After ``settle`` seconds, candidates are read again, Redis first and then the
   database. Equal now: it was traffic, nothing to do. Both reads unchanged: the drift is
   stable and is corrected with a compare-and-set script (write only if the score is
   still the one read). Anything else is retried a few times, then reported as skipped
   and left for the next run; never guessed.
3. Sweep for strays. Members in Redis that the database does not count (stale ids, junk
   members, zero scores) are found with ZSCAN, checked against the database by id and
   removed the same way. The sweep is skipped when ZCARD proves there are no strays.

A missing key, a key of the wrong type, or ``rebuild=True`` builds a replacement under
a staging key in the live key's hash slot, swaps it in atomically (UNLINK + RENAME in
one script), then runs the reconcile pass to catch what traffic changed meanwhile.

Memory is bounded by ``batch_size`` (plus the candidate queue, capped at a few
batches); no Redis command carries more than ``batch_size`` members.
"""
from __future__ import annotations

import logging
import math
from array import array
from bisect import bisect_left, insort
import queue
import re
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Optional

from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import SQLAlchemyError

from common.cache.plan import has_index
from common.cache.statistic import Statistic
from common.exceptions import Interrupted, LockLost, StatsError

log = logging.getLogger(__name__)

#: Redis set listing the staging keys of runs in progress, so a killed run's are freed.
STAGING_REGISTRY = "stats:fix:staging"
#: Session tmp_table_size for a streamed GROUP BY on MySQL/MariaDB (server memory,
#: per running stream, only while it runs).
TMP_TABLE_BYTES = 128 * 1024 * 1024
#: Staging keys expire on their own if everything else fails.
STAGING_TTL_SECONDS = 6 * 3600

# A member is an id: a canonical non-negative integer that fits BIGINT UNSIGNED.
_ID = re.compile(r"^(0|[1-9][0-9]{0,19})$")
_MAX_ID = 2**64 - 1

# Set a member's score to ARGV[3] (or remove it when ARGV[3] is '') only if its score
# still equals ARGV[2] ('' meaning absent). One member per call: never a long loop.
_CAS = """
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  if cur then return 0 end
else
  if (not cur) or tonumber(cur) ~= tonumber(ARGV[2]) then return 0 end
end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
"""

# Replace KEYS[1] with KEYS[2] atomically; an absent staging key means "empty counter".
# UNLINK first so the old value is freed in the background, not by RENAME's blocking DEL;
# with ARGV[1] == '1' a sorted-set old value is moved aside to KEYS[3] instead (after a
# rebuild of a missing key it holds exactly what traffic touched during the build).
# Returns the old value's member count when it was a sorted set, else -1.
_SWAP = """
local old = -1
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'zset' then old = redis.call('ZCARD', KEYS[1]) end
if ARGV[1] == '1' and kind == 'zset' then
  redis.call('RENAME', KEYS[1], KEYS[3])
else
  redis.call('UNLINK', KEYS[1])
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PERSIST', KEYS[2])
  redis.call('RENAME', KEYS[2], KEYS[1])
end
return old
"""


_END = object()


@dataclass
class _Failed:
    exc: BaseException


def parse_member(member) -> Optional[int]:
    """Return the id a member names, or None when it is not a canonical id (junk)."""
    if isinstance(member, bytes):
        member = member.decode("utf-8", "replace")
    if member.isascii() and member.isdigit() and member[0] != "0" and len(member) < 20:  # common case, no regex
        return int(member)
    if not _ID.match(member):
        return None
    value = int(member)
    return value if value <= _MAX_ID else None


class IdBitmap:
    """The ids a reconcile pass saw in the database, so the stray sweep needs no queries.

    Dense small ids take one bit each (1 MB covers 8 million ids); ids at or above
    ``limit`` (snowflake ids, as the original toutiao gives its users) go into a sorted
    array, 8 bytes each, looked up by bisection. The stream yields ids in ascending
    order, so appending keeps the array sorted.
    """

    def __init__(self, limit: int = 1 << 27):
        self.limit = limit
        self.bits = bytearray()
        self.large = array("Q")

    def add(self, member_id: int):
        if member_id >= self.limit:
            if self.large and member_id < self.large[-1]:
                insort(self.large, member_id)  # out of order: keep it sorted anyway
            else:
                self.large.append(member_id)
            return
        byte = member_id >> 3
        if byte >= len(self.bits):
            self.bits.extend(bytes(max(byte + 1 - len(self.bits), len(self.bits))))
        self.bits[byte] |= 1 << (member_id & 7)

    def __contains__(self, member_id: int) -> bool:
        if member_id >= self.limit:
            at = bisect_left(self.large, member_id)
            return at < len(self.large) and self.large[at] == member_id
        byte = member_id >> 3
        return byte < len(self.bits) and bool(self.bits[byte] & (1 << (member_id & 7)))


@dataclass(frozen=True)
class Shard:
    """One of ``total`` disjoint parts of the work: the members whose id % total == index.

    Junk members (not ids) belong to shard 0.
    """

    index: int
    total: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """Parse ``i/N``; raise ValueError with a readable message when malformed."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not match:
            raise ValueError(f"expected INDEX/TOTAL such as 0/4, got {text!r}")
        index, total = int(match.group(1)), int(match.group(2))
        if total < 1 or index >= total:
            raise ValueError(f"index must be in 0..TOTAL-1 and TOTAL at least 1, got {text!r}")
        return cls(index, total)

    def owns(self, member_id: Optional[int]) -> bool:
        """Tell whether this shard handles a member (None: a junk member)."""
        if member_id is None:
            return self.index == 0
        return member_id % self.total == self.index

    def __str__(self):
        return f"{self.index}/{self.total}"


@dataclass
class Drift:
    """One wrong member: what Redis held and what the database says."""

    counter: str
    id: str
    wrong: object  # the score read (float), None when absent, or a note such as "string key"
    right: int


@dataclass
class CounterResult:
    """What the repair of one counter found and changed."""

    counter: str
    mode: str = "reconcile"
    scanned: int = 0
    wrong: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    note: str = ""
    error: str = ""
    examples: list = field(default_factory=list)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


@dataclass
class Report:
    """The results of one run over several counters."""

    results: list
    dry_run: bool
    shard: Optional[Shard] = None
    seconds: float = 0.0
    interrupted: str = ""

    COLUMNS = ("scanned", "wrong", "added", "changed", "removed", "skipped")

    @property
    def totals(self) -> dict:
        totals = {name: sum(getattr(r, name) for r in self.results) for name in self.COLUMNS}
        totals["seconds"] = round(self.seconds, 3)
        return totals

    @property
    def failed(self) -> list:
        return [r for r in self.results if r.error]

    @property
    def drift(self) -> bool:
        return any(r.wrong or r.skipped for r in self.results)

    def examples(self, limit: int) -> list:
        found = [d for r in self.results for d in r.examples]
        return found[:limit]

    def as_dict(self, examples: int = 10) -> dict:
        return {
            "dry_run": self.dry_run,
            "shard": str(self.shard) if self.shard else None,
            "counters": [
                r.as_dict() | {"examples": [_finite(asdict(d)) for d in r.examples[:examples]]} for r in self.results
            ],
            "totals": self.totals,
            "failed": [r.counter for r in self.failed],
            "interrupted": self.interrupted or None,
        }


def _finite(example: dict) -> dict:
    """Spell non-finite scores ('inf') as strings: JSON has no Infinity."""
    wrong = example["wrong"]
    if isinstance(wrong, float) and not math.isfinite(wrong):
        example["wrong"] = str(wrong)
    return example


@dataclass
class _Candidate:
    member: str
    member_id: int
    redis: Optional[float]
    db: Optional[int]
    seen: float
    attempts: int = 0


def _count(value) -> Optional[int]:
    """Normalise a database count: 0 means the member is absent."""
    return int(value) if value else None


def _same(score: Optional[float], count: Optional[int]) -> bool:
    if score is None or count is None:
        return score is None and count is None
    return score == count


class RepairEngine:
    """Repair (or, with ``dry_run``, only check) counters against the database.

    ``redis`` is a redis-py client created with ``decode_responses=True``; ``db`` is a
    SQLAlchemy engine. ``heartbeat`` is called between batches and may raise (for
    example :class:`Interrupted` on SIGTERM or :class:`LockLost`) to stop the run.
    ``on_result(result)`` is called as each counter finishes and
    ``on_progress(key, members)`` after each database batch of the reconcile pass.
    """

    def __init__(
        self,
        redis,
        db,
        *,
        batch_size: int = 1000,
        settle: float = 0.2,
        dry_run: bool = False,
        rebuild: bool = False,
        shard: Optional[Shard] = None,
        jobs: int = 1,
        max_examples: int = 10,
        attempts: int = 6,
        heartbeat: Callable[[], None] = lambda: None,
        on_result: Callable[[CounterResult], None] = lambda result: None,
        on_progress: Callable[[str, int], None] = lambda key, members: None,
        checkpoint: Callable[..., None] = lambda name, **context: None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.redis = redis
        self.db = db
        self.batch_size = batch_size
        self.settle = settle
        self.dry_run = dry_run
        self.rebuild = rebuild
        self.shard = shard
        self.jobs = max(1, jobs)
        self.max_examples = max_examples
        self.attempts = attempts
        self.heartbeat = heartbeat
        self.on_result = on_result
        self.on_progress = on_progress
        self.checkpoint = checkpoint
        self.token = uuid.uuid4().hex[:12]
        self._cas = redis.register_script(_CAS)
        self._swap = redis.register_script(_SWAP)
        self._stop = threading.Event()
        self._covering: dict = {}

    # -- the run -------------------------------------------------------------------

    def run(self, counters: Iterable[type[Statistic]]) -> Report:
        """Repair each counter and return the report; stop early on Interrupted or LockLost."""
        counters = list(counters)
        started = time.monotonic()
        self._at("start")
        if not self.dry_run and self.shard is None:
            self.clean_staging()
        report = Report(results=[], dry_run=self.dry_run, shard=self.shard)
        results = {}
        try:
            if self.jobs == 1:
                for counter in counters:
                    results[counter.key] = self._repair_reported(counter)
            else:
                # Longest first (by current size), so the short ones fill the tail.
                sizes = {c.key: self._size(c.key) for c in counters}
                ordered = sorted(counters, key=lambda c: -sizes[c.key])
                with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="stats") as pool:
                    futures = {c.key: pool.submit(self._repair_reported, c) for c in ordered}
                    for key, future in futures.items():
                        results[key] = future.result()
        except (Interrupted, LockLost) as exc:
            self._stop.set()
            report.interrupted = str(exc)
            raise
        finally:
            report.results = [results[c.key] for c in counters if c.key in results]
            report.seconds = time.monotonic() - started
        return report

    def _size(self, key) -> int:
        try:
            return self.redis.zcard(key)
        except ResponseError:  # a key of the wrong type
            return 0

    def clean_staging(self) -> int:
        """Free staging keys a killed run left behind; return how many were freed."""
        freed = 0
        cursor = 0
        while True:
            cursor, keys = self.redis.sscan(STAGING_REGISTRY, cursor, count=self.batch_size)
            for key in keys:
                freed += self.redis.unlink(key)
                self.redis.srem(STAGING_REGISTRY, key)
            if cursor == 0:
                break
        if freed:
            log.warning("freed %d staging key(s) left by an earlier run", freed)
        return freed

    def _repair_reported(self, counter) -> CounterResult:
        result = self.repair(counter)
        self.on_result(result)
        return result

    def repair(self, counter: type[Statistic]) -> CounterResult:
        """Repair one counter; database and Redis errors end up in ``result.error``."""
        result = CounterResult(counter=counter.key)
        started = time.monotonic()
        try:
            self._repair(counter, result)
        except (Interrupted, LockLost):
            self._stop.set()
            raise
        except (SQLAlchemyError, RedisError, StatsError, OSError) as exc:
            result.error = _one_line(exc)
            log.error("counter %s failed: %s", counter.key, result.error)
        finally:
            result.seconds = time.monotonic() - started
        return result

    def _at(self, name, counter=None, **context):
        """Call the injected checkpoint: tests force interleavings at these named points."""
        self.checkpoint(name, counter=counter.key if counter is not None else None, run=self.token,
                        shard=str(self.shard) if self.shard else None, **context)

    def _beat(self):
        if self._stop.is_set():
            raise Interrupted("another counter's stop")
        self.heartbeat()

    def _repair(self, counter, result: CounterResult):
        kind = self.redis.type(counter.key)
        if isinstance(kind, bytes):
            kind = kind.decode()
        owner = self.shard is None or self.shard.index == 0
        if kind not in ("zset", "none"):
            if self.dry_run:
                result.mode = "check"
                result.note = f"key holds a {kind}, not a sorted set"
                self._count_all_missing(counter, result, wrong=f"<{kind} key>")
                return
            if not owner:
                result.note = f"key holds a {kind}; shard 0 rebuilds it"
                return
            self._rebuild(counter, result, kind, reason=f"key held a {kind}")
        elif kind == "none" and not self.dry_run and owner:
            touched, recent = self._rebuild(counter, result, kind, reason="key was missing", keep_touched=True)
            self._catch_up(counter, result, touched, recent)
            return
        elif self.rebuild and not self.dry_run:
            self._rebuild(counter, result, kind, reason="--rebuild")
        elif self.dry_run:
            result.mode = "check"
        self._reconcile(counter, result)

    # -- reconcile -----------------------------------------------------------------

    def _ordered(self, counter, with_shard=True):
        member = counter.member_column()
        stmt = counter.stream_query(self._has_covering_index(counter))
        if with_shard and self.shard is not None and self.shard.total > 1:
            stmt = stmt.where(member % self.shard.total == self.shard.index)
        return stmt

    def _stream(self, conn, stmt) -> Iterator[list]:
        result = conn.execution_options(stream_results=True, yield_per=self.batch_size).execute(stmt)
        for chunk in result.partitions(self.batch_size):
            yield chunk

    def _prefetch(self, stmt, counter=None) -> Iterator[list]:
        """Stream ``stmt`` from a reader thread, at most two batches ahead.

        The database computes and sends the next batch while this thread does the
        Redis work for the current one. If the consumer stops early, the reader's
        connection is invalidated rather than drained (draining an unbuffered
        million-row result would take as long as reading it).
        """
        batches: queue.Queue = queue.Queue(maxsize=2)
        cancel = threading.Event()

        def offer(item) -> bool:
            """Queue ``item`` unless the consumer has gone; tell whether it was queued."""
            while not cancel.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read():
            try:
                with self._connect() as conn:
                    if conn.dialect.name in ("mysql", "mariadb"):
                        # Keep the GROUP BY's temporary table in memory: the 16 MB default
                        # spills to disk at several hundred thousand groups, twice as slow.
                        conn.exec_driver_sql(f"SET SESSION tmp_table_size = {TMP_TABLE_BYTES}, "
                                             f"max_heap_table_size = {TMP_TABLE_BYTES}")
                    self._at("snapshot", counter)
                    result = conn.execution_options(stream_results=True, yield_per=self.batch_size).execute(stmt)
                    try:
                        for chunk in result.partitions(self.batch_size):
                            if not offer(chunk):
                                self._abandon(conn)
                                break
                    finally:
                        try:
                            result.close()
                        except SQLAlchemyError:
                            conn.invalidate()
                offer(_END)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                offer(_Failed(exc))

        reader = threading.Thread(target=read, name="stats-reader", daemon=True)
        reader.start()
        try:
            while True:
                item = batches.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            cancel.set()
            reader.join()

    def _has_covering_index(self, counter) -> bool:
        if counter.key not in self._covering:
            table, columns = counter.covering_index
            with self._connect() as conn:
                self._covering[counter.key] = has_index(conn, table, columns)
        return self._covering[counter.key]

    def _connect(self):
        """Open a database connection in autocommit: every read sees the latest commits.

        Under REPEATABLE READ, a connection kept for a whole pass would answer the
        settle re-reads from its first snapshot and hide the traffic they look for.
        """
        return self.db.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _abandon(self, conn):
        """Stop a streaming MySQL query server-side so closing it need not read the rest."""
        if conn.dialect.name not in ("mysql", "mariadb"):
            return
        try:
            thread_id = conn.connection.dbapi_connection.thread_id()
            with self._connect() as other:
                other.exec_driver_sql(f"KILL QUERY {int(thread_id)}")
        except (SQLAlchemyError, AttributeError) as exc:
            log.warning("could not stop an abandoned query (it will be drained): %s", _one_line(exc))

    def _db_counts(self, conn, counter, member_ids: list) -> dict:
        """Return {id: count} for the given ids (ids with count 0 are absent)."""
        member = counter.member_column()
        rows = conn.execute(counter.query.where(member.in_(member_ids))).all()
        return {int(m): int(n) for m, n in rows}

    def _reconcile(self, counter, result: CounterResult):
        pending: deque = deque()
        seen = IdBitmap()
        dirty = self._track(counter)
        self._at("tracking", counter)
        try:
            with self._connect() as conn:
                self._reconcile_pass(conn, counter, result, pending, seen)
                # Strays: members Redis holds that the pass did not see in the database.
                self._sweep(conn, counter, result, pending, seen)
                self._settle(conn, counter, result, pending, force=True)
                if dirty:
                    self._at("final_pass", counter)
                    self._recheck_dirty(conn, counter, result, pending, dirty)
        finally:
            if dirty:
                self.redis.unlink(dirty)
                self.redis.srem(STAGING_REGISTRY, dirty)
            self._at("release", counter)

    def _track(self, counter) -> Optional[str]:
        """Ask :meth:`Statistic.incr` to record the ids traffic touches from now on.

        The stream answers from a snapshot taken when its query starts, so a wrong score
        that traffic moves level with that snapshot would look right; the ids touched
        meanwhile are rechecked with fresh reads at the end. (``check`` writes nothing,
        so it does not track.)
        """
        if self.dry_run:
            return None
        dirty = counter.dirty_key()
        self.redis.sadd(STAGING_REGISTRY, dirty)
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(dirty, "*")
        pipe.expire(dirty, STAGING_TTL_SECONDS)
        pipe.execute()
        return dirty

    def _recheck_dirty(self, conn, counter, result, pending, dirty: str):
        cursor = 0
        while True:
            self._beat()
            cursor, members = self.redis.sscan(dirty, cursor, count=self.batch_size)
            ids = [i for i in (parse_member(m) for m in members) if i is not None and self.shard_owns(i)]
            self._check_ids(conn, counter, result, pending, ids)
            if cursor == 0:
                break
        self._settle(conn, counter, result, pending, force=True)

    def _reconcile_pass(self, conn, counter, result: CounterResult, pending: deque, seen: "IdBitmap"):
        key = counter.key
        with closing(self._prefetch(self._ordered(counter), counter)) as batches:
            for chunk in batches:
                self._beat()
                ids = [str(m) for m, _ in chunk]
                scores = self.redis.zmscore(key, ids)
                now = time.monotonic()
                for (member_id, count), member, score in zip(chunk, ids, scores):
                    seen.add(int(member_id))
                    count = _count(count)
                    if not _same(score, count):
                        pending.append(_Candidate(member, int(member_id), score, count, now))
                result.scanned += len(chunk)
                self.on_progress(key, len(chunk))
                self._at("stream_batch", counter, members=ids)
                self._settle(conn, counter, result, pending, force=False)
            self._settle(conn, counter, result, pending, force=True)

    def _sweep(self, conn, counter, result: CounterResult, pending: deque, seen: IdBitmap):
        key = counter.key
        cursor = 0
        while True:
            self._beat()
            cursor, items = self.redis.zscan(key, cursor, count=self.batch_size)
            self._at("sweep_batch", counter, members=[m for m, _ in items])
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                self._sweep_batch(conn, counter, result, pending, batch, seen)
                self._settle(conn, counter, result, pending, force=False)
            if cursor == 0:
                break

    def _sweep_batch(self, conn, counter, result, pending, batch, seen: IdBitmap):
        key = counter.key
        junk = []
        now = time.monotonic()
        for member, score in batch:
            member_id = parse_member(member)
            if not self.shard_owns(member_id):
                continue
            if member_id is None:
                junk.append((member, score))
            elif member_id not in seen:
                # Counted nowhere when the pass went by: a stray, unless traffic added
                # it since; the settle re-read tells.
                result.scanned += 1
                pending.append(_Candidate(member, member_id, score, None, now))
        if junk:
            result.scanned += len(junk)
            result.wrong += len(junk)
            for member, score in junk:
                self._example(result, counter, member, score, 0)
            if not self.dry_run:
                result.removed += self.redis.zrem(key, *[m for m, _ in junk])

    def shard_owns(self, member_id) -> bool:
        return self.shard is None or self.shard.owns(member_id)

    def _settle(self, conn, counter, result: CounterResult, pending: deque, *, force: bool):
        """Re-read candidates in full batches once old enough; correct the stable drift.

        Candidates wait until a whole batch has gathered (or the pass ends: ``force``):
        for a counter whose member column has no index every re-read is a table scan,
        so re-reading a few candidates after each streamed batch would cost one scan per
        batch instead of one per thousand candidates.
        """
        while pending:
            if not force and len(pending) < self.batch_size:
                break
            wait = pending[0].seen + self.settle - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            ready = []
            cutoff = time.monotonic() - self.settle
            while pending and len(ready) < self.batch_size and pending[0].seen <= cutoff:
                ready.append(pending.popleft())
            if ready:
                self._beat()
                self._recheck(conn, counter, result, pending, ready)

    def _recheck(self, conn, counter, result, pending, ready: list):
        key = counter.key
        scores = self.redis.zmscore(key, [c.member for c in ready])  # Redis first,
        self._at("observe", counter, members=[c.member for c in ready])
        counts = self._db_counts(conn, counter, [c.member_id for c in ready])  # then the database.
        self._at("recount", counter, members=[c.member for c in ready])
        now = time.monotonic()
        stable = []
        for cand, score in zip(ready, scores):
            count = _count(counts.get(cand.member_id))
            if _same(score, count):
                continue  # traffic caught up: nothing was wrong
            if _same(score, cand.redis) and count == cand.db:
                stable.append((cand, score, count))
            else:
                self._retry(result, pending, cand, score, count, now)
        for cand, score, count in stable:
            result.wrong += 1
            self._example(result, counter, cand.member, score, count or 0)
        if self.dry_run or not stable:
            return
        pipe = self.redis.pipeline(transaction=False)
        for cand, score, count in stable:
            self._cas(
                keys=[key],
                args=[cand.member, "" if score is None else repr(score), "" if count is None else str(count)],
                client=pipe,
            )
        applied_all = pipe.execute()
        self._at("write", counter, members=[c.member for c, _, _ in stable])
        for (cand, score, count), applied in zip(stable, applied_all):
            if not applied:
                # Traffic changed it between our read and our write: look again later.
                result.wrong -= 1
                fresh_score = self.redis.zscore(key, cand.member)
                fresh_count = _count(self._db_counts(conn, counter, [cand.member_id]).get(cand.member_id))
                self._retry(result, pending, cand, fresh_score, fresh_count, now)
            elif count is None:
                result.removed += 1
            elif score is None:
                result.added += 1
            else:
                result.changed += 1

    def _retry(self, result, pending, cand, score, count, now):
        cand.attempts += 1
        if cand.attempts >= self.attempts:
            result.skipped += 1
            log.info("%s %s kept changing during the run; left for the next run", result.counter, cand.member)
            return
        cand.redis, cand.db, cand.seen = score, count, now
        pending.append(cand)

    def _example(self, result, counter, member, score, right):
        if len(result.examples) < self.max_examples:
            result.examples.append(Drift(counter.key, str(member), score, int(right)))

    def _count_all_missing(self, counter, result, wrong):
        with self._connect() as conn:
            for chunk in self._stream(conn, self._ordered(counter)):
                self._beat()
                result.scanned += len(chunk)
                result.wrong += len(chunk)
                for member_id, count in chunk:
                    self._example(result, counter, member_id, wrong, count)

    # -- rebuild -------------------------------------------------------------------

    def _rebuild(self, counter, result: CounterResult, kind: str, reason: str, keep_touched: bool = False):
        """Build the whole counter under a staging key and swap it in atomically.

        With ``keep_touched`` (the key was missing when the build started) the live key
        at swap time holds only what traffic incremented meanwhile; it is moved aside
        and returned, with the ids of the last batches read, for :meth:`_catch_up`.
        """
        key = counter.key
        staging = f"{{{key}}}:staging:{self.token}"
        touched = f"{{{key}}}:touched:{self.token}"
        live_is_zset = kind == "zset"
        result.mode = "rebuild"
        result.note = reason
        self._at("tracking", counter)
        self.redis.sadd(STAGING_REGISTRY, *([staging, touched] if keep_touched else [staging]))
        written = present = 0
        swapped = False
        # The ids of the last two batches read. The database answers each query from one
        # snapshot taken when it starts, so only a commit made just before that whose
        # increment lands after the swap can slip through; rechecking the tail is cheap.
        recent: deque = deque(maxlen=2)
        try:
            # Always the whole counter: a rebuild replaces the whole key.
            with closing(self._prefetch(self._ordered(counter, with_shard=False), counter)) as batches:
                for chunk in batches:
                    self._beat()
                    mapping = {str(m): int(n) for m, n in chunk}
                    if live_is_zset:
                        for (member, count), score in zip(mapping.items(), self.redis.zmscore(key, list(mapping))):
                            if score is not None:
                                present += 1
                            if not _same(score, count):
                                result.wrong += 1
                                result.added += score is None
                                result.changed += score is not None
                                self._example(result, counter, member, score, count)
                    else:
                        result.wrong += len(mapping)
                        result.added += len(mapping)
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.zadd(staging, mapping)
                    pipe.expire(staging, STAGING_TTL_SECONDS)
                    pipe.execute()
                    self._at("rebuild_batch", counter, members=list(mapping))
                    written += len(mapping)
                    recent.append([int(m) for m, _ in chunk])
                    if keep_touched:  # the only pass over this counter's rows
                        result.scanned += len(chunk)
                        self.on_progress(key, len(chunk))
            self._beat()
            old_members = self._swap(keys=[key, staging, touched], args=["1" if keep_touched else "0"])
            swapped = True
            self._at("swap", counter)
            if old_members > present and not keep_touched:
                result.wrong += old_members - present
                result.removed += old_members - present
            log.info("rebuilt %s (%s): %d members swapped in", key, reason, written)
        finally:
            if not swapped:
                self.redis.unlink(staging, touched)
                self.redis.srem(STAGING_REGISTRY, touched)
            self.redis.srem(STAGING_REGISTRY, staging)
        return touched, [member_id for ids in recent for member_id in ids]

    def _catch_up(self, counter, result: CounterResult, touched: str, recent: list):
        """After rebuilding a missing key, recheck only what may have changed meanwhile.

        The swap dropped the increments traffic made during the build (they are in
        ``touched``), and a commit read just before the swap may see its increment land
        after it (``recent``). Every other member is exactly as the database said.
        """
        pending: deque = deque()
        self._at("final_pass", counter)
        try:
            with self._connect() as conn:
                self._check_ids(conn, counter, result, pending, recent)
                cursor = 0
                while True:
                    self._beat()
                    cursor, items = self.redis.zscan(touched, cursor, count=self.batch_size)
                    ids = [i for i in (parse_member(m) for m, _ in items) if i is not None]
                    self._check_ids(conn, counter, result, pending, ids)
                    if cursor == 0:
                        break
                self._settle(conn, counter, result, pending, force=True)
        finally:
            self.redis.unlink(touched)
            self.redis.srem(STAGING_REGISTRY, touched)
            self._at("release", counter)

    def _check_ids(self, conn, counter, result, pending: deque, member_ids: list):
        """Compare ids batch by batch (Redis first, then the database); queue and settle the mismatches."""
        for start in range(0, len(member_ids), self.batch_size):
            batch = member_ids[start : start + self.batch_size]
            members = [str(i) for i in batch]
            scores = self.redis.zmscore(counter.key, members)
            counts = self._db_counts(conn, counter, batch)
            now = time.monotonic()
            for member_id, member, score in zip(batch, members, scores):
                count = _count(counts.get(member_id))
                if not _same(score, count):
                    pending.append(_Candidate(member, member_id, score, count, now))
            self._settle(conn, counter, result, pending, force=False)


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0]}"
