"""``flask stats scheduler``: run ``flask stats fix`` daily, for hosts without Kubernetes.

One foreground process (APScheduler's BlockingScheduler) runs the fix at STATS_SCHEDULE
(default ``0 3 * * *``: 03:00) in STATS_TIMEZONE, with the same lock, logs and metrics
as a fix run by hand. Jobs run in the main thread, one at a time, so SIGTERM stops a run
between batches exactly as it stops ``flask stats fix``. Only this command starts a
scheduler: apscheduler is imported here, when it runs, never by the web app.
See docs/operations.md for the systemd unit.
"""

import logging
import signal
from datetime import datetime, timezone

import click
from flask import current_app
from flask.cli import with_appcontext

from toutiao.cli import signals
from toutiao.cli.errors import EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, exit_status, settings_checked
from toutiao.cli.stats import fix
from toutiao.config import SettingError
from toutiao.logs import fields, resolve_format

log = logging.getLogger(__name__)

JOB_ID = "stats_fix"


class _Stop(BaseException):
    """SIGTERM or SIGINT while the scheduler waits; BaseException so no handler swallows it."""


@click.command("scheduler")
@with_appcontext
def scheduler_command():
    """Run the fix on STATS_SCHEDULE in STATS_TIMEZONE (daily at 03:00 UTC by default) until stopped."""
    app = current_app._get_current_object()
    with settings_checked():
        resolve_format(app.config.get("LOG_FORMAT"))
        if app.config.get("PUSHGATEWAY_URL"):
            from toutiao.metrics import check_url

            check_url(app.config["PUSHGATEWAY_URL"])
        scheduler = build_scheduler(app)

    job = scheduler.get_job(JOB_ID)
    next_run = job.trigger.get_next_fire_time(None, datetime.now(timezone.utc))
    log.info(
        "scheduler started",
        extra=fields(
            event="scheduler",
            schedule=app.config["STATS_SCHEDULE"],
            timezone=str(scheduler.timezone),
            next_run=next_run.isoformat(),
        ),
    )
    reason = "shut down"
    with signals.handling(_raise_stop):
        try:
            scheduler.start()
        except _Stop as exc:
            reason = str(exc)
        finally:
            if scheduler.running:
                scheduler.shutdown(wait=False)
    log.info("scheduler stopped", extra=fields(event="scheduler", reason=reason))


def build_scheduler(app):
    """Return a BlockingScheduler (not started) holding the fix job; raise SettingError on bad settings."""
    from apscheduler.events import EVENT_JOB_ERROR
    from apscheduler.executors.debug import DebugExecutor
    from apscheduler.schedulers.blocking import BlockingScheduler

    zone = _timezone(app.config.get("STATS_TIMEZONE"))
    trigger = _trigger(app.config.get("STATS_SCHEDULE"), zone)
    # DebugExecutor runs the job in the scheduler's (main) thread: one run at a time, and
    # the fix's own SIGTERM handling works as on the command line.
    scheduler = BlockingScheduler(
        timezone=zone, executors={"default": DebugExecutor()}, jobstores={"default": _job_store()}
    )
    scheduler.add_job(
        run_fix,
        trigger,
        args=[app, scheduler],
        id=JOB_ID,
        name="flask stats fix",
        max_instances=1,
        coalesce=True,  # after downtime, one catch-up run, not one per missed day
        misfire_grace_time=3600,
    )

    def stop_if_signalled(event):
        # A signal that lands in APScheduler's own bookkeeping around a job is caught there
        # as a job error; honour it here instead of losing it.
        if isinstance(event.exception, _Stop) and scheduler.running:
            scheduler.shutdown(wait=False)

    scheduler.add_listener(stop_if_signalled, EVENT_JOB_ERROR)
    return scheduler


def _job_store():
    from apscheduler.jobstores.memory import MemoryJobStore

    class KeepingJobStore(MemoryJobStore):
        """A memory job store that keeps its jobs on shutdown: the scheduler is shut down
        from inside its job (a run stopped by SIGTERM), and APScheduler still updates the
        job after it returns."""

        def shutdown(self):
            pass

    return KeepingJobStore()


def run_fix(app, scheduler=None) -> int:
    """Run ``flask stats fix`` as the scheduled job and return its exit status.

    The fix logs its own summary line and pushes its metrics; a failed run waits for the
    next schedule. A run stopped by SIGTERM or SIGINT stops the scheduler too.
    """
    _drop_connections(app)
    with app.app_context():
        try:
            status = fix.main(args=[], prog_name="flask stats fix", standalone_mode=False) or EXIT_OK
        except Exception as exc:  # every ending becomes a status; the fix logged its own summary
            status = exit_status(exc)[0]
            if not isinstance(exc, click.ClickException):
                log.exception("the scheduled fix crashed", extra=fields(event="scheduler"))
        except SystemExit as exc:
            status = exit_status(exc)[0]
    if status in (EXIT_SIGINT, EXIT_SIGTERM) and scheduler is not None and scheduler.running:
        scheduler.shutdown(wait=False)
    return status


def _drop_connections(app):
    """Close the Redis connections kept since the last run, so this run connects afresh to
    the master the sentinels name now (a failover may have moved it; the old master,
    demoted, would still answer on an old connection)."""
    for client in app.extensions.get("redis.clients", {}).values():
        client.connection_pool.disconnect()


def _raise_stop(signum, frame):
    raise _Stop(f"stopped by {signal.Signals(signum).name}")


def _timezone(name):
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingError(
            f"STATS_TIMEZONE must be an IANA time zone such as Asia/Shanghai or UTC, got {name!r}"
        ) from None


def _trigger(expression, zone):
    from apscheduler.triggers.cron import CronTrigger

    fields = str(expression).split()
    if len(fields) == 5 and any(c.isdigit() for c in fields[4]):
        # APScheduler counts weekdays from Monday (0), cron from Sunday: a number would
        # silently mean another day. Names mean the same day in both.
        raise SettingError(f"STATS_SCHEDULE must name weekdays (mon-fri, sun), not number them, got {expression!r}")
    try:
        return CronTrigger.from_crontab(str(expression), timezone=zone)
    except (ValueError, TypeError) as exc:
        raise SettingError(
            f"STATS_SCHEDULE must be a crontab line (minute hour day month weekday) such as '0 3 * * *', "
            f"got {expression!r} ({exc})"
        ) from None
