"""What on-call reads: a structured line per counter and a summary line with the exit
status, JSON off a terminal and text on one, a progress bar only on a terminal, and
no password anywhere."""

import json
import logging
import os
import pty
import re
import select
import subprocess
import time

import pytest

from common.cache.statistic import COUNTERS
from tests.conftest import DATABASE_URL, REDIS_URL
from tests.expected import KEYS, wrong_members
from tests.races import plant_run
from tests.servers import ROOT, flask_cmd, flask_env
from toutiao import create_app
from toutiao.logs import JsonFormatter, TextFormatter, fields

COUNTER_FIELDS = {"counter", "mode", "scanned", "wrong", "fixed", "added", "changed", "removed", "skipped", "seconds"}
SUMMARY_FIELDS = {"command", "counters", "failed", "scanned", "wrong", "fixed", "skipped", "seconds", "exit_status"}
BAR = re.compile(r"(count:[a-z:]+) +\[[#.]+\] (\d+)/(\d+) +(\d+)% [\d,]+/s ETA \d+:\d\d:\d\d")


def run(args, **env):
    """Run ``flask`` with stdout and stderr piped (not a terminal)."""
    return subprocess.run(
        flask_cmd(*args), cwd=ROOT, env=flask_env(DATABASE_URL, REDIS_URL, **env), capture_output=True, text=True
    )


def run_on_terminal(args, **env):
    """Run ``flask`` with stdout and stderr on a pseudo-terminal; return (status, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        flask_cmd(*args),
        cwd=ROOT,
        env=flask_env(DATABASE_URL, REDIS_URL, **env),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    output, deadline = b"", time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
    return proc.wait(timeout=10), output.decode()


def json_lines(text):
    """Parse every log line (all must be JSON); click's own "Error: ..." line is not a log line."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Error: ")]
    return [json.loads(line) for line in lines]


def test_off_a_terminal_every_log_line_is_json_with_a_line_per_counter_and_a_summary(drifted, redis):
    result = run(["stats", "fix", "--json"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    lines = json_lines(result.stderr)

    counters = [line for line in lines if line.get("event") == "counter"]
    assert [line["counter"] for line in counters] == KEYS
    for line, reported in zip(counters, report["counters"]):
        assert set(line) >= COUNTER_FIELDS and line["level"] == "INFO"
        assert (line["scanned"], line["wrong"], line["skipped"]) == (
            reported["scanned"],
            reported["wrong"],
            reported["skipped"],
        )
        assert line["fixed"] == reported["added"] + reported["changed"] + reported["removed"]
    summary = lines[-1]
    assert summary["event"] == "summary" and set(summary) >= SUMMARY_FIELDS
    assert (summary["command"], summary["exit_status"], summary["counters"], summary["failed"]) == ("fix", 0, 11, [])
    assert summary["wrong"] == report["totals"]["wrong"] > 0
    assert summary["fixed"] == summary["wrong"]
    assert "\r" not in result.stderr and "ETA" not in result.stderr  # no progress bar
    assert wrong_members(drifted, redis) == {}


def test_on_a_terminal_logs_are_text_with_a_progress_bar_per_counter(drifted):
    status, output = run_on_terminal(["stats", "fix"], LOG_FORMAT="auto")
    assert status == 0, output
    lines = output.replace("\r\n", "\n").split("\n")

    reconciled = 0
    for key in KEYS:
        done = [line for line in lines if "counter done" in line and f"counter={key} " in line]
        assert len(done) == 1, (key, output)
        assert re.search(r" INFO toutiao\.cli\.outcome: counter done .*scanned=\d+ wrong=\d+ fixed=\d+", done[0])
        if "mode=reconcile" not in done[0]:
            continue  # the engine reports progress during the reconcile pass only
        reconciled += 1
        bars = [m for m in BAR.finditer(output) if m.group(1) == key]
        assert bars, (key, output)
        last = bars[-1]
        assert last.group(2) == last.group(3) and last.group(4) == "100"  # members done of the estimate
    assert reconciled >= 8
    summary = [line for line in lines if "fix finished" in line]
    assert len(summary) == 1 and "exit_status=0" in summary[0] and "counters=11" in summary[0]
    assert not any(line.lstrip().startswith("{") for line in lines)


@pytest.mark.parametrize(
    "args,env", [(["--json"], {"LOG_FORMAT": "text"}), ([], {"LOG_FORMAT": "json"})], ids=["--json", "LOG_FORMAT=json"]
)
def test_no_progress_bar_on_a_terminal_with_json_output(drifted, args, env):
    status, output = run_on_terminal(["stats", "fix", *args], **env)
    assert status == 0, output
    assert not BAR.search(output) and "ETA" not in output, output


def test_a_failed_run_logs_its_summary_with_the_exit_status_and_no_password(engine):
    result = run(["stats", "fix"], REDIS_URL="redis://stats:s3cret@127.0.0.1:1/0")
    assert result.returncode == 1
    summary = json_lines(result.stderr)[-1]
    assert (summary["event"], summary["exit_status"], summary["counters"]) == ("summary", 1, 0)
    assert "cannot reach Redis at redis://***@127.0.0.1:1/0" in summary["error"]
    assert "s3cret" not in result.stderr + result.stdout


def summaries(caplog):
    return [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "summary"]


@pytest.mark.parametrize(
    "args,setup,status,level",
    [
        (["check"], None, 3, logging.INFO),
        (["fix"], lambda redis: plant_run(redis, COUNTERS, holder="otherhost:1", ttl_ms=60_000), 75, logging.WARNING),
        (["fix", "--only", "count:nope"], None, 2, logging.ERROR),
    ],
    ids=["check-drift", "lock-busy", "unknown-counter"],
)
def test_every_ending_logs_one_summary_line(drifted, redis, runner, caplog, args, setup, status, level):
    if setup:
        setup(redis)
    with caplog.at_level(logging.INFO):
        result = runner.invoke(args=["stats", *args])
    assert result.exit_code == status, result.output
    (record,) = summaries(caplog)
    assert (record.fields["command"], record.fields["exit_status"], record.levelno) == (args[0], status, level)


@pytest.mark.parametrize("command", ["fix", "check"])
def test_an_unknown_log_format_exits_2_naming_the_setting(config, drifted, command):
    config.LOG_FORMAT = "yaml"
    result = create_app(config).test_cli_runner().invoke(args=["stats", command])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "LOG_FORMAT" in errors[0] and "yaml" in errors[0]


def test_formatters_mask_passwords_in_messages_and_fields():
    record = logging.LogRecord("toutiao", logging.ERROR, __file__, 1, "cannot reach %s", ("mysql://u:pw1@db/x",), None)
    record.fields = fields(url="redis://:pw2@redis:6379/0", counters=3)["fields"]

    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "cannot reach mysql://***@db/x"
    assert (data["url"], data["counters"], data["level"]) == ("redis://***@redis:6379/0", 3, "ERROR")
    text = TextFormatter().format(record)
    assert text.endswith("ERROR toutiao: cannot reach mysql://***@db/x url=redis://***@redis:6379/0 counters=3")
    assert "pw1" not in text and "pw2" not in text
