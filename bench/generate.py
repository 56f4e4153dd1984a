"""Generate the ``toutiao_bench`` database at a chosen scale, in a couple of minutes.

The tables are the app's own (``Base.metadata.create_all``). Rows are written as TSV files
under ``bench/data/`` and loaded with ``LOAD DATA LOCAL INFILE``; the secondary indexes
are dropped for the load and added back afterwards (a sorted build is much faster than
inserting into them row by row), and the result is checked to be exactly the schema
``create_all`` made.

Per user there are about 2 articles, 3 relations, 2 collections, 2 attitudes, 2 comments
and 1 comment like. Rows are in time order (ids increase with ``create_time``), so the
rows of one user or one article are scattered over the table as in production.
Popularity is skewed: a few users have very many followers, a few articles very many
likes and comments, a few comments very many replies and likes.

    .venv/bin/python -m bench.generate --users 1000000
"""

from __future__ import annotations

import argparse
import math
import random
import re
import time
from pathlib import Path

import pymysql
from sqlalchemy import create_engine

from common.models import Base

DATA = Path(__file__).resolve().parent / "data"
DATABASE = "toutiao_bench"

# Rows are spread over five years, starting 2019-01-01.
EPOCH = 1_546_300_800
SPAN = 5 * 365 * 86400

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


def write_users(path, n, authors):
    media = set(authors)
    with open(path, "w") as f:
        for start in range(1, n + 1, 100_000):
            lines = []
            for uid in range(start, min(start + 100_000, n + 1)):
                account = f"acc{uid}" if uid % 2 else "\\N"
                email = f"u{uid}@toutiao.cn" if uid % 3 == 0 else "\\N"
                status = 0 if uid % 17 == 0 else 1
                lines.append(
                    f"{uid}\t{account}\t{email}\t{status}\t13{uid:09d}\tuser{uid}\t{int(uid in media)}\t"
                    f"{int(uid % 50 == 0)}\t0\t0\t0\t0\t0\t{when(uid, n)}\n"
                )
            f.writelines(lines)
    columns = (
        "user_id, account, email, status, mobile, user_name, is_media, is_verified, "
        "article_count, following_count, fans_count, like_count, read_count, @t"
    )
    return columns, "last_login = FROM_UNIXTIME(@t)", n


def write_articles(rng, path, n_articles, authors):
    titles = texts(rng, 512, 12, 60)
    statuses = choices(rng, ARTICLE_STATUS, n_articles)
    owners = []
    n_authors = len(authors)
    with open(path, "w") as f:
        lines = []
        for aid in range(1, n_articles + 1):
            uid = authors[skewed(rng, n_authors, 2.0)]
            owners.append(uid)
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


def write_pairs(path, pairs, values):
    total = len(pairs)
    with open(path, "w") as f:
        lines = []
        for i, ((a, b), v) in enumerate(zip(pairs, values), start=1):
            lines.append(f"{i}\t{a}\t{b}\t{v}\t{when(i, total)}\n")
            if len(lines) == 100_000:
                f.writelines(lines)
                lines = []
        f.writelines(lines)
    return total


def write_relations(rng, path, n_users, n_rel):
    follower, followed = Scatter(n_users, 11), Scatter(n_users, 23)
    pairs = unique_pairs(
        n_rel,
        lambda: follower(skewed(rng, n_users, 1.5)),
        lambda: followed(skewed(rng, n_users, 3.0)),
        distinct=True,
    )
    rows = write_pairs(path, pairs, choices(rng, RELATION, n_rel))
    columns = "relation_id, user_id, target_user_id, relation, @t"
    return columns, "create_time = FROM_UNIXTIME(@t), update_time = FROM_UNIXTIME(@t)", rows


def write_collections(rng, path, n_users, n_articles, n_rows):
    user, article = Scatter(n_users, 31), Scatter(n_articles, 37)
    pairs = unique_pairs(n_rows, lambda: user(skewed(rng, n_users, 1.5)), lambda: article(skewed(rng, n_articles, 3.0)))
    rows = write_pairs(path, pairs, choices(rng, DELETED, n_rows))
    columns = "collection_id, user_id, article_id, is_deleted, @t"
    return columns, "create_time = FROM_UNIXTIME(@t), update_time = FROM_UNIXTIME(@t)", rows


