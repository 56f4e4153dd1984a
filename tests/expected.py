"""The counters' true values, computed with plain SQL independent of the code under test."""

from sqlalchemy import text

# counter key -> SQL returning (member id, count) for every member whose count is > 0
EXPECTED_SQL = {
    "count:user:arts": "SELECT user_id, COUNT(*) FROM news_article_basic WHERE status = 2 GROUP BY user_id",
    "count:user:followings": "SELECT user_id, COUNT(*) FROM user_relation WHERE relation = 1 GROUP BY user_id",
    "count:user:followers": (
        "SELECT target_user_id, COUNT(*) FROM user_relation WHERE relation = 1 GROUP BY target_user_id"
    ),
    "count:art:collecting": (
        "SELECT article_id, COUNT(*) FROM news_collection WHERE is_deleted = 0 GROUP BY article_id"
    ),
    "count:user:art:collecting": (
        "SELECT user_id, COUNT(*) FROM news_collection WHERE is_deleted = 0 GROUP BY user_id"
    ),
    "count:art:liking": "SELECT article_id, COUNT(*) FROM news_attitude WHERE attitude = 1 GROUP BY article_id",
    "count:art:dislike": "SELECT article_id, COUNT(*) FROM news_attitude WHERE attitude = 0 GROUP BY article_id",
    "count:user:liked": (
        "SELECT a.user_id, COUNT(*) FROM news_attitude t JOIN news_article_basic a ON a.article_id = t.article_id"
        " WHERE t.attitude = 1 GROUP BY a.user_id"
    ),
    "count:comm:liking": (
        "SELECT comment_id, COUNT(*) FROM news_comment_liking WHERE is_deleted = 0 GROUP BY comment_id"
    ),
    "count:art:comm": "SELECT article_id, COUNT(*) FROM news_comment WHERE status = 1 GROUP BY article_id",
    "count:art:reply": (
        "SELECT parent_id, COUNT(*) FROM news_comment WHERE status = 1 AND parent_id IS NOT NULL GROUP BY parent_id"
    ),
}

KEYS = list(EXPECTED_SQL)


def expected(engine, key) -> dict:
    """Return {member: count} the database says for one counter."""
    with engine.connect() as conn:
        return {str(m): float(n) for m, n in conn.execute(text(EXPECTED_SQL[key]))}


def actual(redis, key) -> dict:
    """Return {member: score} Redis holds for one counter (empty when absent)."""
    if redis.type(key) != "zset":
        return {} if not redis.exists(key) else {"<wrong type>": redis.type(key)}
    return dict(redis.zscan_iter(key, count=1000))


def wrong_members(engine, redis, keys=KEYS) -> dict:
    """Return {key: {member: (redis, database)}} for every member that differs."""
    found = {}
    for key in keys:
        want, have = expected(engine, key), actual(redis, key)
        diff = {m: (have.get(m), want.get(m)) for m in set(want) | set(have) if have.get(m) != want.get(m)}
        if diff:
            found[key] = diff
    return found
