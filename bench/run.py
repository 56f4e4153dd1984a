"""Benchmark the old repair job, and the old job plus ours' query hints, against ``flask stats fix``.

One run, against a private redis-server (never the shared one), of every ``--modes`` on
every ``--peers``:

1. generate the bench database at ``--users`` scale and ``--shape`` (``bench/generate.py``),
   unless it already holds that scale and shape;
2. for each mode, in this order, each peer runs, then ours, every one from the same
   starting Redis state (the mode's, made anew before each run); after every run of ours,
   ``flask stats check`` must exit 0:

   - ``empty``: an empty Redis. The correct counters ours leaves (check exit 0) are kept
     aside (COPY to db 1) as the baseline of the next modes;
   - ``quiet``: the baseline, no drift: every counter already right;
   - ``drift-0.01``, ``drift-1``, ``drift-10``: the baseline, then 0.01%, 1% or 10% of
     every counter's members drifted (of every 10,000 members at 1%: 60 wrong scores, 30
     deleted, 10 stale ids added; scaled by the percentage, at least one stale id per
     counter), the same members for the same ``--seed``;
   - ``restart``: Redis emptied as after a restart, then live traffic (``bench/traffic.py``
     in a process of its own, 8 writers through the app's own write path) recreating keys
     for ~2 s before ours starts, during ours, and stopped after ours exits; then the
     check. Peers do not run in this mode: it measures ours under traffic. The traffic
     commits rows, so the run marks the database changed and the next run generates it
     anew (``bench.generate.mark_changed``).

   The baseline of a run without ``empty`` (or whose ``empty`` check failed) is made by
   an unmeasured run of the old way plus hints (the same counters, sooner).

The peers (``bench/oldway.py``): ``old``, the original job ported faithfully; ``hints``,
the same job with ours' stream query (scan hints, member order), session tmp table sizes
and a server-side cursor.

Each contender runs as a subprocess under ``/usr/bin/time`` (peak RSS, wall time) while
another process PINGs the private Redis in a loop (worst and p99 latency); ``INFO
commandstats`` and the server's dirty counter are read before and after to count the
commands sent and the writes. With ``--profile``, ours runs once more per mode (from the
same state, unmeasured) under py-spy, and the functions it spends most samples in are
reported. Writes ``bench/RESULTS.md`` and ``bench/data/results-USERS-SHAPE.json``.

    .venv/bin/python -m bench.run --users 1000000
    .venv/bin/python -m bench.run --users 20000 --database toutiao_bench_small \\
        --results bench/data/RESULTS-smoke.md   # a smoke run that leaves the 1M database alone
    .venv/bin/python -m bench.run --users 20000 --shape loguniform --modes empty,drift-1,restart
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zlib
from array import array
from collections import Counter
from pathlib import Path

import psutil
import pymysql
import redis

from bench import generate
from bench.generate import DATA, DATABASE, DEFAULT_SHAPE, SHAPES
from common.cache.statistic import COUNTERS
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FLASK = str(Path(sys.executable).with_name("flask"))
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
TIME = shutil.which("time", path="/usr/bin") or ""

# Commands the bench itself sends (the PING loop, INFO snapshots) are not counted.
NOT_COUNTED = ("ping", "info", "latency", "config", "command", "client", "hello", "select", "dbsize")

# The measuring instruments (the PING loop and the private redis-server) run at a higher
# CPU priority when allowed, so that other work on a shared machine does not show up as
# Redis latency; both contenders get the same treatment.
INSTRUMENT_NICE = -10

#: The modes, in the order they run.
MODES = ("empty", "quiet", "drift-0.01", "drift-1", "drift-10", "restart")
#: The drift of each drifting mode, as a factor of DRIFT_PER_10K.
DRIFT_FACTORS = {"drift-0.01": 0.01, "drift-1": 1, "drift-10": 10}
#: The peers ours is compared with, and how each is run.
PEERS = {"old": ["-m", "bench.oldway"], "hints": ["-m", "bench.oldway", "--hints"]}

MODE_TITLES = {
    "empty": "From an empty Redis",
    "quiet": "Quiet: every counter already right",
    "drift-0.01": "At 0.01% drift",
    "drift-1": "At 1% drift",
    "drift-10": "At 10% drift",
    "restart": "After a restart, under live traffic",
}

# Drift at 1%: of 10,000 members, 60 get a wrong score, 30 are deleted, and 10 stale ids
# are added. Other drifts scale it (drift-0.01: of 1,000,000 members, 60, 30 and 10).
DRIFT_PER_10K = {"changed": 60, "deleted": 30, "stale": 10}
STALE_BASE = 10**12

# The restart mode's traffic: writer threads, and how long it runs before ours starts.
TRAFFIC_WRITERS = 8
TRAFFIC_LEAD_SECONDS = 2.0

#: Scale from which the wall-time targets against the old way apply (issue 11); below
#: it, every mode but restart must take at most SMALL_RATIO of the old way's time.
LARGE = 1_000_000
TARGETS = {
    "rss_mb": 100,
    "ping_ms": 10,
    "p99_ms": 2,
    # ours / old wall time, at LARGE users and more
    "ratio": {"empty": 0.15, "drift-1": 0.2, "drift-0.01": 0.12},
    "small_ratio": 0.6,
    # ours' wall time / ours' wall time from empty
    "vs_empty": {"drift-10": 1.2, "restart": 2.0},
}

# py-spy samples per second with --profile, and the functions shown per mode.
PROFILE_RATE = 100
PROFILE_TOP = 12
# Frames on the way to the work (the command line, threads starting, module bodies run
# by imports): left out of the profile's table; the work under them is counted.
PLUMBING = re.compile(r"^<module> |.* \((click/|flask/cli\.py|<frozen |runpy\.py|threading\.py)")

# Where a profile's samples went, by stage: a sample belongs to the stage of the innermost
# frame of its stack that one of these names (prefixes of py-spy frames), else to "other".
STAGES = (
    ("database: the streamed GROUP BYs (reader thread)", ("Stream._read ",)),
    ("database: re-counts of candidates", ("CounterRepair.counts ",)),
    ("Redis: compare batches (scores, tracking)", ("Candidates.look ", "Candidates._look ")),
    ("Redis: compare-and-set writes", ("Candidates.write ",)),
    ("Redis: rebuild (staging ZADD, swap)", ("CounterRepair.rebuild ",)),
    ("Redis: sweep for strays (ZRANGE pages)", ("CounterRepair._sweep ",)),
    ("settle: second looks at candidates", ("Candidates.settle ", "Candidates.recheck ")),
    ("catch-up: touched ids, release", ("CounterRepair.catch_up ",)),
    ("next counter begun (tracking, reap, type)", ("RepairEngine.begin_next ", "RepairEngine._prepare ")),
    ("compare in Python", ("CounterRepair._compare ", "CounterRepair.reconcile ")),
    ("lease renewal thread (waits between renewals)", ("Leases._renew_loop ",)),
    ("lock and leases", ("Leases.",)),
    ("startup: imports, app, CLI", ("ScriptInfo.load_app ", "<module> ", "main (flask/cli.py")),
)


def stage_of(frames: list) -> str:
    for frame in reversed(frames):
        for stage, prefixes in STAGES:
            if frame.startswith(prefixes):
                return stage
    return "other"


COUNTER_LINE = re.compile(
    r"counter=(?P<counter>\S+) mode=(?P<mode>\S+) scanned=(?P<scanned>\d+) wrong=(?P<wrong>\d+) "
    r"added=(?P<added>\d+) changed=(?P<changed>\d+) removed=(?P<removed>\d+) skipped=(?P<skipped>\d+) "
    r"seconds=(?P<seconds>[\d.]+)"
)


# -- the private Redis -----------------------------------------------------------------


def raise_priority(pid) -> bool:
    """Renice a measuring process to INSTRUMENT_NICE; return whether it was allowed."""
    try:
        psutil.Process(pid).nice(INSTRUMENT_NICE)
        return True
    except (psutil.AccessDenied, PermissionError):
        return False


class PrivateRedis:
    """A redis-server of our own on a free loopback port, without persistence."""

    def __init__(self):
        self.port = free_port()
        self.dir = DATA / f"redis-{self.port}"
        self.proc = None

    def __enter__(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--latency-monitor-threshold",
                "1",
                "--slowlog-log-slower-than",
                "5000",
                "--slowlog-max-len",
                "1000",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.reniced = raise_priority(self.proc.pid)
        client = self.client()
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.dir}/redis.log")

    def __exit__(self, *exc):
        with contextlib.suppress(redis.RedisError):
            self.client().shutdown(nosave=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, db=0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, decode_responses=True)


# -- measuring ---------------------------------------------------------------------------


def ping_loop(port, stop, results, interval):
    """PING until told to stop; report the worst and the p99 latency in milliseconds."""
    raise_priority(os.getpid())
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60)
    client.ping()
    latencies = array("d")
    clock = time.perf_counter
    while not stop.is_set():
        started = clock()
        client.ping()
        latencies.append(clock() - started)
        time.sleep(interval)
    ordered = sorted(latencies)
    n = len(ordered)
    results.put(
        {
            "pings": n,
            "worst_ms": round(ordered[-1] * 1000, 2) if n else None,
            "p99_ms": round(ordered[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
            "p999_ms": round(ordered[min(n - 1, int(n * 0.999))] * 1000, 2) if n else None,
            "over_10ms": sum(1 for x in ordered if x > 0.010),
        }
    )


class Isolation:
    """With ``--redis-cpu N``: the private redis-server and the PINGing client on CPU N,
    everything else (this process and what it starts, MariaDB's threads) on the other CPUs,
    for the duration of a ``with`` block; MariaDB's threads get their CPUs back after.
    What Redis does to the PINGs then shows apart from what the machine's scheduler does."""

    cpu = None  # the CPU of Redis and the pinger while a block runs

    def __init__(self, cpu: int, redis_pid: int):
        self.mine = {cpu}
        self.others = set(os.sched_getaffinity(0)) - self.mine
        if not self.others:
            raise SystemExit(f"--redis-cpu {cpu}: no other CPU is left for the rest")
        self.redis_pid = redis_pid
        self.saved = {}

    @staticmethod
    def _threads(name):
        for proc in psutil.process_iter(["name"]):
            if proc.info["name"] == name:
                yield from (thread.id for thread in proc.threads())

    def __enter__(self):
        for thread in psutil.Process(self.redis_pid).threads():
            os.sched_setaffinity(thread.id, self.mine)
        for thread in self._threads("mariadbd"):
            self.saved[thread] = os.sched_getaffinity(thread)
            os.sched_setaffinity(thread, self.others)
        os.sched_setaffinity(0, self.others)
        Isolation.cpu = next(iter(self.mine))
        return self

    def __exit__(self, *exc):
        Isolation.cpu = None
        default = self.mine | self.others
        for thread in self._threads("mariadbd"):  # threads started meanwhile included
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(thread, self.saved.get(thread, default))
        os.sched_setaffinity(0, default)


class Pinger:
    """A separate process PINGing Redis for the duration of a ``with`` block."""

    def __init__(self, port, interval=0.001):
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.results = ctx.Queue()
        self.proc = ctx.Process(target=ping_loop, args=(port, self.stop, self.results, interval), daemon=True)

    def __enter__(self):
        self.proc.start()
        if Isolation.cpu is not None:
            os.sched_setaffinity(self.proc.pid, {Isolation.cpu})
        time.sleep(1.0)  # spawn and a baseline before the contender starts
        return self

    def __exit__(self, *exc):
        time.sleep(0.2)
        self.stop.set()
        self.summary = self.results.get(timeout=60)
        self.proc.join(timeout=10)


#: Drifted ids a check lists per counter (``--examples``), to compare with ours' skipped ids.
CHECK_EXAMPLES = 100

#: Seconds the machine's own PING latency is measured for, idle and with every core busy.
FLOOR_SECONDS = 15.0


def _spin(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def machine_floor(port, seconds=FLOOR_SECONDS) -> dict:
    """PING the private Redis with nothing else running, then with a busy loop on every core
    (at nice 0, as the contenders and MariaDB run): what this machine alone does to the PING
    figures. A hypervisor's steal or the scheduler shows here, not in a contender's cost."""
    floor = {}
    with Pinger(port) as idle:
        time.sleep(seconds)
    floor["idle"] = idle.summary
    ctx = multiprocessing.get_context("spawn")
    with Pinger(port) as busy:
        spinners = [ctx.Process(target=_spin, args=(seconds,), daemon=True) for _ in range(os.cpu_count() or 1)]
        for spinner in spinners:
            spinner.start()
        for spinner in spinners:
            spinner.join()
    floor["busy"] = busy.summary
    floor["seconds"] = seconds
    return floor


def _short(command) -> str:
    text = command.decode("utf-8", "replace") if isinstance(command, bytes) else str(command)
    return text if len(text) <= 80 else text[:77] + "..."


def command_counts(client) -> dict:
    stats = client.info("commandstats")
    return {name[len("cmdstat_") :]: value["calls"] for name, value in stats.items()}


def write_commands(client) -> set:
    names = set()
    for name, info in client.command().items():
        if "write" in info.get("flags", []):
            names.add(name)
        for sub in info.get("subcommands") or []:
            # a subcommand reply is a flat list: name, arity, flags, ...
            if isinstance(sub, list) and len(sub) > 2 and "write" in sub[2]:
                names.add(sub[0])
    return names


def redis_diff(before: dict, after: dict, writes: set) -> dict:
    calls = {}
    for name, count in after.items():
        delta = count - before.get(name, 0)
        if delta and name.split("|")[0] not in NOT_COUNTED:
            calls[name] = delta
    return {
        "commands": sum(calls.values()),
        "write_commands": sum(n for name, n in calls.items() if name in writes),
        "by_command": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
    }


def contender_env(redis_url, database_url) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STATS_", "TEST_", "FLASK_"))}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, FLASK_APP="manage", PYTHONUNBUFFERED="1")
    return env


def measured(argv, env, log_prefix, timeout, cwd=ROOT) -> dict:
    """Run a contender; return its exit code, wall seconds, peak RSS and parsed JSON stdout.

    A contender still running after ``timeout`` seconds gets SIGTERM (the fix stops after
    its current batch), then SIGKILL 60 s later; its exit is then reported as "timeout".
    """
    timefile = Path(f"{log_prefix}.time")
    timefile.unlink(missing_ok=True)
    if TIME:
        wrapped = [TIME, "-f", "%M", "-o", str(timefile)] + argv
    else:  # the peak RSS of the child as seen by a small wrapper
        wrapped = [
            PYTHON,
            "-c",
            "import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)",
            str(timefile),
        ] + argv
    timed_out = False
    with open(f"{log_prefix}.out", "w") as out, open(f"{log_prefix}.err", "w") as err:
        started = time.monotonic()
        proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=out, stderr=err)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            # Signal the contender, not the wrapper, so that the wrapper still reports.
            children = psutil.Process(proc.pid).children(recursive=True)
            for child in children:
                child.terminate()
            _, alive = psutil.wait_procs(children, timeout=60)
            for child in alive:
                child.kill()
            proc.wait()
        wall = time.monotonic() - started
    try:
        rss_mb = round(int(timefile.read_text().split()[-1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        rss_mb = None
    stdout = Path(f"{log_prefix}.out").read_text()
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        report = None
    # The fix logs a line per finished counter: kept for runs stopped before their report.
    logged = [m.groupdict() for m in COUNTER_LINE.finditer(Path(f"{log_prefix}.err").read_text())]
    return {
        "exit": "timeout" if timed_out else proc.returncode,
        "wall_s": round(wall, 2),
        "rss_mb": rss_mb,
        "report": report,
        "counters_logged": logged,
    }


def run_contender(name, argv, server, env, log_prefix, timeout, writes, cwd=ROOT) -> dict:
    client = server.client()
    client.execute_command("LATENCY", "RESET")
    client.slowlog_reset()
    before = command_counts(client)
    dirty_before = client.info("persistence")["rdb_changes_since_last_save"]
    with Pinger(server.port) as pinger:
        result = measured(argv, env, log_prefix, timeout, cwd)
    after = command_counts(client)
    dirty_after = client.info("persistence")["rdb_changes_since_last_save"]
    events = client.execute_command("LATENCY", "LATEST") or []
    slow = sorted(client.slowlog_get(1000), key=lambda e: -e["duration"])
    result["ping"] = pinger.summary
    result["redis"] = redis_diff(before, after, writes)
    result["redis"]["keyspace_changes"] = dirty_after - dirty_before
    result["redis"]["server_stall_ms"] = max((int(e[3]) for e in events), default=0)
    result["redis"]["latency_events"] = {e[0]: int(e[3]) for e in events}
    # Commands that took 5 ms or more inside Redis, longest first.
    result["redis"]["slow_commands"] = [
        {"ms": round(e["duration"] / 1000, 1), "command": _short(e["command"])} for e in slow[:10]
    ]
    result["redis"]["slow_command_count"] = len(slow)
    result["name"] = name
    return result


# -- scenarios ---------------------------------------------------------------------------


def keys_present(client) -> list:
    return [c.key for c in COUNTERS if client.exists(c.key)]


def save_baseline(server):
    client = server.client()
    server.client(db=1).flushdb()
    for key in keys_present(client):
        client.copy(key, key, destination_db=1, replace=True)


def restore_baseline(server):
    client, saved = server.client(), server.client(db=1)
    client.flushdb()
    for key in keys_present(saved):
        saved.copy(key, key, destination_db=0, replace=True)


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def drift(client, seed, stale_ids="in-range", factor=1.0) -> dict:
    """Drift ``factor`` percent of every counter's members; the same members for the same seed.

    Of every 1,000,000 members, ``6,000 * factor`` get a wrong score, ``3,000 * factor``
    are deleted, and ``1,000 * factor`` stale ids are added (at least one per counter). A
    member drifts at 1% exactly when its 1 in 10,000 draw says so; finer drifts split that
    draw a hundred ways. Stale members are ids the database does not count: by default
    ids within the range of the counter's members (as a deleted article's would be); with
    ``stale_ids="high"``, ids above every member, from 10**12 up.
    """
    per_million = {name: round(n * factor * 100) for name, n in DRIFT_PER_10K.items()}
    changed_below = per_million["changed"]
    deleted_below = changed_below + per_million["deleted"]
    drifted = {}
    for counter in COUNTERS:
        key = counter.key
        changes, deletes, present = {}, [], set()
        for member, score in client.zscan_iter(key, count=1000):
            present.add(int(member))
            h = zlib.crc32(f"{seed}:{key}:{member}".encode())
            coarse = (h % 10_000) * 100
            if coarse >= deleted_below:
                continue
            pick = coarse + zlib.crc32(f"{seed}:{key}:{member}:fine".encode()) % 100
            if pick < changed_below:
                delta = (1, 2, 3, -1, -2)[(h >> 16) % 5]
                changes[member] = score + delta if score + delta > 0 else score + 1
            elif pick < deleted_below:
                deletes.append(member)
        wanted = max(1, len(present) * per_million["stale"] // 1_000_000)
        stale = {}
        if stale_ids == "high":
            base = max(STALE_BASE, max(present, default=0) + 1)
            stale = {str(base + i): 1 + i % 5 for i in range(wanted)}
        else:
            low, top, k = min(present, default=1), max(present, default=wanted * 2), 0
            while len(stale) < wanted and k < 100 * wanted:
                candidate = low + _hash64(f"{seed}:{key}:stale:{k}") % (top - low + 1)
                if candidate not in present and str(candidate) not in stale:
                    stale[str(candidate)] = 1 + k % 5
                k += 1
        pipe = client.pipeline(transaction=False)
        items = list(changes.items())
        for start in range(0, len(items), 1000):
            pipe.zadd(key, dict(items[start : start + 1000]))
        for start in range(0, len(deletes), 1000):
            pipe.zrem(key, *deletes[start : start + 1000])
        if stale:
            pipe.zadd(key, stale)
        pipe.execute()
        drifted[key] = {"members": len(present), "changed": len(changes), "deleted": len(deletes), "stale": len(stale)}
    return drifted


def check(env, log_prefix, jobs, timeout) -> dict:
    """Run ``flask stats check``: exit 0 means every counter equals the database."""
    started = time.monotonic()
    with open(f"{log_prefix}.out", "w") as out, open(f"{log_prefix}.err", "w") as err:
        try:
            proc = subprocess.run(
                [FLASK, "stats", "check", "--json", "--jobs", str(jobs), "--examples", str(CHECK_EXAMPLES)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
                timeout=timeout,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    result = {"exit": code, "seconds": round(time.monotonic() - started, 1)}
    if code == 3:
        result["drifted"] = drifted_ids(Path(f"{log_prefix}.out").read_text())
    return result


def drifted_ids(stdout: str) -> dict:
    """``{counter: [ids]}`` that a check's JSON report found wrong (up to CHECK_EXAMPLES each)."""
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        return {}
    return {c["counter"]: sorted(e["id"] for e in c.get("examples", [])) for c in report["counters"] if c["wrong"]}


def check_note(run) -> str:
    """Say whether a check's drift is exactly the ids ours reported skipped (left for the next run)."""
    drifted = (run.get("check") or {}).get("drifted")
    if not drifted:
        return ""
    counters = (run.get("report") or {}).get("counters", [])
    skipped = {c["counter"]: sorted(c.get("skipped_ids", [])) for c in counters if c["skipped"]}
    n = sum(map(len, drifted.values()))
    if drifted == skipped:
        return f"its {n} drifted ids are exactly the ids ours reported skipped ({_ids(drifted)})"
    if all(set(ids) <= set(skipped.get(counter, ())) for counter, ids in drifted.items()):
        return (
            f"its {n} drifted ids ({_ids(drifted)}) are among the {sum(map(len, skipped.values()))} "
            f"ours reported skipped ({_ids(skipped)})"
        )
    return f"{n} drifted ids ({_ids(drifted)}); ours reported skipped: {_ids(skipped) or 'none'}"


def _ids(by_counter: dict) -> str:
    return "; ".join(f"`{counter}` {', '.join(ids)}" for counter, ids in by_counter.items())


# -- the machine and the data --------------------------------------------------------------


def connect(args):
    return pymysql.connect(host=args.host, port=args.port, user=args.user, password=args.password, autocommit=True)


def database_facts(args) -> dict:
    conn = connect(args)
    facts = {}
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION(), @@innodb_buffer_pool_size")
        facts["version"], pool = cur.fetchone()
        facts["buffer_pool_mb"] = int(pool) >> 20
        facts["shape"] = generate.database_shape(cur, args.database)
        cur.execute("SELECT schema_comment FROM information_schema.schemata WHERE schema_name = %s", (args.database,))
        facts["comment"] = (cur.fetchone() or [None])[0]
        if generate.database_exists(cur, args.database):
            facts["rows"] = {}
            for table in (
                "user_basic",
                "news_article_basic",
                "user_relation",
                "news_collection",
                "news_attitude",
                "news_comment",
                "news_comment_liking",
            ):
                try:
                    cur.execute(f"SELECT COUNT(*) FROM `{args.database}`.`{table}`")
                    facts["rows"][table] = cur.fetchone()[0]
                except pymysql.err.ProgrammingError:
                    facts["rows"][table] = None
    conn.close()
    return facts


def machine() -> dict:
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "diff", "HEAD", "--", "common", "toutiao"], cwd=ROOT, capture_output=True, text=True)
    digest = hashlib.sha1(dirty.stdout.encode()).hexdigest()[:10]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": redis_version.replace("v=", ""),
        "commit": commit.stdout.strip()
        + (f" plus uncommitted changes to common/ and toutiao/ (diff sha1 {digest})" if dirty.stdout.strip() else ""),
        "diff": dirty.stdout,
    }


class TrafficProcess:
    """``python -m bench.traffic`` for the duration of a ``with`` block: live writes through the app.

    Entering waits until its writers are sending; leaving sends SIGTERM and keeps what it
    reports (requests sent, unexpected answers) in ``summary``.
    """

    def __init__(self, env, log_prefix, seed, timeout, writers=TRAFFIC_WRITERS):
        self.argv = [
            PYTHON, "-m", "bench.traffic", "--writers", str(writers), "--seed", str(seed),
            "--max-seconds", str(timeout),
        ]  # fmt: skip
        self.env, self.log_prefix = env, log_prefix
        self.summary = {}

    def __enter__(self):
        self.err = open(f"{self.log_prefix}.err", "w")
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self.err, text=True
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline() if ready else ""
        try:
            self.summary["start"] = json.loads(line)
        except json.JSONDecodeError:
            self._stop()
            raise RuntimeError(f"bench.traffic did not start; see {self.log_prefix}.err") from None
        return self

    def __exit__(self, *exc):
        self._stop()

    def _stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.err.close()
        lines = [line for line in out.splitlines() if line.strip()]
        with contextlib.suppress(IndexError, json.JSONDecodeError):
            self.summary.update(json.loads(lines[-1]))
        self.summary["exit"] = self.proc.returncode
        Path(f"{self.log_prefix}.out").write_text(out)


def profile_functions(raw: str, top: int = PROFILE_TOP) -> dict:
    """Return the functions of a py-spy raw (folded) profile by inclusive share of the samples.

    A function's inclusive share is the share of samples whose stack holds it anywhere
    (counted once per sample); its self share, the samples it was on top of the stack.
    Frames on the way to the work (PLUMBING) are left out; the work under them is counted.
    """
    inclusive, own, stages = Counter(), Counter(), Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.strip() or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
        stages[stage_of(frames)] += n
    functions = [
        {
            "function": frame,
            "inclusive": round(n / total, 4),
            "self": round(own[frame] / total, 4),
        }
        for frame, n in sorted(inclusive.items(), key=lambda item: (-item[1], item[0]))
        if not PLUMBING.match(frame)
    ][:top]
    shares = {stage: round(stages[stage] / total, 4) for stage, _ in (*STAGES, ("other", ())) if stages[stage]}
    return {"samples": total, "rate": PROFILE_RATE, "stages": shares, "functions": functions}


def profiled(argv, env, log_prefix, timeout) -> dict:
    """Run ``argv`` under py-spy; return its exit, wall time and where its samples fell."""
    raw = Path(f"{log_prefix}.raw")
    raw.unlink(missing_ok=True)
    command = [PY_SPY, "record", "-r", str(PROFILE_RATE), "-f", "raw", "-o", str(raw), "--", *argv]
    started = time.monotonic()
    with open(f"{log_prefix}.out", "w") as out, open(f"{log_prefix}.err", "w") as err:
        try:
            code = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=err, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    result = {"exit": code, "wall_s": round(time.monotonic() - started, 2)}
    result.update(profile_functions(raw.read_text()) if raw.exists() else {"samples": 0, "functions": []})
    return result


# -- the report -----------------------------------------------------------------------------


def ratio(ours, old) -> str:
    if not isinstance(ours, (int, float)) or not isinstance(old, (int, float)) or not old:
        return "n/a"
    return f"{ours / old:.3f}"


def number(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:,}" if isinstance(value, (int, float)) else str(value)


def at_most(value, limit) -> bool:
    return isinstance(value, (int, float)) and value <= limit


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def upgrade(results: dict) -> dict:
    """Read a results JSON of the two-scenario harness (old way, ours; empty, 1% drift) as a new one."""
    if "modes" in results:
        return results
    rename = {"empty": "empty", "drift": "drift-1"}
    runs = {}
    for name, run in results["runs"].items():
        who, scenario = name.split("/")
        runs[f"{who}/{rename[scenario]}"] = run
    old_empty = (results["runs"].get("old/empty") or {}).get("report") or {}
    return results | {
        "shape": DEFAULT_SHAPE,
        "modes": ["empty", "drift-1"],
        "peers": ["old"],
        "runs": runs,
        "members": {c["counter"]: c["members"] for c in old_empty.get("counters", [])},
        "drift": {"empty": {}, "drift-1": results.get("drift") or {}},
        "drift_total": {"empty": 0, "drift-1": results.get("drift_total") or 0},
        "profile": {},
    }


def finished(run) -> bool:
    return bool(run) and run.get("exit") == 0


def wall(run):
    """Ours' wall time as a table shows it: a stopped run says so."""
    if not run:
        return None
    return run["wall_s"] if run["exit"] != "timeout" else f"> {run['wall_s']:,} (stopped)"


def targets(results) -> list:
    """Return (target, measured, result) for every target of issue 11 the run's modes reach.

    A ratio is FAIL when either run did not finish, "not measured" when one of them was
    not run (a mode or peer left out), and n/a where the issue sets it for another scale.
    """
    runs, users, modes = results["runs"], results["args"]["users"], results["modes"]
    ours = {mode: runs.get(f"ours/{mode}") for mode in modes}
    rows = []

    def wall_ratio(label, run, base, limit, applies=True, why=""):
        value = None
        if finished(run) and finished(base) and base["wall_s"]:
            value = run["wall_s"] / base["wall_s"]
        if not applies:
            result = why
        elif run is None or base is None:
            result = "not measured"
        else:
            result = verdict(at_most(value, limit))
        rows.append((label, value, result))

    for mode, limit in TARGETS["ratio"].items():
        if mode in modes:
            label = f"ours / old wall time at {mode} <= {limit} (at >= {LARGE:,} users)"
            wall_ratio(label, ours[mode], runs.get(f"old/{mode}"), limit, users >= LARGE, "n/a (below 1M users)")
    for mode in modes:
        if mode != "restart":
            limit = TARGETS["small_ratio"]
            label = f"ours / old wall time at {mode} <= {limit} (below {LARGE:,} users)"
            wall_ratio(label, ours[mode], runs.get(f"old/{mode}"), limit, users < LARGE, "n/a (1M users or more)")
    for mode, limit in TARGETS["vs_empty"].items():
        if mode in modes:
            wall_ratio(f"ours at {mode} / ours from empty (wall time) <= {limit}", ours[mode], ours.get("empty"), limit)
    for mode in modes:
        run = ours[mode] or {}
        ping = run.get("ping") or {}
        for label, value, limit in (
            (f"worst PING during ours at {mode} <= {TARGETS['ping_ms']} ms", ping.get("worst_ms"), TARGETS["ping_ms"]),
            (f"p99 PING during ours at {mode} <= {TARGETS['p99_ms']} ms", ping.get("p99_ms"), TARGETS["p99_ms"]),
            (f"ours' peak RSS at {mode} <= {TARGETS['rss_mb']} MB", run.get("rss_mb"), TARGETS["rss_mb"]),
        ):
            rows.append((label, value, verdict(at_most(value, limit))))
        check_exit = (run.get("check") or {}).get("exit")
        note = check_note(run)
        rows.append(
            (
                f"`flask stats check` after ours at {mode} exits 0",
                check_exit,
                verdict(check_exit == 0) + (f": {note}" if note else ""),
            )
        )
    return rows


def floor_lines(floor) -> list:
    if not floor:
        return []
    idle, busy = floor["idle"], floor["busy"]
    return [
        f"- The machine alone, before the contenders ({floor.get('seconds', FLOOR_SECONDS):g} s each, the same PING "
        "process): "
        f"idle, worst PING {idle['worst_ms']} ms, p99 {idle['p99_ms']} ms; with a busy loop on every core, "
        f"worst {busy['worst_ms']} ms, p99 {busy['p99_ms']} ms. A contender's worst PING near these is the "
        "machine's, not the contender's."
    ]


def render(results: dict) -> str:
    results = upgrade(results)
    args, runs, modes, peers = results["args"], results["runs"], results["modes"], results["peers"]
    m, db = results["machine"], results["database"]
    drift_total = results.get("drift_total") or {}
    lines = [
        "# Benchmark: the old repair job, the old job plus hints, and `flask stats fix`",
        "",
        f"Generated by `bench/run.py` on {results['date']}. Reproduce with:",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"- Scale: {args['users']:,} users; shape: {results['shape']}; rows: "
        + ", ".join(f"{t} {n:,}" for t, n in (db.get("rows") or {}).items() if n is not None)
        + ".",
        f"- Counters' members (what the database counts): {number(results.get('members_total'))} in all; "
        "per counter below.",
        f"- Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gb']} GB RAM, Linux {m['kernel']}, Python {m['python']}.",
        f"- MariaDB {db['version']} with default settings (buffer pool {db['buffer_pool_mb']} MB); "
        f'a private redis-server {m["redis"]} (`--save "" --appendonly no`) on a free loopback port.',
        f"- Code under test: commit {m['commit']}; ours = `{' '.join(results['ours_argv'])}`.",
        "- Peers: old = `bench/oldway.py`, each counter's `query` as `common/cache/statistic.py` defines it "
        "at that commit (plain GROUP BY, no index hint), fetched whole, then DEL + one ZADD in MULTI/EXEC; "
        "hints = `bench/oldway.py --hints`, the same job with ours' stream query (`USE INDEX ()` scan hints, "
        "member order), ours' session `tmp_table_size` and a server-side cursor. "
        f"Ran: {', '.join(peers) or 'none'}.",
        f"- Drift: of every 10,000 members of every counter at 1%, {DRIFT_PER_10K['changed']} get a wrong score, "
        f"{DRIFT_PER_10K['deleted']} are deleted and {DRIFT_PER_10K['stale']} stale ids are added "
        f"({'ids within the range of the members' if args['stale_ids'] == 'in-range' else 'ids above every member'}); "
        "0.01% and 10% scale it (at least one stale id per counter); the same members for the same seed "
        f"({args['seed']}).",
        f"- Restart: Redis emptied, then `bench/traffic.py` ({TRAFFIC_WRITERS} writer threads through the app's own "
        f"write path) runs {TRAFFIC_LEAD_SECONDS:g} s before ours starts, during ours, and stops after it; the "
        "peers do not run. Its Redis commands and keyspace changes include the traffic's. The traffic commits rows, "
        "so a run with this mode marks the database changed and the next run generates it anew.",
        "- Each contender runs as a subprocess under `/usr/bin/time` while a separate process PINGs "
        "the same Redis every millisecond"
        + (
            f" (the PING process and redis-server at nice {INSTRUMENT_NICE}, so that other work on the shared "
            "machine does not show as Redis latency)"
            if results.get("reniced")
            else ""
        )
        + (
            f" (`--redis-cpu {results['redis_cpu']}`: redis-server and the PING process alone on CPU "
            f"{results['redis_cpu']}, the contenders, the traffic and MariaDB's threads on the others)"
            if results.get("redis_cpu") is not None
            else ""
        )
        + "; Redis commands are counted from `INFO commandstats` "
        "(PING and INFO of the bench itself excluded; commands run inside scripts are counted too), "
        "keyspace changes from the server's dirty counter.",
        *floor_lines(results.get("floor")),
        "",
        "## Summary",
        "",
        "| mode | old s | hints s | ours s | ours / old | ours / hints | ours' peak RSS (MB) | worst PING (ms) "
        "| p99 PING (ms) | Redis commands | keyspace changes | members drifted | check |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mode in modes:
        old, hints, ours = (runs.get(f"{who}/{mode}") or {} for who in ("old", "hints", "ours"))
        ours_wall = wall(ours)
        lines.append(
            f"| {mode} | {number(old.get('wall_s'))} | {number(hints.get('wall_s'))} | {number(ours_wall)} | "
            f"{ratio(ours_wall, old.get('wall_s'))} | {ratio(ours_wall, hints.get('wall_s'))} | "
            f"{number(ours.get('rss_mb'))} | {number((ours.get('ping') or {}).get('worst_ms'))} | "
            f"{number((ours.get('ping') or {}).get('p99_ms'))} | {number((ours.get('redis') or {}).get('commands'))} | "
            f"{number((ours.get('redis') or {}).get('keyspace_changes'))} | {number(drift_total.get(mode))} | "
            f"{(ours.get('check') or {}).get('exit', 'n/a')} |"
        )
    lines += ["", "## Targets (issue 11)", "", "| target | measured | result |", "|---|---:|---|"]
    for label, value, result in targets(results):
        shown = f"{value:.3f}" if "/" in label and isinstance(value, float) else number(value)
        lines.append(f"| {label} | {shown} | {result} |")
    lines.append("")
    for mode in modes:
        lines += render_mode(results, mode)
    lines += render_counters(results)
    if results.get("profile"):
        lines += render_profile(results)
    raw = f"results-{args['users']}-{results['shape']}.json"
    lines += ["", f"Raw measurements: `bench/data/{raw}` (not committed).", ""]
    return "\n".join(lines)


def render_mode(results, mode) -> list:
    runs = results["runs"]
    contenders = [(who, runs[f"{who}/{mode}"]) for who in ("old", "hints", "ours") if f"{who}/{mode}" in runs]
    ours = runs.get(f"ours/{mode}") or {}
    old, hints = runs.get(f"old/{mode}") or {}, runs.get(f"hints/{mode}") or {}
    names = {"old": "old way", "hints": "old + hints", "ours": "ours"}
    rows = [
        ("wall time (s)", lambda r: wall(r) if r is ours else r["wall_s"]),
        ("peak RSS (MB)", lambda r: r["rss_mb"]),
        ("worst PING (ms)", lambda r: r["ping"]["worst_ms"]),
        ("p99 PING (ms)", lambda r: r["ping"]["p99_ms"]),
        ("longest server stall (ms, LATENCY LATEST)", lambda r: r["redis"]["server_stall_ms"]),
        ("Redis commands sent", lambda r: r["redis"]["commands"]),
        ("Redis write commands", lambda r: r["redis"]["write_commands"]),
        ("keyspace changes (members written)", lambda r: r["redis"]["keyspace_changes"]),
    ]
    peers = [who for who, _ in contenders if who != "ours"]
    lines = [
        f"## {MODE_TITLES[mode]} (`{mode}`)",
        "",
        "| metric | "
        + " | ".join(names[who] for who, _ in contenders)
        + "".join(f" | ours / {who}" for who in peers)
        + " |",
        "|---|" + "---:|" * (len(contenders) + len(peers)),
    ]
    for label, metric in rows:
        values = {who: metric(run) for who, run in contenders}
        lines.append(
            f"| {label} | "
            + " | ".join(number(values[who]) for who, _ in contenders)
            + "".join(f" | {ratio(values.get('ours'), values[who])}" for who in peers)
            + " |"
        )
    status = []
    drifted = (results.get("drift_total") or {}).get(mode)
    if drifted:
        status.append(
            f"{drifted:,} members drifted; ours wrote {number((ours.get('redis') or {}).get('keyspace_changes'))} "
            "(target: proportional to the drift, at most twice it + 100: "
            + verdict(finished(ours) and ours["redis"]["keyspace_changes"] <= 2 * drifted + 100)
            + ")"
        )
    for who, run in contenders:
        if run["exit"]:
            status.append(f"{names[who]} exited {run['exit']}")
    if ours.get("check"):
        c = ours["check"]
        exact = "exact" if c["exit"] == 0 else "NOT exact"
        note = check_note(ours)
        status.append(
            f"`flask stats check` afterwards: exit {c['exit']} ({exact}, {c['seconds']} s)"
            + (f"; {note}" if note else "")
        )
    traffic = ours.get("traffic")
    if traffic:
        status.append(
            f"traffic: {number(traffic.get('sent'))} requests sent in {number(traffic.get('seconds'))} s "
            f"({number((traffic.get('start') or {}).get('writers'))} writers over "
            f"{number((traffic.get('start') or {}).get('users'))} sampled users), "
            f"{number(traffic.get('unexpected'))} unexpected answers, exit {traffic.get('exit')}"
            + (
                f"; the traffic process used {traffic['cpu_s']} CPU seconds "
                f"({traffic['cpu_s'] / traffic['seconds']:.2f} of this machine's {results['machine']['nproc']} cores)"
                if traffic.get("cpu_s") and traffic.get("seconds")
                else ""
            )
        )
    report = ours.get("report") or {}
    if report.get("totals"):
        t = report["totals"]
        status.append(
            "ours reported "
            + ", ".join(
                f"{k} {t[k]:,}" for k in ("scanned", "wrong", "added", "changed", "removed", "skipped") if k in t
            )
        )
    for who, run in contenders:
        slow = run["redis"].get("slow_commands") or []
        if slow:
            shown = "; ".join(f"{e['ms']} ms `{e['command']}`" for e in slow[:3])
            status.append(
                f"{names[who]}: {run['redis']['slow_command_count']} command(s) took 5 ms or more inside Redis; "
                f"longest: {shown}"
            )
    for who, run in (("old", old), ("hints", hints)):
        if run.get("report"):
            status.append(
                f"{names[who]}: {run['report']['query_seconds']} s in its queries, "
                f"{run['report']['redis_seconds']} s in Redis, {run['report']['members']:,} members"
            )
    return lines + [""] + [f"- {s}" for s in status] + [""]


def render_counters(results) -> list:
    runs, modes = results["runs"], results["modes"]
    members = results.get("members") or {}

    def per_counter(name) -> dict:
        run = runs.get(name) or {}
        return {c["counter"]: c for c in (run.get("report") or {}).get("counters") or run.get("counters_logged") or []}

    old, hints = per_counter("old/empty"), per_counter("hints/empty")
    ours = {mode: per_counter(f"ours/{mode}") for mode in modes}
    lines = [
        "## Per counter",
        "",
        "Old and hints from an empty Redis; ours' seconds per mode.",
        "",
        "| counter | members | old: query s | old: Redis s | hints: query s | hints: Redis s | "
        + " | ".join(f"ours {mode} s" for mode in modes)
        + " |",
        "|---|" + "---:|" * (5 + len(modes)),
    ]
    for counter in COUNTERS:
        o, h = old.get(counter.key, {}), hints.get(counter.key, {})
        count = members.get(counter.key, o.get("members"))
        lines.append(
            f"| `{counter.key}` | {number(count)} | {o.get('query_seconds', '')} | {o.get('redis_seconds', '')} | "
            f"{h.get('query_seconds', '')} | {h.get('redis_seconds', '')} | "
            + " | ".join(str(ours[mode].get(counter.key, {}).get("seconds", "")) for mode in modes)
            + " |"
        )
    return lines + [""]


def render_profile(results) -> list:
    lines = [
        "## Where the time goes",
        "",
        f"Ours ran once more per mode under py-spy (`py-spy record -r {PROFILE_RATE} -f raw`), from the same "
        "starting state, unmeasured (the figures above are from the run without it). Inclusive: the share of "
        "samples whose stack holds the function; self: the share it was running itself. py-spy leaves idle "
        "threads out (a thread waiting for MariaDB's rows or a Redis reply mostly does not show: shares are of "
        "our own work, not of wall time); the command-line, thread-start and module-body (import) frames are "
        "not shown. Stages: "
        "each sample counted once, in the stage of the innermost frame of its stack that names one (the "
        "reader thread's samples are the database's rows arriving, decoded and unpacked).",
        "",
    ]
    for mode, profile in results["profile"].items():
        lines += [
            f"### {mode}",
            "",
            f"{profile.get('samples', 0):,} samples; exit {profile.get('exit')}, {profile.get('wall_s')} s under py-spy"
            + (f"; check exit {profile['check']['exit']}" if profile.get("check") else "")
            + ".",
            "",
        ]
        if profile.get("stages"):
            lines += ["| stage | share of samples |", "|---|---:|"]
            lines += [f"| {stage} | {share:.1%} |" for stage, share in profile["stages"].items()]
            lines.append("")
        lines += ["| function | inclusive | self |", "|---|---:|---:|"]
        for f in profile.get("functions", []):
            lines.append(f"| `{f['function']}` | {f['inclusive']:.1%} | {f['self']:.1%} |")
        lines.append("")
    return lines


# -- the run -----------------------------------------------------------------------------


def database_arguments(parser):
    """Add the options naming the bench database, its shape and the drift seed."""
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    parser.add_argument("--shape", choices=SHAPES, default=DEFAULT_SHAPE, help=f"data shape [{DEFAULT_SHAPE}]")
    parser.add_argument("--seed", type=int, default=2026, help="drift seed")


def ensure_database(args, log, regenerate=False) -> dict:
    """Generate the bench database at ``args.users`` and ``args.shape`` unless it already
    holds them; return its facts."""
    shape = getattr(args, "shape", DEFAULT_SHAPE)
    facts = database_facts(args)
    if not regenerate and (facts.get("rows") or {}).get("user_basic") == args.users and facts.get("shape") == shape:
        log(f"{args.database} already holds {args.users:,} users, shape {shape}; reusing it")
        return facts
    if facts.get("comment"):
        log(f"{args.database} says {facts['comment']!r}")
    log(f"generating {args.database} at {args.users:,} users, shape {shape}")
    connection = ["--host", args.host, "--port", str(args.port), "--user", args.user, "--password", args.password]
    generate.main(["--users", str(args.users), "--database", args.database, "--shape", shape, *connection])
    return database_facts(args)


def comma_list(choices):
    """An argparse type: a comma-separated list of ``choices``, in the order of ``choices``."""

    def parse(text):
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"expected some of {','.join(choices)}, got {text!r}")
        return [name for name in choices if name in names]

    return parse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="scale [1000000]")
    parser.add_argument(
        "--modes",
        type=comma_list(MODES),
        default=list(MODES),
        help=f"comma-separated modes to run, always in this order [{','.join(MODES)}]",
    )
    parser.add_argument(
        "--peers",
        type=comma_list(tuple(PEERS)),
        default=list(PEERS),
        help=f"comma-separated peers to compare ours with [{','.join(PEERS)}]",
    )
    parser.add_argument("--jobs", type=int, default=1, help="--jobs passed to flask stats fix and check [1]")
    parser.add_argument("--batch-size", type=int, default=None, help="--batch-size passed to flask stats fix")
    parser.add_argument("--regenerate", action="store_true", help="generate the database even if it has this scale")
    database_arguments(parser)
    parser.add_argument(
        "--stale-ids",
        choices=("in-range", "high"),
        default="in-range",
        help="stale members added by the drift: ids within the members' range [default], or above them all",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also run ours once per mode under py-spy and report where time goes"
    )
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per contender [3600]")
    parser.add_argument(
        "--floor-seconds",
        type=float,
        default=FLOOR_SECONDS,
        help=f"seconds the machine's own PING is measured, idle and busy [{FLOOR_SECONDS:.0f}]",
    )
    parser.add_argument(
        "--redis-cpu",
        type=int,
        default=None,
        help="pin the private Redis and the PINGing client to this CPU, everything else to the others",
    )
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"), help="Markdown report to write")
    parser.add_argument("--render", metavar="JSON", help="only rewrite --results from a results JSON of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        Path(args.results).write_text(render(json.loads(Path(args.render).read_text())))
        return
    if args.profile and not Path(PY_SPY).exists():
        parser.error(f"--profile needs py-spy at {PY_SPY} (requirements-dev.txt)")
    command = ".venv/bin/python -m bench.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    def log(text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    facts = ensure_database(args, log, regenerate=args.regenerate)

    code = machine()  # the code under test, as the run starts
    database_url = generate.database_url(args.host, args.port, args.user, args.password, args.database)
    logs = DATA / f"logs-{args.users}-{args.shape}"
    logs.mkdir(parents=True, exist_ok=True)
    ours_argv = [FLASK, "stats", "fix", "--json", "--jobs", str(args.jobs)]
    if args.batch_size:
        ours_argv += ["--batch-size", str(args.batch_size)]
    runs, drifts, profiles = {}, {}, {}
    members = {}
    raw = DATA / f"results-{args.users}-{args.shape}.json"
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": command,
        "args": vars(args),
        "shape": args.shape,
        "peers": args.peers,
        "machine": code,
        "database": facts,
        "ours_argv": ["flask"] + ours_argv[1:],
    }
    with PrivateRedis() as server, contextlib.ExitStack() as isolated:
        results["reniced"] = server.reniced
        if args.redis_cpu is not None:
            isolated.enter_context(Isolation(args.redis_cpu, server.proc.pid))
            results["redis_cpu"] = args.redis_cpu
        env = contender_env(server.url, database_url)
        # The hints peer reads as many rows at a time as ours does.
        peer_env = env | ({"STATS_BATCH_SIZE": str(args.batch_size)} if args.batch_size else {})
        client = server.client()
        writes = write_commands(client)
        log(f"private redis-server on port {server.port}")
        results["floor"] = machine_floor(server.port, args.floor_seconds)
        log(f"the machine's own PING: idle {results['floor']['idle']}, every core busy {results['floor']['busy']}")
        baseline = False

        def make_baseline():
            """Keep the correct counters aside; made by the old way plus hints (the same counters as
            the old way's, in a sixth of the time) when ours did not leave them."""
            client.flushdb()
            log("baseline: running the old way plus hints (unmeasured) to build the correct counters")
            done = subprocess.run(
                [PYTHON, *PEERS["hints"]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout
            )
            if done.returncode:
                raise RuntimeError(f"the old way failed to build the baseline: {done.stderr[-2000:]}")
            save_baseline(server)

        def prepare(mode) -> dict:
            """Put Redis in the mode's starting state; return what was drifted."""
            if mode in ("empty", "restart"):
                client.flushdb()  # db 1 holds the baseline
                return {}
            if not baseline:
                raise RuntimeError("no baseline")
            restore_baseline(server)
            if mode in DRIFT_FACTORS:
                return drift(client, args.seed, args.stale_ids, DRIFT_FACTORS[mode])
            return {}

        def contender(name, mode, argv, contender_env=env):
            log(f"{name} / {mode}: running")
            run = run_contender(name, argv, server, contender_env, str(logs / f"{name}-{mode}"), args.timeout, writes)
            log(
                f"{name} / {mode}: exit {run['exit']}, {run['wall_s']} s, {run['rss_mb']} MB, "
                f"worst PING {run['ping']['worst_ms']} ms, {run['redis']['commands']:,} commands, "
                f"{run['redis']['keyspace_changes']:,} keyspace changes"
            )
            runs[f"{name}/{mode}"] = run
            return run

        def verify(run, mode, prefix="check"):
            if run["exit"] == "timeout":
                run["check"] = {"exit": "not run (the fix did not finish)", "seconds": 0}
            else:
                run["check"] = check(env, str(logs / f"{prefix}-{mode}"), args.jobs, args.timeout)
            log(f"flask stats check after ours / {mode}: exit {run['check']['exit']}")

        def ours_under_traffic(mode, run_ours):
            """Start the traffic, let it recreate keys, run ours, stop the traffic.

            The traffic commits rows: the database is marked changed first, so that the
            next run generates it anew rather than measure on rows the seed did not make.
            """
            with contextlib.closing(connect(args)) as conn, conn.cursor() as cur:
                generate.mark_changed(cur, args.database, args.shape)
            with TrafficProcess(env, str(logs / f"traffic-{mode}"), args.seed, args.timeout + 600) as traffic:
                log(f"traffic: {traffic.summary['start']}")
                time.sleep(TRAFFIC_LEAD_SECONDS)
                run = run_ours()
            run["traffic"] = traffic.summary
            log(
                f"traffic: {traffic.summary.get('sent', 0):,} requests sent, "
                f"{traffic.summary.get('unexpected', 'unknown')} unexpected answers, exit {traffic.summary['exit']}"
            )
            return run

        def write_results(done: list):
            """Write the results JSON of the modes done so far (a run stopped half way keeps them)."""
            results.update(modes=list(done), members=members, runs=runs, drift=drifts, profile=profiles)
            results["members_total"] = sum(members.values()) if members else None
            results["drift_total"] = {
                mode: sum(d["changed"] + d["deleted"] + d["stale"] for d in ds.values()) for mode, ds in drifts.items()
            }
            raw.write_text(json.dumps(results, indent=2, default=str))

        for done, mode in enumerate(args.modes):
            write_results(args.modes[:done])
            if mode not in ("empty", "restart") and not baseline:
                make_baseline()
                baseline = True
            if mode != "restart":
                for peer in args.peers:
                    prepare(mode)
                    contender(peer, mode, [PYTHON, *PEERS[peer]], peer_env)
            drifts[mode] = prepare(mode)
            if mode == "restart":
                run = ours_under_traffic(mode, lambda m=mode: contender("ours", m, ours_argv))
            else:
                run = contender("ours", mode, ours_argv)
            verify(run, mode)
            if mode == "empty" and run["check"]["exit"] == 0:
                save_baseline(server)
                baseline = True
            if baseline and not members:
                saved = server.client(db=1)
                members = {c.key: saved.zcard(c.key) for c in COUNTERS}
            if args.profile:
                log(f"ours / {mode}: running again under py-spy")
                prepare(mode)
                prefix = str(logs / f"profile-{mode}")
                if mode == "restart":
                    profile = ours_under_traffic(mode, lambda p=prefix: profiled(ours_argv, env, p, args.timeout))
                else:
                    profile = profiled(ours_argv, env, prefix, args.timeout)
                verify(profile, mode, prefix="profile-check")
                profiles[mode] = profile
                log(f"ours / {mode} under py-spy: exit {profile['exit']}, {profile['samples']:,} samples")
        write_results(args.modes)
    Path(args.results).write_text(render(results))
    log(f"wrote {args.results}")


if __name__ == "__main__":
    main()
