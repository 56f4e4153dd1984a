"""Generate the ``toutiao_bench`` database at a chosen scale, in a couple of minutes.

The tables are the app's own (``Base.metadata.create_all``). Rows are written as TSV files
under ``bench/data/`` and loaded with ``LOAD DATA LOCAL INFILE``; the secondary indexes
are dropped for the load and added back afterwards (a sorted build is much faster than
inserting into them row by row), and the result is checked to be exactly the schema
``create_all`` made.

Per user there are about 2 articles, 3 relations, 2 collections, 2 attitudes, 2 comments
and 1 comment like. Rows are in time order (ids increase with ``create_time``), so the
rows of one user or one article are scattered over the table as in production.
Two shapes (``--shape``):

- ``skewed`` (the default): popularity is skewed (a rank drawn as ``n * random() ** 3``):
  a few users have very many followers, a few articles very many likes and comments, a
  few comments very many replies and likes. Ids are autoincrement, 1 to n.
- ``loguniform``: the targets (followed users; collected, liked and commented articles;
  liked and replied-to comments) are drawn log-uniformly, rank k with probability about
  1/k (``int(n ** random()) - 1``), so a handful of users and articles hold most of the
  follows, likes, collections and comments; and user and comment ids are 19-digit
  snowflake ids as the original toutiao assigns them (its ``IdWorker``: Twitter's layout
  and epoch, datacenter 0, worker 0), increasing with the row's time, in every column
  that refers to them. Article ids stay autoincrement. The actors (who follows, likes,
  comments) are drawn as in ``skewed``.

The database records its shape in its comment (``bench.generate: shape=NAME``), set
when the load is complete; :func:`database_shape` reads it back. A database without
one predates the shapes and is ``skewed``. A run that writes to the rows (the bench's
restart mode sends live traffic) marks it changed (:func:`mark_changed`), so that the
next run does not take it for the generated data.

    .venv/bin/python -m bench.generate --users 1000000 [--shape loguniform]
"""

from __future__ import annotations

import argparse
import math
import random
import re
import time
from array import array
from pathlib import Path

import pymysql
from sqlalchemy import create_engine

from common.models import Base

DATA = Path(__file__).resolve().parent / "data"
DATABASE = "toutiao_bench"

# Rows are spread over five years, starting 2019-01-01.
EPOCH = 1_546_300_800
SPAN = 5 * 365 * 86400

# The original toutiao's snowflake ids (utils/snowflake/id_worker.py, with its settings
# DATACENTER_ID = WORKER_ID = 0): ((ms - TWEPOCH) << 22) | (datacenter << 17) | (worker << 12) | sequence.
TWEPOCH = 1_288_834_974_657
DATACENTER_ID = 0
WORKER_ID = 0
SEQUENCE_MASK = (1 << 12) - 1

SHAPES = ("skewed", "loguniform")
DEFAULT_SHAPE = "skewed"
# The database's comment while it is being generated, and once it is complete.
GENERATING = "bench.generate: shape={shape}, generating"
COMPLETE = "bench.generate: shape={shape}"
CHANGED = "bench.generate: shape={shape}, rows changed after generation"

# Share of users who publish articles.
AUTHORS = 0.2

# Value distributions: (value, weight); "\\N" is NULL in a TSV file.
ARTICLE_STATUS = [(2, 80), (0, 5), (1, 5), (3, 3), (4, 5), (5, 2)]  # mostly approved
RELATION = [(1, 85), (0, 12), (2, 3)]  # follow, unfollowed, blacklist
ATTITUDE = [("1", 70), ("0", 15), ("\\N", 15)]  # like, dislike, cleared
COMMENT_STATUS = [(1, 80), (0, 8), (2, 5), (3, 7)]  # mostly approved
DELETED = [(0, 85), (1, 15)]
LIKE_DELETED = [(0, 90), (1, 10)]
REPLY_SHARE = 1 / 3

WORDS = [
    "the",
    "news",
    "of",
    "the",
    "day",
    "market",
    "city",
    "team",
    "match",
    "rain",
    "season",
    "school",
    "film",
    "music",
    "new",
    "old",
    "first",
    "last",
    "big",
    "small",
    "report",
    "review",
    "update",
    "story",
    "photo",
    "video",
    "interview",
    "analysis",
    "opinion",
    "sport",
    "travel",
    "food",
    "health",
    "science",
]


def server_args(args) -> dict:
    return {"host": args.host, "port": args.port, "user": args.user, "password": args.password}


