"""The workloads' own accounts: ``flask stats fix`` as a SELECT-only MariaDB user and the
stats Redis ACL user of deploy/redis/users.acl, the web write path as the web ACL user,
and what each of them is refused."""

import os
import re
import string
import subprocess
import time
import uuid
from urllib.parse import quote

import pytest
import redis as redis_py
from sqlalchemy import Table, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.sql import visitors

from common.cache import writes
from common.cache.engine import RepairEngine
from common.cache.statistic import COUNTERS, ArticleLikingCount, UserFollowersCount
from common.demo import drift_counters, seed_database
from common.models import Base
from tests.conftest import DATABASE_URL
from tests.expected import wrong_members
from tests.races import plant_run
from tests.servers import ROOT, RedisServer, flask_cmd, flask_env

ACL_FILE = os.path.join(ROOT, "deploy", "redis", "users.acl")
DEPLOY_README = os.path.join(ROOT, "deploy", "k8s", "README.md")
# A password with the characters a URL must encode, as real ones have.
PASSWORDS = {"admin": "admin-pw", "stats": "st@ts:p/w%1", "web": "w@b:p/w%2"}
GRANT = re.compile(r"^GRANT SELECT ON toutiao\.(\w+) TO 'toutiao_stats'@'%';$", re.MULTILINE)


def documented_grant_tables() -> list:
    """The tables deploy/k8s/README.md grants SELECT on to the stats account."""
    with open(DEPLOY_README) as f:
        return GRANT.findall(f.read())


@pytest.fixture
def acl_redis(tmp_path):
    """A private redis-server loaded with deploy/redis/users.acl; its client is the admin user."""
    with open(ACL_FILE) as f:
        rendered = string.Template(f.read()).substitute(
            {f"{u.upper()}_REDIS_PASSWORD": p for u, p in PASSWORDS.items()}
        )
    path = tmp_path / "users.acl"
    path.write_text(rendered)
    server = RedisServer(
        tmp_path / "redis", extra=["--aclfile", str(path)], username="admin", password=PASSWORDS["admin"]
    )
    server.start()
    yield server
    server.stop()


def url_of(server, user) -> str:
    return f"redis://{user}:{quote(PASSWORDS[user], safe='')}@127.0.0.1:{server.port}/0"


def client_of(server, user) -> redis_py.Redis:
    return redis_py.Redis.from_url(url_of(server, user), decode_responses=True, socket_timeout=5)


def denials(admin) -> list:
    """What the server refused since it started (ACL LOG), as (user, object) pairs."""
    return [(entry["username"], entry["object"]) for entry in admin.acl_log()]


@pytest.fixture
def select_only_url(engine):
    """A MariaDB user with exactly the GRANTs deploy/k8s/README.md documents, on the test database."""
    tables = documented_grant_tables()
    url = make_url(DATABASE_URL)
    user, password = f"stats_ro_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        for table in tables:
            conn.execute(text(f"GRANT SELECT ON `{url.database}`.`{table}` TO '{user}'@'%'"))
    yield url.set(username=user, password=password).render_as_string(hide_password=False)
    with engine.begin() as conn:
        conn.execute(text(f"DROP USER '{user}'@'%'"))


