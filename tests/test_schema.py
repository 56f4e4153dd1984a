"""The models create exactly the original toutiao keys, so that what we measure and test
is what a production toutiao database has: no index the original lacks."""

import re

import pytest
from sqlalchemy import text

# The original DDL's keys, table by table: (kind, name, columns).
ORIGINAL_KEYS = {
    "user_basic": {
        ("PRIMARY", "PRIMARY", ("user_id",)),
        ("UNIQUE", "mobile", ("mobile",)),
        ("UNIQUE", "user_name", ("user_name",)),
    },
    "user_relation": {
        ("PRIMARY", "PRIMARY", ("relation_id",)),
        ("UNIQUE", "user_target", ("user_id", "target_user_id")),
    },
    "news_article_basic": {
        ("PRIMARY", "PRIMARY", ("article_id",)),
        ("KEY", "user_id", ("user_id",)),
        ("KEY", "article_status", ("status",)),
    },
    "news_collection": {
        ("PRIMARY", "PRIMARY", ("collection_id",)),
        ("UNIQUE", "user_article", ("user_id", "article_id")),
    },
    "news_attitude": {("PRIMARY", "PRIMARY", ("attitude_id",)), ("UNIQUE", "user_article", ("user_id", "article_id"))},
    "news_comment": {
        ("PRIMARY", "PRIMARY", ("comment_id",)),
        ("KEY", "article_id", ("article_id",)),
        ("KEY", "parent_id", ("parent_id",)),
    },
    "news_comment_liking": {
        ("PRIMARY", "PRIMARY", ("liking_id",)),
        ("UNIQUE", "user_comment", ("user_id", "comment_id")),
    },
}

# Column types the original declares that a careless model gets wrong.
ORIGINAL_COLUMNS = {
    ("news_comment", "content"): "varchar(200)",
    ("user_basic", "mobile"): "char(11)",
    ("user_basic", "user_name"): "varchar(32)",
    ("user_relation", "relation"): "tinyint(4)",
    ("news_attitude", "attitude"): "tinyint(4)",
}

_KEY = re.compile(r"^\s*(PRIMARY KEY|UNIQUE KEY `(\w+)`|KEY `(\w+)`) \(([^)]*)\)", re.M)


def keys_of(create_table: str) -> set:
    found = set()
    for match in _KEY.finditer(create_table):
        columns = tuple(c.strip("` ") for c in match.group(4).split(","))
        if match.group(1) == "PRIMARY KEY":
            found.add(("PRIMARY", "PRIMARY", columns))
        elif match.group(2):
            found.add(("UNIQUE", match.group(2), columns))
        else:
            found.add(("KEY", match.group(3), columns))
    return found


@pytest.mark.parametrize("table", sorted(ORIGINAL_KEYS))
def test_each_table_has_exactly_the_original_keys(engine, table):
    with engine.connect() as conn:
        ddl = conn.execute(text(f"SHOW CREATE TABLE `{table}`")).one()[1]
    assert keys_of(ddl) == ORIGINAL_KEYS[table]


@pytest.mark.parametrize("table, column", sorted(ORIGINAL_COLUMNS))
def test_columns_have_the_original_types(engine, table, column):
    with engine.connect() as conn:
        row = conn.execute(text(f"SHOW COLUMNS FROM `{table}` LIKE :c"), {"c": column}).one()
    assert row[1] == ORIGINAL_COLUMNS[(table, column)]
