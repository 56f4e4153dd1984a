"""What a stats run leaves behind for on-call: a log line per counter, a summary line with
the exit status, and (for ``fix``, with PUSHGATEWAY_URL set) a metrics push.

Commands wrap their body in :func:`observed_run`; the engine's ``on_result`` calls
:func:`record_counter`. Both happen on success and on every failure.
"""
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import click
from flask import current_app

from toutiao.cli.errors import EXIT_FAILURE, EXIT_LOCKED, EXIT_OK, EXIT_SIGINT, ConfigError, mask_url
from toutiao.config import SettingError
from toutiao.logs import fields, resolve_format

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One command's run: what it was asked and the counters it finished."""

    command: str
    shard: object = None
    started: float = field(default_factory=time.time)
    results: list = field(default_factory=list)


_current: Optional[Run] = None
_results_lock = threading.Lock()  # on_result comes from the engine's worker threads with --jobs


def record_counter(result):
    """Log the structured line of one finished counter and keep it for the summary."""
    level = logging.ERROR if result.error else logging.INFO
    values = dict(
        event="counter",
        counter=result.counter,
        mode=result.mode,
        scanned=result.scanned,
        wrong=result.wrong,
        fixed=result.added + result.changed + result.removed,
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
    with _results_lock:
        if _current is not None:
            _current.results.append(result)


@contextmanager
def observed_run(command, shard=None, push=False):
    """Log a summary line when the body ends, however it ends, and push metrics if ``push``."""
    global _current
    run = Run(command, shard)
    previous, _current = _current, run
    status, error, url = EXIT_FAILURE, "", None
    try:
        resolve_format(current_app.config.get("LOG_FORMAT"))
        url = _pushgateway_url() if push else None
        yield run
        status = EXIT_OK
    except click.ClickException as exc:
        status, error = exc.exit_code, exc.format_message()
        raise
    except click.exceptions.Exit as exc:
        status = exc.exit_code
        raise
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
        raise
    except (KeyboardInterrupt, click.Abort):
        status, error = EXIT_SIGINT, "interrupted"
        raise
    except SettingError as exc:
        status, error = ConfigError.exit_code, str(exc)
        raise ConfigError(str(exc))
    except Exception as exc:
        status, error = EXIT_FAILURE, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _current = previous
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
        fixed=sum(r.added + r.changed + r.removed for r in results),
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
    except Exception as exc:  # a metrics outage must not change the run's outcome
        log.warning(
            "could not push metrics", extra=fields(event="metrics", url=mask_url(url), error=f"{type(exc).__name__}: {exc}")
        )
    else:
        log.info("pushed metrics", extra=fields(event="metrics", url=mask_url(url)))
