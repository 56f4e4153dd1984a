"""The benchmarks run small in CI: a few hundred users, every mode, the results file written.

The full runs (a million users) are by hand; these prove the harness still measures both
peers and ours in every mode, on both data shapes, that ours leaves Redis equal to the
database (``flask stats check`` exits 0 after every run of ours, under traffic too) and
that the figures reach the results file.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench import summary
from bench.run import MODES, check_note, drifted_ids, profile_functions, profiled
from common.cache.statistic import COUNTERS
from tests.conftest import DATABASE_URL

ROOT = Path(__file__).resolve().parent.parent
#: Columns holding user or comment ids, snowflake ids in the loguniform shape (comments
#: with no parent are NULL, which MIN skips).
SNOWFLAKE_COLUMNS = [
    ("user_basic", "user_id"),
    ("user_relation", "user_id"),
    ("user_relation", "target_user_id"),
    ("news_article_basic", "user_id"),
    ("news_collection", "user_id"),
    ("news_attitude", "user_id"),
    ("news_comment", "comment_id"),
    ("news_comment", "user_id"),
    ("news_comment", "parent_id"),
    ("news_comment_liking", "user_id"),
    ("news_comment_liking", "comment_id"),
]


def bench_options(suffix) -> list:
    """Options naming a database of its own beside the test database, on the same server."""
    url = make_url(DATABASE_URL)
    return [
        "--database",
        f"{url.database}_{suffix}",
        "--host",
        url.host or "127.0.0.1",
        "--port",
        str(url.port or 3306),
        "--user",
        url.username or "root",
        "--password",
        url.password or "",
    ]


def run_module(module, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_bench_run_measures_every_mode_on_both_peers_and_writes_its_figures(tmp_path):
    results = tmp_path / "RESULTS.md"

    done = run_module(
        "bench.run", "--users", "300", "--regenerate", "--floor-seconds", "1", *bench_options("bench"),
        "--results", str(results),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    report = results.read_text()
    assert "- Scale: 300 users; shape: skewed; rows: user_basic 300," in report
    for section in ("## Summary", "## Targets (issue 11)", "## Per counter"):
        assert section in report
    for mode in MODES:
        contenders = ("ours",) if mode == "restart" else ("old", "hints", "ours")
        for name in contenders:
            assert f"{name} / {mode}: exit 0" in done.stdout, (name, mode)
        assert f"flask stats check after ours / {mode}: exit 0" in done.stdout, mode
        assert f"(`{mode}`)" in report
    assert done.stdout.count("flask stats check after ours") == len(MODES)
    figures = json.loads((ROOT / "bench" / "data" / "results-300-skewed.json").read_text())
    expected = {f"{name}/{mode}" for mode in MODES for name in ("old", "hints", "ours")} - {
        "old/restart",
        "hints/restart",
    }
    assert {name: run["exit"] for name, run in figures["runs"].items()} == dict.fromkeys(expected, 0)
    assert all(figures["runs"][f"ours/{mode}"]["check"]["exit"] == 0 for mode in MODES)
    drifted = figures["drift_total"]
    assert drifted["quiet"] == 0
    assert len(COUNTERS) <= drifted["drift-0.01"] <= drifted["drift-1"] < drifted["drift-10"]
    traffic = figures["runs"]["ours/restart"]["traffic"]
    assert traffic["sent"] > 0 and traffic["unexpected"] == 0 and traffic["exit"] == 0
    assert traffic["cpu_s"] > 0
    assert figures["floor"]["idle"]["pings"] > 100 and figures["floor"]["busy"]["pings"] > 100
    assert "- The machine alone, before the contenders (1 s each" in report


def test_bench_run_on_snowflake_ids_and_loguniform_targets_keeps_every_check_exact(tmp_path):
    results = tmp_path / "RESULTS.md"
    options = bench_options("bench_loguniform")

    done = run_module(
        "bench.run", "--users", "300", "--shape", "loguniform", "--modes", "empty,drift-1,restart",
        "--floor-seconds", "1", *options, "--results", str(results),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    assert "shape: loguniform" in results.read_text()
    figures = json.loads((ROOT / "bench" / "data" / "results-300-loguniform.json").read_text())
    assert figures["shape"] == figures["database"]["shape"] == "loguniform"
    assert {name: run["exit"] for name, run in figures["runs"].items()} == dict.fromkeys(
        ["old/empty", "hints/empty", "ours/empty", "old/drift-1", "hints/drift-1", "ours/drift-1", "ours/restart"], 0
    )
    for mode in ("empty", "drift-1", "restart"):
        assert figures["runs"][f"ours/{mode}"]["check"]["exit"] == 0, mode
    database = options[options.index("--database") + 1]
    engine = create_engine(make_url(DATABASE_URL).set(database=database))
    try:
        with engine.connect() as conn:
            smallest = {
                (table, column): conn.execute(text(f"SELECT MIN({column}) FROM {table}")).scalar()
                for table, column in SNOWFLAKE_COLUMNS
            }
            comment = conn.execute(
                text("SELECT schema_comment FROM information_schema.schemata WHERE schema_name = :name"),
                {"name": database},
            ).scalar()
    finally:
        engine.dispose()
    assert all(value > 10**18 for value in smallest.values()), smallest
    # The restart mode's traffic wrote rows: the next run must not take them for generated ones.
    assert comment == "bench.generate: shape=loguniform, rows changed after generation"


def test_bench_run_can_give_redis_a_cpu_of_its_own_and_gives_mariadb_its_cpus_back(tmp_path):
    import psutil

    results = tmp_path / "RESULTS.md"
    mariadb = next(p for p in psutil.process_iter(["name"]) if p.info["name"] == "mariadbd")
    before = os.sched_getaffinity(mariadb.pid)
    last = max(before)

    done = run_module(
        "bench.run", "--users", "300", "--modes", "quiet", "--peers", "hints", "--floor-seconds", "1",
        "--redis-cpu", str(last), *bench_options("bench"), "--results", str(results),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    assert "ours / quiet: exit 0" in done.stdout
    assert f"redis-server and the PING process alone on CPU {last}" in results.read_text()
    assert all(os.sched_getaffinity(t.id) == before for t in mariadb.threads())


def test_profile_counts_each_function_once_per_sample_and_leaves_the_plumbing_out():
    raw = (
        "<module> (flask:8);Group.main (click/core.py:1);fix (toutiao/cli/stats.py:10);"
        "Source.stream (common/cache/source.py:5) 3\n"
        "<module> (flask:8);fix (toutiao/cli/stats.py:12);fix (toutiao/cli/stats.py:14) 1\n"
        " 7\n"
    )

    profile = profile_functions(raw)

    assert profile["samples"] == 4
    assert profile["functions"] == [
        {"function": "fix (toutiao/cli/stats.py)", "inclusive": 1.0, "self": 0.25},
        {"function": "Source.stream (common/cache/source.py)", "inclusive": 0.75, "self": 0.75},
    ]


def test_profile_puts_each_sample_in_the_stage_of_its_innermost_named_frame():
    raw = (
        "<module> (flask:8);RepairEngine.run (common/cache/engine.py:1);"
        "CounterRepair.reconcile (common/cache/repair.py:2);"
        "CounterRepair._sweep (common/cache/repair.py:3);CounterRepair._strays (common/cache/repair.py:4);"
        "Candidates.write (common/cache/candidates.py:5);Script.__call__ (redis/commands/core.py:6) 3\n"
        "Thread.run (threading.py:1);Stream._read (common/cache/source.py:9) 5\n"
        "<module> (flask:8);CounterRepair.reconcile (common/cache/repair.py:2);"
        "CounterRepair._sweep (common/cache/repair.py:3);Redis.execute_command (redis/client.py:7) 1\n"
        "Thread.run (threading.py:1);Leases._renew_loop (common/cache/lease.py:2);Event.wait (threading.py:3) 1\n"
    )

    stages = profile_functions(raw)["stages"]

    assert stages == {
        "database: the streamed GROUP BYs (reader thread)": 0.5,
        "Redis: compare-and-set writes": 0.3,
        "Redis: sweep for strays (ZRANGE pages)": 0.1,
        "lease renewal thread (waits between renewals)": 0.1,
    }


def test_a_checks_drift_is_named_against_the_ids_ours_reported_skipped():
    report = {"counters": [{"counter": "count:art:comm", "skipped": 2, "skipped_ids": ["7", "12"]}]}
    same = {"report": report, "check": {"exit": 3, "drifted": {"count:art:comm": ["12", "7"]}}}
    other = {"report": report, "check": {"exit": 3, "drifted": {"count:art:comm": ["7", "9"]}}}
    exact = {"report": report, "check": {"exit": 0}}

    assert check_note(same) == "its 2 drifted ids are exactly the ids ours reported skipped (`count:art:comm` 12, 7)"
    assert check_note(other).startswith("2 drifted ids (`count:art:comm` 7, 9); ours reported skipped:")
    fewer = {"report": report, "check": {"exit": 3, "drifted": {"count:art:comm": ["7"]}}}
    assert check_note(fewer) == (
        "its 1 drifted ids (`count:art:comm` 7) are among the 2 ours reported skipped (`count:art:comm` 12, 7)"
    )
    assert check_note(exact) == ""
    assert drifted_ids(json.dumps({"counters": [
        {"counter": "count:art:comm", "wrong": 2, "examples": [{"id": "12"}, {"id": "7"}]},
        {"counter": "count:art:reply", "wrong": 0, "examples": []},
    ]})) == {"count:art:comm": ["12", "7"]}  # fmt: skip


def test_summary_takes_a_later_run_of_a_mode_and_borrows_the_old_ways_time_from_empty(tmp_path):
    def results(name, date, modes, runs):
        data = {
            "date": date, "args": {"users": 1000}, "shape": "skewed", "modes": modes, "members_total": 1000,
            "machine": {"commit": "abc1234"}, "runs": runs,
        }  # fmt: skip
        (tmp_path / name).write_text(json.dumps(data))
        return tmp_path / name

    def run(seconds):
        return {
            "exit": 0,
            "wall_s": seconds,
            "ping": {"worst_ms": 1, "p99_ms": 0.5},
            "rss_mb": 60,
            "check": {"exit": 0},
        }

    first = results("a.json", "2026-12-03 10:00 UTC", ["empty", "drift-1"], {
        "old/empty": run(100.0), "ours/empty": run(10.0), "ours/drift-1": run(30.0),
    })  # fmt: skip
    second = results("b.json", "2026-12-03 11:00 UTC", ["drift-1"], {"ours/drift-1": run(20.0)})
    floor = tmp_path / "floor.json"
    floor.write_text(json.dumps({"date": "2026-12-03 12:00 UTC", "floor": {}}))  # bench.floor's: not a run
    alone = results("c.json", "2026-12-03 13:00 UTC", ["restart"], {"ours/restart": run(40.0)})
    data = json.loads(alone.read_text())
    del data["members_total"]  # a run of the restart alone: the members come from another run
    alone.write_text(json.dumps(data))

    isolated = results("d.json", "2026-12-03 14:00 UTC", ["drift-1"], {"ours/drift-1": run(99.0)})
    isolated.write_text(json.dumps(json.loads(isolated.read_text()) | {"redis_cpu": 1}))  # not comparable

    runs = summary.load([first, second, floor, alone, isolated])
    rows, curve = summary.summary_rows(runs), summary.scale_curve(runs)

    assert any("| drift-1 (superseded by a later run) | (100.0) |" in row and "| 30.0 |" in row for row in rows)
    assert any("| drift-1 | (100.0) |" in row and "| 20.0 | (0.200) |" in row for row in rows)
    assert curve[-1] == "| skewed | 1k | 1,000 | 10000.00 |  |  | 20000.00 |  | 40000.00 |"


def test_profiled_runs_a_command_under_py_spy_and_finds_its_busy_function(tmp_path):
    script = "def spin():\n    total = 0\n    for i in range(10_000_000):\n        total += i * i\n\nspin()\n"

    profile = profiled([sys.executable, "-c", script], dict(os.environ), str(tmp_path / "spin"), timeout=120)

    assert profile["exit"] == 0 and profile["samples"] > 0
    assert profile["functions"][0]["function"] == "spin (<string>)"
    assert profile["functions"][0]["inclusive"] > 0.5


def test_bench_compare_measures_two_commits_and_every_check_passes(tmp_path):
    results = tmp_path / "BEFORE-AFTER.md"

    done = run_module(
        "bench.compare", "--before", "HEAD", "--users", "300", "--rounds", "1", *bench_options("compare"),
        "--results", str(results),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    report = results.read_text()
    assert "| wall time (s) |" in report
    assert "`flask stats check` after each run of after: [0]" in report
    assert report.count("exits: before [0], after [0]") == 2


def test_bench_floor_measures_the_machines_own_ping_idle_and_busy_and_a_growing_set(tmp_path):
    results = tmp_path / "floor.json"
    command = [sys.executable, "-m", "bench.floor", "--seconds", "1", "--grow", "2000", "--results", str(results)]
    subprocess.run(command, check=True, cwd=ROOT)
    data = json.loads(results.read_text())
    for phase in ("idle", "busy"):
        assert data["floor"][phase]["pings"] > 100
        assert 0 < data["floor"][phase]["worst_ms"] < 1000
    assert data["steal_ms"] >= 0 and data["floor"]["seconds"] == 1
    assert data["grow"]["members"] == 2000 and len(data["grow"]["slowest_ms_at_size"]) == 5
