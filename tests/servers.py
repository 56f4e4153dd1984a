"""Servers a test owns on loopback: redis-server, a sentinel, a Pushgateway, a TCP proxy.

Each binds a free port, lives in the test's tmp dir and is stopped by the test. A
missing binary fails the test (CI installs them in .ci/run): nothing is skipped.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import redis as redis_py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout=15.0, interval=0.01, what="condition"):
    """Poll ``condition`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def binary(name) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed; .ci/run installs it (apt-get install {name})")
    return path


class RedisServer:
    """A redis-server on a free port; with ``durable`` every write is fsynced to an AOF, so
    a SIGKILLed server comes back with exactly what it acknowledged."""

    def __init__(self, directory, durable=False, port=None, extra=(), username=None, password=None):
        self.dir = str(directory)
        self.port = port or free_port()
        self.durable = durable
        self.extra = list(extra)
        self.username, self.password = username, password  # the test's own client logs in as this user
        self.proc = None
        os.makedirs(self.dir, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, db=0) -> redis_py.Redis:
        return redis_py.Redis(
            port=self.port,
            db=db,
            username=self.username,
            password=self.password,
            decode_responses=True,
            socket_timeout=5,
        )

    def start(self):
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [
                binary("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--save",
                "",
                *persistence,
                "--logfile",
                "redis.log",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        wait_until(lambda: _pings(client), what=f"redis-server on port {self.port}")
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    stop = kill


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis_py.RedisError:
        return False


class Sentinel:
    """A redis-server --sentinel monitoring ``master`` as ``name``."""

    def __init__(self, directory, master_port, name="mymaster"):
        self.dir = str(directory)
        self.port = free_port()
        self.name = name
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "sentinel.conf")
        with open(self.config, "w") as f:
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {name} 127.0.0.1 {master_port} 1\n"
                f"sentinel down-after-milliseconds {name} 1000\n"
                f"sentinel failover-timeout {name} 10000\n"
            )
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [binary("redis-server"), self.config, "--sentinel", "--logfile", "sentinel.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        wait_until(lambda: _pings(client), what=f"sentinel on port {self.port}")
        return self

    def client(self) -> redis_py.Redis:
        return redis_py.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def master_port(self) -> int:
        """The master's port once a failover has completed (+switch-master), which is what
        clients asking SENTINEL MASTERS see; get-master-addr-by-name answers earlier."""
        state = self.client().execute_command("SENTINEL", "MASTER", self.name)
        if isinstance(state, list):
            state = dict(zip(state[::2], state[1::2]))
        return int(state["port"])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


class Pushgateway:
    """Debian's prometheus-pushgateway on a free loopback port, in memory only."""

    def __init__(self, directory):
        self.dir = str(directory)
        self.port = free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.log = open(os.path.join(self.dir, "pushgateway.log"), "w")  # noqa: SIM115 (kept open: closed in stop())
        self.proc = subprocess.Popen(
            [binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{self.port}", "--persistence.file="],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, what=f"the Pushgateway on port {self.port}")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def metrics(self) -> dict:
        """Return {(name, frozenset(labels)): value} of every sample the gateway exposes."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


class TcpProxy:
    """Forward a free loopback port to ``target``; :meth:`cut` drops every connection and
    refuses new ones, as when a server or the network goes away."""

    def __init__(self, target_port, target_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        self.lock = threading.Lock()
        self.cut_ = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.cut_.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.cut_.is_set():
                    client.close()
                    upstream.close()
                    return
                self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self):
        self.cut_.set()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def flask_env(database_url, redis_url, **extra) -> dict:
    """The environment of a ``flask`` subprocess on the given servers."""
    drop = (
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_SENTINELS",
        "REDIS_SENTINEL_SERVICE_NAME",
        "PUSHGATEWAY_URL",
        "LOG_FORMAT",
        "STATS_LOCK_TTL",
        "STATS_BATCH_SIZE",
        "STATS_JOBS",
        "STATS_SCHEDULE",
        "STATS_TIMEZONE",
    )
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(FLASK_APP="manage", DATABASE_URL=database_url, STATS_SETTLE_SECONDS="0.02")  # as TestConfig
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def flask_cmd(*args) -> list:
    return [FLASK, *args]