def database_url(host="127.0.0.1", port=3306, user="root", password="", database=DATABASE) -> str:
    """Return the SQLAlchemy URL of the bench database."""
    auth = user if not password else f"{user}:{password}"
    return f"mysql+pymysql://{auth}@{host}:{port}/{database}"


class Scatter:
    """A fixed permutation of 1..n: spreads popular ranks over the id space."""

    def __init__(self, n: int, salt: int):
        self.n = n
        step = int(n * 0.618034) + salt
        while math.gcd(step, n) != 1:
            step += 1
        self.step = step % n or 1
        self.offset = salt * 7919 % n

    def __call__(self, rank: int) -> int:
        return (rank * self.step + self.offset) % self.n + 1


def skewed(rng: random.Random, n: int, alpha: float) -> int:
    """Return a rank in 0..n-1, heavily weighted towards 0 when alpha > 1."""
    return min(int(n * rng.random() ** alpha), n - 1)


def loguniform(rng: random.Random, n: int) -> int:
    """Return a rank in 0..n-1 drawn log-uniformly: rank k with probability about 1/((k + 1) ln n)."""
    return min(max(int(n ** rng.random()) - 1, 0), n - 1)


def snowflake_ids(total: int, rng: random.Random) -> array:
    """Return the snowflake ids of rows 1..``total`` (index 0 unused), in time order.

    Row i is created at a random millisecond of its 1/total share of the five years (so
    the ids are not an arithmetic progression); a second id in the same millisecond takes
    the next sequence number, as the original ``IdWorker`` does.
    """
    ids = array("Q", [0])
    last_ms, sequence = -1, 0
    start_ms, span_ms = EPOCH * 1000, SPAN * 1000
    for i in range(1, total + 1):
        ms = start_ms + ((i - 1) * span_ms + rng.randrange(span_ms)) // max(total, 1)
        if ms <= last_ms:
            sequence = (sequence + 1) & SEQUENCE_MASK
            ms = last_ms if sequence else last_ms + 1
        else:
            sequence = 0
        last_ms = ms
        ids.append(((ms - TWEPOCH) << 22) | (DATACENTER_ID << 17) | (WORKER_ID << 12) | sequence)
    return ids


def snowflake_time(snowflake: int) -> int:
    """Return the Unix second a snowflake id was made in."""
    return ((snowflake >> 22) + TWEPOCH) // 1000


class Shape:
    """How targets are drawn and which ids the rows get: ``skewed`` ranks, ids 1..n."""

    name = "skewed"

    def __init__(self, n_users: int, n_comments: int, seed: int):
        self.n_users, self.n_comments = n_users, n_comments

    def target(self, rng: random.Random, n: int) -> int:
        """Return the popularity rank (0..n-1) of a followed user, an article or a comment."""
        return skewed(rng, n, 3.0)

    def user_id(self, index: int) -> int:
        """Return the id of the ``index``-th user (1-based, in creation order)."""
        return index

    def comment_id(self, index: int) -> int:
        """Return the id of the ``index``-th comment (1-based, in creation order)."""
        return index

    def user_time(self, index: int) -> int:
        """Return the Unix second of the ``index``-th user's row."""
        return when(index, self.n_users)

    def comment_time(self, index: int) -> int:
        """Return the Unix second the ``index``-th comment was made."""
        return when(index, self.n_comments)


class LogUniform(Shape):
    """Log-uniform targets; snowflake user and comment ids, their times the ids' own."""

    name = "loguniform"

    def __init__(self, n_users: int, n_comments: int, seed: int):
        super().__init__(n_users, n_comments, seed)
        # Random of their own: the rows' draws stay those of the seed.
        self.user_id = snowflake_ids(n_users, random.Random(f"{seed}:users")).__getitem__
        self.comment_id = snowflake_ids(n_comments, random.Random(f"{seed}:comments")).__getitem__

    def target(self, rng, n):
        return loguniform(rng, n)

    def user_time(self, index):
        return snowflake_time(self.user_id(index))

    def comment_time(self, index):
        return snowflake_time(self.comment_id(index))


def make_shape(name: str, n_users: int, n_comments: int, seed: int) -> Shape:
    return {"skewed": Shape, "loguniform": LogUniform}[name](n_users, n_comments, seed)


def choices(rng, table, k):
    values, weights = zip(*table)
    return rng.choices(values, weights=weights, k=k)


def when(row_id: int, total: int) -> int:
    return EPOCH + row_id * SPAN // max(total, 1)


def unique_pairs(count, left, right, distinct=False):
    """Draw ``count`` distinct (left, right) pairs in draw order."""
    seen = set()
    pairs = []
    while len(pairs) < count:
        a, b = left(), right()
        if distinct and a == b:
            continue
        key = (a << 32) | b
        if key in seen:
            continue
        seen.add(key)
        pairs.append((a, b))
    return pairs


