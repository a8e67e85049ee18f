"""Cost of one routing decision: ReplicaRouter.db_for_read next to Django's documented random router.

Usage: .venv/bin/python benchmarks/router_bench.py   (results: benchmarks/results/router_bench.json)

No database is touched: routing decides from cached settings and contextvars only. Each router is timed
in batches of 1000 calls, many batches interleaved so that both see the same machine noise; the table
shows the median per call.
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import time
from pathlib import Path

import django
from django.conf import settings

ENGINE = "replicarouter.backends.postgresql"
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "replicarouter"],
    DATABASES={
        "default": {"ENGINE": ENGINE, "NAME": "app"},
        "replica1": {"ENGINE": ENGINE, "NAME": "app", "TEST": {"MIRROR": "default"}},
        "replica2": {"ENGINE": ENGINE, "NAME": "app", "TEST": {"MIRROR": "default"}},
    },
    REPLICAROUTER={"CLUSTERS": {"default": {"PRIMARY": "default", "REPLICAS": ["replica1", "replica2"]}}},
)
django.setup()

from django.contrib.auth.models import User  # noqa: E402

from replicarouter import request_context, use_primary  # noqa: E402
from replicarouter.router import ReplicaRouter  # noqa: E402


class DjangoDocsRouter:
    """The primary/replica router from Django's multi-database documentation."""

    def db_for_read(self, model, **hints):
        return random.choice(["replica1", "replica2"])


def per_call_us(func, batches: int = 400, batch: int = 1000) -> list[float]:
    samples = []
    for _ in range(batches):
        started = time.perf_counter()
        for _ in range(batch):
            func(User)
        samples.append((time.perf_counter() - started) / batch * 1e6)
    return samples


def main() -> None:
    ours = ReplicaRouter()
    docs = DjangoDocsRouter()
    names = ["django docs random router", "ReplicaRouter (replica read)", "ReplicaRouter (after a write)",
             "ReplicaRouter (use_primary)"]  # fmt: skip
    rows: dict[str, list[float]] = {name: [] for name in names}
    with request_context():
        for _ in range(5):  # interleave so that both routers see the same noise
            rows["django docs random router"] += per_call_us(docs.db_for_read, batches=80)
            rows["ReplicaRouter (replica read)"] += per_call_us(ours.db_for_read, batches=80)
            with request_context():
                from replicarouter import context

                context.mark_write("default")
                rows["ReplicaRouter (after a write)"] += per_call_us(ours.db_for_read, batches=80)
            with use_primary():
                rows["ReplicaRouter (use_primary)"] += per_call_us(ours.db_for_read, batches=80)
    baseline = statistics.median(rows["django docs random router"])
    print(f"{'router':<32} {'median µs':>10} {'p90 µs':>8} {'vs docs':>8}")
    results = {}
    for name, samples in rows.items():
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        results[name] = {"median_us": median, "p90_us": p90, "ratio_vs_docs": median / baseline}
        print(f"{name:<32} {median:>10.3f} {p90:>8.3f} {median / baseline:>7.2f}x")
    out = Path(__file__).parent / "results" / "router_bench.json"
    out.write_text(json.dumps({"python": platform.python_version(), "django": django.__version__,
                               "results": results}, indent=2) + "\n")  # fmt: skip
    print(f"target: ReplicaRouter median <= 3 µs; saved {out}")


if __name__ == "__main__":
    main()
