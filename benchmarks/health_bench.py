"""Health monitor: how fast a fault is detected, and how probe load grows with worker processes.

Usage: .venv/bin/python benchmarks/health_bench.py   (results: benchmarks/results/health_bench.json)

1. Detection time at the default settings (CHECK_INTERVAL 0.5 s, CHECK_TIMEOUT 0.5 s, FALL 2): from the
   moment a replica is killed (SIGKILL) or frozen (SIGSTOP) to the moment this process's router stops
   considering it usable. Target <= 1.5 s.
2. Probe queries per interval with 1, 4 and 8 worker processes sharing one Redis: every worker counts the
   rounds in which it probed (one query per node each) and its rounds in all; probe queries per interval
   = all workers' probe rounds x nodes / one worker's rounds. Target: constant (one leader probes, the
   others read its snapshot). Server-side counters (pg_stat_database) are flushed by PostgreSQL about once
   a second, too coarse for this.
"""

from __future__ import annotations

import json
import os
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

from replicarouter.testing import LocalCluster, django_settings  # noqa: E402


def wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.005)
    return time.monotonic()


def detection(cluster, health, fault: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        wait(lambda: health.usable_replicas("default") == {"replica1", "replica2"})
        time.sleep(0.3)
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


def main() -> None:
    with LocalCluster(replicas=2) as cluster:
        values = django_settings(cluster)
        settings.configure(INSTALLED_APPS=["replicarouter"], **values)
        django.setup()
        from replicarouter import health
        from replicarouter.conf import settings as rr
        from replicarouter.health import monitor

        monitor.ensure_started()
        kill = detection(cluster, health, "kill", 5)
        freeze = detection(cluster, health, "freeze", 5)
        monitor.stop()
        interval = rr.CHECK_INTERVAL
        load = [probe_load(cluster, n, 6.0) for n in (1, 4, 8)]

    print(
        f"defaults: CHECK_INTERVAL {rr.CHECK_INTERVAL} s, CHECK_TIMEOUT {rr.CHECK_TIMEOUT} s, FALL {rr.FALL}"
    )
    print(f"{'fault':<22} {'median s':>9} {'max s':>7}   (5 runs; target <= 1.5 s)")
    for name, samples in (("replica killed", kill), ("replica frozen", freeze)):
        print(f"{name:<22} {statistics.median(samples):>9.2f} {max(samples):>7.2f}")
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
    out = ROOT / "benchmarks/results/health_bench.json"
    out.write_text(json.dumps({"detection_seconds": {"kill": kill, "freeze": freeze}, "probe_load": load,
                               "interval": interval}, indent=2) + "\n")  # fmt: skip
    print(f"saved {out}")


if __name__ == "__main__":
    main()
