"""``flask stats``: output, exit codes, bad input, the lock and signals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from common.cache.statistic import COUNTERS
from common.demo import drift_counters, seed_database
from tests.conftest import DATABASE_URL, REDIS_URL
from tests.expected import KEYS, actual, expected, wrong_members
from tests.races import plant_run
from toutiao import create_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(redis):
    return {key: (redis.type(key), actual(redis, key)) for key in KEYS}


def run_with(config, overrides, args):
    """Invoke the CLI on an app whose config differs from the test config by ``overrides``."""
    for name, value in overrides.items():
        setattr(config, name, value)
    return create_app(config).test_cli_runner().invoke(args=args)


def assert_one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_list_prints_every_counter_key_with_what_it_counts(runner):
    result = runner.invoke(args=["stats", "list"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == KEYS
    assert "approved" in result.output


def test_list_json_is_machine_readable(runner):
    data = json.loads(runner.invoke(args=["stats", "list", "--json"]).output)
    assert [item["key"] for item in data] == KEYS


def test_fix_repairs_everything_and_prints_a_line_per_counter_and_a_total(drifted, redis, runner):
    result = runner.invoke(args=["stats", "fix"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "counter",
        "mode",
        "scanned",
        "wrong",
        "added",
        "changed",
        "removed",
        "skipped",
        "seconds",
    ]
    assert [line.split()[0] for line in lines[1:12]] == KEYS
    assert lines[12].startswith("total")
    assert wrong_members(drifted, redis) == {}


def test_check_exits_3_on_drift_shows_examples_and_writes_nothing(drifted, redis, runner):
    before = snapshot(redis)
    result = runner.invoke(args=["stats", "check", "--examples", "5"])
    assert result.exit_code == 3, result.output
    assert "examples (first 5):" in result.output
    assert len([line for line in result.output.splitlines() if " id=" in line]) == 5
    assert snapshot(redis) == before


def test_check_exits_0_once_fixed(drifted, redis, runner):
    assert runner.invoke(args=["stats", "fix"]).exit_code == 0
    result = runner.invoke(args=["stats", "check"])
    assert result.exit_code == 0, result.output


def test_fix_json_reports_counters_and_totals(drifted, runner):
    result = runner.invoke(args=["stats", "fix", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert [c["counter"] for c in data["counters"]] == KEYS
    assert data["totals"]["wrong"] == sum(c["wrong"] for c in data["counters"]) > 0
    assert data["failed"] == []


def test_check_json_lists_examples_with_counter_id_wrong_and_right(drifted, runner):
    result = runner.invoke(args=["stats", "check", "--json"])
    assert result.exit_code == 3
    example = json.loads(result.output)["counters"][0]["examples"][0]
    assert set(example) == {"counter", "id", "wrong", "right"}


def test_only_repairs_just_the_named_counters(drifted, redis, runner):
    before = snapshot(redis)
    result = runner.invoke(args=["stats", "fix", "--only", "count:user:arts", "--only", "count:art:reply"])
    assert result.exit_code == 0, result.output
    assert set(wrong_members(drifted, redis)) == set(KEYS) - {"count:user:arts", "count:art:reply"}
    assert snapshot(redis)["count:comm:liking"] == before["count:comm:liking"]


def test_unknown_counter_exits_2_naming_it_and_writes_nothing(drifted, redis, runner):
    before = snapshot(redis)
    result = runner.invoke(args=["stats", "fix", "--only", "count:user:nope"])
    assert_one_line_error(result, 2, "count:user:nope", "count:user:arts")
    assert snapshot(redis) == before


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--shard", "4/4"], ["--shard", "x"], ["--jobs", "0"]])
def test_bad_options_exit_2(runner, args):
    result = runner.invoke(args=["stats", "fix", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_rebuild_with_shard_is_a_usage_error(runner):
    result = runner.invoke(args=["stats", "fix", "--rebuild", "--shard", "0/2"])
    assert_one_line_error(result, 2, "--rebuild", "--shard")


@pytest.mark.parametrize(
    "setting,value",
    [("STATS_BATCH_SIZE", "many"), ("STATS_BATCH_SIZE", "0"), ("STATS_SETTLE_SECONDS", "-1"), ("STATS_JOBS", "x")],
)
def test_bad_settings_exit_2_naming_the_setting(config, drifted, redis, setting, value):
    before = snapshot(redis)
    result = run_with(config, {setting: value}, ["stats", "fix"])
    assert_one_line_error(result, 2, setting)
    assert snapshot(redis) == before


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://x/y", "mysql+nosuchdriver://root@127.0.0.1/test"])
def test_malformed_database_url_exits_2(config, redis, url):
    result = run_with(config, {"DATABASE_URL": url}, ["stats", "fix"])
    assert_one_line_error(result, 2, "DATABASE_URL")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379/0", "redis://127.0.0.1:6379/notadb", "redis://127.0.0.1:port/0"]
)
def test_malformed_redis_url_exits_2(config, engine, url):
    result = run_with(config, {"REDIS_URL": url}, ["stats", "fix"])
    assert_one_line_error(result, 2, "REDIS_URL")


def test_unreachable_redis_exits_1(config, engine):
    result = run_with(config, {"REDIS_URL": "redis://127.0.0.1:1/0"}, ["stats", "fix"])
    assert_one_line_error(result, 1, "cannot reach Redis", "127.0.0.1:1")


def test_unreachable_database_exits_1_and_hides_the_password(config, redis):
    result = run_with(config, {"DATABASE_URL": "mysql+pymysql://root:s3cret@127.0.0.1:1/test"}, ["stats", "fix"])
    assert_one_line_error(result, 1, "cannot reach the database")
    assert "s3cret" not in result.output


def test_database_without_the_tables_exits_2(config, redis, tmp_path):
    result = run_with(config, {"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}, ["stats", "fix"])
    assert_one_line_error(result, 2, "no table", "flask db create")
    assert not any(redis.exists(key) for key in KEYS)


def leases(redis) -> list:
    """Every run's lease key still in Redis."""
    return sorted(redis.scan_iter("{count:*}:runs"))


