"""Live traffic for the bench's ``restart`` mode, in a process of its own, until SIGTERM.

Writer threads send follows, blacklists, collections, likes, dislikes, comments and
comment likes through the app's own write path: the Flask app of ``toutiao.create_app()``
(``DATABASE_URL``, ``REDIS_URL`` from the environment; a JWT secret of its own) and its
test client, as ``tests/traffic.py`` does, whose ``Traffic`` does the writing. That class
loads every user and mints a token per user and per writer, far too slow at a million
users, so this one samples: ``--users`` enabled users, as many approved articles, and as
many approved comments on approved articles, drawn with ``ORDER BY RAND(seed)``.

It prints one JSON line when the writers are sending (``{"ready": ...}``), and one when it
stops (``{"sent": requests, "unexpected": ...}``): on SIGTERM, or by itself after
``--max-seconds`` or ``--max-requests``. Exit 1 when a request got an unexpected answer.

    DATABASE_URL=... REDIS_URL=... .venv/bin/python -m bench.traffic --writers 8
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import threading
import time

from sqlalchemy import create_engine, func, select

from common.models import Article, Comment, User
from tests.traffic import Traffic
from toutiao import create_app

#: Users, articles and comments the writers pick from.
SAMPLE = 2000
#: Requests sent before the traffic says it is ready (the writers have minted their tokens).
READY_AFTER = 20


def sample(engine, size: int, seed: int) -> tuple[list, list, list]:
    """Return ``size`` enabled user ids, approved article ids and (comment id, article id) pairs
    of approved comments on approved articles, drawn at random (the same for the same seed)."""
    approved = Article.status == Article.STATUS.APPROVED
    with engine.connect() as conn:
        users = (
            conn.execute(select(User.id).where(User.status == User.STATUS.ENABLE).order_by(func.rand(seed)).limit(size))
            .scalars()
            .all()
        )
        articles = (
            conn.execute(select(Article.id).where(approved).order_by(func.rand(seed)).limit(size)).scalars().all()
        )
        # Comments first, then which of their articles are approved: a join would look up
        # an article for every approved comment in the table.
        drawn = conn.execute(
            select(Comment.id, Comment.article_id)
            .where(Comment.status == Comment.STATUS.APPROVED)
            .order_by(func.rand(seed))
            .limit(4 * size)
        ).all()
        open_articles = set(
            conn.execute(select(Article.id).where(approved, Article.id.in_(sorted({a for _, a in drawn}) or [0])))
            .scalars()
            .all()
        )
    comments = [(c, a) for c, a in drawn if a in open_articles][:size]
    return users, articles, comments


class SampledTraffic(Traffic):
    """``tests.traffic.Traffic`` over sampled users, articles and comments."""

    def __init__(self, app, engine, seed: int, writers: int, size: int = SAMPLE):
        self.size = size
        super().__init__(app, engine, seed, writers)

    def population(self, engine) -> tuple[list, list, list]:
        users, articles, comments = sample(engine, self.size, self.seed)
        if len(users) < 2 or not articles or not comments:
            raise RuntimeError("the database has too few users, approved articles or approved comments for traffic")
        return users, articles, comments


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8, help="writer threads [8]")
    parser.add_argument("--users", type=int, default=SAMPLE, help=f"users, articles and comments sampled [{SAMPLE}]")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop by itself after this long [3600]")
    parser.add_argument("--max-requests", type=int, default=5_000_000, help="stop by itself after this many")
    args = parser.parse_args(argv)
    for name in ("DATABASE_URL", "REDIS_URL"):
        if not os.environ.get(name):
            parser.error(f"{name} must be set: the traffic never runs on the embedded defaults")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    app = create_app({"JWT_SECRET": secrets.token_urlsafe(48)})
    engine = create_engine(os.environ["DATABASE_URL"])
    started = time.monotonic()
    traffic = SampledTraffic(app, engine, args.seed, args.writers, args.users)
    engine.dispose()
    traffic.start()
    traffic.wait_for(requests=READY_AFTER, timeout=60)
    print(
        json.dumps(
            {
                "ready": traffic.sent,
                "users": len(traffic.users),
                "articles": len(traffic.articles),
                "comments": len(traffic.comments),
                "writers": args.writers,
                "seconds": round(time.monotonic() - started, 2),
            }
        ),
        flush=True,
    )
    deadline = started + args.max_seconds
    while not stop.wait(0.2):
        if time.monotonic() > deadline or traffic.sent >= args.max_requests:
            break
    traffic.finish()
    print(
        json.dumps(
            {
                "sent": traffic.sent,
                "unexpected": len(traffic.unexpected),
                "unexpected_examples": [list(map(str, u)) for u in traffic.unexpected[:5]],
                "seconds": round(time.monotonic() - started, 2),
                "cpu_s": round(sum(os.times()[:2]), 2),  # the writers' share of the machine
                "stopped_by": "signal" if stop.is_set() else "limit",
            }
        ),
        flush=True,
    )
    raise SystemExit(1 if traffic.unexpected else 0)


if __name__ == "__main__":
    main()
