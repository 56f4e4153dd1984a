"""A progress bar per counter on a terminal: members done of the estimate, rate and ETA.

Fed by the engine's ``on_progress(key, members)``. The estimate is the counter's ZCARD
when its reconcile pass starts. Nothing is drawn unless stderr is a terminal and logs
are text: never in JSON or in output going to a file or a pipe.
"""

import sys
import threading
import time

from flask import current_app
from redis.exceptions import RedisError

from toutiao.config import SettingError
from toutiao.logs import is_terminal, resolve_format

_WIDTH = 24


class Progress:
    """Draw one line per counter on ``stream``; use as a context manager around the run."""

    def __init__(self, redis, stream, interval=0.1):
        self.redis = redis
        self.stream = stream
        self.interval = interval
        self._counters = {}  # key -> [done, estimate, started]
        self._drawn = 0.0
        # The engine says nothing when a counter starts: take the end of the previous one
        # (or the start of the run) as its start, so the rate counts the first batch too.
        self._boundary = time.monotonic()
        self._open = False  # a line is drawn without its newline
        self._lock = threading.Lock()

    @classmethod
    def for_terminal(cls, redis, enabled=True, stream=None):
        """Return a Progress when drawing is wanted here, else one that draws nothing."""
        stream = stream or sys.stderr
        if enabled and is_terminal(stream) and _log_format() == "text":
            return cls(redis, stream)
        return _Silent()

    def advance(self, key, members):
        with self._lock:
            state = self._counters.get(key)
            if state is None:
                state = self._counters[key] = [0, self._estimate(key), self._boundary]
            state[0] += members
            now = time.monotonic()
            if now - self._drawn >= self.interval:
                self._draw(key, state, now, end="")

    def done(self, key):
        """Draw the counter's last state and end its line."""
        with self._lock:
            state = self._counters.pop(key, None)
            self._boundary = time.monotonic()
            if state is not None:
                state[1] = state[0]  # the estimate was ZCARD; now the real count is known
                self._draw(key, state, time.monotonic(), end="\n")

    def close(self):
        with self._lock:
            if self._open:
                self.stream.write("\n")
                self.stream.flush()
                self._open = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _estimate(self, key):
        try:
            return int(self.redis.zcard(key))
        except (RedisError, OSError):
            return 0  # the run itself will report the outage; the bar just has no total

    def _draw(self, key, state, now, end):
        done, estimate, started = state
        total = max(estimate, done)
        elapsed = max(now - started, 1e-6)
        rate = done / elapsed
        filled = int(_WIDTH * done / total) if total else _WIDTH
        eta = _clock((total - done) / rate) if rate and total > done else "0:00:00"
        percent = 100 * done / total if total else 100
        line = (
            f"{key:<26} [{'#' * filled}{'.' * (_WIDTH - filled)}] {done}/{total} {percent:3.0f}%"
            f" {rate:,.0f}/s ETA {eta}"
        )
        self.stream.write("\r" + line + "\x1b[K" + end)
        self.stream.flush()
        self._drawn = now
        self._open = not end


class _Silent:
    def advance(self, key, members):
        pass

    def done(self, key):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _clock(seconds) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _log_format():
    try:
        return resolve_format(current_app.config.get("LOG_FORMAT"))
    except SettingError:
        return "json"  # the command refuses a bad LOG_FORMAT before it runs
