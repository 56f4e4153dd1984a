"""Log handling: one line per record, JSON for machines or text for people.

``LOG_FORMAT`` is ``json``, ``text`` or ``auto`` (the default): JSON when stdout is not a
terminal (cron, systemd, Kubernetes), text on a terminal. Structured values travel in
``extra=fields(...)`` and become JSON keys or ``key=value`` pairs. Passwords in URLs
are masked in every line.
"""

import json
import logging
import re
import sys
from datetime import datetime, timezone

from toutiao.config import SettingError

FORMATS = ("auto", "json", "text")


_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>]*)")


def _mask_userinfo(match) -> str:
    # The userinfo ends at the last '@': a password may hold '@', ':', '/' or '%' unencoded
    # (redis-py accepts redis://:p@ss@host), so no earlier '@' can be trusted to end it.
    # An '@' in a path or query masks more than the userinfo, never less.
    _, at, after = match["rest"].rpartition("@")
    return f"{match['scheme']}***@{after}" if at else match[0]


def mask_url(url) -> str:
    """Hide the whole userinfo (user and password) of every URL in a text so it can be printed and logged."""
    return _URL.sub(_mask_userinfo, str(url))


def fields(**values) -> dict:
    """Return the ``extra`` for a log call carrying structured ``values``."""
    return {"fields": values}


def resolve_format(setting, stream=None) -> str:
    """Return ``json`` or ``text`` for a LOG_FORMAT value; raise SettingError if it is not one."""
    value = (setting or "auto").strip().lower()
    if value not in FORMATS:
        raise SettingError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, got {setting!r}")
    if value == "auto":
        stream = stream or sys.stdout
        return "text" if is_terminal(stream) else "json"
    return value


def is_terminal(stream) -> bool:
    """Tell whether ``stream`` is a terminal (False for files, pipes and captured output)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message and its fields."""

    def format(self, record):
        data = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_url(record.getMessage()),
        }
        for name, value in getattr(record, "fields", {}).items():
            data[name] = mask_url(value) if isinstance(value, str) else value
        if record.exc_info:
            data["exception"] = mask_url(self.formatException(record.exc_info))
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """Format a record as ``time LEVEL logger: message key=value ...``."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record):
        line = super().format(record)
        pairs = [f"{name}={_text_value(value)}" for name, value in getattr(record, "fields", {}).items()]
        return mask_url(" ".join([line, *pairs]))


def _text_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value) or "-"
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in '"=' for c in text) else text


class _Handler(logging.StreamHandler):
    """The app's handler on the root logger, told apart from handlers others installed."""


def configure_logging(setting) -> str:
    """Install (or refit) the app's stderr handler; return the format chosen.

    Leaves logging alone when something else (pytest, a host application) already
    configured the root logger. An unknown LOG_FORMAT falls back to ``auto`` here so the
    web app still starts; the stats commands refuse it with exit 2.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if len(ours) != len(root.handlers):
        return ""
    try:
        chosen = resolve_format(setting)
        problem = ""
    except SettingError as exc:
        chosen, problem = resolve_format("auto"), str(exc)
    handler = ours[0] if ours else _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    if not ours:
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    if problem:
        logging.getLogger(__name__).warning("%s; using auto", problem)
    return chosen
