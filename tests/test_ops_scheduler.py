"""``flask stats scheduler``: the daily job's schedule and time zone, what the job runs,
stopping it, bad settings; and the web app never starting a scheduler."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from apscheduler.executors.debug import DebugExecutor
from apscheduler.triggers.cron import CronTrigger

from common.cache.statistic import COUNTERS
from common.demo import drift_counters, seed_database
from tests.conftest import DATABASE_URL, REDIS_URL
from tests.expected import KEYS, actual, expected, wrong_members
from tests.races import live_runs, plant_run
from tests.servers import ROOT, Pushgateway, flask_cmd, flask_env, wait_until
from toutiao import create_app
from toutiao.cli.scheduler import JOB_ID, build_scheduler, run_fix

UTC = timezone.utc


def summaries(caplog):
    return [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "summary"]


def test_the_job_runs_the_fix_daily_at_03_00_in_the_configured_time_zone(config):
    config.STATS_TIMEZONE = "Asia/Shanghai"
    scheduler = build_scheduler(create_app(config))
    job = scheduler.get_job(JOB_ID)

    assert isinstance(job.trigger, CronTrigger)
    assert job.trigger.timezone == ZoneInfo("Asia/Shanghai")
    fields = {f.name: str(f) for f in job.trigger.fields}
    assert (fields["hour"], fields["minute"], fields["day"], fields["day_of_week"]) == ("3", "0", "*", "*")
    first = job.trigger.get_next_fire_time(None, datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    assert first == datetime(2026, 3, 1, 19, 0, tzinfo=UTC)  # 03:00 on 2 March in Shanghai
    assert job.trigger.get_next_fire_time(first, first + timedelta(seconds=1)) == first + timedelta(days=1)
    assert (job.func, job.max_instances, job.coalesce) == (run_fix, 1, True)
    assert isinstance(scheduler._lookup_executor(job.executor), DebugExecutor)  # in the main thread


def test_the_default_schedule_is_03_00_utc_and_both_are_settings(config):
    job = build_scheduler(create_app(config)).get_job(JOB_ID)
    assert job.trigger.get_next_fire_time(None, datetime(2026, 3, 1, 4, 0, tzinfo=UTC)) == datetime(
        2026, 3, 2, 3, 0, tzinfo=UTC
    )
    config.STATS_SCHEDULE, config.STATS_TIMEZONE = "30 1 * * mon", "America/New_York"
    job = build_scheduler(create_app(config)).get_job(JOB_ID)
    # Monday 2 March 2026, 01:30 in New York (EST, UTC-5).
    assert job.trigger.get_next_fire_time(None, datetime(2026, 3, 1, 0, 0, tzinfo=UTC)) == datetime(
        2026, 3, 2, 6, 30, tzinfo=UTC
    )


def test_the_job_runs_a_real_fix_with_the_lock_logs_and_metrics(config, engine, redis, caplog, tmp_path):
    seed_database(engine, users=40)
    drift_counters(redis)
    gateway = Pushgateway(tmp_path).start()
    try:
        config.PUSHGATEWAY_URL = gateway.url
        app = create_app(config)
        job = build_scheduler(app).get_job(JOB_ID)
        with caplog.at_level(logging.INFO):
            assert job.func(*job.args, **job.kwargs) == 0
        assert wrong_members(engine, redis) == {}
        assert live_runs(redis) == []
        (summary,) = summaries(caplog)
        assert (summary["command"], summary["exit_status"], summary["counters"]) == ("fix", 0, len(KEYS))
        assert summary["fixed"] > 0
        assert any(n == "stats_fix_last_success_timestamp_seconds" for n, _ in gateway.metrics())

        # A run that cannot take its leases reports it and leaves the scheduler to try tomorrow.
        plant_run(redis, COUNTERS, holder="otherhost:1", ttl_ms=60_000)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert job.func(*job.args, **job.kwargs) == 75
        assert summaries(caplog)[0]["exit_status"] == 75
    finally:
        gateway.stop()


def test_sigterm_during_a_scheduled_run_stops_the_run_between_batches_and_the_scheduler(config, engine, redis, caplog):
    seed_database(engine, users=200)
    config.STATS_BATCH_SIZE = "1"
    scheduler = build_scheduler(create_app(config))
    scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))  # due at once
    before = {key: actual(redis, key) for key in KEYS}  # every key missing: each is rebuilt

    def terminate_mid_run():
        deadline = time.monotonic() + 15
        while not live_runs(redis):
            if time.monotonic() > deadline:  # never hang the suite: the asserts below fail instead
                scheduler.shutdown(wait=False)
                return
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # the run's own handler is installed while it holds leases

    late = []  # a SIGTERM that missed the run lands here instead of killing pytest
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: late.append(signum))
    killer = threading.Thread(target=terminate_mid_run, daemon=True)
    killer.start()
    try:
        with caplog.at_level(logging.INFO):
            scheduler.start()  # returns once the stopped run has shut the scheduler down
    finally:
        signal.signal(signal.SIGTERM, previous)
    killer.join(timeout=5)

    assert not scheduler.running and not late
    (summary,) = summaries(caplog)
    assert summary["exit_status"] == 143 and "SIGTERM" in summary["error"]
    for key in KEYS:  # each counter untouched or completely built
        assert actual(redis, key) in (before[key], expected(engine, key)), key
    assert live_runs(redis) == []


@pytest.mark.parametrize(
    "setting,value",
    [
        ("STATS_SCHEDULE", "every day at 3"),
        ("STATS_SCHEDULE", "61 3 * * *"),
        ("STATS_SCHEDULE", "0 3 * * 1-5"),
        ("STATS_TIMEZONE", "Mars/Olympus"),
        ("STATS_TIMEZONE", ""),
        ("LOG_FORMAT", "yaml"),
        ("PUSHGATEWAY_URL", "gateway:9091"),
    ],
)
def test_bad_settings_stop_the_scheduler_at_start_with_exit_2_naming_them(config, setting, value):
    setattr(config, setting, value)
    result = create_app(config).test_cli_runner().invoke(args=["stats", "scheduler"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and setting in errors[0], result.output


def test_the_scheduler_runs_in_the_foreground_until_sigterm(tmp_path):
    log = tmp_path / "scheduler.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            flask_cmd("stats", "scheduler"),
            cwd=ROOT,
            env=flask_env(DATABASE_URL, REDIS_URL, STATS_TIMEZONE="Asia/Shanghai"),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            started = wait_until(lambda: _event(log, "scheduler started"), what="the scheduler to start")
            assert started["timezone"] == "Asia/Shanghai" and started["schedule"] == "0 3 * * *"
            assert datetime.fromisoformat(started["next_run"]).astimezone(ZoneInfo("Asia/Shanghai")).hour == 3
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert _event(log, "scheduler stopped")["reason"] == "stopped by SIGTERM"


def _event(path, message):
    for line in path.read_text().splitlines():
        if line.startswith("{") and json.loads(line)["message"] == message:
            return json.loads(line)
    return None


def test_the_web_app_never_starts_a_scheduler():
    script = (
        "import sys, threading\n"
        "from toutiao import create_app\n"
        "app = create_app()\n"
        "app.test_client().get('/no-such-page')\n"
        "print('apscheduler' in sys.modules, threading.active_count())\n"
    )
    env = flask_env(DATABASE_URL, REDIS_URL)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "1"]
