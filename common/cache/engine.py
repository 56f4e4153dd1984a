"""The repair run: make every Redis counter equal to what the database says.

``RepairEngine(redis, db, ...).run(counters) -> Report`` takes a lease on each counter
(:mod:`common.cache.lease`), then repairs them one after another or ``jobs`` at a time,
each by a :class:`~common.cache.repair.CounterRepair`: reconcile a sorted set, rebuild a
missing key, a key of another type or every key with ``rebuild``, then recheck what
traffic touched and give the lease back. A failed counter is reported and the others go
on; a stop (SIGTERM, a lost lease) ends the run between two batches. Database reads go
through :class:`~common.cache.source.Source`.

The run calls ``checkpoint(name, counter=..., run=..., shard=..., **context)`` at the
points named in :data:`CHECKPOINTS`; tests force interleavings there, and the protocol
model (``common/cache/model/protocol.pml``) names its steps after them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import SQLAlchemyError

from common.cache.lease import Leases, free_legacy_staging, reap_dead, scope_of
from common.cache.members import Shard
from common.cache.repair import CounterRepair, reap_inflight
from common.cache.report import CounterResult, Report
from common.cache.source import Source
from common.exceptions import Interrupted, LockLost, StatsError, one_line

log = logging.getLogger(__name__)


@dataclass
class _Begun:
    """A counter whose pass over its rows has run (or failed), waiting for its catch-up."""

    counter: object
    result: CounterResult
    started: float
    repair: Optional[CounterRepair] = None
    done: bool = False  # nothing left to catch up (finished, failed, or a check of an unreadable key)


#: The named points of a run, in the order a counter meets them.
CHECKPOINTS = (
    "start",  # the run begins, before it takes any lease
    "tracking",  # the run holds the counter's lease: increments note ids for it
    "snapshot",  # a stream's query is about to start: the database answers from now
    "stream_batch",  # a streamed batch was compared with Redis
    "stray_count",  # the set's size was compared with the ids streamed (no walk if they agree)
    "sweep_batch",  # a page of the stray sweep was read
    "observe",  # candidates were observed in Redis (their tracking reset)
    "recount_view",  # the re-count's snapshot was taken; next, the observed ids are looked at again
    "recount",  # candidates were re-counted in the database, from that snapshot
    "write",  # write scripts ran (compare-and-set, or count plus the gain since observed)
    "locked",  # ids that never stayed quiet were re-counted with their rows locked (locks held)
    "unlocked",  # ... written, and the locks given back
    "claim",  # the run tried to claim a rebuild (context: claimed)
    "rebuild_batch",  # a batch was written to the staging key
    "swap",  # the staging key replaced the live one
    "final_pass",  # the recheck of touched ids begins
    "release",  # the lease on the counter was given back
)

#: Seconds between two looks at a rebuild claimed by another run.
CLAIM_STEP = 0.2

#: A sorted set holding fewer members than this share of the ids its table has (as after
#: Redis restarted empty and the app's increments recreated the key with a few hot ids)
#: is rebuilt, not reconciled: a reconcile would write nearly every member one by one.
SPARSE_SHARE = 0.01
#: ... once that table has at least this many rows (below, either way is quick).
SPARSE_MIN_IDS = 10_000


class RepairEngine:
    """Repair (or, with ``dry_run``, only check) counters against the database.

    ``redis`` is a redis-py client made with ``decode_responses=True``; ``db`` a
    SQLAlchemy engine whose pool has room for four connections per job. ``heartbeat`` is
    called between batches and may raise (:class:`Interrupted` on SIGTERM) to stop the
    run. ``on_result(result)`` is called as each counter finishes and
    ``on_progress(key, members)`` after each database batch.
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
        lease_ttl: float = 60.0,
        wait: float = 0.0,
        holder: Optional[str] = None,
        heartbeat: Callable[[], None] = lambda: None,
        on_result: Callable[[CounterResult], None] = lambda result: None,
        on_progress: Callable[[str, int], None] = lambda key, members: None,
        checkpoint: Callable[..., None] = lambda name, **context: None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.redis = redis
        self.source = Source(db, batch_size)
        self.batch_size = batch_size
        self.settle = settle
        self.dry_run = dry_run
        self.rebuild = rebuild
        self.shard = shard
        self.jobs = max(1, jobs)
        self.max_examples = max_examples
        self.attempts = attempts
        self.wait = wait
        self.sparse_min_ids = SPARSE_MIN_IDS
        self.heartbeat = heartbeat
        self.on_result = on_result
        self.on_progress = on_progress
        self.checkpoint = checkpoint
        self.token = uuid.uuid4().hex[:12]
        self.leases = Leases(redis, self.token, scope_of(shard, dry_run), lease_ttl, holder)
        self._stop = threading.Event()
        self._cause: Optional[BaseException] = None
        self._next: dict = {}  # counter key -> the counter after it (a run one counter at a time)
        self._ahead: dict = {}  # counter key -> (key type, Stream) started ahead

    # -- the run ----------------------------------------------------------------------------

    def run(self, counters: Iterable) -> Report:
        """Repair each counter and return the report; stop early on Interrupted or LockLost.

        Raise :class:`~common.exceptions.LockHeld` when another run holds a lease this run
        needs (after ``wait`` seconds), and RedisError when Redis fails outside a counter.
        """
        counters = list(counters)
        started = time.monotonic()
        report = Report(results=[], dry_run=self.dry_run, shard=self.shard)
        results: dict = {}
        self.at("start")
        self.leases.acquire(counters, self.wait, beat=self.heartbeat)
        try:
            if not self.dry_run:
                free_legacy_staging(self.redis, self.batch_size)
            if self.jobs == 1:
                self._next = {a.key: b for a, b in zip(counters, counters[1:])}
                self._one_at_a_time(counters, results)
            else:
                with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="stats") as pool:
                    futures = {c.key: pool.submit(self._repair_reported, c) for c in self._longest_first(counters)}
                    for key, future in futures.items():
                        try:
                            results[key] = future.result()
                        except (Interrupted, LockLost):
                            continue  # the first cause is raised below
        except (Interrupted, LockLost) as exc:
            self._stop.set()
            if self._cause is None:
                self._cause = exc
        finally:
            for _, stream in self._ahead.values():
                if stream is not None:
                    stream.close()
            self._ahead.clear()
            self.leases.close()
            report.results = [results[c.key] for c in counters if c.key in results]
            report.seconds = time.monotonic() - started
        if self._cause is not None:  # the first stop, not another counter's echo of it
            report.interrupted = str(self._cause)
            raise self._cause
        return report

    def _longest_first(self, counters) -> list:
        """Order counters by their current size, largest first, so short ones fill the tail."""

        def size(counter):
            try:
                return self.redis.zcard(counter.key)
            except ResponseError:  # a key of the wrong type
                return 0

        return sorted(counters, key=lambda c: -size(c))

    def _one_at_a_time(self, counters, results: dict):
        """Pass over each counter's rows in turn, in this thread; each counter's catch-up
        (mostly waiting for its candidates to settle) runs in a second thread meanwhile,
        so those waits overlap the next counter's pass instead of adding up. A counter's
        catch-up is handed over once the one before it has ended: at most one waits."""
        finishing: dict = {}
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stats-finish") as finisher:
                previous = None
                for counter in counters:
                    begun = self._begin(counter)
                    if previous is not None:  # one catch-up at a time: what waits is bounded
                        wait([previous])
                    previous = finishing[counter.key] = finisher.submit(self._finish_reported, begun)
        finally:  # every catch-up submitted has ended: the pool waited for them
            for key, future in finishing.items():
                if not future.cancelled() and future.exception() is None:
                    results[key] = future.result()
        for future in finishing.values():
            future.result()  # a stop was recorded as the run's cause; anything else is raised

    def _repair_reported(self, counter) -> CounterResult:
        return self._finish_reported(self._begin(counter))

    def _finish_reported(self, begun: "_Begun") -> CounterResult:
        result = self._finish(begun)
        self.on_result(result)
        return result

    def repair(self, counter) -> CounterResult:
        """Repair one counter; database and Redis errors end up in ``result.error``."""
        return self._finish(self._begin(counter))

    def _begin(self, counter) -> "_Begun":
        """The counter's pass over its rows: reconcile, rebuild or check."""
        begun = _Begun(counter, CounterResult(counter=counter.key), time.monotonic())
        try:
            with self._failing(begun):
                begun.repair = CounterRepair(self, counter, begun.result)
                begun.done = self._work(begun.repair, counter)
                begun.result.pass_seconds = time.monotonic() - begun.started
        finally:
            _, stream = self._ahead.pop(counter.key, (None, None))
            if stream is not None:  # started for a path this counter did not take
                stream.close()
        return begun

    def _finish(self, begun: "_Begun") -> CounterResult:
        """The counter's catch-up: recheck what traffic touched, give the lease back."""
        with self._failing(begun):
            if not begun.done:
                started = time.monotonic()
                begun.repair.catch_up()
                begun.result.catch_up_seconds = time.monotonic() - started
        self._end(begun, failed=False)  # after a failure: already closed, seconds set again
        return begun.result

    @contextmanager
    def _failing(self, begun: "_Begun"):
        """A stop ends the run (raised); a database or Redis error fails the counter only."""
        try:
            yield
        except (Interrupted, LockLost) as exc:
            if self._cause is None:
                self._cause = exc
            self._stop.set()
            self._end(begun, failed=True)
            raise
        except (SQLAlchemyError, RedisError, StatsError, OSError) as exc:
            begun.result.error = one_line(exc)
            log.error("counter %s failed: %s", begun.counter.key, begun.result.error)
            self._end(begun, failed=True)
            self._give_back(begun.counter)
        except BaseException:
            self._stop.set()  # the other thread stops at its next batch too
            self._end(begun, failed=True)
            raise

    def _end(self, begun: "_Begun", failed: bool):
        """The counter is done with: its connection handed back (dropped if it failed)."""
        begun.done = True
        if begun.repair is not None:
            begun.repair.close(failed=failed)
        begun.result.seconds = time.monotonic() - begun.started

    def _give_back(self, counter):
        try:
            self.leases.release(counter, insist=False)
        except RedisError as exc:
            log.warning("could not give back the lease on %s (it will expire): %s", counter.key, one_line(exc))

    def _work(self, repair: CounterRepair, counter) -> bool:
        """Pass over the counter's rows; return True when nothing is left to catch up."""
        if counter.key in self._ahead:
            kind = self._ahead[counter.key][0]  # begun ahead: tracking on, announcements reaped
        else:
            kind = self._prepare(counter)
        if self.dry_run:
            if kind in ("zset", "none"):
                repair.reconcile()
            else:
                repair.count_unreadable(kind)
                self.leases.release(counter)
                return True
        elif kind == "zset" and not self.rebuild:
            repair.reconcile()
        else:
            self._rebuild(repair, kind)
        return False

    def _prepare(self, counter) -> str:
        """Begin a counter: its tracking is on, dead announcements go; return its key's type,
        or ``sparse`` for a sorted set to rebuild because it holds next to nothing."""
        self.at("tracking", counter)
        reap_inflight(self, counter.key)
        kind = self.redis.type(counter.key)
        if kind == "zset" and not (self.dry_run or self.rebuild) and self._sparse(counter):
            return "sparse"
        return kind

    def _sparse(self, counter) -> bool:
        ids = self.source.ids_estimate(counter)
        return ids is not None and ids >= self.sparse_min_ids and self.redis.zcard(counter.key) < ids * SPARSE_SHARE

    def begin_next(self, counter):
        """``counter``'s rows are arriving (its query has done its work): when counters go
        one at a time, begin the next one and start its query, so the database computes
        it while this one streams, sweeps and catches up. Once per counter."""
        following = self._next.get(counter.key)
        if following is None or following.key in self._ahead or self._stop.is_set():
            return
        try:
            kind = self._prepare(following)
        except (RedisError, SQLAlchemyError) as exc:  # it meets the error again in its own turn, and reports it
            log.info("could not begin %s ahead: %s", following.key, one_line(exc))
            return
        stream, shard = None, self.shard
        if self.dry_run:
            reads = kind in ("zset", "none")
        else:
            # A rebuild reads every member; an unsharded run holds the counter alone, so
            # its rebuild claim is its own and the stream may start before it is taken.
            reads = kind == "zset" and not self.rebuild or self.shard is None
            shard = shard if kind == "zset" and not self.rebuild else None
        if reads:
            stream = self.source.stream(following, shard, on_snapshot=lambda: self.at("snapshot", following))
        self._ahead[following.key] = (kind, stream)

    def take_stream(self, counter, shard):
        """Return the stream started ahead for ``counter`` over ``shard``, if there is one."""
        kind, stream = self._ahead.get(counter.key, (None, None))
        if stream is None or stream.shard != shard:
            return None
        self._ahead[counter.key] = (kind, None)
        return stream

    def _rebuild(self, repair: CounterRepair, kind: str):
        """Rebuild the counter once this run holds its rebuild claim. While another run
        holds it, wait; if that run swapped a sorted set in meanwhile, reconcile instead."""
        waited = False
        while not repair.claim():
            waited = True
            self.beat()
            time.sleep(CLAIM_STEP)
            reap_dead(self.redis, repair.counter)  # a claim whose run died is freed
        found, kind = kind, self.redis.type(repair.key)
        # Traffic cannot turn a key of another type into a sorted set: another run rebuilt it.
        if (waited or found not in ("zset", "none", "sparse")) and kind == "zset" and not self.rebuild:
            repair.reconcile()
            return
        if self.rebuild:
            reason = "--rebuild"
        elif kind == "none":
            reason = "key was missing"
        elif kind == "zset":
            table = repair.counter.members_of.__table__.name
            reason = f"key held {self.redis.zcard(repair.key)} members, under {SPARSE_SHARE:.0%} of the rows of {table}"
        else:
            reason = f"key held a {kind}"
        repair.rebuild(kind, reason)

    # -- between batches ----------------------------------------------------------------------

    def beat(self):
        """Stop here if asked to: another counter's stop, SIGTERM (heartbeat), a lost lease."""
        if self._stop.is_set():
            raise Interrupted("another counter's stop")
        self.heartbeat()
        self.leases.check()

    def at(self, name: str, counter=None, **context):
        """Call the injected checkpoint (see CHECKPOINTS)."""
        self.checkpoint(
            name,
            counter=counter.key if counter is not None else None,
            run=self.token,
            shard=str(self.shard) if self.shard else None,
            **context,
        )