def write_attitudes(rng, path, n_users, n_articles, n_rows):
    user, article = Scatter(n_users, 41), Scatter(n_articles, 37)
    pairs = unique_pairs(n_rows, lambda: user(skewed(rng, n_users, 1.5)), lambda: article(skewed(rng, n_articles, 3.0)))
    rows = write_pairs(path, pairs, choices(rng, ATTITUDE, n_rows))
    columns = "attitude_id, user_id, article_id, attitude, @t"
    return columns, "create_time = FROM_UNIXTIME(@t), update_time = FROM_UNIXTIME(@t)", rows


def write_comments(rng, path, n_users, n_articles, n_rows):
    user, article = Scatter(n_users, 43), Scatter(n_articles, 37)
    contents = texts(rng, 1024, 10, 140)
    statuses = choices(rng, COMMENT_STATUS, n_rows)
    top_ids, top_articles = [], []
    with open(path, "w") as f:
        lines = []
        for cid in range(1, n_rows + 1):
            if top_ids and rng.random() < REPLY_SHARE:
                # A few comments draw most of the replies.
                k = skewed(rng, len(top_ids), 3.0)
                parent, art = str(top_ids[k]), top_articles[k]
            else:
                parent, art = "\\N", article(skewed(rng, n_articles, 3.0))
                top_ids.append(cid)
                top_articles.append(art)
            uid = user(skewed(rng, n_users, 1.5))
            lines.append(
                f"{cid}\t{uid}\t{art}\t{parent}\t{contents[cid % 1024]}\t{int(cid % 500 == 0)}\t{statuses[cid - 1]}\t"
                f"{when(cid, n_rows)}\n"
            )
            if len(lines) == 100_000:
                f.writelines(lines)
                lines = []
        f.writelines(lines)
    columns = "comment_id, user_id, article_id, parent_id, content, is_top, status, @t"
    return columns, "create_time = FROM_UNIXTIME(@t), like_count = 0, reply_count = 0", n_rows


def write_comment_likes(rng, path, n_users, n_comments, n_rows):
    user, comment = Scatter(n_users, 47), Scatter(n_comments, 53)
    pairs = unique_pairs(n_rows, lambda: user(skewed(rng, n_users, 1.5)), lambda: comment(skewed(rng, n_comments, 3.0)))
    rows = write_pairs(path, pairs, choices(rng, LIKE_DELETED, n_rows))
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
        cur.execute(f"CREATE DATABASE `{args.database}` CHARACTER SET utf8mb4")
    server.close()
    engine = create_engine(database_url(args.host, args.port, args.user, args.password, args.database))
    Base.metadata.create_all(engine)
    engine.dispose()
    print(f"database {args.database} created with the app's schema ({time.monotonic() - started:.1f}s)", flush=True)

    user_scatter = Scatter(n, 5)
    authors = [user_scatter(k) for k in range(max(1, int(n * AUTHORS)))]
    writers = [
        ("user_basic", lambda p: write_users(p, n, authors)),
        ("news_article_basic", lambda p: write_articles(rng, p, counts["news_article_basic"], authors)),
        ("user_relation", lambda p: write_relations(rng, p, n, counts["user_relation"])),
        (
            "news_collection",
            lambda p: write_collections(rng, p, n, counts["news_article_basic"], counts["news_collection"]),
        ),
        ("news_attitude", lambda p: write_attitudes(rng, p, n, counts["news_article_basic"], counts["news_attitude"])),
        ("news_comment", lambda p: write_comments(rng, p, n, counts["news_article_basic"], counts["news_comment"])),
        (
            "news_comment_liking",
            lambda p: write_comment_likes(rng, p, n, counts["news_comment"], counts["news_comment_liking"]),
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
    finally:
        conn.close()
    print(f"done: {total_rows:,} rows in {time.monotonic() - started:.1f}s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="scale: number of users [1000000]")
    parser.add_argument("--database", default=DATABASE, help=f"database to drop and create [{DATABASE}]")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--keep-files", action="store_true", help="keep the TSV files in bench/data/")
    args = parser.parse_args(argv)
    if args.users < 10:
        parser.error("--users must be at least 10")
    generate(args)


if __name__ == "__main__":
    main()
