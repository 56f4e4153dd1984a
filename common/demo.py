"""A realistic sample toutiao dataset, and counters drifted in every way the repair handles."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from common.models import Article, Attitude, Collection, Comment, CommentLiking, Relation, User


@dataclass
class SeedSummary:
    users: int = 0
    articles: int = 0
    relations: int = 0
    collections: int = 0
    attitudes: int = 0
    comments: int = 0
    comment_likes: int = 0


def database_is_empty(conn) -> bool:
    """Tell whether the toutiao tables hold no users and no articles."""
    return (
        not conn.execute(select(func.count()).select_from(User)).scalar()
        and not conn.execute(select(func.count()).select_from(Article)).scalar()
    )


def seed_database(engine, users: int = 200, seed: int = 2026) -> SeedSummary:
    """Insert a sample: users, articles in every status, follows, blacklists, collections,
    likes, dislikes, cleared attitudes, comments and replies in every status, comment likes."""
    rng = random.Random(seed)
    summary = SeedSummary()
    with Session(engine) as conn, conn.begin():
        conn.execute(
            insert(User),
            [
                {
                    "mobile": f"138{i:08d}",
                    "name": f"user{i}",
                    "status": User.STATUS.ENABLE if i % 17 else User.STATUS.DISABLE,
                    "is_media": i % 10 == 0,
                }
                for i in range(1, users + 1)
            ],
        )
        summary.users = users
        user_ids = list(conn.scalars(select(User.id).order_by(User.id)))

        statuses = [0, 1, 2, 2, 2, 2, 2, 3, 4, 5]
        article_rows = []
        authors = rng.sample(user_ids, max(1, users * 3 // 5))  # some users never publish
        for author in authors:
            for _ in range(rng.randint(1, 6)):
                article_rows.append(
                    {
                        "user_id": author,
                        "channel_id": rng.randint(1, 20),
                        "title": f"article by user {author}",
                        "cover": {"type": 0, "images": []},
                        "status": rng.choice(statuses),
                    }
                )
        conn.execute(insert(Article), article_rows)
        summary.articles = len(article_rows)
        article_ids = list(conn.scalars(select(Article.id).order_by(Article.id)))

        relations = {}
        for user in user_ids:
            for target in rng.sample(user_ids, rng.randint(0, min(15, users - 1))):
                if target != user:
                    relations[(user, target)] = rng.choice([1, 1, 1, 1, 0, 2])
        conn.execute(
            insert(Relation),
            [{"user_id": u, "target_user_id": t, "relation": r} for (u, t), r in relations.items()],
        )
        summary.relations = len(relations)

        collections, attitudes = {}, {}
        for user in user_ids:
            for article in rng.sample(article_ids, rng.randint(0, min(12, len(article_ids)))):
                collections[(user, article)] = rng.choice([0, 0, 0, 1])
            for article in rng.sample(article_ids, rng.randint(0, min(12, len(article_ids)))):
                attitudes[(user, article)] = rng.choice([1, 1, 1, 0, None])
        conn.execute(
            insert(Collection),
            [{"user_id": u, "article_id": a, "is_deleted": d} for (u, a), d in collections.items()],
        )
        conn.execute(
            insert(Attitude),
            [{"user_id": u, "article_id": a, "attitude": v} for (u, a), v in attitudes.items()],
        )
        summary.collections, summary.attitudes = len(collections), len(attitudes)

        comment_statuses = [1, 1, 1, 1, 0, 2, 3]
        top = [
            {
                "user_id": rng.choice(user_ids),
                "article_id": rng.choice(article_ids),
                "parent_id": None,
                "content": "nice article",
                "status": rng.choice(comment_statuses),
            }
            for _ in range(len(article_ids) * 2)
        ]
        conn.execute(insert(Comment), top)
        top_ids = list(conn.execute(select(Comment.id, Comment.article_id).order_by(Comment.id)))
        replies = []
        for parent, article in rng.sample(top_ids, len(top_ids) // 3):
            for _ in range(rng.randint(1, 4)):
                replies.append(
                    {
                        "user_id": rng.choice(user_ids),
                        "article_id": article,
                        "parent_id": parent,
                        "content": "agreed",
                        "status": rng.choice(comment_statuses),
                    }
                )
        conn.execute(insert(Comment), replies)
        summary.comments = len(top) + len(replies)
        comment_ids = list(conn.scalars(select(Comment.id).order_by(Comment.id)))

        likings = {}
        for user in user_ids:
            for comment in rng.sample(comment_ids, rng.randint(0, min(10, len(comment_ids)))):
                likings[(user, comment)] = rng.choice([0, 0, 0, 1])
        conn.execute(
            insert(CommentLiking),
            [{"user_id": u, "comment_id": c, "is_deleted": d} for (u, c), d in likings.items()],
        )
        summary.comment_likes = len(likings)
    return summary


def drift_counters(redis) -> list[str]:
    """Damage the (correct) counters in every way the repair must handle; return what was done."""
    done = []

    def first_members(key, n):
        return [m for m, _ in redis.zscan(key, 0, count=1000)[1][:n]]

    arts = first_members("count:user:arts", 3)
    if arts:
        redis.zincrby("count:user:arts", 3, arts[0])
        redis.zadd("count:user:arts", {arts[1]: -2} if len(arts) > 1 else {})
    redis.zadd("count:user:arts", {"9999999": 4})
    done.append("count:user:arts: a wrong score, a negative score, a stale member")

    for member in first_members("count:user:followings", 5):
        redis.zrem("count:user:followings", member)
    done.append("count:user:followings: missing members")

    redis.zadd("count:user:followers", {"abc": 1, "12x": 2, "007": 3, "-4": 1})
    done.append("count:user:followers: junk members")

    redis.delete("count:art:collecting")
    done.append("count:art:collecting: the key is missing")

    redis.delete("count:user:art:collecting")
    redis.set("count:user:art:collecting", "not a sorted set")
    done.append("count:user:art:collecting: a key of the wrong type")

    liking = first_members("count:art:liking", 2)
    if liking:
        redis.zadd("count:art:liking", {liking[0]: 0, liking[-1]: 2.5})
    done.append("count:art:liking: a zero score and a fractional score")

    for member in first_members("count:art:dislike", 3):
        redis.zincrby("count:art:dislike", 7, member)
    done.append("count:art:dislike: wrong scores")

    liked = first_members("count:user:liked", 1)
    if liked:
        redis.zadd("count:user:liked", {liked[0]: -10})
    done.append("count:user:liked: a negative score")

    redis.zadd("count:comm:liking", {"8888888": 2, "8888889": 1})
    done.append("count:comm:liking: stale members")

    for member in first_members("count:art:comm", 2):
        redis.zincrby("count:art:comm", -1, member)
    done.append("count:art:comm: scores one short")

    reply = first_members("count:art:reply", 1)
    if reply:
        redis.zrem("count:art:reply", reply[0])
    done.append("count:art:reply: a missing member")
    return done
