"""The database side of a repair: each counter's query streamed in member order, and
counts re-read for chosen ids. Every read is in autocommit, so it sees the latest commits,
except a re-count inside :meth:`Source.snapshot`, which sees the commits made before it.

On MySQL/MariaDB the stream is *packed*: the counter's GROUP BY runs as a derived table,
and an outer GROUP BY sends its rows a bucket of ids at a time, each bucket one
``GROUP_CONCAT`` string (``id,count,id,count...``). The server does the same scan and
sort; the client decodes one row per bucket instead of one per member, which in PyMySQL
(pure Python) was more than half of a run's time. A bucket the server had to cut short
(``group_concat_max_len``) is read again, plainly, for its id range.
"""

from __future__ import annotations

import logging
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from sqlalchemy import String, func, literal_column, select, text
from sqlalchemy.exc import SQLAlchemyError

from common.cache.members import Shard
from common.cache.plan import has_index, index_starting_with
from common.cache.statistic import mysql_hint
from common.exceptions import one_line

log = logging.getLogger(__name__)

#: Session tmp_table_size for a streamed GROUP BY on MySQL/MariaDB (server memory, per
#: running stream, only while it runs): the 16 MB default spills to disk at several
#: hundred thousand groups, twice as slow (bench/PLANS.md).
TMP_TABLE_BYTES = 128 * 1024 * 1024

#: Batches the reader thread may hold ahead of the consumer.
AHEAD = 2

#: Longest bucket string of a packed stream (session ``group_concat_max_len``), kept
#: below ``max_allowed_packet`` (16 MB by default), which bounds a row sent to us.
PACK_BYTES = 8 * 1024 * 1024

#: A re-count scans the table instead of walking the member's index when its ids hold
#: more than 1/SCAN_RATIO of the table's rows: a row fetched by primary key in random
#: order costs about ten read in a scan (bench/PLANS.md).
SCAN_RATIO = 10

_TABLE_ROWS = "SELECT table_rows FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = :t"

#: Seconds a locking re-count waits for a row another transaction holds
#: (``innodb_lock_wait_timeout``, for that read only).
LOCK_WAIT_SECONDS = 1

_END = object()


@dataclass
class _Failed:
    exc: BaseException


@dataclass
class Batch:
    """Streamed rows: ``ids`` in ascending order and their ``counts``."""

    ids: list
    counts: list

    def __len__(self):
        return len(self.ids)


def unpack(packed: str) -> Batch:
    """Read a bucket string ``id,count,id,count...`` (the ids in order)."""
    values = list(map(int, packed.split(",")))
    return Batch(values[0::2], values[1::2])


