"""Read-your-writes: replica share and stale reads for LSN stickiness vs a 15 s time pin vs none.

Usage: .venv/bin/python benchmarks/sticky_bench.py [SECONDS_PER_MODE]   (results: benchmarks/results/)

A real cluster (primary + 2 replicas + Redis) with replay delayed by 300 ms on both replicas (a modest,
realistic lag), the test app's views behind the full middleware stack (signed-cookie sessions,
ReplicaRouterMiddleware), and 20 sessions taking turns: each request either writes a row (5 %) or reads
the session's own latest row and a shared row. A stale read is a session not finding its own write. The
three modes run one after the other in one run, with the same random sequence.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django.conf import settings  # noqa: E402

from benchmarks.common import configure_test_app, start_measuring, write_results  # noqa: E402
from replicarouter.testing import LocalCluster  # noqa: E402

MEASURES = ["replicarouter", ":(exclude)replicarouter/testing", "benchmarks/sticky_bench.py",
            "benchmarks/common.py", "tests/testapp", "tests/urls.py"]  # fmt: skip
SESSIONS = 20
WRITE_SHARE = 0.05


def configure(cluster) -> None:
    configure_test_app(cluster, "sticky-bench", CHECK_INTERVAL=0.2, CHECK_TIMEOUT=0.4)


def run_mode(cluster, mode: str, extra: dict, seconds: float) -> dict:
    from django.db import connections
    from django.test import Client, override_settings

    roles = {n.port: ("primary" if n.role == "primary" else "replica") for n in cluster.nodes}
    rng = random.Random(42)
    base = dict(settings.REPLICAROUTER)
    reads = {"primary": 0, "replica": 0}
    stale = 0
    requests = 0
    with override_settings(REPLICAROUTER={**base, "STICKY": mode, **extra}):
        clients = [Client() for _ in range(SESSIONS)]
        latest = [clients[i].get("/sticky/write/", {"name": "init"}).json()["id"] for i in range(SESSIONS)]
        shared = latest[0]
        time.sleep(1.0)
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            session = i % SESSIONS
            client = clients[session]
            if rng.random() < WRITE_SHARE:
                latest[session] = client.get("/sticky/write/", {"name": f"s{session}"}).json()["id"]
            else:
                own = client.get("/sticky/read/", {"id": latest[session]}).json()
                other = client.get("/sticky/read/", {"id": shared}).json()
                stale += 0 if own["found"] else 1
                for answer in (own, other):
                    reads[roles[answer["port"]]] += 1
            requests += 1
            i += 1
            time.sleep(0.002)
        connections.close_all()
    total = reads["primary"] + reads["replica"]
    return {
        "mode": mode,
        "extra": extra,
        "requests": requests,
        "reads": total,
        "replica_share": reads["replica"] / total if total else 0.0,
        "stale_reads": stale,
    }


def main(seconds: float = 10.0) -> None:
    measured = start_measuring("sticky_bench", MEASURES)
    with LocalCluster(replicas=2) as cluster:
        configure(cluster)
        from django.core.management import call_command

        call_command("migrate", run_syncdb=True, verbosity=0)
        cluster.wait_caught_up()
        for replica in cluster.replicas:
            cluster.delay_replay(replica, 0.3)
        from replicarouter.health import monitor

        monitor.ensure_started()
        time.sleep(1.0)
        rows = [
            run_mode(cluster, "lsn", {}, seconds),
            run_mode(cluster, "time", {"STICKY_SECONDS": 15.0}, seconds),
            run_mode(cluster, "off", {}, seconds),
        ]
        monitor.stop()
    pin = rows[1]["replica_share"]
    header = ("mode", "requests", "reads", "replica share", "stale reads", "vs 15 s pin")
    print(f"{header[0]:<24} {header[1]:>8} {header[2]:>6} {header[3]:>14} {header[4]:>12} {header[5]:>12}")
    for row in rows:
        label = {"lsn": "lsn (WAL position)", "time": "time (15 s pin)", "off": "off (no stickiness)"}[
            row["mode"]
        ]
        ratio = (
            f"{row['replica_share'] / pin:.2f}x"
            if pin
            else ("-" if not row["replica_share"] else "pin is 0 %")
        )
        print(
            f"{label:<24} {row['requests']:>8} {row['reads']:>6} {row['replica_share']:>13.1%} "
            f"{row['stale_reads']:>12} {ratio:>12}"
        )
    print("target: lsn >= 2x the replica share of the 15 s pin, with 0 stale reads")
    out = write_results(
        "sticky_bench", measured, {"seconds_per_mode": seconds, "replay_delay_s": 0.3, "rows": rows}
    )
    print(f"saved {out}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