def texts(rng, count, low, high):
    """Return a pool of ``count`` space-separated word strings of ``low``..``high`` characters."""
    pool = []
    for _ in range(count):
        words, size, target = [], 0, rng.randint(low, high)
        while size < target:
            word = rng.choice(WORDS)
            words.append(word)
            size += len(word) + 1
        pool.append(" ".join(words)[:high])
    return pool


# -- the tables --------------------------------------------------------------------------
# Each writer returns (columns for LOAD DATA, SET clause, rows written).


def write_users(path, n, authors, shape):
    media = set(authors)
    with open(path, "w") as f:
        for start in range(1, n + 1, 100_000):
            lines = []
            for uid in range(start, min(start + 100_000, n + 1)):
                account = f"acc{uid}" if uid % 2 else "\\N"
                email = f"u{uid}@toutiao.cn" if uid % 3 == 0 else "\\N"
                status = 0 if uid % 17 == 0 else 1
                lines.append(
                    f"{shape.user_id(uid)}\t{account}\t{email}\t{status}\t13{uid:09d}\tuser{uid}\t{int(uid in media)}\t"
                    f"{int(uid % 50 == 0)}\t0\t0\t0\t0\t0\t{shape.user_time(uid)}\n"
                )
            f.writelines(lines)
    columns = (
        "user_id, account, email, status, mobile, user_name, is_media, is_verified, "
        "article_count, following_count, fans_count, like_count, read_count, @t"
    )
    return columns, "last_login = FROM_UNIXTIME(@t)", n


def write_articles(rng, path, n_articles, authors, shape):
    titles = texts(rng, 512, 12, 60)
    statuses = choices(rng, ARTICLE_STATUS, n_articles)
    n_authors = len(authors)
    with open(path, "w") as f:
        lines = []
        for aid in range(1, n_articles + 1):
            uid = shape.user_id(authors[skewed(rng, n_authors, 2.0)])
            lines.append(
                f"{aid}\t{uid}\t{aid % 25}\t{titles[aid % 512]}\t{int(aid % 97 == 0)}\t{statuses[aid - 1]}\t"
                f"{when(aid, n_articles)}\n"
            )
            if len(lines) == 100_000:
                f.writelines(lines)
                lines = []
        f.writelines(lines)
    columns = "article_id, user_id, channel_id, title, is_advertising, status, @t"
    return columns, "create_time = FROM_UNIXTIME(@t), update_time = FROM_UNIXTIME(@t)", n_articles


def same(index: int) -> int:
    return index


def write_pairs(path, pairs, values, left=same, right=same):
    """Write (row id, left id, right id, value, time) rows; ``left``/``right`` map indexes to ids."""
    total = len(pairs)
    with open(path, "w") as f:
        lines = []
        for i, ((a, b), v) in enumerate(zip(pairs, values), start=1):
            lines.append(f"{i}\t{left(a)}\t{right(b)}\t{v}\t{when(i, total)}\n")
            if len(lines) == 100_000:
                f.writelines(lines)
                lines = []
        f.writelines(lines)
    return total


def write_relations(rng, path, n_users, n_rel, shape):
    follower, followed = Scatter(n_users, 11), Scatter(n_users, 23)
    pairs = unique_pairs(
        n_rel,
        lambda: follower(skewed(rng, n_users, 1.5)),
        lambda: followed(shape.target(rng, n_users)),
        distinct=True,
    )
    rows = write_pairs(path, pairs, choices(rng, RELATION, n_rel), shape.user_id, shape.user_id)
    columns = "relation_id, user_id, target_user_id, relation, @t"
    return columns, "create_time = FROM_UNIXTIME(@t), update_time = FROM_UNIXTIME(@t)", rows


def write_collections(rng, path, n_users, n_articles, n_rows, shape):
    user, article = Scatter(n_users, 31), Scatter(n_articles, 37)
    pairs = unique_pairs(
        n_rows, lambda: user(skewed(rng, n_users, 1.5)), lambda: article(shape.target(rng, n_articles))
    )
    rows = write_pairs(path, pairs, choices(rng, DELETED, n_rows), shape.user_id)
    columns = "collection_id, user_id, article_id, is_deleted, @t"
    return columns, "create_time = FROM_UNIXTIME(@t), update_time = FROM_UNIXTIME(@t)", rows


