"""Health monitor: how fast a fault is detected, and how probe load grows with worker processes.

Usage: .venv/bin/python benchmarks/health_bench.py [RUNS [SEED]]   (results: benchmarks/results/)

1. Detection time at the default settings (CHECK_INTERVAL 0.5 s, CHECK_TIMEOUT 0.5 s, FALL 2): from the
   moment a replica is killed (SIGKILL) or frozen (SIGSTOP) to the moment this process's router stops
   considering it usable, RUNS times per fault (default 10). The time depends on where in the probe
   cycle the fault lands, so each run first waits a random delay, uniform over one CHECK_INTERVAL, from
   a seeded generator (SEED, default random; recorded in the JSON to replay a run): min/median/max
   are then a real spread. Expected: kill between FALL - 1 and FALL intervals (0.5-1.0 s), freeze one
   CHECK_TIMEOUT more (1.0-1.5 s). Target <= 1.5 s.
2. Probe queries per interval with 1, 4 and 8 worker processes sharing one Redis: every worker counts the
   rounds in which it probed (one query per node each) and its rounds in all; probe queries per interval
   = all workers' probe rounds x nodes / one worker's rounds. Target: constant (one leader probes, the
   others read its snapshot). Server-side counters (pg_stat_database) are flushed by PostgreSQL about once
   a second, too coarse for this.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import django
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import start_measuring, write_results  # noqa: E402
from replicarouter.testing import LocalCluster, django_settings  # noqa: E402

# replicarouter/testing is measured too: its kill and freeze are where each timing starts
MEASURES = [
    "replicarouter",
    "benchmarks/health_bench.py",
    "benchmarks/health_worker.py",
    "benchmarks/common.py",
]


def wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.005)
    return time.monotonic()


def detection(cluster, health, fault: str, runs: int, rng: random.Random, interval: float) -> list[float]:
    times = []
    for _ in range(runs):
        wait(lambda: health.usable_replicas("default") == {"replica1", "replica2"})
        time.sleep(rng.uniform(0.0, interval))  # the fault's phase in the probe cycle
        started = time.monotonic()
        if fault == "kill":
            cluster.stop("replica1", "kill")
        else:
            cluster.freeze("replica1")
        excluded = wait(lambda: "replica1" not in health.usable_replicas("default"))
        times.append(excluded - started)
        if fault == "kill":
            cluster.start("replica1")
        else:
            cluster.thaw("replica1")
    return times


def probe_load(cluster, workers: int, seconds: float) -> dict[str, float]:
    values = django_settings(cluster, KEY_PREFIX=f"bench{uuid.uuid4().hex[:6]}")
    env = {**os.environ, "REPLICAROUTER_BENCH_SETTINGS": json.dumps(values), "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks/health_worker.py"), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for _ in range(workers)
    ]
    reports = [json.loads(p.communicate()[0]) for p in procs]
    rounds = max(r["rounds"] for r in reports)
    probe_rounds = sum(r["probe_rounds"] for r in reports)
    queries = probe_rounds * len(cluster.nodes) / rounds
    return {
        "workers": workers,
        "rounds": rounds,
        "probe_queries_per_interval": queries,
        "per_node_per_interval": queries / len(cluster.nodes),
        "steady_probers": sum(1 for r in reports if r["probe_rounds"] > 1),
    }


def main(runs: int = 10, seed: int | None = None) -> None:
    measured = start_measuring("health_bench", MEASURES)
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    with LocalCluster(replicas=2) as cluster:
        values = django_settings(cluster)
        settings.configure(INSTALLED_APPS=["replicarouter"], **values)
        django.setup()
        from replicarouter.conf import settings as rr
        from replicarouter.health import monitor
        from replicarouter.health import store as health

        interval = rr.CHECK_INTERVAL
        monitor.ensure_started()
        kill = detection(cluster, health, "kill", runs, rng, interval)
        freeze = detection(cluster, health, "freeze", runs, rng, interval)
        monitor.stop()
        load = [probe_load(cluster, n, 6.0) for n in (1, 4, 8)]

    print(
        f"defaults: CHECK_INTERVAL {rr.CHECK_INTERVAL} s, CHECK_TIMEOUT {rr.CHECK_TIMEOUT} s, FALL {rr.FALL}"
    )
    header = f"{'fault':<22} {'runs':>5} {'min s':>6} {'median s':>9} {'max s':>6}"
    print(f"{header}   (seed {seed}; target <= 1.5 s)")
    for name, samples in (("replica killed", kill), ("replica frozen", freeze)):
        print(
            f"{name:<22} {len(samples):>5} {min(samples):>6.2f} {statistics.median(samples):>9.2f} "
            f"{max(samples):>6.2f}"
        )
    print(
        f"\n{'workers':<8} {'probe queries/interval':>23} {'per node':>9} {'probing':>8} {'vs 1 worker':>12}"
    )
    base = load[0]["probe_queries_per_interval"]
    for row in load:
        ratio = row["probe_queries_per_interval"] / base
        print(
            f"{row['workers']:<8} {row['probe_queries_per_interval']:>23.2f} "
            f"{row['per_node_per_interval']:>9.2f} {row['steady_probers']:>8} {ratio:>11.2f}x"
        )
    out = write_results(
        "health_bench",
        measured,
        {
            "interval": interval,
            "timeout": rr.CHECK_TIMEOUT,
            "fall": rr.FALL,
            "seed": seed,
            "fault_phase": "uniform over one CHECK_INTERVAL before each fault",
            "detection_seconds": {"kill": kill, "freeze": freeze},
            "probe_load": load,
        },
    )
    print(f"saved {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 10, int(args[1]) if len(args) > 1 else None)
