"""Change counted rows: announce the counter deltas, commit, then apply them in Redis.

A transition is a function of the session that locks the row it changes (``SELECT ...
FOR UPDATE`` on MySQL), reads its old state, writes the new one and returns the counter
deltas the change implies. Deltas computed under the row lock add up to exactly what
the database says, whatever other requests do at the same time; a duplicate request
finds the row already changed and is refused before anything is counted.

Before the commit the deltas are announced (:mod:`common.cache.writes`), so that a
``flask stats fix`` running meanwhile waits for them instead of mistaking a committed
row whose increment is on its way for drift.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from common.cache import writes
from common.cache.writes import Delta, deltas  # noqa: F401  (the views build their deltas with these)
from toutiao.resources.errors import Conflict

log = logging.getLogger(__name__)

#: Times a transition is tried when MySQL reports a deadlock or a duplicate insert.
ATTEMPTS = 5

# MySQL error codes worth retrying: lock wait timeout, deadlock, and a duplicate key
# from two requests inserting the same unique row at once (the retry finds the row).
_RETRYABLE = {1205, 1213, 1062}


def commit_then_count(session, redis, change: Callable[[object], list[Delta]]) -> list[Delta]:
    """Run ``change`` in a transaction, announce its deltas, commit, then apply them; return them.

    :class:`~toutiao.resources.errors.ApiError` raised by ``change`` rolls it back and
    counts nothing. A Redis failure is logged, not raised: the row is committed, and
    ``flask stats fix`` makes the counter right again.
    """
    for attempt in range(1, ATTEMPTS + 1):
        announcement = None
        try:
            found = change(session)
            announcement = announce(redis, found)
            session.commit()
            break
        except DBAPIError as exc:
            session.rollback()
            withdraw(redis, announcement)
            if attempt == ATTEMPTS or not _retryable(exc):
                raise
            time.sleep(random.uniform(0, 0.01 * attempt))
        except BaseException:
            session.rollback()
            withdraw(redis, announcement)
            raise
    bump(redis, announcement)
    return found


def announce(redis, found: list[Delta]) -> writes.Announcement:
    """Announce the deltas of a change about to be committed; on a Redis failure, go on unannounced."""
    try:
        return writes.announce(
            redis, found, ttl=float(current_app.config.get("STATS_INFLIGHT_TTL") or writes.DEFAULT_TTL)
        )
    except RedisError as exc:
        log.error("could not announce the counter deltas, committing without (%s): %s", exc, found)
        return writes.unannounced(found)


def withdraw(redis, announcement) -> None:
    """Withdraw the announcement (if any) of a change that was rolled back."""
    if announcement is None:
        return
    try:
        writes.retract(redis, announcement)
    except RedisError as exc:
        log.error("rolled back, but the announcement stays until it expires (%s)", exc)


def bump(redis, announcement: writes.Announcement) -> None:
    """Apply committed deltas in one pipeline."""
    try:
        outcomes = writes.apply(redis, announcement)
    except RedisError as exc:
        log.error("committed, but the counters were not bumped (%s): %s", exc, announcement.deltas)
        return
    for delta, outcome in zip(announcement.deltas, outcomes):
        if outcome == "unannounced":
            log.warning("applied an unannounced increment: %s", delta)
        elif outcome == "late":
            log.info("left an unannounced increment to the running repair: %s", delta)


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