def test_a_second_run_exits_75_naming_the_lease_holder(drifted, redis, runner):
    plant_run(redis, COUNTERS, holder="otherhost:4242", ttl_ms=60_000)
    before = snapshot(redis)
    result = runner.invoke(args=["stats", "fix"])
    assert_one_line_error(result, 75, "otherhost:4242", "--wait")
    assert snapshot(redis) == before


def test_a_crashed_runs_expired_lease_is_taken_over(drifted, redis, runner):
    plant_run(redis, COUNTERS, holder="crashed:1", ttl_ms=-1)
    assert runner.invoke(args=["stats", "fix"]).exit_code == 0
    assert leases(redis) == []


def test_check_runs_beside_a_fix(drifted, redis, runner):
    plant_run(redis, COUNTERS, holder="otherhost:4242", ttl_ms=60_000)
    assert runner.invoke(args=["stats", "check"]).exit_code == 3


def test_every_lease_is_given_back_after_a_run(drifted, redis, runner):
    assert runner.invoke(args=["stats", "fix"]).exit_code == 0
    assert list(redis.scan_iter("{count:*")) == []


def cli_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL, FLASK_APP="manage", **extra)
    return env


def flask(*args, **env):
    return [os.path.join(os.path.dirname(sys.executable), "flask"), *args]


def test_sigterm_stops_between_batches_exits_143_and_leaves_counters_whole(engine, redis):
    seed_database(engine, users=200)
    subprocess.run(flask("stats", "fix"), cwd=ROOT, env=cli_env(), check=True, capture_output=True)
    drift_counters(redis)
    before = snapshot(redis)
    proc = subprocess.Popen(
        flask("stats", "fix", "--rebuild", "--batch-size", "1"),
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not any(redis.scan_iter("{count:*}:staging:*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "Traceback" not in err
    for key in KEYS:  # each counter is either untouched or completely rebuilt
        kind, members = snapshot(redis)[key]
        want = expected(engine, key)
        assert (kind, members) == before[key] or members == want, key
    assert [k for k in redis.scan_iter("{count:*")] == []
    subprocess.run(flask("stats", "fix"), cwd=ROOT, env=cli_env(), check=True, capture_output=True)
    assert wrong_members(engine, redis) == {}


def test_manage_py_runs_the_same_commands(engine, redis):
    seed_database(engine, users=20)
    drift_counters(redis)
    result = subprocess.run(
        [sys.executable, "manage.py", "stats", "fix"], cwd=ROOT, env=cli_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout
    assert wrong_members(engine, redis) == {}


def test_db_create_makes_the_tables_on_an_empty_database(config, tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = run_with(config, {"DATABASE_URL": url}, ["db", "create"])
    assert result.exit_code == 0, result.output
    assert "user_basic" in result.output and "news_comment_liking" in result.output


def test_demo_seed_refuses_a_database_that_has_data(drifted, runner):
    result = runner.invoke(args=["demo", "seed", "--allow-real-servers"])
    assert_one_line_error(result, 2, "empty database")


@pytest.mark.parametrize(
    "running, scope, args",
    [
        ("a full run", "*", ["--shard", "1/3"]),
        ("a shard", "0/3", []),
        ("a shard of another split", "0/3", ["--shard", "1/2"]),
    ],
)
def test_runs_over_the_same_members_refuse_each_other(drifted, redis, runner, running, scope, args):
    plant_run(redis, COUNTERS, holder="nightly:7", ttl_ms=60_000, scope=scope)
    before = snapshot(redis)
    result = runner.invoke(args=["stats", "fix", *args])
    assert_one_line_error(result, 75, "nightly:7")
    assert snapshot(redis) == before
    assert all(redis.zcard(key) == 1 for key in leases(redis))  # only the planted run's


def test_runs_over_different_counters_go_together(drifted, redis, runner):
    plant_run(redis, [c for c in COUNTERS if c.key != "count:user:arts"], holder="nightly:7", ttl_ms=60_000)
    result = runner.invoke(args=["stats", "fix", "--only", "count:user:arts"])
    assert result.exit_code == 0, result.output
    assert wrong_members(drifted, redis, ["count:user:arts"]) == {}


def test_unset_urls_with_an_unusable_instance_folder_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(TOUTIAO_INSTANCE_PATH=str(blocker / "instance"), FLASK_APP="manage", DATABASE_URL="")
    result = subprocess.run(flask("stats", "fix"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert error and "set DATABASE_URL" in error[0] and "Traceback" not in result.stderr


def test_check_json_stays_valid_json_with_infinite_scores(drifted, redis, runner):
    assert runner.invoke(args=["stats", "fix"]).exit_code == 0
    member = sorted(expected(drifted, "count:user:arts"), key=int)[0]
    redis.zadd("count:user:arts", {member: float("inf")})
    result = runner.invoke(args=["stats", "check", "--json", "--only", "count:user:arts"])
    assert result.exit_code == 3
    data = json.loads(result.output, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert data["counters"][0]["examples"][0]["wrong"] == "inf"
