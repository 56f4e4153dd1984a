"""Metrics: every ``flask stats fix`` pushes to a real Pushgateway, success or failure."""

import json
import logging
import time

import pytest

from tests.expected import KEYS, actual
from tests.servers import Pushgateway, free_port
from toutiao import create_app


@pytest.fixture
def gateway(tmp_path):
    server = Pushgateway(tmp_path).start()
    yield server
    server.stop()


def invoke(config, args, **overrides):
    for name, value in overrides.items():
        setattr(config, name, value)
    return create_app(config).test_cli_runner().invoke(args=args)


def value(samples, name, **labels):
    """Return the value of the one sample ``name`` under job stats_fix with ``labels``."""
    labels = {"job": "stats_fix", **labels}
    found = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_a_successful_fix_pushes_timestamps_duration_and_each_counters_drift(config, drifted, gateway):
    started = time.time()
    result = invoke(config, ["stats", "fix", "--json"], PUSHGATEWAY_URL=gateway.url)
    ended = time.time()
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)

    samples = gateway.metrics()
    last_run = value(samples, "stats_fix_last_run_timestamp_seconds")
    assert started <= last_run <= ended
    assert value(samples, "stats_fix_last_success_timestamp_seconds") == last_run
    assert 0 < value(samples, "stats_fix_duration_seconds") <= ended - started
    assert value(samples, "stats_fix_failed") == 0
    assert value(samples, "stats_fix_exit_status") == 0
    for counter in report["counters"]:
        key = counter["counter"]
        assert value(samples, "stats_fix_members_wrong", counter=key) == counter["wrong"]
        fixed = counter["added"] + counter["changed"] + counter["removed"]
        assert value(samples, "stats_fix_members_fixed", counter=key) == fixed
        assert value(samples, "stats_fix_members_skipped", counter=key) == counter["skipped"]
        assert value(samples, "stats_fix_counter_failed", counter=key) == 0
    assert sum(value(samples, "stats_fix_members_wrong", counter=key) for key in KEYS) == report["totals"]["wrong"] > 0


def test_a_failed_run_pushes_the_failure_and_keeps_the_last_success(config, drifted, gateway):
    assert invoke(config, ["stats", "fix"], PUSHGATEWAY_URL=gateway.url).exit_code == 0
    first = gateway.metrics()

    result = invoke(config, ["stats", "fix"], REDIS_URL="redis://127.0.0.1:1/0")
    assert result.exit_code == 1, result.output

    samples = gateway.metrics()
    assert value(samples, "stats_fix_failed") == 1
    assert value(samples, "stats_fix_exit_status") == 1
    assert value(samples, "stats_fix_last_run_timestamp_seconds") > value(first, "stats_fix_last_run_timestamp_seconds")
    assert value(samples, "stats_fix_last_success_timestamp_seconds") == value(
        first, "stats_fix_last_success_timestamp_seconds"
    )
    # The failed run repaired no counter: the last per-counter values stay.
    assert value(samples, "stats_fix_members_wrong", counter="count:user:arts") == value(
        first, "stats_fix_members_wrong", counter="count:user:arts"
    )


def test_a_sharded_run_pushes_under_its_shard_and_check_pushes_nothing(config, drifted, gateway):
    assert invoke(config, ["stats", "check"], PUSHGATEWAY_URL=gateway.url).exit_code == 3
    assert not [name for name, _ in gateway.metrics() if name.startswith("stats_fix_")]

    assert invoke(config, ["stats", "fix", "--shard", "1/2"]).exit_code == 0
    samples = gateway.metrics()
    assert value(samples, "stats_fix_failed", shard="1/2") == 0
    assert value(samples, "stats_fix_members_scanned", shard="1/2", counter="count:user:arts") > 0


def test_an_unreachable_pushgateway_is_logged_and_does_not_fail_the_run(config, drifted, caplog):
    url = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.INFO):
        result = invoke(config, ["stats", "fix"], PUSHGATEWAY_URL=url)
    assert result.exit_code == 0, result.output
    warnings = [r for r in caplog.records if r.getMessage() == "could not push metrics"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert warnings[0].fields["url"] == url and "refused" in warnings[0].fields["error"].lower()


@pytest.mark.parametrize("url", ["not a url", "ftp://gateway:9091", "http://", "http://gateway:port"])
def test_a_malformed_pushgateway_url_exits_2_naming_it(config, drifted, redis, url):
    before = {key: actual(redis, key) for key in KEYS}
    result = invoke(config, ["stats", "fix"], PUSHGATEWAY_URL=url)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "PUSHGATEWAY_URL" in errors[0], result.output
    assert {key: actual(redis, key) for key in KEYS} == before
