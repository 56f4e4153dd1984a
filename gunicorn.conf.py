"""gunicorn settings for the web app, read from the working directory (/app in the image).

Workers come from WEB_CONCURRENCY (gunicorn reads it itself). No buffering proxy stands in
front of the pods, so gunicorn bounds what one client can hold on its own.
"""

from toutiao.config import Config, SettingError
from toutiao.resources import check_web_settings

# Slow clients. A sync worker serves one connection at a time: one client trickling its
# headers blocks it, and as many such clients as workers take the app down (measured with
# tests/test_gunicorn.py on loopback, one worker: behind 20 trickling clients /readyz got
# no answer within 1 s). A gthread worker hands a connection to a thread once its first
# bytes arrive, so a trickling client holds one thread, not the worker: with 40 threads,
# /readyz behind 20 trickling clients answered in 2.5 ms median, 3.7 ms worst of 30 (alone:
# 2.3 ms); behind 39, 2.1 ms; behind 45 (more than the threads) it timed out. So a pod
# survives up to threads x WEB_CONCURRENCY - 1 slow clients; beyond, a buffering proxy is
# needed. gthread rather than gevent: no monkey-patching under PyMySQL, redis-py and the
# write path's row locks and retries, and no new dependency.
worker_class = "gthread"
threads = 40
# Connections a worker keeps open at once (idle keep-alive ones included).
worker_connections = 200

# A worker silent for this long is killed and replaced; STATS_INFLIGHT_TTL (300 s) must
# stay above it (an announced increment outlives every request).
timeout = 30
# SIGTERM: requests in flight get this long to finish; below Kubernetes' 30 s grace period.
graceful_timeout = 25
# Seconds an idle keep-alive connection is kept.
keepalive = 5

# Request head limits: the API's longest line is `/v1_0/articles/counts?ids=` with 100 ids
# (about 2,100 bytes); a bearer token is under 300 bytes. Bodies: MAX_CONTENT_LENGTH.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190


def on_starting(server):
    """Refuse to start the web app without usable web settings (JWT_SECRET on real servers)."""
    try:
        check_web_settings(Config().__dict__)
    except SettingError as exc:
        raise RuntimeError(str(exc)) from None