def flask(database_url, redis_url, *args):
    return subprocess.run(
        flask_cmd(*args),
        cwd=ROOT,
        env=flask_env(database_url, redis_url),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_documented_grant_covers_exactly_the_toutiao_tables_and_every_table_a_counter_reads():
    tables = documented_grant_tables()
    read = {t.name for c in COUNTERS for t in visitors.iterate(c.stream_query()) if isinstance(t, Table)}
    assert sorted(tables) == sorted(Base.metadata.tables)
    assert read <= set(tables)


def test_stats_fix_as_the_select_only_user_and_the_stats_acl_user_makes_the_counters_equal_the_database(
    engine, acl_redis, select_only_url
):
    admin = acl_redis.client()
    seed_database(engine, users=40)
    RepairEngine(admin, engine, settle=0).run(COUNTERS)
    drift_counters(admin)
    # What the release before left: a staging key listed in its registry, freed by the run.
    admin.zadd("{count:user:arts}:staging:old", {"1": 1})
    admin.sadd("stats:fix:staging", "{count:user:arts}:staging:old")
    # An announcement whose writer died: the run forgets it (HINCRBY/HDEL on the web's keys).
    writes.announce(admin, writes.deltas((ArticleLikingCount, 1, 1)), ttl=0.05)
    time.sleep(0.1)
    stats = url_of(acl_redis, "stats")

    check = flask(select_only_url, stats, "stats", "check")
    assert check.returncode == 3, check.stderr
    shard = flask(select_only_url, stats, "stats", "fix", "--shard", "0/2")
    assert shard.returncode == 0, shard.stderr
    fixed = flask(select_only_url, stats, "stats", "fix", "--jobs", "2")
    assert fixed.returncode == 0, fixed.stderr
    assert wrong_members(engine, admin) == {}
    rebuilt = flask(select_only_url, stats, "stats", "fix", "--rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    checked = flask(select_only_url, stats, "stats", "check")
    assert checked.returncode == 0, checked.stderr

    assert wrong_members(engine, admin) == {}
    assert not admin.exists("{count:user:arts}:staging:old", "stats:fix:staging")
    assert admin.hlen(f"{{{ArticleLikingCount.key}}}:inflight") == 0
    assert denials(admin) == []


def test_the_select_only_user_cannot_write_the_database(engine, select_only_url):
    seed_database(engine, users=10)
    readonly = create_engine(select_only_url)
    try:
        with readonly.begin() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM user_relation")).scalar() > 0
        for statement in ("DELETE FROM user_relation", "UPDATE user_basic SET name = 'x'", "DROP TABLE news_comment"):
            with pytest.raises((OperationalError, ProgrammingError), match="denied"), readonly.begin() as conn:
                conn.execute(text(statement))
    finally:
        readonly.dispose()


@pytest.mark.parametrize(
    "user, command",
    [
        ("stats", ["SET", "foo", "1"]),
        ("stats", ["GET", "session:1"]),
        ("stats", ["SET", "lock:stats:fix", "me"]),
        ("stats", ["DEL", "{session:1}:runs"]),
        ("web", ["ZADD", "foo", "1", "x"]),
        ("web", ["ZSCORE", "session:1", "x"]),
        ("web", ["SADD", "{count:user:arts}:staging:x", "1"]),
        ("web", ["ZADD", "{count:user:arts}:rebuild", "1", "x"]),
        ("web", ["SADD", "stats:fix:staging", "x"]),
    ],
)
def test_a_workload_user_is_refused_keys_outside_its_patterns(acl_redis, user, command):
    admin = acl_redis.client()
    admin.set("session:1", "someone")
    with pytest.raises(redis_py.exceptions.NoPermissionError, match="no permissions to access one of the keys"):
        client_of(acl_redis, user).execute_command(*command)
    assert admin.get("session:1") == "someone" and not admin.exists("foo")


@pytest.mark.parametrize("user", ["stats", "web"])
@pytest.mark.parametrize(
    "command",
    [["FLUSHALL"], ["FLUSHDB"], ["KEYS", "*"], ["CONFIG", "GET", "*"], ["EVAL", "return 1", "0"], ["ACL", "LIST"]],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_workload_user_is_refused_commands_outside_its_list(acl_redis, user, command):
    admin = acl_redis.client()
    admin.zadd("count:user:arts", {"1": 2})
    with pytest.raises(redis_py.exceptions.NoPermissionError, match="has no permissions to run"):
        client_of(acl_redis, user).execute_command(*command)
    assert admin.zscore("count:user:arts", "1") == 2


def test_the_web_user_cannot_delete_a_counter(acl_redis):
    admin = acl_redis.client()
    admin.zadd("count:user:arts", {"1": 2})
    for command in (["DEL", "count:user:arts"], ["UNLINK", "count:user:arts"], ["RENAME", "count:user:arts", "x"]):
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            client_of(acl_redis, "web").execute_command(*command)
    assert admin.zscore("count:user:arts", "1") == 2


def test_the_web_user_runs_the_write_path_with_a_repair_running(acl_redis):
    admin = acl_redis.client()
    web = client_of(acl_redis, "web")
    admin.zadd(ArticleLikingCount.key, {"7": 4})
    plant_run(admin, [ArticleLikingCount, UserFollowersCount], holder="statshost:1", ttl_ms=60_000)

    liked = writes.announce(web, writes.deltas((ArticleLikingCount, 7, 1)))
    assert admin.hget(f"{{{ArticleLikingCount.key}}}:inflight", "7") == "1"
    assert writes.apply(web, liked) == ["applied"]
    followed = writes.unannounced(writes.deltas((UserFollowersCount, 3, 1)))
    assert writes.apply(web, followed) == ["late"]
    withdrawn = writes.announce(web, writes.deltas((ArticleLikingCount, 8, 1)))
    writes.retract(web, withdrawn)

    assert ArticleLikingCount.get(web, 7) == 5
    assert ArticleLikingCount.get_many(web, [7, 8]) == [5, 0]
    assert admin.smembers(f"{{{ArticleLikingCount.key}}}:track:dead00000000") == {"7"}
    assert admin.smembers(f"{{{UserFollowersCount.key}}}:late:dead00000000") == {"3"}
    assert admin.hlen(f"{{{ArticleLikingCount.key}}}:inflight") == 0
    assert denials(admin) == []
