"""The web app under a real gunicorn on loopback, with gunicorn.conf.py: slow clients do not
starve it, request heads and bodies are bounded, and it does not start without JWT_SECRET."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from common.models import Relation, User
from tests.conftest import DATABASE_URL, REDIS_URL
from tests.servers import ROOT, free_port, wait_until
from tests.tokens import bearer
from toutiao import tokens
from toutiao.config import TestConfig as _TestConfig

GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
SECRET = _TestConfig().JWT_SECRET
SLOW_CLIENTS = 20
#: What a normal request gets to answer while the slow clients trickle.
DEADLINE = 1.0


class Gunicorn:
    """gunicorn serving ``toutiao:create_app()`` from the repository root (so it reads
    gunicorn.conf.py), one worker, on a free loopback port."""

    def __init__(self, tmp_path, *args, env=None):
        self.port = free_port()
        self.log = tmp_path / f"gunicorn-{self.port}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "DATABASE_", "REDIS_"))}
        environ |= {"DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL, "JWT_SECRET": SECRET}
        environ |= {"WEB_CONCURRENCY": "1", "LOG_FORMAT": "text"} | (env or {})
        self.env = {k: v for k, v in environ.items() if v is not None}
        self.args = [GUNICORN, f"--bind=127.0.0.1:{self.port}", *args, "toutiao:create_app()"]
        self.proc = None

    def start(self):
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self.answers, timeout=30, what=f"gunicorn on port {self.port}")
        return self

    def answers(self):
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return request(self.port, "GET", "/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def request(port, method, path, body=None, headers=None, timeout=DEADLINE):
    """Send one request on a new connection; return (status, body), raising on a timeout."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class SlowClients:
    """Connections that each send a request head one byte every ``interval`` and never finish it."""

    def __init__(self, port, count=SLOW_CLIENTS, interval=0.1):
        self.port, self.count, self.interval = port, count, interval
        self.stop = threading.Event()
        self.sent = [0] * count
        self.threads = [threading.Thread(target=self._trickle, args=(i,), daemon=True) for i in range(count)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        wait_until(lambda: all(n >= 3 for n in self.sent), timeout=10, what="every slow client to send")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)

    def _trickle(self, i):
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: " + b"a" * 4000
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            for byte in head:
                if self.stop.is_set():
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return
                self.sent[i] += 1
                time.sleep(self.interval)


@pytest.fixture
def server(tmp_path, engine, redis):
    """gunicorn with users 1 and 2 in the database."""
    with Session(engine) as conn, conn.begin():
        conn.execute(insert(User), [{"id": i, "mobile": f"1380000000{i}", "name": f"u{i}"} for i in (1, 2)])
    gunicorn = Gunicorn(tmp_path).start()
    yield gunicorn
    gunicorn.stop()


def timed(port, *args, **kwargs):
    started = time.monotonic()
    status, body = request(port, *args, **kwargs)
    return status, body, time.monotonic() - started


def test_a_request_answers_within_a_second_while_20_clients_trickle(server, engine):
    token = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "flask"), "auth", "token", "1"],
        cwd=ROOT,
        env=server.env | {"FLASK_APP": "manage"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with SlowClients(server.port) as slow:
        ready = timed(server.port, "GET", "/readyz")
        write = timed(
            server.port,
            "POST",
            "/v1_0/user/followings",
            body=b'{"target": 2}',
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert all(thread.is_alive() for thread in slow.threads), "a slow client gave up: the test proves nothing"
    print(
        f"behind {SLOW_CLIENTS} trickling clients: /readyz {ready[2] * 1000:.1f} ms, a follow {write[2] * 1000:.1f} ms"
    )
    assert ready[0] == 200 and ready[2] < DEADLINE
    assert write[0] == 201 and write[2] < DEADLINE, write[1]
    with engine.connect() as conn:
        assert conn.execute(select(Relation.user_id, Relation.target_user_id)).all() == [(1, 2)]


def test_a_sync_worker_gets_no_answer_within_a_second_behind_the_same_slow_clients(tmp_path, engine, redis):
    """The same measurement against gunicorn's default worker: it fails, so the test above can."""
    gunicorn = Gunicorn(tmp_path, "--worker-class=sync", "--threads=1").start()
    try:
        with SlowClients(gunicorn.port), pytest.raises(TimeoutError):
            request(gunicorn.port, "GET", "/healthz")
    finally:
        gunicorn.stop()


def test_a_request_line_over_the_limit_is_refused(server):
    status, _ = request(server.port, "GET", "/v1_0/articles/counts?ids=" + "1," * 2100 + "1")
    assert status == 400
    assert request(server.port, "GET", "/v1_0/articles/counts?ids=" + ",".join(["1"] * 100))[0] == 200


def test_too_many_or_too_large_header_fields_are_431(server):
    many = {f"X-Field-{i}": "1" for i in range(60)}
    assert request(server.port, "GET", "/healthz", headers=many)[0] == 431
    assert request(server.port, "GET", "/healthz", headers={"X-Big": "a" * 9000})[0] == 431
    assert request(server.port, "GET", "/healthz", headers={f"X-Field-{i}": "1" for i in range(40)})[0] == 200


def test_a_chunked_body_over_max_content_length_is_413(server):
    """No Content-Length to refuse up front: the body is cut off as it is read."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    chunks = (b"x" * 1024 for _ in range(64))
    conn.request("POST", "/v1_0/comments", body=chunks, encode_chunked=True, headers=auth_headers())
    response = conn.getresponse()
    assert response.status == 413, response.read()
    assert b"16384 bytes" in response.read()
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(
        "POST", "/v1_0/user/followings", body=iter([b'{"target"', b": 2}"]), encode_chunked=True, headers=auth_headers()
    )
    assert conn.getresponse().status == 201
    conn.close()


def auth_headers():
    return bearer(tokens.mint(SECRET, 1, timedelta(seconds=60))) | {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "env, named",
    [
        ({"JWT_SECRET": None}, "JWT_SECRET"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET"),
        ({"JWT_EXPIRY_HOURS": "0"}, "JWT_EXPIRY_HOURS"),
        ({"MAX_CONTENT_LENGTH": "lots"}, "MAX_CONTENT_LENGTH"),
    ],
)
def test_gunicorn_does_not_start_with_an_unusable_web_setting(tmp_path, env, named):
    gunicorn = Gunicorn(tmp_path, env=env)
    result = subprocess.run(gunicorn.args, cwd=ROOT, env=gunicorn.env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert named in result.stderr
