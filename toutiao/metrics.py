"""Push the outcome of a ``flask stats fix`` run to a Prometheus Pushgateway.

Every run pushes, whether it succeeded or failed, under job ``stats_fix`` (plus a
``shard`` label for a sharded run), with its own registry so nothing else of the
process leaks in. The push is a POST: it replaces only the metrics it carries, so a
failed run leaves ``stats_fix_last_success_timestamp_seconds`` of the last good run in
place, and a run that repaired no counter leaves the last per-counter values.
See docs/operations.md for the alert rules.
"""

from urllib.parse import urlparse

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

from toutiao.config import SettingError

JOB = "stats_fix"


def check_url(url) -> str:
    """Return PUSHGATEWAY_URL if it is an http(s) URL with a host; raise SettingError if not."""
    parsed = urlparse(str(url))
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SettingError(f"PUSHGATEWAY_URL must be an http(s) URL such as http://pushgateway:9091, got {url!r}")
    try:
        _ = parsed.port  # raises ValueError when the port is not a number in range
    except ValueError:
        raise SettingError(f"PUSHGATEWAY_URL has a bad port, got {url!r}") from None
    return url


def registry_for(*, started, finished, exit_status, results) -> CollectorRegistry:
    """Build the metrics of one run: timestamps in Unix seconds, ``results`` its CounterResults."""
    registry = CollectorRegistry()

    def gauge(name, documentation, value):
        Gauge(name, documentation, registry=registry).set(value)

    gauge("stats_fix_last_run_timestamp_seconds", "When the last run ended.", finished)
    if exit_status == 0:
        gauge("stats_fix_last_success_timestamp_seconds", "When the last successful run ended.", finished)
    gauge("stats_fix_duration_seconds", "How long the last run took.", finished - started)
    gauge("stats_fix_failed", "1 when the last run exited with a status other than 0.", int(exit_status != 0))
    gauge("stats_fix_exit_status", "The exit status of the last run (see flask stats --help).", exit_status)
    if not results:
        return registry
    per_counter = {
        "scanned": ("stats_fix_members_scanned", "Members the last run compared, by counter."),
        "wrong": ("stats_fix_members_wrong", "Members the last run found wrong, by counter."),
        "fixed": ("stats_fix_members_fixed", "Members the last run corrected, by counter."),
        "skipped": ("stats_fix_members_skipped", "Members that kept changing and were left for the next run."),
        "failed": ("stats_fix_counter_failed", "1 when the last run could not repair the counter."),
    }
    gauges = {
        field: Gauge(name, documentation, ["counter"], registry=registry)
        for field, (name, documentation) in per_counter.items()
    }
    for result in results:
        values = {
            "scanned": result.scanned,
            "wrong": result.wrong,
            "fixed": result.added + result.changed + result.removed,
            "skipped": result.skipped,
            "failed": int(bool(result.error)),
        }
        for field, value in values.items():
            gauges[field].labels(counter=result.counter).set(value)
    return registry


def push_run(url, *, shard=None, timeout=10.0, **outcome):
    """Push the metrics of one run (see :func:`registry_for`); raise OSError when the push fails."""
    grouping_key = {"shard": str(shard)} if shard is not None else None
    registry = registry_for(**outcome)
    pushadd_to_gateway(check_url(url), job=JOB, registry=registry, grouping_key=grouping_key, timeout=timeout)
