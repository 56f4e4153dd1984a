"""The original toutiao repair job, ported faithfully, for the benchmark to compare against.

The original APScheduler job (``scheduler/statistic.py``) ran, for each counter, the
counter's GROUP BY through the ORM session, took the whole result into memory, and
replaced the sorted set in one MULTI/EXEC transaction::

    ret = cls.db_query()                      # session.query(...).group_by(...).all()
    pl = redis_master.pipeline()              # transaction=True
    pl.delete(cls.key)
    pl.zadd(cls.key, *[count, id, count, id, ...])
    pl.execute()

Two deliberate differences, so that the comparison is like for like and the bench runs:

- The queries are the counters' own (``common/cache/statistic.py``). The original's
  like/dislike queries cross-joined ``news_collection`` and counted the wrong thing.
- The original crashed on an empty result (ZADD with no member is a Redis error, and
  the pipeline raised after the DEL had already been queued). The port skips the ZADD
  when the result is empty, leaving the key deleted, which is what the original meant.

Two peers, chosen on the command line:

- the old way (no option): each counter's plain ``query`` through the ORM session,
  ``.all()``, exactly as above;
- the old way plus hints (``--hints``): the same job, but each counter's query is the one
  ours streams, ``counter.stream_query(covering_index_exists)`` (member order, and the
  ``USE INDEX ()`` scan hint while the covering index is absent, checked with
  ``common.cache.plan.has_index`` as ``Source.has_covering_index`` does), run on a
  connection with ``SET SESSION tmp_table_size = max_heap_table_size = TMP_TABLE_BYTES``
  and read from a server-side cursor ``STATS_BATCH_SIZE`` rows at a time
  (``stream_results=True, yield_per=...``) into the dict. Everything after the query (the
  whole result in a dict, DEL + one ZADD in MULTI/EXEC) is the old way's. It tells how much
  of ours' lead comes from the database side alone.

Prints a JSON summary (seconds in the database and in Redis, members per counter) on stdout.

    DATABASE_URL=... REDIS_URL=... .venv/bin/python -m bench.oldway [--hints]
"""

import argparse
import json
import sys
import time

from common.cache.plan import has_index
from common.cache.source import TMP_TABLE_BYTES
from common.cache.statistic import COUNTERS
from toutiao import create_app
from toutiao.config import number
from toutiao.extensions import database, redis_client


def fix_process(session, redis, counter) -> dict:
    """Repair one counter the original way; return timings and the member count."""
    started = time.monotonic()
    ret = session.execute(counter.query).all()
    queried = time.monotonic()
    redis_data = {}
    for member_id, count in ret:
        redis_data[member_id] = count
    return replace(redis, counter, redis_data, started, queried)


def replace(redis, counter, redis_data: dict, started: float, queried: float) -> dict:
    """Replace the counter with ``redis_data`` as the original did (DEL + one ZADD in
    MULTI/EXEC); return the timings and the member count."""
    pl = redis.pipeline(transaction=True)
    pl.delete(counter.key)
    if redis_data:  # guard: the original sent ZADD with no member here and crashed
        pl.zadd(counter.key, redis_data)
    pl.execute()
    done = time.monotonic()
    return {
        "counter": counter.key,
        "members": len(redis_data),
        "query_seconds": round(queried - started, 3),
        "redis_seconds": round(done - queried, 3),
    }


def fix_process_hinted(conn, redis, counter, yield_per: int) -> dict:
    """Repair one counter the original way, but with ours' query, session sizes and cursor."""
    started = time.monotonic()
    table, columns = counter.covering_index
    stmt = counter.stream_query(has_index(conn, table, columns))
    result = conn.execution_options(stream_results=True, yield_per=yield_per).execute(stmt)
    redis_data = {}
    for member_id, count in result:
        redis_data[member_id] = count
    queried = time.monotonic()
    return replace(redis, counter, redis_data, started, queried)


def fix_statistics(app, hints=False) -> list:
    """Repair every counter one after the other, as the scheduled job did."""
    results = []
    with app.app_context():
        redis = redis_client.client
        if hints:
            yield_per = number(app.config, "STATS_BATCH_SIZE")
            with database.engine.connect() as conn:
                if conn.dialect.name in ("mysql", "mariadb"):
                    conn.exec_driver_sql(
                        f"SET SESSION tmp_table_size = {TMP_TABLE_BYTES}, max_heap_table_size = {TMP_TABLE_BYTES}"
                    )
                for counter in COUNTERS:
                    results.append(fix_process_hinted(conn, redis, counter, yield_per))
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        else:
            session = database.session
            for counter in COUNTERS:
                results.append(fix_process(session, redis, counter))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hints",
        action="store_true",
        help="ours' stream query (scan hints, member order), session tmp table sizes and a server-side cursor",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = fix_statistics(create_app(), hints=args.hints)
    summary = {
        "peer": "hints" if args.hints else "old",
        "counters": results,
        "members": sum(r["members"] for r in results),
        "query_seconds": round(sum(r["query_seconds"] for r in results), 3),
        "redis_seconds": round(sum(r["redis_seconds"] for r in results), 3),
        "seconds": round(time.monotonic() - started, 3),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