def write_attitudes(rng, path, n_users, n_articles, n_rows, shape):
    user, article = Scatter(n_users, 41), Scatter(n_articles, 37)
    pairs = unique_pairs(
        n_rows, lambda: user(skewed(rng, n_users, 1.5)), lambda: article(shape.target(rng, n_articles))
    )
    rows = write_pairs(path, pairs, choices(rng, ATTITUDE, n_rows), shape.user_id)
    columns = "attitude_id, user_id, article_id, attitude, @t"
    return columns, "create_time = FROM_UNIXTIME(@t), update_time = FROM_UNIXTIME(@t)", rows


def write_comments(rng, path, n_users, n_articles, n_rows, shape):
    user, article = Scatter(n_users, 43), Scatter(n_articles, 37)
    contents = texts(rng, 1024, 10, 140)
    statuses = choices(rng, COMMENT_STATUS, n_rows)
    top_ids, top_articles = [], []
    with open(path, "w") as f:
        lines = []
        for cid in range(1, n_rows + 1):
            if top_ids and rng.random() < REPLY_SHARE:
                # A few comments draw most of the replies.
                k = shape.target(rng, len(top_ids))
                parent, art = str(shape.comment_id(top_ids[k])), top_articles[k]
            else:
                parent, art = "\\N", article(shape.target(rng, n_articles))
                top_ids.append(cid)
                top_articles.append(art)
            uid = shape.user_id(user(skewed(rng, n_users, 1.5)))
            lines.append(
                f"{shape.comment_id(cid)}\t{uid}\t{art}\t{parent}\t{contents[cid % 1024]}\t{int(cid % 500 == 0)}\t"
                f"{statuses[cid - 1]}\t{shape.comment_time(cid)}\n"
            )
            if len(lines) == 100_000:
                f.writelines(lines)
                lines = []
        f.writelines(lines)
    columns = "comment_id, user_id, article_id, parent_id, content, is_top, status, @t"
    return columns, "create_time = FROM_UNIXTIME(@t), like_count = 0, reply_count = 0", n_rows


def write_comment_likes(rng, path, n_users, n_comments, n_rows, shape):
    user, comment = Scatter(n_users, 47), Scatter(n_comments, 53)
    pairs = unique_pairs(
        n_rows, lambda: user(skewed(rng, n_users, 1.5)), lambda: comment(shape.target(rng, n_comments))
    )
    rows = write_pairs(path, pairs, choices(rng, LIKE_DELETED, n_rows), shape.user_id, shape.comment_id)
    columns = "liking_id, user_id, comment_id, is_deleted, @t"
    return columns, "create_time = FROM_UNIXTIME(@t), update_time = FROM_UNIXTIME(@t)", rows


# -- loading -----------------------------------------------------------------------------

_KEY = re.compile(r"^\s*((?:UNIQUE )?KEY `([^`]+)` \(.*\)),?$")


def _schema(cur, table) -> set:
    cur.execute(f"SHOW CREATE TABLE `{table}`")
    text = cur.fetchone()[1]
    return {re.sub(r" AUTO_INCREMENT=\d+", "", line).rstrip(",") for line in text.splitlines()}


def load_table(conn, table, path, columns, assignments):
    """Load one TSV file with the table's secondary indexes dropped, then add them back."""
    with conn.cursor() as cur:
        before = _schema(cur, table)
        keys = [m.groups() for m in map(_KEY.match, before) if m]
        if keys:
            cur.execute(f"ALTER TABLE `{table}` " + ", ".join(f"DROP INDEX `{name}`" for _, name in keys))
        cur.execute(
            f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE `{table}` CHARACTER SET utf8mb4 "
            f"FIELDS TERMINATED BY '\\t' LINES TERMINATED BY '\\n' ({columns}) SET {assignments}"
        )
        loaded = cur.rowcount
        cur.execute("SHOW WARNINGS LIMIT 3")
        warnings = cur.fetchall()
        if warnings:
            raise RuntimeError(f"LOAD DATA into {table} warned: {warnings}")
        if keys:
            cur.execute(f"ALTER TABLE `{table}` " + ", ".join(f"ADD {definition}" for definition, _ in keys))
        after = _schema(cur, table)
        if after != before:
            raise RuntimeError(f"{table}: schema after the load differs: {sorted(after ^ before)}")
        cur.execute(f"ANALYZE TABLE `{table}`")
        cur.fetchall()
    conn.commit()
    return loaded


