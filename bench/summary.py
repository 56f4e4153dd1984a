"""Tables for bench/RESULTS.md from the results JSON files that bench/run.py wrote.

``python -m bench.summary [bench/results/*.json]`` prints, in Markdown, one row per run
and mode (wall times against both peers, PING, RSS, check) and the scale curve: ours'
microseconds per counter member, per mode, at each scale of a shape. A run that lacks
a peer in a mode (the old way ran from empty only at 1M) borrows the same database's
figure from another results file when there is one, and says so in parentheses. When two
runs measured the same scale, shape and mode, the later one counts in the scale curve and
the earlier row says it was superseded.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SUPERSEDED = " (superseded by a later run)"
MODES = ("empty", "quiet", "drift-0.01", "drift-1", "drift-10", "restart")


def load(paths) -> list:
    runs = []
    for path in sorted(paths):
        data = json.loads(Path(path).read_text())
        if "runs" not in data or data.get("redis_cpu") is not None:
            continue  # another kind of figure: bench.floor's, or a run with Redis on a CPU of its own
        data["file"] = Path(path).name
        runs.append(data)
    return runs


def scale(users: int) -> str:
    return f"{users // 1_000_000}M" if users % 1_000_000 == 0 else f"{users // 1000}k"


def wall(data, who, mode):
    run = data["runs"].get(f"{who}/{mode}")
    return run["wall_s"] if run and run.get("exit") == 0 else None


def seconds(value) -> str:
    return "" if value is None else f"{value:,.1f}"


def summary_rows(runs) -> list:
    """One row per (run, mode), with the old way's time from empty borrowed where missing."""
    old_empty = {}
    for data in runs:
        if wall(data, "old", "empty"):
            old_empty[(data["args"]["users"], data["shape"])] = wall(data, "old", "empty")
    lines = [
        "| scale | shape | mode | old s | hints s | ours s | ours / old | ours / hints | worst PING ms | p99 PING ms "
        "| peak RSS MB | check | commit, date |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    latest = {}
    for data in runs:
        for mode in data["modes"]:
            key = (data["args"]["users"], data["shape"], mode)
            latest[key] = max(latest.get(key, ""), data["date"])
    for data in sorted(runs, key=lambda d: (d["shape"], d["args"]["users"], d["date"])):
        users, shape = data["args"]["users"], data["shape"]
        for mode in data["modes"]:
            ours = data["runs"].get(f"ours/{mode}")
            if not ours:
                continue
            superseded = latest[(users, shape, mode)] != data["date"]
            old, hints = wall(data, "old", mode), wall(data, "hints", mode)
            borrowed = old is None and mode != "restart" and (users, shape) in old_empty
            if borrowed:
                old = old_empty[(users, shape)]
            mine = ours["wall_s"] if ours.get("exit") == 0 else None
            to_old = f"{mine / old:.3f}" if mine and old else ""
            to_hints = f"{mine / hints:.3f}" if mine and hints else ""
            if borrowed:
                to_old = f"({to_old})"
            ping = ours.get("ping") or {}
            check = (ours.get("check") or {}).get("exit", "")
            label = mode + (SUPERSEDED if superseded else "")
            old_cell = f"({seconds(old)})" if borrowed else seconds(old)
            lines.append(
                f"| {scale(users)} | {shape} | {label} | {old_cell} "
                f"| {seconds(hints)} | {seconds(mine) or ours.get('exit')} | {to_old} | {to_hints} "
                f"| {ping.get('worst_ms', '')} | {ping.get('p99_ms', '')} | {ours.get('rss_mb', '')} | {check} "
                f"| {data['machine'].get('commit', '?')}, {data['date']} |"
            )
    return lines


def scale_curve(runs) -> list:
    """Ours' microseconds per counter member, per mode, at each scale of each shape."""
    # A run of one mode alone (the restart) may not have counted the members: another run
    # of the same scale and shape (same generator, same seed) did.
    members = {(d["shape"], d["args"]["users"]): d["members_total"] for d in runs if d.get("members_total")}
    table = defaultdict(dict)
    for data in sorted(runs, key=lambda d: d["date"]):  # a later run of a mode replaces an earlier one
        scale_of = (data["shape"], data["args"]["users"])
        if scale_of not in members:
            continue
        for mode in data["modes"]:
            mine = wall(data, "ours", mode)
            if mine:
                table[scale_of][mode] = mine * 1e6 / members[scale_of]
    lines = [
        "| shape | scale | members | " + " | ".join(f"{m} us/member" for m in MODES) + " |",
        "|---|---|---:|" + "---:|" * len(MODES),
    ]
    for (shape, users), row in sorted(table.items()):
        cells = " | ".join(f"{row[m]:.2f}" if m in row else "" for m in MODES)
        lines.append(f"| {shape} | {scale(users)} | {members[shape, users]:,} | {cells} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="results JSON files [bench/results/*.json]")
    args = parser.parse_args(argv)
    runs = load(args.files or RESULTS.glob("*.json"))
    print("\n".join(["### Every run", "", *summary_rows(runs), "", "### Scale curve", "", *scale_curve(runs)]))


if __name__ == "__main__":
    main()
