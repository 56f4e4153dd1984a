"""What a stats run leaves behind for on-call: a log line per counter, a summary line with
the exit status, and (for ``fix``, with PUSHGATEWAY_URL set) a metrics push.

Commands wrap their body in :func:`observed_run`, which yields a :class:`Run`; the run's
:meth:`Run.record` is the engine's ``on_result``. Both happen on success and on every
failure.
"""

import logging
import threading
import time
from contextlib import contextmanager

from flask import current_app

from toutiao.cli.errors import EXIT_FAILURE, EXIT_LOCKED, EXIT_OK, exit_status, settings_checked
from toutiao.logs import fields, mask_url, resolve_format

log = logging.getLogger(__name__)


class Run:
    """One command's run: what it was asked, and the counters it finished."""

    def __init__(self, command, shard=None):
        self.command = command
        self.shard = shard
        self.started = time.time()
        self.results = []
        self._lock = threading.Lock()  # results come from the engine's worker threads with --jobs

    def record(self, result):
        """Log the structured line of one finished counter and keep it for the summary."""
        level = logging.ERROR if result.error else logging.INFO
        values = dict(
            event="counter",
            counter=result.counter,
            mode=result.mode,
            scanned=result.scanned,
            wrong=result.wrong,
            fixed=result.fixed,
            added=result.added,
            changed=result.changed,
            removed=result.removed,
            skipped=result.skipped,
            seconds=round(result.seconds, 3),
        )
        if result.note:
            values["note"] = result.note
        if result.error:
            values["error"] = result.error
        log.log(level, "counter failed" if result.error else "counter done", extra=fields(**values))
        with self._lock:
            self.results.append(result)


@contextmanager
def observed_run(command, shard=None, push=False):
    """Yield a :class:`Run`; when the body ends, however it ends, log a summary line and
    push metrics if ``push``."""
    run = Run(command, shard)
    status, error, url = EXIT_FAILURE, "", None
    try:
        with settings_checked():
            resolve_format(current_app.config.get("LOG_FORMAT"))
            url = _pushgateway_url() if push else None
            yield run
        status = EXIT_OK
    except BaseException as exc:
        status, error = exit_status(exc)
        raise
    finally:
        finished = time.time()
        _log_summary(run, status, error, finished)
        if url:
            _push(url, run, status, finished)


def _pushgateway_url():
    from toutiao.metrics import check_url

    url = current_app.config.get("PUSHGATEWAY_URL")
    return check_url(url) if url else None


def _log_summary(run, status, error, finished):
    results = run.results
    values = dict(
        event="summary",
        command=run.command,
        counters=len(results),
        failed=[r.counter for r in results if r.error],
        scanned=sum(r.scanned for r in results),
        wrong=sum(r.wrong for r in results),
        fixed=sum(r.fixed for r in results),
        skipped=sum(r.skipped for r in results),
        seconds=round(finished - run.started, 3),
        exit_status=status,
    )
    if run.shard is not None:
        values["shard"] = str(run.shard)
    if error:
        values["error"] = error.splitlines()[0] if error.strip() else error
    succeeded = status == EXIT_OK or (run.command == "check" and status == 3)
    level = logging.INFO if succeeded else logging.WARNING if status == EXIT_LOCKED else logging.ERROR
    log.log(level, f"{run.command} {'finished' if succeeded else 'failed'}", extra=fields(**values))


def _push(url, run, status, finished):
    from toutiao.metrics import push_run

    try:
        push_run(url, shard=run.shard, started=run.started, finished=finished, exit_status=status, results=run.results)
    except OSError as exc:  # a metrics outage must not change the run's outcome
        log.warning(
            "could not push metrics",
            extra=fields(event="metrics", url=mask_url(url), error=f"{type(exc).__name__}: {exc}"),
        )
    else:
        log.info("pushed metrics", extra=fields(event="metrics", url=mask_url(url)))
