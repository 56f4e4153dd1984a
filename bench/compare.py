"""Benchmark ``flask stats fix`` of another commit against this checkout's, in one run.

Same generated database (the original toutiao keys: ``bench/generate.py``), same private
redis-server, same scenarios as ``bench/run.py`` (from an empty Redis; at 1% drift, the
same members each time), a PING loop measuring Redis latency meanwhile. Each scenario
runs ``--rounds`` times, the two contenders alternating who goes first. After every run
of this checkout, ``flask stats check`` must exit 0. Writes ``bench/BEFORE-AFTER.md``.

    .venv/bin/python -m bench.compare --before d06078f --users 1000000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench import generate
from bench.run import (
    DATA,
    FLASK,
    ROOT,
    PrivateRedis,
    check,
    contender_env,
    database_arguments,
    drift,
    ensure_database,
    machine,
    restore_baseline,
    run_contender,
    save_baseline,
    write_commands,
)

#: How much slower "after" may be than "before" and still agree (issue 9: within 10%).
AGREE = 0.10


def worktree(rev: str) -> Path:
    """Check ``rev`` out beside the repository, without touching this checkout."""
    path = Path(tempfile.mkdtemp(prefix="bench-before-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True, capture_output=True)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare with (e.g. d06078f)")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each contender per scenario [2]")
    database_arguments(parser)
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--results", default=str(ROOT / "bench" / "BEFORE-AFTER.md"))
    args = parser.parse_args(argv)

    def log(text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    facts = ensure_database(args, log)
    before_dir = worktree(args.before)
    log(f"before: {args.before} in {before_dir}")
    code = machine()
    database_url = generate.database_url(args.host, args.port, args.user, args.password, args.database)
    logs = DATA / f"compare-{args.users}"
    logs.mkdir(parents=True, exist_ok=True)
    argv_fix = [FLASK, "stats", "fix", "--json"]
    runs: dict = {"before": {"empty": [], "drift": []}, "after": {"empty": [], "drift": []}}
    try:
        with PrivateRedis() as server:
            env = contender_env(server.url, database_url)
            client = server.client()
            writes = write_commands(client)
            baseline = False
            for scenario in ("empty", "drift"):
                for n in range(args.rounds):
                    order = ("before", "after") if n % 2 == 0 else ("after", "before")
                    for name in order:
                        if scenario == "empty":
                            client.flushdb()  # db 1 holds the baseline
                        else:
                            restore_baseline(server)
                            drift(client, args.seed)
                        cwd = before_dir if name == "before" else ROOT
                        prefix = str(logs / f"{name}-{scenario}-{n}")
                        run = run_contender(name, argv_fix, server, env, prefix, args.timeout, writes, cwd=cwd)
                        if name == "after" or not baseline:
                            run["check"] = check(env, prefix + "-check", 1, args.timeout)
                        log(
                            f"{name} / {scenario} / {n}: exit {run['exit']}, {run['wall_s']} s, {run['rss_mb']} MB, "
                            f"worst PING {run['ping']['worst_ms']} ms, check {run.get('check', {}).get('exit')}"
                        )
                        runs[name][scenario].append(run)
                        if scenario == "empty" and not baseline and run["exit"] == 0:
                            save_baseline(server)
                            baseline = True
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before_dir)], cwd=ROOT, capture_output=True)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "args": vars(args),
        "machine": code,
        "database": facts,
        "runs": runs,
    }
    (DATA / f"compare-{args.users}.json").write_text(json.dumps(results, indent=2, default=str))
    Path(args.results).write_text(render(results))
    log(f"wrote {args.results}")


def median(runs, metric):
    values = [metric(r) for r in runs if r["exit"] == 0 and metric(r) is not None]
    return statistics.median(values) if values else None


def figure(value) -> str:
    """A median as the table shows it: whole counts with separators, measures to two decimals."""
    if value is None:
        return ""
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:,.2f}"


METRICS = [
    ("wall time (s)", lambda r: r["wall_s"]),
    ("peak RSS (MB)", lambda r: r["rss_mb"]),
    ("worst PING (ms)", lambda r: r["ping"]["worst_ms"]),
    ("p99 PING (ms)", lambda r: r["ping"]["p99_ms"]),
    ("Redis commands", lambda r: r["redis"]["commands"]),
    ("keyspace changes", lambda r: r["redis"]["keyspace_changes"]),
]


def render(results) -> str:
    args, m, db = results["args"], results["machine"], results["database"]
    lines = [
        f"# `flask stats fix`: {args['before']} (before) vs {m['commit']} (after)",
        "",
        f"Generated by `bench/compare.py` on {results['date']}: "
        f"`.venv/bin/python -m bench.compare --before {args['before']} --users {args['users']}`.",
        "",
        f"- Scale: {args['users']:,} users, shape {args.get('shape', 'skewed')}, the original toutiao keys; rows: "
        + ", ".join(f"{t} {n:,}" for t, n in (db.get("rows") or {}).items() if n is not None)
        + ".",
        f"- Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gb']} GB RAM; MariaDB {db['version']} with default "
        f"settings; a private redis-server {m['redis']}.",
        f"- Each scenario ran {args['rounds']} times per contender, alternating which went first; the table shows "
        "medians. Drift: about 1% of every counter's members, the same members each time (`bench/run.py`).",
        "",
    ]
    for scenario, title in (("empty", "From an empty Redis"), ("drift", "At 1% drift")):
        before, after = results["runs"]["before"][scenario], results["runs"]["after"][scenario]
        lines += [f"## {title}", "", "| metric | before | after | after / before |", "|---|---:|---:|---:|"]
        for label, metric in METRICS:
            b, a = median(before, metric), median(after, metric)
            ratio = f"{a / b:.2f}" if a is not None and b else ""
            lines.append(f"| {label} | {figure(b)} | {figure(a)} | {ratio} |")
        wall_b, wall_a = median(before, METRICS[0][1]), median(after, METRICS[0][1])
        verdict = "n/a"
        if wall_a is not None and wall_b:
            verdict = (
                "agrees (within 10%)"
                if abs(wall_a - wall_b) <= AGREE * wall_b
                else ("faster" if wall_a < wall_b else "SLOWER")
            )
        checks = [r.get("check", {}).get("exit") for r in after]
        lines += [
            "",
            f"- wall time: after is {verdict}; `flask stats check` after each run of after: {checks}",
            f"- exits: before {[r['exit'] for r in before]}, after {[r['exit'] for r in after]}",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
