"""The database side of a repair: each counter's query streamed in member order, and
counts re-read for chosen ids. Every read is in autocommit, so it sees the latest commits."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from sqlalchemy.exc import SQLAlchemyError

from common.cache.members import Shard
from common.cache.plan import has_index
from common.exceptions import one_line

log = logging.getLogger(__name__)

#: Session tmp_table_size for a streamed GROUP BY on MySQL/MariaDB (server memory, per
#: running stream, only while it runs): the 16 MB default spills to disk at several
#: hundred thousand groups, twice as slow (bench/PLANS.md).
TMP_TABLE_BYTES = 128 * 1024 * 1024

#: Batches the reader thread may hold ahead of the consumer.
AHEAD = 2

_END = object()


@dataclass
class _Failed:
    exc: BaseException


class Source:
    """Read counters from the database ``db`` (a SQLAlchemy engine), ``batch_size`` rows at a time."""

    def __init__(self, db, batch_size: int):
        self.db = db
        self.batch_size = batch_size
        self._covering: dict = {}
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

    def stream(
        self, counter, shard: Optional[Shard] = None, on_snapshot: Callable[[], None] = lambda: None
    ) -> Iterator[list]:
        """Yield the counter's ``(id, count)`` rows in id order, in batches, from a reader thread.

        The database computes and sends the next batches (at most AHEAD) while the caller
        works on the current one. ``on_snapshot`` is called just before the query starts:
        the database answers it from one snapshot taken then. If the caller stops early, the
        reader's query is killed rather than drained (draining an unbuffered million-row
        result would take as long as reading it).
        """
        stmt = self.query(counter, shard)
        batches: queue.Queue = queue.Queue(maxsize=AHEAD)
        cancel = threading.Event()

        def offer(item) -> bool:
            while not cancel.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read():
            try:
                with self.connect() as conn:
                    if conn.dialect.name in ("mysql", "mariadb"):
                        conn.exec_driver_sql(
                            f"SET SESSION tmp_table_size = {TMP_TABLE_BYTES}, max_heap_table_size = {TMP_TABLE_BYTES}"
                        )
                    on_snapshot()
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

    def counts(self, conn, counter, member_ids: list) -> dict:
        """Return ``{id: count}`` for the given ids, read now (ids counting 0 are absent)."""
        rows = conn.execute(counter.query.where(counter.member_column().in_(member_ids))).all()
        return {int(m): int(n) for m, n in rows}

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
