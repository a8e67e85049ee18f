"""Hung Redis: request latency while Redis is frozen (SIGSTOP) for 6 s, with the circuit breaker and without.

Usage: .venv/bin/python benchmarks/redis_hung_bench.py [--seconds FREEZE] [--out PATH]
(results: benchmarks/results/redis_hung_bench.json unless --out)

One real cluster (primary + 2 replicas + Redis), default health settings (CHECK_TIMEOUT 0.5 s). 4 writer
threads drive the test app through Django's full middleware stack (tests/load.py): each writes a row,
then reads it back in its session (a miss is a stale read), so every request has a position and uses
Redis; 2 reader threads without a session read alongside. 1.5 s in, Redis is frozen for FREEZE seconds,
then thawed. Three variants, one after the other:

- ``breaker on``: what ships (request-path client with a 50 ms deadline, circuit breaker);
- ``breaker off``: the 50 ms client, every call tries Redis (``guard.ENABLED = False``);
- ``before (issue 17)``: no breaker, and the request path on the monitor's client (CHECK_TIMEOUT).

Per variant: median, p99 and max of reads (own-read) and writes that ran entirely inside the freeze,
the same before it (baseline), failures, stale reads, and request-path Redis calls skipped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import configure_test_app, start_measuring, write_results  # noqa: E402
from replicarouter.testing import LocalCluster  # noqa: E402

MEASURES = ["replicarouter", "benchmarks/redis_hung_bench.py", "benchmarks/common.py", "tests/load.py",
            "tests/testapp", "tests/urls.py"]  # fmt: skip
FREEZE_AT = 1.5


def _ms(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def summarise(variant: str, report, thaw_at: float, skipped: int) -> dict:
    def inside(r) -> bool:
        return report.fault_ended <= r.started and r.started + r.seconds < thaw_at

    def before(r) -> bool:
        return r.started >= 0.3 and r.started + r.seconds < report.fault_started

    return {
        "variant": variant,
        "requests": len(report.requests),
        "failed": len(report.failed()),
        "stale_reads": len(report.stale()),
        "redis_skipped": skipped,
        "reads_frozen": _ms([r.seconds for r in report.of("own-read") if inside(r)]),
        "writes_frozen": _ms([r.seconds for r in report.of("write") if inside(r)]),
        "reads_baseline": _ms([r.seconds for r in report.of("own-read") if before(r)]),
        "writes_baseline": _ms([r.seconds for r in report.of("write") if before(r)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="how long Redis stays frozen")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: benchmarks/results/)")
    args = parser.parse_args()
    measured = start_measuring("redis_hung_bench", MEASURES)
    with LocalCluster(replicas=2) as cluster:
        configure_test_app(cluster, "redis-hung-bench", quiet_logging=True)
        from django.core.management import call_command
        from django.db import connections

        from replicarouter import redis_client, request_context
        from replicarouter.health import monitor
        from replicarouter.observability import stats
        from replicarouter.sticky import guard
        from tests.load import Load
        from tests.testapp.models import Item

        call_command("migrate", run_syncdb=True, verbosity=0)
        with request_context():
            Item.objects.create(name="seed")
        cluster.wait_caught_up()
        monitor.ensure_started()
        time.sleep(1.5)  # the monitor's first rounds: replicas usable
        rows = []
        original = redis_client.request_client
        variants = (
            ("breaker on", True, False),
            ("breaker off", False, False),
            ("before (issue 17)", False, True),
        )
        for variant, enabled, monitor_client in variants:
            guard.ENABLED = enabled
            guard.forget()
            if monitor_client:
                redis_client.request_client = redis_client.client  # type: ignore[assignment]
            load = Load(readers=2, writers=4, join_timeout=30)
            thaw = {}

            def thaw_later(load=load, thaw=thaw) -> None:
                time.sleep(args.seconds)
                thaw["at"] = time.monotonic() - load._t0
                cluster.thaw_redis()

            skipped = stats.total("redis_skipped")
            try:
                report = load.run(
                    FREEZE_AT + args.seconds + 1.5, fault=cluster.freeze_redis, fault_at=FREEZE_AT,
                    after_fault=thaw_later,
                )  # fmt: skip
            finally:
                cluster.heal()
                redis_client.request_client = original  # type: ignore[assignment]
                guard.ENABLED = True
            rows.append(summarise(variant, report, thaw["at"], stats.total("redis_skipped") - skipped))
            print(f"  {variant} done", flush=True)
            connections.close_all()
            time.sleep(1.5)  # the monitor back on the shared snapshot before the next variant
        guard.forget()
    data = {
        "settings": {
            "freeze_seconds": args.seconds,
            "request_timeout_s": redis_client.REQUEST_TIMEOUT,
            "breaker_interval_s": guard.BREAKER_INTERVAL,
            "check_timeout_s": 0.5,
            "threads": {"writers": 4, "readers": 2},
        },
        "rows": rows,
    }
    out = write_results("redis_hung_bench", measured, data, args.out)
    for row in rows:
        r, w = row["reads_frozen"], row["writes_frozen"]
        print(
            f"{row['variant']:<20} reads med/p99/max {r['median_ms']}/{r['p99_ms']}/{r['max_ms']} ms, "
            f"writes {w['median_ms']}/{w['p99_ms']}/{w['max_ms']} ms, failed {row['failed']}, "
            f"stale {row['stale_reads']}, skipped {row['redis_skipped']}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
