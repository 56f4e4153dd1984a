"""Benchmark the old repair job against ``flask stats fix`` on the same generated data.

One run, in order, against a private redis-server (never the shared one):

1. generate ``toutiao_bench`` at ``--users`` scale, unless it already holds that scale;
2. old way, from an empty Redis;
3. ours, from an empty Redis; then ``flask stats check`` must exit 0, and the correct
   counters are kept aside (COPY to db 1) as the baseline;
4. old way at 1% drift: baseline restored, then 1% of every counter's members drifted
   (0.6% wrong scores, 0.3% deleted, 0.1% stale ids added), the same members each time;
5. ours at 1% drift, then ``flask stats check`` again.

Each contender runs as a subprocess under ``/usr/bin/time`` (peak RSS, wall time) while
another process PINGs the private Redis in a loop (worst and p99 latency); ``INFO
commandstats`` and the server's dirty counter are read before and after to count the
commands sent and the writes. Writes ``bench/RESULTS.md`` and ``bench/data/results-N.json``.

    .venv/bin/python -m bench.run --users 1000000
    .venv/bin/python -m bench.run --users 20000 --database toutiao_bench_small \
        --results bench/data/RESULTS-smoke.md   # a smoke run that leaves the 1M database alone
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
import shlex
import shutil
import subprocess
import sys
import time
import zlib
from array import array
from pathlib import Path

import psutil
import pymysql
import redis

from bench import generate
from bench.generate import DATA, DATABASE
from common.cache.statistic import COUNTERS
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FLASK = str(Path(sys.executable).with_name("flask"))
TIME = shutil.which("time", path="/usr/bin") or ""

# Commands the bench itself sends (the PING loop, INFO snapshots) are not counted.
NOT_COUNTED = ("ping", "info", "latency", "config", "command", "client", "hello", "select", "dbsize")

# The measuring instruments (the PING loop and the private redis-server) run at a higher
# CPU priority when allowed, so that other work on a shared machine does not show up as
# Redis latency; both contenders get the same treatment.
INSTRUMENT_NICE = -10

TARGETS = {"wall_ratio": 0.3, "rss_mb": 100, "ping_ms": 10}

# Drift: of 10,000 members, 60 get a wrong score, 30 are deleted, and 10 stale ids are added.
DRIFT_PER_10K = {"changed": 60, "deleted": 30, "stale": 10}
STALE_BASE = 10**12

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


class Pinger:
    """A separate process PINGing Redis for the duration of a ``with`` block."""

    def __init__(self, port, interval=0.001):
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.results = ctx.Queue()
        self.proc = ctx.Process(target=ping_loop, args=(port, self.stop, self.results, interval), daemon=True)

    def __enter__(self):
        self.proc.start()
        time.sleep(1.0)  # spawn and a baseline before the contender starts
        return self

    def __exit__(self, *exc):
        time.sleep(0.2)
        self.stop.set()
        self.summary = self.results.get(timeout=60)
        self.proc.join(timeout=10)


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


def drift(client, seed, stale_ids="in-range") -> dict:
    """Drift about 1% of every counter's members; the same members for the same seed.

    Stale members are ids the database does not count: by default ids within the range of
    the counter's members (as a deleted article's would be); with ``stale_ids="high"``,
    ids from 10**12 up, beyond every table's ids.
    """
    drifted = {}
    for counter in COUNTERS:
        key = counter.key
        changes, deletes, present = {}, [], set()
        for member, score in client.zscan_iter(key, count=1000):
            present.add(int(member))
            h = zlib.crc32(f"{seed}:{key}:{member}".encode())
            pick = h % 10_000
            if pick < DRIFT_PER_10K["changed"]:
                delta = (1, 2, 3, -1, -2)[(h >> 16) % 5]
                changes[member] = score + delta if score + delta > 0 else score + 1
            elif pick < DRIFT_PER_10K["changed"] + DRIFT_PER_10K["deleted"]:
                deletes.append(member)
        wanted = max(1, len(present) * DRIFT_PER_10K["stale"] // 10_000)
        stale = {}
        if stale_ids == "high":
            stale = {str(STALE_BASE + i): 1 + i % 5 for i in range(wanted)}
        else:
            top, k = max(present, default=wanted * 2), 0
            while len(stale) < wanted and k < 100 * wanted:
                candidate = zlib.crc32(f"{seed}:{key}:stale:{k}".encode()) % top + 1
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
                [FLASK, "stats", "check", "--json", "--jobs", str(jobs)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
                timeout=timeout,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    return {"exit": code, "seconds": round(time.monotonic() - started, 1)}


# -- the machine and the data --------------------------------------------------------------


def database_facts(args) -> dict:
    conn = pymysql.connect(host=args.host, port=args.port, user=args.user, password=args.password)
    facts = {}
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION(), @@innodb_buffer_pool_size")
        facts["version"], pool = cur.fetchone()
        facts["buffer_pool_mb"] = int(pool) >> 20
        cur.execute("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s", (args.database,))
        if cur.fetchone()[0]:
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


def render(results: dict) -> str:
    args, runs = results["args"], results["runs"]
    m, db = results["machine"], results["database"]
    lines = [
        "# Benchmark: the old repair job vs `flask stats fix`",
        "",
        f"Generated by `bench/run.py` on {results['date']}. Reproduce with:",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"- Scale: {args['users']:,} users; rows: "
        + ", ".join(f"{t} {n:,}" for t, n in (db.get("rows") or {}).items() if n is not None)
        + ".",
        f"- Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gb']} GB RAM, Linux {m['kernel']}, Python {m['python']}.",
        f"- MariaDB {db['version']} with default settings (buffer pool {db['buffer_pool_mb']} MB); "
        f'a private redis-server {m["redis"]} (`--save "" --appendonly no`) on a free loopback port.',
        f"- Code under test: commit {m['commit']}; ours = `{' '.join(results['ours_argv'])}`.",
        f"- Drift: of every 10,000 members of every counter, {DRIFT_PER_10K['changed']} get a wrong score, "
        f"{DRIFT_PER_10K['deleted']} are deleted and {DRIFT_PER_10K['stale']} stale ids are added "
        f"({'ids within the range of the members' if args['stale_ids'] == 'in-range' else 'ids from 10**12 up'}) "
        f"({results['drift_total']:,} members drifted in all, out of {results['members_total']:,}).",
        "- The old way is `bench/oldway.py`: each counter's `query` as `common/cache/statistic.py` defines it "
        "at that commit (plain GROUP BY, no index hint), fetched whole, then DEL + one ZADD in MULTI/EXEC.",
        "- Each contender runs as a subprocess under `/usr/bin/time` while a separate process PINGs "
        "the same Redis every millisecond"
        + (
            f" (the PING process and redis-server at nice {INSTRUMENT_NICE}, so that other work on the shared "
            "machine does not show as Redis latency)"
            if results.get("reniced")
            else ""
        )
        + "; Redis commands are counted from `INFO commandstats` "
        "(PING and INFO of the bench itself excluded; commands run inside scripts are counted too), "
        "keyspace changes from the server's dirty counter.",
        "",
    ]
    for scenario, title in (("empty", "From an empty Redis"), ("drift", "At 1% drift")):
        old, ours = runs[f"old/{scenario}"], runs[f"ours/{scenario}"]
        finished = ours["exit"] == 0
        ours_wall = ours["wall_s"] if ours["exit"] != "timeout" else f"> {ours['wall_s']:,} (stopped)"
        rows = [
            (
                "wall time (s)",
                old["wall_s"],
                ours_wall,
                f"<= {TARGETS['wall_ratio']}x old",
                finished and at_most(ours["wall_s"], TARGETS["wall_ratio"] * old["wall_s"]),
            ),
            (
                "peak RSS (MB)",
                old["rss_mb"],
                ours["rss_mb"],
                f"<= {TARGETS['rss_mb']} MB",
                at_most(ours["rss_mb"], TARGETS["rss_mb"]),
            ),
            (
                "worst PING (ms)",
                old["ping"]["worst_ms"],
                ours["ping"]["worst_ms"],
                f"<= {TARGETS['ping_ms']} ms",
                at_most(ours["ping"]["worst_ms"], TARGETS["ping_ms"]),
            ),
            ("p99 PING (ms)", old["ping"]["p99_ms"], ours["ping"]["p99_ms"], "", None),
            (
                "longest server stall (ms, LATENCY LATEST)",
                old["redis"]["server_stall_ms"],
                ours["redis"]["server_stall_ms"],
                "",
                None,
            ),
            ("Redis commands sent", old["redis"]["commands"], ours["redis"]["commands"], "", None),
            ("Redis write commands", old["redis"]["write_commands"], ours["redis"]["write_commands"], "", None),
        ]
        if scenario == "drift":
            drifted = results["drift_total"]
            rows.append(
                (
                    "keyspace changes (members written)",
                    old["redis"]["keyspace_changes"],
                    ours["redis"]["keyspace_changes"],
                    f"proportional to the drift ({drifted:,})",
                    finished and ours["redis"]["keyspace_changes"] <= 2 * drifted + 100,
                )
            )
        else:
            rows.append(
                (
                    "keyspace changes (members written)",
                    old["redis"]["keyspace_changes"],
                    ours["redis"]["keyspace_changes"],
                    "",
                    None,
                )
            )
        lines += [
            f"## {title}",
            "",
            "| metric | old way | ours | ours / old | target | result |",
            "|---|---:|---:|---:|---|---|",
        ]
        for label, a, b, target, ok in rows:
            lines.append(
                f"| {label} | {number(a)} | {number(b)} | {ratio(b, a)} | {target} | "
                f"{'' if ok is None else verdict(ok)} |"
            )
        status = []
        for name, run in (("old way", old), ("ours", ours)):
            if run["exit"]:
                status.append(f"{name} exited {run['exit']}")
        if ours.get("check"):
            status.append(
                f"`flask stats check` afterwards: exit {ours['check']['exit']} "
                + (
                    f"(exact, {ours['check']['seconds']} s)"
                    if ours["check"]["exit"] == 0
                    else f"(NOT exact, {ours['check']['seconds']} s)"
                    if isinstance(ours["check"]["exit"], int)
                    else ""
                )
            )
        report = ours.get("report") or {}
        if report.get("totals"):
            t = report["totals"]
            status.append(
                "ours reported "
                + ", ".join(f"{k} {t[k]:,}" for k in ("scanned", "wrong", "added", "changed", "removed", "skipped"))
            )
        for name, run in (("old way", old), ("ours", ours)):
            slow = run["redis"].get("slow_commands") or []
            if slow:
                shown = "; ".join(f"{e['ms']} ms `{e['command']}`" for e in slow[:3])
                status.append(
                    f"{name}: {run['redis']['slow_command_count']} command(s) took 5 ms or more inside Redis; "
                    f"longest: {shown}"
                )
        if old.get("report"):
            status.append(
                f"old way: {old['report']['query_seconds']} s in its GROUP BY queries, "
                f"{old['report']['redis_seconds']} s in Redis, {old['report']['members']:,} members"
            )
        lines += [""] + [f"- {s}" for s in status] + [""]
    lines += [
        "## Per counter",
        "",
        "| counter | members | old: query s | old: Redis s | ours from empty s | ours at drift s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    old_counters = {c["counter"]: c for c in (runs["old/empty"].get("report") or {}).get("counters", [])}
    ours_empty, ours_drift = (
        {c["counter"]: c for c in (runs[name].get("report") or {}).get("counters") or runs[name]["counters_logged"]}
        for name in ("ours/empty", "ours/drift")
    )
    for counter in COUNTERS:
        o = old_counters.get(counter.key, {})
        lines.append(
            f"| `{counter.key}` | {o.get('members', 0):,} | {o.get('query_seconds', '')} | "
            f"{o.get('redis_seconds', '')} | {ours_empty.get(counter.key, {}).get('seconds', '')} | "
            f"{ours_drift.get(counter.key, {}).get('seconds', '')} |"
        )
    lines += ["", "Raw measurements: `bench/data/results-{}.json` (not committed).".format(args["users"]), ""]
    return "\n".join(lines)


# -- the run -----------------------------------------------------------------------------


def database_arguments(parser):
    """Add the options naming the bench database and the drift seed."""
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    parser.add_argument("--seed", type=int, default=2026, help="drift seed")


def ensure_database(args, log, regenerate=False) -> dict:
    """Generate the bench database at ``args.users`` unless it already holds them; return its facts."""
    facts = database_facts(args)
    if not regenerate and (facts.get("rows") or {}).get("user_basic") == args.users:
        log(f"{args.database} already holds {args.users:,} users; reusing it")
        return facts
    log(f"generating {args.database} at {args.users:,} users")
    connection = ["--host", args.host, "--port", str(args.port), "--user", args.user, "--password", args.password]
    generate.main(["--users", str(args.users), "--database", args.database, *connection])
    return database_facts(args)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="scale [1000000]")
    parser.add_argument("--jobs", type=int, default=1, help="--jobs passed to flask stats fix and check [1]")
    parser.add_argument("--batch-size", type=int, default=None, help="--batch-size passed to flask stats fix")
    parser.add_argument("--regenerate", action="store_true", help="generate the database even if it has this scale")
    database_arguments(parser)
    parser.add_argument(
        "--stale-ids",
        choices=("in-range", "high"),
        default="in-range",
        help="stale members added by the drift: ids within the members' range [default], or from 10**12 up",
    )
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per contender [3600]")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"), help="Markdown report to write")
    parser.add_argument("--render", metavar="JSON", help="only rewrite --results from a results JSON of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        Path(args.results).write_text(render(json.loads(Path(args.render).read_text())))
        return
    command = ".venv/bin/python -m bench.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    def log(text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    facts = ensure_database(args, log, regenerate=args.regenerate)

    code = machine()  # the code under test, as the run starts
    database_url = generate.database_url(args.host, args.port, args.user, args.password, args.database)
    logs = DATA / f"logs-{args.users}"
    logs.mkdir(parents=True, exist_ok=True)
    old_argv = [PYTHON, "-m", "bench.oldway"]
    ours_argv = [FLASK, "stats", "fix", "--json", "--jobs", str(args.jobs)]
    if args.batch_size:
        ours_argv += ["--batch-size", str(args.batch_size)]
    runs = {}
    with PrivateRedis() as server:
        env = contender_env(server.url, database_url)
        client = server.client()
        writes = write_commands(client)
        reniced = server.reniced
        log(f"private redis-server on port {server.port}")

        def contender(name, scenario, argv):
            log(f"{name} / {scenario}: running")
            run = run_contender(name, argv, server, env, str(logs / f"{name}-{scenario}"), args.timeout, writes)
            log(
                f"{name} / {scenario}: exit {run['exit']}, {run['wall_s']} s, {run['rss_mb']} MB, "
                f"worst PING {run['ping']['worst_ms']} ms, {run['redis']['commands']:,} commands, "
                f"{run['redis']['keyspace_changes']:,} keyspace changes"
            )
            runs[f"{name}/{scenario}"] = run
            return run

        def verify(run, scenario):
            if run["exit"] == "timeout":
                run["check"] = {"exit": "not run (the fix did not finish)", "seconds": 0}
            else:
                run["check"] = check(env, str(logs / f"check-{scenario}"), args.jobs, args.timeout)
            log(f"flask stats check after ours / {scenario}: exit {run['check']['exit']}")

        client.flushall()
        contender("old", "empty", old_argv)
        client.flushall()
        verify(contender("ours", "empty", ours_argv), "empty")
        members_total = sum(client.zcard(c.key) for c in COUNTERS)
        save_baseline(server)

        restore_baseline(server)
        drifted = drift(client, args.seed, args.stale_ids)
        contender("old", "drift", old_argv)
        restore_baseline(server)
        drift(client, args.seed, args.stale_ids)
        verify(contender("ours", "drift", ours_argv), "drift")

    drift_total = sum(d["changed"] + d["deleted"] + d["stale"] for d in drifted.values())
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": command,
        "args": vars(args),
        "machine": code,
        "database": facts,
        "ours_argv": ["flask"] + ours_argv[1:],
        "members_total": members_total,
        "reniced": reniced,
        "drift": drifted,
        "drift_total": drift_total,
        "runs": runs,
    }
    (DATA / f"results-{args.users}.json").write_text(json.dumps(results, indent=2, default=str))
    Path(args.results).write_text(render(results))
    log(f"wrote {args.results}")


if __name__ == "__main__":
    main()