class Stream:
    """A counter's batches, read ahead by a thread; iterate once, then close."""

    def __init__(self, source, counter, shard, on_snapshot):
        self.counter = counter
        self.shard = shard
        self._batches: queue.Queue = queue.Queue(maxsize=AHEAD)
        self._cancel = threading.Event()
        self._reader = threading.Thread(
            target=self._read, args=(source, counter, shard, on_snapshot), name="stats-reader", daemon=True
        )
        self._reader.start()

    def _offer(self, item) -> bool:
        while not self._cancel.is_set():
            try:
                self._batches.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, source, counter, shard, on_snapshot):
        try:
            batches = source.read(counter, shard, on_snapshot)
            try:
                for batch in batches:
                    if not self._offer(batch):
                        return  # closed early: closing the reader kills the query
            finally:
                batches.close()
            self._offer(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._offer(_Failed(exc))

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._batches.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item

    def close(self):
        self._cancel.set()
        self._reader.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Source:
    """Read counters from the database ``db`` (a SQLAlchemy engine), ``batch_size`` rows at a time."""

    def __init__(self, db, batch_size: int, pack_bytes: int = PACK_BYTES):
        self.db = db
        self.batch_size = batch_size
        self.pack_bytes = pack_bytes
        self._covering: dict = {}
        self._lockable: dict = {}
        self._table_estimates: dict = {}
        self._lock = threading.Lock()

    def connect(self):
        """Open a connection in autocommit: every read sees the latest commits.

        Under REPEATABLE READ, a connection kept for a whole pass would answer the
        re-reads from its first snapshot and hide the traffic they look for.
        """
        return self.db.connect().execution_options(isolation_level="AUTOCOMMIT")

    def query(self, counter, shard: Optional[Shard] = None):
        """Return the counter's stream query: member order, a scan hint, the shard's members."""
        stmt = counter.stream_query(self.has_covering_index(counter))
        if shard is not None and shard.total > 1:
            stmt = stmt.where(counter.member_column() % shard.total == shard.index)
        return stmt

    def packed_query(self, conn, counter, shard: Optional[Shard] = None):
        """Return ``(statement, step)``: the stream query in buckets of ids ``id DIV step``,
        each row ``(bucket, length of its string, string)``.

        ``step`` spans about ``batch_size`` rows of the table the ids come from (its
        primary key's range over its estimated row count), so a bucket holds at most
        about a batch of members whatever the ids look like (1, 2, 3... or snowflakes).
        """
        step = self.bucket_step(conn, counter)
        stmt = self.query(counter, shard).order_by(None)
        member, count = stmt.selected_columns
        counted = stmt.with_only_columns(member.label("m"), count.label("c")).subquery("counted")
        bucket = counted.c.m.op("DIV")(literal_column(str(int(step))))
        packed = func.group_concat(
            literal_column("counted.m, ',', counted.c ORDER BY counted.m SEPARATOR ','"), type_=String
        )
        # The length the string must have: one cut short (even inside a count) is caught.
        length = func.sum(func.length(counted.c.m) + func.length(counted.c.c) + 2) - 1
        return select(bucket, length, packed).select_from(counted).group_by(bucket).order_by(bucket), step

    def bucket_step(self, conn, counter) -> int:
        (key,) = counter.members_of.__table__.primary_key.columns
        low, high = conn.execute(select(func.min(key), func.max(key))).one()
        rows = self.estimated_rows(conn, counter)
        if low is None or not rows:
            return self.batch_size
        return max(1, (int(high) - int(low) + 1) * self.batch_size // rows)

    def estimated_rows(self, conn, counter) -> Optional[int]:
        """The server's estimate of the rows in the table the ids come from (MySQL/MariaDB's
        statistics, no scan); None where there is none."""
        if conn.dialect.name not in ("mysql", "mariadb"):
            return None
        rows = self._table_rows(conn, counter.members_of.__table__.name)
        return int(rows) if rows else None

    def ids_estimate(self, counter) -> Optional[int]:
        """:meth:`estimated_rows` on a connection of its own."""
        with self.connect() as conn:
            return self.estimated_rows(conn, counter)

    def stream(self, counter, shard: Optional[Shard] = None, on_snapshot: Callable[[], None] = lambda: None):
        """Start reading the counter's rows in id order; return the :class:`Stream` of their batches.

        The query starts at once, in a reader thread: the database computes and sends the
        next batches (at most AHEAD) while the caller works on the current one, or on
        another counter. ``on_snapshot`` is called just before the query starts: the
        database answers it from one snapshot taken then. Close the stream (``with``)
        when done: a query stopped early is killed rather than drained (draining an
        unbuffered million-row result would take as long as reading it).
        """
        return Stream(self, counter, shard, on_snapshot)

    def read(self, counter, shard, on_snapshot) -> Iterator[Batch]:
        """Read the batches on a connection of their own (the reader thread's work)."""
        with self.connect() as conn:
            if conn.dialect.name in ("mysql", "mariadb"):
                conn.exec_driver_sql(
                    f"SET SESSION tmp_table_size = {TMP_TABLE_BYTES}, max_heap_table_size = {TMP_TABLE_BYTES}, "
                    f"group_concat_max_len = {int(self.pack_bytes)}"
                )
                batches = self._packed(conn, counter, shard, on_snapshot)
            else:
                batches = self._plain(conn, self.query(counter, shard), on_snapshot)
            try:
                for batch in batches:
                    try:
                        yield batch
                    except GeneratorExit:  # closed early: kill the query before closing its result
                        self._abandon(conn)
                        raise
            finally:
                batches.close()

    def _plain(self, conn, stmt, on_snapshot) -> Iterator[Batch]:
        on_snapshot()
        result = conn.execution_options(stream_results=True, yield_per=self.batch_size).execute(stmt)
        try:
            for rows in result.partitions(self.batch_size):
                yield Batch([int(m) for m, _ in rows], [int(n) for _, n in rows])
        finally:
            try:
                result.close()
            except SQLAlchemyError:
                conn.invalidate()

    def _packed(self, conn, counter, shard, on_snapshot) -> Iterator[Batch]:
        """Yield batches of ``batch_size`` members from the packed stream's buckets."""
        stmt, step = self.packed_query(conn, counter, shard)
        ids: list = []
        counts: list = []
        for bucket, length, packed in self._rows(conn, stmt, on_snapshot, 64):
            if packed is not None and len(packed) == length:
                batch = unpack(packed)
                ids += batch.ids
                counts += batch.counts
                while len(ids) >= self.batch_size:
                    yield Batch(ids[: self.batch_size], counts[: self.batch_size])
                    del ids[: self.batch_size], counts[: self.batch_size]
                continue
            # Cut at group_concat_max_len: read the bucket's id range row by row.
            log.info(
                "bucket %s of %s was longer than %s bytes; reading it row by row", bucket, counter.key, self.pack_bytes
            )
            if ids:
                yield Batch(ids, counts)
                ids, counts = [], []
            member = counter.member_column()
            low, high = int(bucket) * step, (int(bucket) + 1) * step
            with self.connect() as other:
                yield from self._plain(
                    other, self.query(counter, shard).where(member >= low, member < high), lambda: None
                )
        if ids:
            yield Batch(ids, counts)

    def _plain(self, conn, stmt, on_snapshot) -> Iterator[Batch]:
        rows = []
        for row in self._rows(conn, stmt, on_snapshot, self.batch_size):
            rows.append(row)
            if len(rows) == self.batch_size:
                yield Batch([int(m) for m, _ in rows], [int(n) for _, n in rows])
                rows = []
        if rows:
            yield Batch([int(m) for m, _ in rows], [int(n) for _, n in rows])

    def _rows(self, conn, stmt, on_snapshot, per: int):
        on_snapshot()
        result = conn.execution_options(stream_results=True, yield_per=per).execute(stmt)
        try:
            yield from result.tuples()
        finally:
            try:
                result.close()
            except SQLAlchemyError:
                conn.invalidate()

    @contextmanager
    def snapshot(self, conn):
        """Fix ``conn``'s view of the database now, until the block ends: the reads in it
        see what was committed before it began and nothing committed after.

        ``conn`` is an autocommit connection (:meth:`connect`). MySQL/MariaDB take the
        snapshot at once (a REPEATABLE READ transaction ``WITH CONSISTENT SNAPSHOT``);
        SQLite with a transaction's first read. Its reads lock nothing on MySQL/MariaDB;
        on SQLite without WAL a writer's commit waits for the block to end.
        """
        if conn.dialect.name in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        else:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
        try:
            yield
        finally:
            try:
                conn.exec_driver_sql("ROLLBACK")
            except SQLAlchemyError:
                conn.invalidate()  # broken: it does not go back to the pool

    def counts(self, conn, counter, member_ids: list, rows: int = 0) -> dict:
        """Return ``{id: count}`` for the given ids, read now (ids counting 0 are absent).

        ``rows``: about how many rows the ids hold (their scores). Where the member
        column has an index, the database walks it and fetches each row by primary key,
        in random order; for ids holding more than 1/SCAN_RATIO of the table (hot
        articles' comments after a restart) a table scan is cheaper, and is asked for as
        the stream asks for it.
        """
        stmt = counter.query.where(counter.member_column().in_(member_ids))
        if rows and counter.stream_scan is not None and conn.dialect.name in ("mysql", "mariadb"):
            table_rows = self._table_rows(conn, counter.stream_scan.__table__.name)
            if table_rows and rows * SCAN_RATIO > table_rows and not self.has_covering_index(counter):
                stmt = counter.scanning(stmt)
        return {int(m): int(n) for m, n in conn.execute(stmt).all()}

    def _table_rows(self, conn, table: str) -> Optional[int]:
        """The server's estimate of a table's rows, read once per run."""
        with self._lock:
            if table not in self._table_estimates:
                self._table_estimates[table] = conn.execute(text(_TABLE_ROWS), {"t": table}).scalar()
            return self._table_estimates[table]

    def can_lock(self, counter) -> bool:
        """Tell whether :meth:`locked_counts` may lock ``counter``'s ids: on MySQL/MariaDB,
        a query over one table whose member column starts an index, so a locking read
        takes the rows and gaps of those ids only (without the index it would scan, and
        lock, the whole table and every writer with it)."""
        return self._lock_index(counter) is not None

    def _lock_index(self, counter) -> Optional[str]:
        """The index a locking re-count of ``counter`` must use, if it may lock at all."""
        if self.db.dialect.name not in ("mysql", "mariadb"):
            return None
        with self._lock:
            if counter.key not in self._lockable:
                tables = counter.query.get_final_froms()
                index = None
                if len(tables) == 1 and getattr(tables[0], "name", None) is not None:
                    with self.connect() as conn:
                        index = index_starting_with(conn, tables[0].name, [counter.member_column().name])
                self._lockable[counter.key] = index
            return self._lockable[counter.key]

    @contextmanager
    def locked_counts(self, counter, member_ids: list):
        """Count ``member_ids`` with a locking read (``LOCK IN SHARE MODE``, under REPEATABLE
        READ so the gaps are locked too) and yield ``{id: count}`` while the locks are held:
        until the block ends, no transaction can commit a change to those ids' rows, and
        every one that had changed them has committed. The app's writers lock the row they
        change before they announce, so none of those ids gets a new announcement
        meanwhile. Waits at most ``LOCK_WAIT_SECONDS`` for a lock (then raises, as a
        deadlock does): the caller leaves the ids for later."""
        with self.db.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            try:
                with conn.begin():
                    conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_SECONDS}")
                    # On its index, whatever the optimizer thinks of a hot id's share of the
                    # table: a scan would lock every row, and every writer with them.
                    table = counter.query.get_final_froms()[0]
                    stmt = counter.query.where(counter.member_column().in_(member_ids)).with_for_update(read=True)
                    stmt = mysql_hint(stmt, table, f"FORCE INDEX (`{self._lock_index(counter)}`)")
                    yield {int(m): int(n) for m, n in conn.execute(stmt).all()}
            finally:
                try:
                    with conn.begin():
                        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = DEFAULT")
                except SQLAlchemyError:
                    conn.invalidate()  # broken: it does not go back to the pool

    def has_covering_index(self, counter) -> bool:
        with self._lock:
            if counter.key not in self._covering:
                table, columns = counter.covering_index
                with self.connect() as conn:
                    self._covering[counter.key] = has_index(conn, table, columns)
            return self._covering[counter.key]

    def _abandon(self, conn):
        """Stop a streaming MySQL query server-side so closing it need not read the rest."""
        if conn.dialect.name not in ("mysql", "mariadb"):
            return
        try:
            thread_id = conn.connection.dbapi_connection.thread_id()
            with self.connect() as other:
                other.exec_driver_sql(f"KILL QUERY {int(thread_id)}")
        except (SQLAlchemyError, AttributeError) as exc:
            log.warning("could not stop an abandoned query (it will be drained): %s", one_line(exc))
