"""Redis Sentinel: the sentinels name the master that every counter read and write goes to,
before and after a failover; bad sentinel settings exit 2 naming the setting."""

import pytest

from common.demo import drift_counters, seed_database
from tests.expected import KEYS, actual, wrong_members
from tests.servers import RedisServer, Sentinel, free_port, wait_until
from toutiao import create_app
from toutiao.cli.scheduler import run_fix


@pytest.fixture
def cluster(tmp_path):
    """A master, its replica and one sentinel that knows both, on loopback."""
    fast_sync = ["--repl-diskless-sync-delay", "0"]  # the default waits 5 s for more replicas
    master = RedisServer(tmp_path / "master", extra=fast_sync).start()
    replica = RedisServer(tmp_path / "replica", extra=[*fast_sync, "--replicaof", "127.0.0.1", str(master.port)])
    replica.start()
    # Linked before the sentinel starts, so its first look at the master shows the replica.
    wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up", what="replication")
    sentinel = Sentinel(tmp_path / "sentinel", master.port).start()
    wait_until(lambda: _replica_known(sentinel, replica.port), what="the sentinel to find the replica")
    yield master, replica, sentinel
    for server in (sentinel, replica, master):
        server.stop()


def _replica_known(sentinel, port) -> bool:
    for replica in sentinel.client().execute_command("SENTINEL", "replicas", sentinel.name):
        info = dict(zip(replica[::2], replica[1::2])) if isinstance(replica, list) else replica
        if int(info["port"]) == port and info.get("master-link-status") == "ok" and "s_down" not in info["flags"]:
            return True
    return False


def sentinel_app(config, sentinel, **overrides):
    config.REDIS_URL = None
    config.REDIS_SENTINELS = f"127.0.0.1:{sentinel.port}"
    config.REDIS_SENTINEL_SERVICE_NAME = sentinel.name
    for name, value in overrides.items():
        setattr(config, name, value)
    return create_app(config)


def test_fix_reads_and_writes_the_master_the_sentinels_name_before_and_after_a_failover(config, engine, cluster):
    master, replica, sentinel = cluster
    seed_database(engine, users=30)
    app = sentinel_app(config, sentinel)
    runner = app.test_cli_runner()

    primary = master.client()
    result = runner.invoke(args=["stats", "fix"])
    assert result.exit_code == 0, result.output
    assert wrong_members(engine, primary) == {}
    drift_counters(primary)
    assert primary.wait(1, 5000) == 1  # the replica has the drift too

    sentinel.client().execute_command("SENTINEL", "FAILOVER", sentinel.name)
    wait_until(lambda: sentinel.master_port() == replica.port, timeout=20, what="the sentinel to name the replica")
    promoted = replica.client()
    wait_until(lambda: promoted.info("replication")["role"] == "master", what="the replica to become master")
    assert wrong_members(engine, promoted) != {}

    # The same app, as in the long-lived scheduler process, and a fresh one both write the new master.
    assert run_fix(app) == 0
    assert wrong_members(engine, promoted) == {}
    drift_counters(promoted)
    result = sentinel_app(config, sentinel).test_cli_runner().invoke(args=["stats", "fix"])
    assert result.exit_code == 0, result.output
    assert wrong_members(engine, promoted) == {}


def test_redis_url_gives_the_database_number_of_the_sentinel_master(config, engine, cluster):
    master, replica, sentinel = cluster
    seed_database(engine, users=10)
    app = sentinel_app(config, sentinel, REDIS_URL="redis://ignored.invalid:1/3")
    assert app.test_cli_runner().invoke(args=["stats", "fix"]).exit_code == 0
    assert wrong_members(engine, master.client(db=3)) == {}
    assert not any(actual(master.client(db=0), key) for key in KEYS)


def error_line(result):
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.mark.parametrize("sentinels", ["127.0.0.1", "127.0.0.1:port", "127.0.0.1:26379,", ":26379", "h:70000"])
def test_malformed_sentinels_exit_2_naming_the_setting(config, engine, sentinels):
    config.REDIS_SENTINELS, config.REDIS_SENTINEL_SERVICE_NAME = sentinels, "mymaster"
    result = create_app(config).test_cli_runner().invoke(args=["stats", "fix"])
    assert result.exit_code == 2, result.output
    assert "REDIS_SENTINELS" in error_line(result)


def test_sentinels_without_a_service_name_exit_2_naming_it(config, engine):
    config.REDIS_SENTINELS = "127.0.0.1:26379"
    result = create_app(config).test_cli_runner().invoke(args=["stats", "fix"])
    assert result.exit_code == 2, result.output
    assert "REDIS_SENTINEL_SERVICE_NAME" in error_line(result)


def test_unreachable_sentinels_exit_1_naming_them(config, engine):
    port = free_port()
    config.REDIS_SENTINELS, config.REDIS_SENTINEL_SERVICE_NAME = f"127.0.0.1:{port}", "mymaster"
    result = create_app(config).test_cli_runner().invoke(args=["stats", "fix"])
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert "cannot reach Redis" in line and f"127.0.0.1:{port}" in line and "mymaster" in line, line
