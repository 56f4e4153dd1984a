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

Prints a JSON summary (seconds in the database and in Redis, members per counter) on stdout.

    DATABASE_URL=... REDIS_URL=... .venv/bin/python -m bench.oldway
"""

import json
import sys
import time

from common.cache.statistic import COUNTERS
from toutiao import create_app
from toutiao.extensions import database, redis_client


def fix_process(session, redis, counter) -> dict:
    """Repair one counter the original way; return timings and the member count."""
    started = time.monotonic()
    ret = session.execute(counter.query).all()
    queried = time.monotonic()
    pl = redis.pipeline(transaction=True)
    pl.delete(counter.key)
    redis_data = {}
    for member_id, count in ret:
        redis_data[member_id] = count
    if redis_data:  # guard: the original sent ZADD with no member here and crashed
        pl.zadd(counter.key, redis_data)
    pl.execute()
    done = time.monotonic()
    return {
        "counter": counter.key,
        "members": len(ret),
        "query_seconds": round(queried - started, 3),
        "redis_seconds": round(done - queried, 3),
    }


def fix_statistics(app) -> list:
    """Repair every counter one after the other, as the scheduled job did."""
    results = []
    with app.app_context():
        session = database.session
        redis = redis_client.client
        for counter in COUNTERS:
            results.append(fix_process(session, redis, counter))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def main():
    started = time.monotonic()
    results = fix_statistics(create_app())
    summary = {
        "counters": results,
        "members": sum(r["members"] for r in results),
        "query_seconds": round(sum(r["query_seconds"] for r in results), 3),
        "redis_seconds": round(sum(r["redis_seconds"] for r in results), 3),
        "seconds": round(time.monotonic() - started, 3),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
