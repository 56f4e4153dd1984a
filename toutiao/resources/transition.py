"""Change counted rows: commit to the database first, then bump the Redis counters.

A transition is a function of the session that locks the row it changes (``SELECT ...
FOR UPDATE`` on MySQL), reads its old state, writes the new one and returns the counter
deltas the change implies. Deltas computed under the row lock add up to exactly what
the database says, whatever other requests do at the same time; a duplicate request
finds the row already changed and is refused before anything is counted.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from common.cache.statistic import Statistic
from toutiao.resources.errors import Conflict

log = logging.getLogger(__name__)

#: Times a transition is tried when MySQL reports a deadlock or a duplicate insert.
ATTEMPTS = 5

# MySQL error codes worth retrying: lock wait timeout, deadlock, and a duplicate key
# from two requests inserting the same unique row at once (the retry finds the row).
_RETRYABLE = {1205, 1213, 1062}


@dataclass(frozen=True)
class Delta:
    """Add ``amount`` to the count of ``member_id`` in ``counter``."""

    counter: type[Statistic]
    member_id: int
    amount: int


def deltas(*items: tuple[type[Statistic], int, int]) -> list[Delta]:
    """Return the non-zero deltas among ``(counter, member id, amount)`` triples."""
    return [Delta(counter, member_id, amount) for counter, member_id, amount in items if amount]


def commit_then_count(session, redis, change: Callable[[object], list[Delta]]) -> list[Delta]:
    """Run ``change`` in a transaction, commit, then apply its deltas to Redis; return them.

    :class:`~toutiao.resources.errors.ApiError` raised by ``change`` rolls it back and
    counts nothing. A Redis failure after the commit is logged, not raised: the row is
    committed, and ``flask stats fix`` makes the counter right again.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            found = change(session)
            session.commit()
            break
        except DBAPIError as exc:
            session.rollback()
            if attempt == ATTEMPTS or not _retryable(exc):
                raise
            time.sleep(random.uniform(0, 0.01 * attempt))
        except BaseException:
            session.rollback()
            raise
    bump(redis, found)
    return found


def bump(redis, found: list[Delta]) -> None:
    """Apply committed deltas in one pipeline."""
    if not found:
        return
    pipe = redis.pipeline(transaction=False)
    for delta in found:
        delta.counter.incr(pipe, delta.member_id, delta.amount)
    try:
        pipe.execute()
    except RedisError as exc:
        log.error("committed, but the counters were not bumped (%s): %s", exc, found)


def _retryable(exc: DBAPIError) -> bool:
    args = getattr(exc.orig, "args", ())
    return bool(args) and args[0] in _RETRYABLE


def set_state(session, model, key: dict, column: str, new, refuse: dict, absent):
    """Lock the row of ``model`` with the unique ``key`` and set its ``column`` to ``new``.

    A missing row counts as being in state ``absent`` and is inserted. An old state in
    ``refuse`` raises :class:`Conflict` with the message it maps to. Return the old state.
    """
    row = session.query(model).filter_by(**key).with_for_update().first()
    old = getattr(row, column) if row is not None else absent
    if old in refuse:
        raise Conflict(refuse[old])
    if row is None:
        session.add(model(**key, **{column: new}))
        session.flush()
    else:
        setattr(row, column, new)
    return old
