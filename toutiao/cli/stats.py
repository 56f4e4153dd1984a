"""``flask stats``: list, check and fix the statistic counters against the database.

Exit codes: 0 success (``check``: no drift), 1 runtime failure, 2 bad usage or
configuration, 3 ``check`` found drift, 75 another run holds a lease, 130/143 stopped by
SIGINT/SIGTERM.
"""

import json
import logging
import signal

import click
from flask import current_app
from flask.cli import AppGroup
from redis.exceptions import RedisError

from common.cache.engine import RepairEngine
from common.cache.members import Shard
from common.cache.report import Report
from common.cache.statistic import COUNTERS, select_counters
from common.exceptions import Interrupted, LockHeld, LockLost, UnknownCounter
from toutiao.cli import signals
from toutiao.cli.connect import connect_database, connect_redis, redis_failure
from toutiao.cli.errors import EXIT_DRIFT, LockBusy, RuntimeFailure, Stopped, settings_checked
from toutiao.cli.outcome import observed_run
from toutiao.cli.progress import Progress
from toutiao.cli.table import table
from toutiao.config import number

log = logging.getLogger(__name__)

stats_cli = AppGroup("stats", help="Check and repair the Redis statistic counters from the database.")


class ShardType(click.ParamType):
    name = "INDEX/TOTAL"

    def convert(self, value, param, ctx):
        if isinstance(value, Shard):
            return value
        try:
            return Shard.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _common_options(func):
    options = [
        click.option(
            "--only",
            "only",
            multiple=True,
            metavar="KEY",
            help="Only this counter, by Redis key (repeatable); see 'flask stats list'.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1, 100_000),
            default=None,
            help="Rows per database batch and members per Redis command [default: STATS_BATCH_SIZE or 1000].",
        ),
        click.option(
            "--jobs",
            type=click.IntRange(1, 16),
            default=None,
            help="Counters worked on in parallel [default: STATS_JOBS or 1].",
        ),
        click.option(
            "--shard",
            type=ShardType(),
            default=None,
            help="Do only part INDEX of TOTAL (members whose id % TOTAL == INDEX), e.g. 0/4.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON report on stdout."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@stats_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_counters(as_json):
    """Print every counter's Redis key and what it counts."""
    if as_json:
        click.echo(json.dumps([{"key": c.key, "counts": c.describe()} for c in COUNTERS], indent=2))
        return
    for line in table(["key", "counts"], [(c.key, c.describe()) for c in COUNTERS])[1:]:
        click.echo(line)


@stats_cli.command("check")
@_common_options
@click.option(
    "--examples", type=click.IntRange(0, 10_000), default=10, show_default=True, help="Wrong members to show."
)
def check(only, batch_size, jobs, shard, as_json, examples):
    """Compare every counter with the database and change nothing; exit 3 on drift."""
    with observed_run("check", shard=shard) as run:
        report = _run(run, only, batch_size, jobs, shard, dry_run=True, examples=examples, show_progress=not as_json)
        _render(report, as_json, examples)
        _fail_if_broken(report)
        if report.drift:
            raise SystemExit(EXIT_DRIFT)


@stats_cli.command("fix")
@_common_options
@click.option(
    "--rebuild", is_flag=True, help="Rebuild every selected counter from scratch, then recheck what traffic touched."
)
@click.option(
    "--wait",
    type=click.FloatRange(0, 86_400),
    default=0,
    metavar="SECONDS",
    help="While another run holds a counter, wait up to this long for it (a crashed run's lease "
    "expires after STATS_LOCK_TTL) instead of exiting 75 at once.",
)
def fix(only, batch_size, jobs, shard, as_json, rebuild, wait):
    """Make every counter in Redis equal to what the database says."""
    with observed_run("fix", shard=shard, push=True) as run:
        if rebuild and shard is not None:
            raise click.UsageError("--rebuild replaces whole keys and cannot be combined with --shard")
        report = _run(
            run, only, batch_size, jobs, shard, dry_run=False, rebuild=rebuild, wait=wait, show_progress=not as_json
        )
        _render(report, as_json, examples=0)
        _fail_if_broken(report)


def _run(run, only, batch_size, jobs, shard, *, dry_run, rebuild=False, wait=0.0, examples=10, show_progress=False):
    """Repair (or check) the counters named by ``only``; ``run`` records each one's result."""
    try:
        counters = select_counters(only)
    except UnknownCounter as exc:
        raise click.BadParameter(f"{exc}", param_hint="'--only'") from None
    config = current_app.config
    with settings_checked():
        batch_size = batch_size or number(config, "STATS_BATCH_SIZE")
        jobs = jobs or number(config, "STATS_JOBS")
        settle = number(config, "STATS_SETTLE_SECONDS")
        lease_ttl = number(config, "STATS_LOCK_TTL")
        number(config, "STATS_INFLIGHT_TTL")  # the web app's: refused here too, before it does harm

    engine = connect_database(require_tables=True)
    redis = connect_redis()
    progress = Progress.for_terminal(redis, enabled=show_progress)
    stop = []

    def on_signal(signum, frame):
        stop.append(signal.Signals(signum).name)
        log.warning("%s received; stopping after the current batch", stop[-1])

    def heartbeat():
        if stop:
            raise Interrupted(stop[0])

    def on_result(result):
        progress.done(result.counter)
        run.record(result)

    repair = RepairEngine(
        redis,
        engine,
        batch_size=batch_size,
        settle=settle,
        dry_run=dry_run,
        rebuild=rebuild,
        shard=shard,
        jobs=jobs,
        max_examples=examples,
        lease_ttl=lease_ttl,
        wait=wait,
        heartbeat=heartbeat,
        on_result=on_result,
        on_progress=progress.advance,
        # Tests force interleavings at the engine's named checkpoints through this hook.
        checkpoint=current_app.extensions.get("stats.checkpoint", lambda name, **context: None),
    )
    with signals.handling(on_signal), progress:
        try:
            return repair.run(counters)
        except Interrupted as exc:
            raise Stopped(str(exc), exc.signal_name) from None
        except LockHeld as exc:
            raise LockBusy(f"{exc}; try again later, or pass --wait SECONDS") from None
        except LockLost as exc:
            raise RuntimeFailure(str(exc)) from None
        except (RedisError, OSError) as exc:
            raise redis_failure(exc) from None


#: The report's columns; all but the first two are numbers, aligned right.
_COLUMNS = ["counter", "mode", *Report.COLUMNS, "seconds"]


def _render(report, as_json, examples):
    if as_json:
        click.echo(json.dumps(report.as_dict(examples=examples), default=str))
        return
    rows = [[r.counter, r.mode, *(getattr(r, c) for c in Report.COLUMNS), f"{r.seconds:.3f}"] for r in report.results]
    notes = [f"FAILED: {r.error}" if r.error else f"({r.note})" if r.note else "" for r in report.results]
    totals = report.totals
    rows.append(["total", "", *(totals[c] for c in Report.COLUMNS), f"{totals['seconds']:.3f}"])
    for line in table(_COLUMNS, rows, right=frozenset(range(2, len(_COLUMNS))), notes=notes):
        click.echo(line)
    shown = report.examples(examples)
    if shown:
        click.echo(f"\nexamples (first {len(shown)}):")
        for d in shown:
            wrong = "absent" if d.wrong is None else d.wrong
            click.echo(f"  {d.counter} id={d.id} redis={wrong} database={d.right}")


def _fail_if_broken(report):
    if report.failed:
        names = ", ".join(r.counter for r in report.failed)
        raise RuntimeFailure(f"{len(report.failed)} counter(s) failed: {names}; first error: {report.failed[0].error}")
