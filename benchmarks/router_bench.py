"""Cost of one routing decision: ReplicaRouter.db_for_read next to Django's documented random router.

Usage: .venv/bin/python benchmarks/router_bench.py [ROUNDS]   (results: benchmarks/results/router_bench.json)

Against a cluster of its own (replicarouter.testing.LocalCluster: primary + 2 replicas + Redis), with the
health monitor running and its snapshot showing both replicas usable before anything is timed, so that
"replica read" really picks a replica (the bench checks the alias each row chose, before and after
every batch, and aborts if a row routed elsewhere than it says). No query is sent while timing: routing
decides from cached settings, contextvars and the in-memory health snapshot. Each router is timed in
batches of 1000 calls, the rows interleaved over ROUNDS rounds (default 5) so that all see the same
machine noise; the table shows the median per call and the spread of the rounds' medians.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import start_measuring, write_results  # noqa: E402

MEASURES = ["replicarouter", ":(exclude)replicarouter/testing", "benchmarks/router_bench.py",
            "benchmarks/common.py"]  # fmt: skip
Row = tuple[Callable[[], AbstractContextManager[Any]], Callable[[Any], "str | None"], set[str]]
BATCHES = 80  # per row and round
BATCH = 1000


class DjangoDocsRouter:
    """The primary/replica router from Django's multi-database documentation."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return random.choice(["replica1", "replica2"])


def per_call_us(func: Callable[[Any], str | None], model: Any) -> list[float]:
    samples = []
    for _ in range(BATCHES):
        started = time.perf_counter()
        for _ in range(BATCH):
            func(model)
        samples.append((time.perf_counter() - started) / BATCH * 1e6)
    return samples


def wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("router_bench: the health monitor never showed both replicas usable")
        time.sleep(0.01)


def main(rounds: int = 5) -> None:
    measured = start_measuring("router_bench", MEASURES)
    import django
    from django.conf import settings

    from replicarouter.testing import LocalCluster, django_settings

    with LocalCluster(replicas=2) as cluster:
        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "replicarouter"],
            DATABASE_ROUTERS=["replicarouter.router.ReplicaRouter"],
            **django_settings(cluster),
        )
        django.setup()
        from django.contrib.auth.models import User

        from replicarouter import request_context, use_primary
        from replicarouter.health import monitor
        from replicarouter.health import store as health
        from replicarouter.routing import context
        from replicarouter.routing.router import ReplicaRouter

        replicas = {r.name for r in cluster.replicas}
        monitor.ensure_started()
        wait(lambda: health.usable_replicas("default") == replicas)
        ours, docs = ReplicaRouter(), DjangoDocsRouter()

        @contextmanager
        def after_write() -> Iterator[None]:
            with request_context():
                context.mark_write("default")
                yield

        # row: (how to enter its context, the router, the aliases it must choose)
        rows: dict[str, Row] = {
            "django docs random router": (request_context, docs.db_for_read, replicas),
            "ReplicaRouter (replica read)": (request_context, ours.db_for_read, replicas),
            "ReplicaRouter (after a write)": (after_write, ours.db_for_read, {"default"}),
            "ReplicaRouter (use_primary)": (use_primary, ours.db_for_read, {"default"}),
        }
        samples: dict[str, list[float]] = {name: [] for name in rows}
        round_medians: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(rounds):  # interleave so that all rows see the same noise
            for name, (enter, func, expected) in rows.items():
                with enter():
                    check(name, func, User, expected)
                    batch = per_call_us(func, User)
                    check(name, func, User, expected)
                samples[name] += batch
                round_medians[name].append(statistics.median(batch))
        monitor.stop()

    baseline = statistics.median(samples["django docs random router"])
    print(f"{'router':<32} {'median µs':>10} {'p90 µs':>8} {'rounds µs':>13} {'vs docs':>8}")
    results = {}
    for name, values in samples.items():
        median = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        low, high = min(round_medians[name]), max(round_medians[name])
        results[name] = {
            "median_us": median,
            "p90_us": p90,
            "round_medians_us": round_medians[name],
            "ratio_vs_docs": median / baseline,
            "chose": sorted(rows[name][2]),
        }
        print(f"{name:<32} {median:>10.3f} {p90:>8.3f} {low:>6.2f}–{high:<6.2f} {median / baseline:>7.2f}x")
    out = write_results(
        "router_bench",
        measured,
        {
            "python": sys.version.split()[0],
            "django": django.__version__,
            "rounds": rounds,
            "batches_per_round": BATCHES,
            "batch": BATCH,
            "results": results,
        },
    )
    print(f"target: ReplicaRouter median <= 3 µs; saved {out}")


def check(name: str, func: Callable[[Any], str | None], model: Any, expected: set[str]) -> None:
    """Abort unless ``func`` routes ``model`` to one of ``expected`` (the row measures what it says)."""
    chosen = {func(model) for _ in range(10)}
    if not chosen <= expected:
        raise SystemExit(
            f"router_bench: row {name!r} routed to {sorted(map(str, chosen))}, not {sorted(expected)}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
