"""The machine's own PING floor over a window as long as a run: ``python -m bench.floor``.

``bench/run.py`` measures the floor for ``--floor-seconds`` (15 s) before its contenders.
The worst PING grows with the window (a longer window meets rarer stalls), and a run at
a million users lasts 30-130 s: this measures a private Redis's PING idle, then with a
busy loop on every core, for ``--seconds`` each with nothing else running, with the CPU
time the hypervisor took from this machine meanwhile (steal, from ``/proc/stat``), and
writes them to ``--results`` (JSON).

With ``--grow N`` it then grows one sorted set to N members, 250 per ZADD as a rebuild
writes its staging key, alone on the machine, and reports the slowest ZADDs (seen by the
client, and inside Redis by its LATENCY monitor): what growing a large key costs Redis
by itself (its hash table doubles as it grows).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.run import ROOT, PrivateRedis, machine, machine_floor


def steal_ms() -> float:
    """CPU time stolen from this machine by its hypervisor since boot, all CPUs, in ms."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="seconds idle, then as many busy [120]")
    parser.add_argument(
        "--results", default=str(ROOT / "bench" / "results" / f"floor-{time.strftime('%Y%m%d-%H%M')}.json")
    )
    parser.add_argument("--grow", type=int, default=0, help="then grow a sorted set to this many members [0: no]")
    args = parser.parse_args(argv)
    stolen = steal_ms()
    with PrivateRedis() as server:
        floor = machine_floor(server.port, args.seconds)
        grown = grow(server.client(), args.grow) if args.grow else None
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "floor": floor,
        "steal_ms": round(steal_ms() - stolen, 1),
        "grow": grown,
    }
    Path(args.results).write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps({"idle": floor["idle"], "busy": floor["busy"], "steal_ms": data["steal_ms"], "grow": grown}))


def grow(client, members: int, per_command: int = 250) -> dict:
    """Grow one sorted set to ``members`` members, ``per_command`` per ZADD; return the
    slowest ZADDs as the client saw them (ms, and the set's size then) and Redis's own."""
    client.execute_command("LATENCY", "RESET")
    seen = []
    started = time.monotonic()
    for first in range(1, members + 1, per_command):
        args = []
        for member in range(first, min(first + per_command, members + 1)):
            args += (1 + member % 7, member)
        before = time.monotonic()
        client.execute_command("ZADD", "bench:grow", *args)
        seen.append((round((time.monotonic() - before) * 1000, 2), first - 1))
    seconds = time.monotonic() - started
    seen.sort(reverse=True)
    latest = {event: worst for event, _, _, worst in client.execute_command("LATENCY", "LATEST")}
    client.unlink("bench:grow")
    return {
        "members": members,
        "seconds": round(seconds, 1),
        "slowest_ms_at_size": seen[:5],
        "redis_worst_ms": latest,
    }


if __name__ == "__main__":
    main()
