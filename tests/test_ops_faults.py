"""Real faults in the middle of ``flask stats fix``: Redis dies, the database goes away or
a query is killed, the process is SIGKILLed; and scores no counter should hold.

After each: exit 1 with one clear line (SIGKILL: no exit at all), no live counter
emptied or half-built, and the next run completes, leaves no staging key and is exact.
"""

import json
import signal
import subprocess
from contextlib import contextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from common.cache.engine import RepairEngine
from common.cache.statistic import COUNTERS
from common.demo import drift_counters, seed_database
from tests.conftest import DATABASE_URL, REDIS_URL
from tests.expected import KEYS, actual, expected, wrong_members
from tests.races import live_runs
from tests.servers import ROOT, RedisServer, TcpProxy, flask_cmd, flask_env, wait_until

USERS = 200  # with --batch-size 1 a run takes a few seconds: time to strike mid-run


def snapshot(redis):
    return {key: (redis.type(key), actual(redis, key)) for key in KEYS}


def prepare(engine, redis):
    """Seed the database, make the counters exact, drift them; return the drifted state."""
    seed_database(engine, users=USERS)
    RepairEngine(redis, engine, settle=0.01).run(COUNTERS)
    drift_counters(redis)
    return snapshot(redis)


def start_fix(database_url, redis_url, *args, **env):
    return subprocess.Popen(
        flask_cmd("stats", "fix", "--batch-size", "1", *args),
        cwd=ROOT,
        env=flask_env(database_url, redis_url, LOG_FORMAT="json", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_fix(database_url, redis_url, *args, **env):
    return subprocess.run(
        flask_cmd("stats", "fix", *args),
        cwd=ROOT,
        env=flask_env(database_url, redis_url, LOG_FORMAT="json", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("Error")]


def summary(stderr):
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "summary"][-1]


def assert_whole(engine, redis, before):
    """Every live counter is as it was before the run or exactly right: never emptied or partial."""
    now = snapshot(redis)
    for key in KEYS:
        kind, members = now[key]
        assert (kind, members) == before[key] or (kind == "zset" and members == expected(engine, key)), key


def assert_clean_and_exact(engine, redis):
    assert wrong_members(engine, redis) == {}
    assert list(redis.scan_iter("{count:*")) == []  # no lease, tracking, staging or claim left


def mid_rebuild(redis):
    """Tell whether a rebuild is writing its staging key."""
    return any(redis.scan_iter("{count:*:staging:*"))


# -- Redis goes away --------------------------------------------------------------------


def test_redis_killed_mid_run_exits_1_keeps_counters_whole_and_the_next_run_is_exact(engine, tmp_path):
    server = RedisServer(tmp_path / "redis", durable=True).start()
    redis = server.client()
    try:
        before = prepare(engine, redis)
        proc = start_fix(DATABASE_URL, server.url, "--rebuild", STATS_LOCK_TTL="2")
        wait_until(lambda: mid_rebuild(redis), what="the run to be mid-rebuild")
        server.kill()
        out, err = proc.communicate(timeout=60)

        assert proc.returncode == 1, err
        errors = error_lines(err)
        assert len(errors) == 1 and "Traceback" not in err, err
        assert "failed" in errors[0] and "ConnectionError" in errors[0], errors[0]
        assert summary(err)["exit_status"] == 1

        server.start()  # the same port and data: every acknowledged write survived
        redis = server.client()
        assert_whole(engine, redis, before)
        # The dead run could not give back its leases: the next run waits them out (STATS_LOCK_TTL=2).
        assert live_runs(redis)
        result = run_fix(DATABASE_URL, server.url, "--wait", "10")
        assert result.returncode == 0, result.stderr
        assert_clean_and_exact(engine, redis)
    finally:
        server.kill()


# -- the database goes away, or a query is killed -------------------------------------


def test_database_cut_mid_run_exits_1_keeps_counters_whole_and_the_next_run_is_exact(engine, redis):
    before = prepare(engine, redis)
    url = make_url(DATABASE_URL)
    proxy = TcpProxy(url.port or 3306, url.host)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    proc = start_fix(proxied, REDIS_URL, "--rebuild")
    wait_until(lambda: mid_rebuild(redis), what="the run to be mid-rebuild")
    proxy.cut()
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, err
    errors = error_lines(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "failed" in errors[0] and "OperationalError" in errors[0], errors[0]
    assert_whole(engine, redis, before)
    assert live_runs(redis) == []  # Redis was fine: the leases were given back

    result = run_fix(DATABASE_URL, REDIS_URL)
    assert result.returncode == 0, result.stderr
    assert_clean_and_exact(engine, redis)


@contextmanager
def locked(engine, table):
    """Hold a WRITE lock on ``table``: the run's query on it waits in the processlist,
    where the test can kill it."""
    with engine.connect() as conn:
        conn.execute(text(f"LOCK TABLES {table} WRITE"))
        try:
            yield
        finally:
            conn.execute(text("UNLOCK TABLES"))


def waiting_query(engine):
    """Return the id of the run's connection whose SELECT waits for the lock on news_comment_liking."""
    database = make_url(DATABASE_URL).database
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = :db AND ID <> CONNECTION_ID()"
                " AND COMMAND = 'Query' AND INFO LIKE 'SELECT%news_comment_liking%'"
                " AND STATE LIKE 'Waiting for table%'"  # blocked by the lock, not a passing DESCRIBE
            ),
            {"db": database},
        ).scalar()


@pytest.mark.parametrize("kill", ["KILL QUERY", "KILL CONNECTION"])
def test_a_killed_query_fails_its_counter_with_exit_1_and_the_next_run_is_exact(engine, redis, kill):
    before = prepare(engine, redis)
    with locked(engine, "news_comment_liking"):
        proc = start_fix(DATABASE_URL, REDIS_URL, "--rebuild")
        victim = wait_until(lambda: waiting_query(engine), what="the run's query on news_comment_liking")
        assert "{count:comm:liking}:runs" in live_runs(redis)  # at count:comm:liking
        with engine.connect() as conn:
            conn.execute(text(f"{kill} {int(victim)}"))
        out, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, err
    errors = error_lines(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "1 counter(s) failed: count:comm:liking" in errors[0], errors[0]
    assert summary(err)["failed"] == ["count:comm:liking"]
    assert_whole(engine, redis, before)
    assert snapshot(redis)["count:comm:liking"] == before["count:comm:liking"]
    # The other counters went on and were repaired.
    assert set(wrong_members(engine, redis)) == {"count:comm:liking"}

    result = run_fix(DATABASE_URL, REDIS_URL)
    assert result.returncode == 0, result.stderr
    assert_clean_and_exact(engine, redis)


# -- the process is killed --------------------------------------------------------------


def test_sigkill_mid_rebuild_keeps_live_counters_and_the_next_run_waits_then_cleans_up(engine, redis, runner):
    before = prepare(engine, redis)
    proc = start_fix(DATABASE_URL, REDIS_URL, "--rebuild", STATS_LOCK_TTL="3")
    wait_until(lambda: mid_rebuild(redis), what="the run to be mid-rebuild")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)

    assert proc.returncode == -signal.SIGKILL
    assert_whole(engine, redis, before)
    staging = list(redis.scan_iter("{count:*}:staging:*"))
    assert staging and all(redis.pttl(key) == -1 for key in staging)  # nothing an eviction policy prefers
    assert live_runs(redis)

    busy = runner.invoke(args=["stats", "fix"])  # in-process: well within the leases' last seconds
    assert busy.exit_code == 75, busy.output
    result = run_fix(DATABASE_URL, REDIS_URL, "--wait", "10")  # as the CronJob's retry does
    assert result.returncode == 0, result.stderr
    assert any("freed" in json.loads(line)["message"] for line in result.stderr.splitlines() if line.startswith("{")), (
        result.stderr
    )
    assert_clean_and_exact(engine, redis)


# -- scores no counter should hold ------------------------------------------------------


@pytest.mark.parametrize("score", [1e300, float("inf"), float("-inf")], ids=["1e300", "inf", "-inf"])
def test_huge_and_infinite_scores_are_reported_and_repaired(engine, redis, runner, score):
    seed_database(engine, users=30)
    assert runner.invoke(args=["stats", "fix"]).exit_code == 0
    members = {key: sorted(expected(engine, key), key=int)[0] for key in ("count:user:arts", "count:art:liking")}
    for key, member in members.items():
        redis.zadd(key, {member: score})

    check = runner.invoke(args=["stats", "check", "--json"])
    assert check.exit_code == 3, check.output
    report = json.loads(check.output)
    found = {(e["counter"], e["id"]) for c in report["counters"] for e in c["examples"]}
    assert found == set(members.items())

    result = runner.invoke(args=["stats", "fix"])
    assert result.exit_code == 0, result.output
    assert wrong_members(engine, redis) == {}
