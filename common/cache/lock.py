"""A Redis lock so that two repair runs never interleave.

The lock holds a random token and a TTL; a background thread renews it while the run
goes on, and release deletes it only if the token is still ours. A crashed run's lock
simply expires.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from redis.exceptions import RedisError

from common.exceptions import LockHeld, LockLost

log = logging.getLogger(__name__)

LOCK_KEY = "lock:stats:fix"

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RunLock:
    """Hold ``key`` for the duration of a ``with`` block, renewing it every ttl/3."""

    def __init__(self, redis, key: str = LOCK_KEY, ttl: float = 60.0, holder: str | None = None):
        self.redis = redis
        self.key = key
        self.ttl_ms = int(ttl * 1000)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.value = f"{self.holder} {uuid.uuid4().hex}"
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._done = threading.Event()
        self._lost = threading.Event()
        self._thread = None

    def acquire(self):
        """Take the lock or raise :class:`LockHeld` naming the current holder."""
        if not self.redis.set(self.key, self.value, nx=True, px=self.ttl_ms):
            current = self.redis.get(self.key) or ""
            if isinstance(current, bytes):
                current = current.decode()
            raise LockHeld(current.split(" ")[0] or "unknown", self.redis.pttl(self.key))
        self._thread = threading.Thread(target=self._keep, name="stats-lock", daemon=True)
        self._thread.start()
        return self

    def check(self):
        """Raise :class:`LockLost` if renewing the lock failed."""
        if self._lost.is_set():
            raise LockLost(f"lost the lock {self.key!r} (expired or taken over); stopping")

    def release(self):
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._release(keys=[self.key], args=[self.value])
        except RedisError as exc:
            log.warning("could not release %s (it will expire): %s", self.key, exc)

    def _keep(self):
        interval = self.ttl_ms / 3000
        while not self._done.wait(interval):
            try:
                if not self._renew(keys=[self.key], args=[self.value, self.ttl_ms]):
                    self._lost.set()
                    return
            except RedisError as exc:
                log.warning("could not renew %s: %s", self.key, exc)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
