"""The benchmarks run small in CI: a few hundred users, every scenario, the results file written.

The full runs (a million users) are by hand; these prove the harness still measures both
contenders, that ours leaves Redis equal to the database (``flask stats check`` exits 0
after every run of ours) and that the figures reach the results file.
"""

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.conftest import DATABASE_URL

ROOT = Path(__file__).resolve().parent.parent


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


def test_bench_run_compares_the_old_way_with_ours_and_writes_its_figures(tmp_path):
    results = tmp_path / "RESULTS.md"

    done = run_module("bench.run", "--users", "300", "--regenerate", *bench_options("bench"), "--results", str(results))

    assert done.returncode == 0, done.stderr[-3000:]
    report = results.read_text()
    assert "- Scale: 300 users; rows: user_basic 300," in report
    for scenario in ("old / empty", "ours / empty", "old / drift", "ours / drift"):
        assert f"{scenario}: exit 0" in done.stdout, scenario
    assert done.stdout.count("flask stats check after ours") == 2
    assert "flask stats check after ours / empty: exit 0" in done.stdout
    assert "flask stats check after ours / drift: exit 0" in done.stdout
    figures = json.loads((ROOT / "bench" / "data" / "results-300.json").read_text())
    assert {name: run["exit"] for name, run in figures["runs"].items()} == {
        "old/empty": 0,
        "ours/empty": 0,
        "old/drift": 0,
        "ours/drift": 0,
    }


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
