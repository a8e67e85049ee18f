"""Chaos run: faults one after another under load, with and without replicarouter's failover features.

Usage: .venv/bin/python benchmarks/chaos_bench.py [SECONDS_PER_FAULT]   (results: benchmarks/results/)

One real cluster (primary + 2 replicas + Redis). For each fault, 4 reader and 2 writer threads drive the
test app through Django's full middleware stack (tests/load.py: writers read their own write back, a
miss is a stale read) while the fault happens 1.5 s in; the fault is undone and the cluster settles
before the next one. The replica faults run twice, side by side: with the defaults ("replicarouter"),
and with read retries and the read timeout switched off ("no retry/timeout": health exclusion only,
what a lag-aware router without this issue's work does). The destructive faults come last: primary
stopped (then restarted), primary stopped + replica1 promoted, old primary back as a second primary.

Per fault: requests, failures (reads / writes), stale reads, p99 latency of requests that overlapped
the fault window, the slowest request, and time to recover: from the fault until the end of the last
failed request (0 when nothing failed); for "primary stopped" failed writes are the expected outcome,
so recovery is counted from the restart.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django.conf import settings  # noqa: E402

from benchmarks.common import configure_test_app, start_measuring, write_results  # noqa: E402
from benchmarks.render import CHAOS_COLUMNS  # noqa: E402
from replicarouter.testing import LocalCluster  # noqa: E402

# replicarouter/testing is measured too: its faults (kill, freeze, promote, fencing) are what runs
MEASURES = ["replicarouter", "benchmarks/chaos_bench.py", "benchmarks/common.py", "tests/load.py",
            "tests/testapp", "tests/urls.py"]  # fmt: skip
HEALTH = {"CHECK_INTERVAL": 0.25, "CHECK_TIMEOUT": 0.5, "READ_TIMEOUT": 1.0}
OFF = {"RETRY_READS": False, "READ_TIMEOUT": None}


def configure(cluster) -> None:
    configure_test_app(cluster, "chaos-bench", quiet_logging=True, **HEALTH)


def summarise(name: str, variant: str, report, recover_from: float | None = None) -> dict:
    window = [r for r in report.requests if r.started + r.seconds >= report.fault_started]
    failed = [r for r in report.requests if not r.ok]
    start = report.fault_started if recover_from is None else recover_from
    late_failures = [r.started + r.seconds for r in failed if r.started + r.seconds >= start]
    return {
        "fault": name,
        "variant": variant,
        "requests": len(report.requests),
        "failed_reads": len([r for r in failed if r.kind != "write"]),
        "failed_writes": len([r for r in failed if r.kind == "write"]),
        "failure_kinds": sorted({f"{r.kind}:{r.error}" for r in failed}),
        "stale_reads": len(report.stale()),
        "p99_ms_during_fault": round(report.p99(window) * 1000, 1),
        "slowest_ms": round(max((r.seconds for r in report.requests), default=0.0) * 1000, 1),
        "recover_s": round(max(late_failures) - start, 2) if late_failures else 0.0,
        "hung_threads": report.hung_threads,
    }


def settle(cluster, seconds: float = 1.5) -> None:
    from replicarouter.health import store as health

    cluster.heal()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(health.usable_replicas("default")) < len(cluster.replicas):
        time.sleep(0.1)
    time.sleep(seconds)


def main(seconds: float = 6.0) -> None:
    measured = start_measuring("chaos_bench", MEASURES)
    with LocalCluster(replicas=2) as cluster:
        configure(cluster)
        from django.core.management import call_command
        from django.db import connections
        from django.test import override_settings

        from replicarouter import request_context
        from replicarouter.health import monitor
        from tests.load import Load, call, client
        from tests.testapp.models import Item

        call_command("migrate", run_syncdb=True, verbosity=0)
        with request_context():
            Item.objects.create(name="seed")
        cluster.wait_caught_up()
        monitor.ensure_started()
        settle(cluster)
        base = dict(settings.REPLICAROUTER)
        rows = []

        def run(name: str, fault, variant: str = "replicarouter", extra=None, after=None) -> None:
            with override_settings(REPLICAROUTER={**base, **(extra or {})}):
                # threads stuck on a frozen node (no read timeout) are given up on after 10 s
                report = Load(readers=4, writers=2, join_timeout=10).run(
                    seconds, fault=fault, fault_at=1.5, after_fault=after
                )
            rows.append(summarise(name, variant, report))
            print(f"  {name} [{variant}] done", flush=True)
            connections.close_all()
            settle(cluster)

        for variant, extra in (("replicarouter", None), ("no retry/timeout", OFF)):
            run("replica killed", lambda: cluster.stop("replica1", "kill"), variant, extra)
            run("replica frozen", lambda: cluster.freeze("replica1"), variant, extra)
        run("replay paused", lambda: cluster.pause_replay("replica1"))

        def restart_redis():
            time.sleep(1.5)
            cluster.start_redis()

        run("redis stopped+started", cluster.stop_redis, after=restart_redis)

        def terminate_mid_transaction():
            done = {}

            def victim():
                done["request"], _ = call(
                    client(), "write", "/load/transaction/", {"tag": "chaos", "sleep": "2.5"}
                )

            thread = threading.Thread(target=victim)
            thread.start()
            while not cluster.primary.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%2.5%%' AND pid <> pg_backend_pid()"
            ):
                time.sleep(0.02)
            cluster.primary.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%%2.5%%' "
                "AND pid <> pg_backend_pid()"
            )
            thread.join()

        run("backend killed mid-transaction", terminate_mid_transaction)

        restart = {}

        def restart_primary():
            time.sleep(2.0)
            restart["at"] = time.monotonic()
            cluster.start(cluster.primary)

        with override_settings(REPLICAROUTER=base):
            load = Load(readers=4, writers=2)
            report = load.run(
                seconds, fault=lambda: cluster.stop(cluster.primary, "fast"), after_fault=restart_primary
            )
        row = summarise(
            "primary stopped, restarted 2 s later", "replicarouter", report, restart["at"] - load._t0
        )
        row["writes_refused_fast"] = all(
            r.seconds < 2.5 for r in report.requests if r.kind == "write" and r.error == "PrimaryUnavailable"
        )
        rows.append(row)
        connections.close_all()
        settle(cluster)

        def promote():
            cluster.stop(cluster.primary, "fast")
            cluster.promote("replica1")

        with override_settings(REPLICAROUTER=base):
            load = Load(readers=4, writers=2)
            report = load.run(seconds, fault=promote)
        row = summarise("primary stopped + replica1 promoted", "replicarouter", report, report.fault_ended)
        acknowledged = report.acknowledged_writes()
        row["acknowledged_writes"] = len(acknowledged)
        row["acknowledged_writes_lost"] = len(acknowledged) - cluster.node("replica1").scalar(
            "SELECT count(*) FROM testapp_item WHERE id = ANY(%s)", (acknowledged,)
        )
        resumed = [r.started + r.seconds for r in report.requests if r.kind == "write" and r.ok]
        resumed = [t for t in resumed if t > report.fault_started]
        row["writes_resumed_after_promotion_s"] = (
            round(min(resumed) - report.fault_ended, 3) if resumed else None
        )
        rows.append(row)
        connections.close_all()
        time.sleep(1.0)

        old = cluster.node("primary") if any(n.name == "primary" for n in cluster.nodes) else None
        old = old or next(n for n in cluster.nodes if n.role == "detached")
        counted = {}

        def second_primary():
            cluster.start(old)
            counted["rows"] = old.scalar("SELECT count(*) FROM testapp_item")

        with override_settings(REPLICAROUTER=base):
            report = Load(readers=4, writers=2).run(seconds, fault=second_primary)
        row = summarise("old primary back as 2nd primary", "replicarouter", report)
        row["writes_reaching_fenced_node"] = old.scalar("SELECT count(*) FROM testapp_item") - counted["rows"]
        rows.append(row)
        connections.close_all()
        monitor.stop()

    header = CHAOS_COLUMNS
    widths = (38, 17, 8, 10, 5, 4, 8, 10, 9)
    print(
        " ".join(
            h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for row in rows:
        cells = (
            row["fault"],
            row["variant"],
            str(row["requests"]),
            f"{row['failed_reads']}/{row['failed_writes']}",
            str(row["stale_reads"]),
            str(len(row["hung_threads"])),
            f"{row['p99_ms_during_fault']:.0f}",
            f"{row['slowest_ms']:.0f}",
            f"{row['recover_s']:.2f}",
        )
        print(
            " ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    by = {(r["fault"], r["variant"]): r for r in rows}
    for fault in ("replica killed", "replica frozen"):
        on, off = by[(fault, "replicarouter")], by[(fault, "no retry/timeout")]
        print(
            f"{fault}: failed reads {on['failed_reads']} vs {off['failed_reads']}, hung requests "
            f"{len(on['hung_threads'])} vs {len(off['hung_threads'])} without retries/timeout; "
            f"p99 {on['p99_ms_during_fault'] / max(off['p99_ms_during_fault'], 0.1):.2f}x"
        )
    out = write_results(
        "chaos_bench", measured, {"seconds_per_fault": seconds, "settings": HEALTH, "rows": rows}
    )
    print(f"saved {out}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 6.0)
