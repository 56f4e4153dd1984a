"""``flask stats fix`` around other runs and broken surroundings: settings that cannot
work, a dead run's lease, a read-only or vanishing Redis, a lease lost with parallel jobs."""

import subprocess
import threading

import pytest

from common.cache.statistic import COUNTERS
from common.demo import seed_database
from tests.conftest import DATABASE_URL, REDIS_URL
from tests.expected import wrong_members
from tests.races import Checkpoints, expire_leases, plant_run
from tests.servers import ROOT, RedisServer, flask_cmd, flask_env, free_port
from toutiao import create_app


def one_error_line(output) -> str:
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def app_with(config, checkpoint=None, **settings):
    for name, value in settings.items():
        setattr(config, name, value)
    app = create_app(config)
    if checkpoint is not None:
        app.extensions["stats.checkpoint"] = checkpoint
    return app


@pytest.mark.parametrize(
    "setting, value",
    [
        ("STATS_SETTLE_SECONDS", "nan"),
        ("STATS_SETTLE_SECONDS", "inf"),
        ("STATS_SETTLE_SECONDS", "-1"),
        ("STATS_SETTLE_SECONDS", "61"),
        ("STATS_LOCK_TTL", "nan"),
        ("STATS_LOCK_TTL", "inf"),
        ("STATS_LOCK_TTL", "0.5"),
        ("STATS_INFLIGHT_TTL", "nan"),
        ("STATS_INFLIGHT_TTL", "0"),
        ("STATS_BATCH_SIZE", "1e3"),
        ("STATS_JOBS", "17"),
    ],
)
def test_settings_that_cannot_work_exit_2_at_once_naming_them(drifted, redis, setting, value):
    result = subprocess.run(
        flask_cmd("stats", "fix"),
        cwd=ROOT,
        env=flask_env(DATABASE_URL, REDIS_URL, **{setting: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert setting in one_error_line(result.stderr)


def test_a_dead_runs_lease_fails_a_run_with_75_and_is_outwaited_with_wait(drifted, redis, config):
    plant_run(redis, COUNTERS, holder="oomkilled:7", ttl_ms=1500)

    refused = app_with(config).test_cli_runner().invoke(args=["stats", "fix"])
    assert refused.exit_code == 75
    assert "oomkilled:7" in one_error_line(refused.output)

    waited = app_with(config).test_cli_runner().invoke(args=["stats", "fix", "--wait", "30"])
    assert waited.exit_code == 0, waited.output
    assert wrong_members(drifted, redis) == {}


def test_a_read_only_redis_exits_1_with_one_line(engine, config, tmp_path):
    replica = RedisServer(tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(free_port())]).start()
    try:
        result = app_with(config, REDIS_URL=replica.url).test_cli_runner().invoke(args=["stats", "fix"])
    finally:
        replica.kill()
    assert result.exit_code == 1
    assert "read-only" in one_error_line(result.output).lower()


def test_redis_lost_as_the_run_starts_exits_1_with_one_line(engine, config, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    cp = Checkpoints().at("start", server.kill)
    result = app_with(config, checkpoint=cp, REDIS_URL=server.url).test_cli_runner().invoke(args=["stats", "fix"])
    cp.assert_fired()
    assert result.exit_code == 1
    assert "Redis" in one_error_line(result.output) or "Connection" in one_error_line(result.output)


def test_a_lease_lost_with_parallel_jobs_exits_1_not_as_if_signalled(drifted, redis, config):
    def lose_every_lease():
        for counter in COUNTERS:
            expire_leases(redis, counter)
        for key in redis.scan_iter("lock:stats:fix*"):  # the run lock of the release before
            redis.delete(key)

    cp = Checkpoints().at("stream_batch", lose_every_lease)
    result = (
        app_with(config, checkpoint=cp, STATS_LOCK_TTL="1")
        .test_cli_runner()
        .invoke(args=["stats", "fix", "--jobs", "2", "--batch-size", "5"])
    )
    cp.assert_fired()
    assert result.exit_code == 1, result.output
    assert "lost" in one_error_line(result.output)


def test_sixteen_jobs_get_enough_database_connections(engine, redis, config, runner):
    seed_database(engine, users=40)
    assert runner.invoke(args=["stats", "fix"]).exit_code == 0
    for counter in COUNTERS:  # every key present: every counter reconciles, none rebuilds
        redis.zincrby(counter.key, 2, redis.zrange(counter.key, 0, 0)[0])
    # Hold every counter at its first batch until all eleven are streaming at once.
    barrier = threading.Barrier(len(COUNTERS), timeout=20)
    cp = Checkpoints()
    for counter in COUNTERS:
        cp.at(("stream_batch", "rebuild_batch"), barrier.wait, counter=counter)
    result = (
        app_with(config, checkpoint=cp)
        .test_cli_runner()
        .invoke(args=["stats", "fix", "--jobs", "16", "--batch-size", "5"])
    )
    cp.assert_fired()
    assert result.exit_code == 0, result.output
    assert wrong_members(engine, redis) == {}