def generate(args):
    n = args.users
    rng = random.Random(args.seed)
    counts = {
        "user_basic": n,
        "news_article_basic": 2 * n,
        "user_relation": 3 * n,
        "news_collection": 2 * n,
        "news_attitude": 2 * n,
        "news_comment": 2 * n,
        "news_comment_liking": n,
    }
    DATA.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    server = pymysql.connect(**server_args(args), local_infile=True, autocommit=True)
    with server.cursor() as cur:
        try:
            cur.execute("SET GLOBAL local_infile = 1")
        except pymysql.err.OperationalError as exc:  # not root: the server must allow it already
            print(f"note: cannot SET GLOBAL local_infile ({exc.args[1]})")
        cur.execute(f"DROP DATABASE IF EXISTS `{args.database}`")
        cur.execute(
            f"CREATE DATABASE `{args.database}` CHARACTER SET utf8mb4 COMMENT %s",
            (GENERATING.format(shape=args.shape),),
        )
    server.close()
    engine = create_engine(database_url(args.host, args.port, args.user, args.password, args.database))
    Base.metadata.create_all(engine)
    engine.dispose()
    print(f"database {args.database} created with the app's schema ({time.monotonic() - started:.1f}s)", flush=True)

    shape = make_shape(args.shape, n, counts["news_comment"], args.seed)
    articles, comments = counts["news_article_basic"], counts["news_comment"]
    user_scatter = Scatter(n, 5)
    authors = [user_scatter(k) for k in range(max(1, int(n * AUTHORS)))]
    writers = [
        ("user_basic", lambda p: write_users(p, n, authors, shape)),
        ("news_article_basic", lambda p: write_articles(rng, p, articles, authors, shape)),
        ("user_relation", lambda p: write_relations(rng, p, n, counts["user_relation"], shape)),
        ("news_collection", lambda p: write_collections(rng, p, n, articles, counts["news_collection"], shape)),
        ("news_attitude", lambda p: write_attitudes(rng, p, n, articles, counts["news_attitude"], shape)),
        ("news_comment", lambda p: write_comments(rng, p, n, articles, comments, shape)),
        (
            "news_comment_liking",
            lambda p: write_comment_likes(rng, p, n, comments, counts["news_comment_liking"], shape),
        ),
    ]
    conn = pymysql.connect(**server_args(args), database=args.database, local_infile=True)
    total_rows = 0
    try:
        for table, write in writers:
            path = DATA / f"{table}.tsv"
            t0 = time.monotonic()
            columns, assignments, rows = write(path)
            t1 = time.monotonic()
            loaded = load_table(conn, table, path, columns, assignments)
            t2 = time.monotonic()
            if loaded != rows:
                raise RuntimeError(f"{table}: wrote {rows} rows, loaded {loaded}")
            total_rows += rows
            print(
                f"{table:<20} {rows:>10,} rows  generated {t1 - t0:6.1f}s  loaded+indexed {t2 - t1:6.1f}s", flush=True
            )
            if not args.keep_files:
                path.unlink()
        with conn.cursor() as cur:  # complete: say so, with the shape
            cur.execute(f"ALTER DATABASE `{args.database}` COMMENT %s", (COMPLETE.format(shape=args.shape),))
    finally:
        conn.close()
    print(f"done: {total_rows:,} rows, shape {args.shape}, in {time.monotonic() - started:.1f}s", flush=True)


def database_exists(cur, database: str) -> bool:
    cur.execute("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s", (database,))
    return bool(cur.fetchone()[0])


def mark_changed(cur, database: str, shape: str):
    """Record that something (the bench's live traffic) wrote to the generated rows: the
    database no longer holds what ``--seed`` generates, and the next run generates it anew."""
    cur.execute(f"ALTER DATABASE `{database}` COMMENT %s", (CHANGED.format(shape=shape),))


def database_shape(cur, database: str):
    """Return the shape a generated database records, "skewed" for one that predates the
    shapes, None for one still being generated (or abandoned half way), changed since it
    was generated, or not there."""
    cur.execute("SELECT schema_comment FROM information_schema.schemata WHERE schema_name = %s", (database,))
    row = cur.fetchone()
    if row is None:
        return None
    comment = row[0] or ""
    if not comment:
        return DEFAULT_SHAPE
    match = re.fullmatch(r"bench\.generate: shape=(\w+)", comment)
    return match.group(1) if match else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="scale: number of users [1000000]")
    parser.add_argument("--database", default=DATABASE, help=f"database to drop and create [{DATABASE}]")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--shape", choices=SHAPES, default=DEFAULT_SHAPE, help=f"data shape [{DEFAULT_SHAPE}]")
    parser.add_argument("--keep-files", action="store_true", help="keep the TSV files in bench/data/")
    args = parser.parse_args(argv)
    if args.users < 10:
        parser.error("--users must be at least 10")
    generate(args)


if __name__ == "__main__":
    main()
