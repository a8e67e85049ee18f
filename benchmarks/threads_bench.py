"""Benchmark of issue 15: threads that never close their connections, sharing a small pool.

Usage: .venv/bin/python benchmarks/threads_bench.py [--quick] [--duration SECONDS] [--rounds N]
(results: benchmarks/results/threads_bench.json, documentation: docs/benchmarks.md)

Django keeps one connection per thread until ``close()``; threads that never end a request (thread pools,
queue consumers, long-running commands, Django's test ``Client``) never close it. With ``POOL["RELEASE"] =
"transaction"`` (the default) our backend gives the pooled connection back after each unit of work, so
64 such threads can share a pool of 8. This benchmark runs, in one Python process against one PostgreSQL
server (``LocalCluster(replicas=0)``), 64 threads per variant that loop over ORM work and never call
``close()``:

  django        Django's postgresql backend, CONN_MAX_AGE=None: one persistent connection per thread (64)
  transaction   replicarouter, POOL SIZE 8, MAX_OVERFLOW 0, RELEASE "transaction"
  request64     replicarouter, POOL SIZE 64, MAX_OVERFLOW 0, RELEASE "request" (one held per thread, as 0.1)
  request8      replicarouter, POOL SIZE 8, MAX_OVERFLOW 0, RELEASE "request", TIMEOUT 0.5 s: the first
                8 threads keep a connection for good, the other 56 only ever get PoolExhausted

Work units: ``read`` = 5 indexed ``Item.objects.get()`` in autocommit (5 borrows per unit with RELEASE
"transaction"); ``mixed`` = the same reads plus an UPDATE in one ``transaction.atomic()`` (one borrow).
The variants' threads all live for the whole run (a variant's threads wait on an event while another is
measured, keeping whatever connection they hold); each variant is measured in turn for ``--rounds``
rounds in alternating order, while a thread counts the server's client backends with that variant's
``application_name`` every 50 ms (as ``pool_bench`` does). Throughput is units/s (mean of the rounds),
latency per unit p50/p99 (median of the rounds), peak connections the maximum. Benchmarks assert no
durations: the verdicts against the targets (``transaction`` ≥ 0.95 × ``django``, its peak ≤ 8) are
printed and saved.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# our backend is a psycopg2 backend: Django must not pick psycopg 3 here (see pool_bench)
sys.modules.setdefault("psycopg", None)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.pool_bench import (  # noqa: E402
    ROWS,
    ConnectionSampler,
    CpuAccount,
    create_table,
    sigterm_as_interrupt,
)

RESULTS = ROOT / "benchmarks" / "results" / "threads_bench.json"
MEASURES = ["replicarouter", ":(exclude)replicarouter/testing", "benchmarks/threads_bench.py",
            "benchmarks/pool_bench.py", "benchmarks/app", "benchmarks/common.py"]  # fmt: skip
THREADS = 64
SIZE = 8
MAX_OVERFLOW = 0
READS = 5
TARGET = 0.95
ENGINE = "replicarouter.backends.postgresql"


@dataclass(frozen=True)
class Variant:
    """One way to give 64 threads their connections: Django's own (``pool`` None) or one of our pools."""

    label: str
    pool: dict[str, Any] | None = None


VARIANTS: dict[str, Variant] = {
    "django": Variant("Django, CONN_MAX_AGE=None"),
    "transaction": Variant(
        f"replicarouter SIZE {SIZE}, transaction", {"SIZE": SIZE, "MAX_OVERFLOW": MAX_OVERFLOW}
    ),
    "request64": Variant(
        f"replicarouter SIZE {THREADS}, request",
        {"SIZE": THREADS, "MAX_OVERFLOW": 0, "RELEASE": "request"},
    ),
    "request8": Variant(
        f"replicarouter SIZE {SIZE}, request",
        {"SIZE": SIZE, "MAX_OVERFLOW": 0, "RELEASE": "request", "TIMEOUT": 0.5},
    ),
}
#: (work unit, the variants measured side by side with it); request8 only shows starvation once
PLAN: list[tuple[str, tuple[str, ...]]] = [
    ("read", ("django", "transaction", "request64", "request8")),
    ("mixed", ("django", "transaction", "request64")),
]
STATEMENTS = {"read": READS, "mixed": READS + 1}


def application_name(variant: str) -> str:
    return f"threads-bench-{variant}"


def databases(node: Any) -> dict[str, Any]:
    """Return ``DATABASES``: one alias per variant, named after it ("default" is Django's, unused)."""
    entries: dict[str, Any] = {}
    for key, variant in {"default": VARIANTS["django"], **VARIANTS}.items():
        options = {"sslmode": "disable", "application_name": application_name(key)}
        if variant.pool is None:
            entries[key] = node.settings("django.db.backends.postgresql", CONN_MAX_AGE=None, OPTIONS=options)
        else:
            entries[key] = node.settings(ENGINE, CONN_MAX_AGE=0, OPTIONS=options, POOL=variant.pool)
    return entries


def configure(node: Any) -> None:
    import django
    from django.conf import settings

    entries = databases(node)
    settings.configure(
        DATABASES=entries,
        # each pooled alias the primary of a cluster of its own: borrows go to the writer, as in production
        REPLICAROUTER={
            "CLUSTERS": {alias: {"PRIMARY": alias} for alias, e in entries.items() if e["ENGINE"] == ENGINE}
        },
        INSTALLED_APPS=["benchmarks.app"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        SECRET_KEY="benchmark-only-not-secret",
    )
    django.setup()


def work(unit: str, alias: str) -> None:
    """Run one unit of work on ``alias`` (the thread's own Django connection, never closed)."""
    from django.db import transaction
    from django.db.models import F

    from benchmarks.app.models import Item

    def reads() -> None:
        for _ in range(READS):
            Item.objects.using(alias).get(key=random.randrange(ROWS))

    if unit == "read":
        reads()
        return
    with transaction.atomic(using=alias):
        reads()
        Item.objects.using(alias).filter(key=random.randrange(ROWS)).update(value=F("value") + 1)


@dataclass
class Window:
    """What one variant's threads did in one measurement window.

    ``ops`` counts, per thread, the units finished inside the window (throughput); ``latencies`` and
    ``errors`` cover every unit *started* inside it, including the ``late`` ones that finished only
    while the crew paused (a thread that waited for a connection all window long shows up there).
    """

    seconds: float = 0.0
    ops: list[int] = field(default_factory=list)
    late: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


class Crew:
    """The ``THREADS`` threads of one variant: alive for the whole run, never closing their connections.

    They run units of work while ``go`` is set and wait on it otherwise. ``busy`` counts the units under
    way; ``go`` is cleared and ``busy`` tested under one lock, so after ``pause()`` no unit runs until the
    next ``measure()`` (the variants never overlap).
    """

    def __init__(self, alias: str, threads: int = THREADS) -> None:
        self.alias = alias
        self.unit = "read"
        self.go = threading.Event()
        self.stopping = False
        self._cond = threading.Condition()
        self._busy = 0
        self._window = Window(ops=[0] * threads)
        self._measuring = False
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"threads-bench-{alias}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, index: int) -> None:
        from django.db import connections

        try:
            while True:
                self.go.wait()
                if self.stopping:
                    return
                with self._cond:
                    if not self.go.is_set():
                        continue
                    self._busy += 1
                try:
                    self._one(index)
                finally:
                    with self._cond:
                        self._busy -= 1
                        self._cond.notify_all()
        finally:
            connections.close_all()  # only once the run is over

    def _one(self, index: int) -> None:
        window, counted = self._window, self._measuring
        started = time.perf_counter()
        try:
            work(self.unit, self.alias)
        except Exception as exc:  # PoolExhausted for request8; anything else is reported too
            if counted:
                window.errors[type(exc).__name__] += 1
            return
        if counted:
            window.latencies.append(time.perf_counter() - started)
            if self._measuring:
                window.ops[index] += 1
            else:
                window.late += 1

    def measure(self, seconds: float, measuring: bool = True) -> Window:
        """Let the threads work for ``seconds``; return what they did."""
        self._window = window = Window(ops=[0] * len(self.threads))
        self._measuring = measuring
        started = time.perf_counter()
        self.go.set()
        time.sleep(seconds)  # the measurement window itself
        self._measuring = False
        window.seconds = time.perf_counter() - started
        self.pause()
        return window

    def pause(self) -> None:
        with self._cond:
            self.go.clear()
            self._cond.wait_for(lambda: self._busy == 0)

    def stop(self) -> None:
        self.stopping = True
        self.go.set()
        for thread in self.threads:
            thread.join(timeout=10)


def measure_unit(
    unit: str,
    keys: tuple[str, ...],
    crews: dict[str, Crew],
    node: Any,
    seconds: float,
    warmup: float,
    rounds: int,
) -> list[dict[str, Any]]:
    """Measure the variants ``keys`` on one work unit, side by side; return one row per variant."""
    from replicarouter import pool as pools

    node.query("VACUUM ANALYZE bench_item", timeout=60)
    for key in keys:
        crews[key].unit = unit
        crews[key].measure(warmup, measuring=False)
    segment = seconds / rounds
    results: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
    per_thread: dict[str, list[int]] = {key: [0] * THREADS for key in keys}
    for round_ in range(rounds):
        for key in keys if round_ % 2 == 0 else keys[::-1]:
            sampler = ConnectionSampler(node, application_name(key))
            sampler.start()
            try:
                window = crews[key].measure(segment)
            finally:
                connections = sampler.finish()
            ops = sum(window.ops)
            per_thread[key] = [a + b for a, b in zip(per_thread[key], window.ops, strict=True)]
            latencies = sorted(window.latencies)
            results[key].append(
                {
                    "seconds": round(window.seconds, 3),
                    "units": ops,
                    "units_per_s": round(ops / window.seconds, 1),
                    "p50_ms": round(1e3 * latencies[len(latencies) // 2], 3) if latencies else None,
                    "p99_ms": round(1e3 * latencies[int(len(latencies) * 0.99)], 3) if latencies else None,
                    "max_ms": round(1e3 * latencies[-1], 3) if latencies else None,
                    "late_units": window.late,
                    "errors": dict(window.errors),
                    "threads_served": sum(1 for n in window.ops if n),
                    "server_connections": connections,
                }
            )
    rows = []
    for key, measured in results.items():
        rates = [r["units_per_s"] for r in measured]
        mean = sum(rates) / len(rates)
        errors: Counter[str] = Counter()
        for r in measured:
            errors.update(r["errors"])
        p50 = [r["p50_ms"] for r in measured if r["p50_ms"] is not None]
        p99 = [r["p99_ms"] for r in measured if r["p99_ms"] is not None]
        served = per_thread[key]
        variant = VARIANTS[key]
        rows.append(
            {
                "variant": key,
                "label": variant.label,
                "unit": unit,
                "pool": variant.pool,
                "threads": THREADS,
                "units_per_s": round(mean, 1),
                "statements_per_s": round(mean * STATEMENTS[unit], 1),
                "p50_ms": statistics.median(p50) if p50 else None,
                "p99_ms": statistics.median(p99) if p99 else None,
                "max_ms": max((r["max_ms"] for r in measured if r["max_ms"] is not None), default=None),
                "peak_server_connections": max(r["server_connections"]["peak"] for r in measured),
                "errors": dict(errors),
                "threads_served": sum(1 for n in served if n),
                "units_per_thread_min_max": [min(served), max(served)],
                "rps_spread_pct": round((max(rates) - min(rates)) / mean * 100, 1) if mean else None,
                "rounds": measured,
                "pool_stats": pools.registry.stats(key) if variant.pool is not None else None,
            }
        )
        row = rows[-1]
        print(
            f"{variant.label:<36} {unit:<5} {row['units_per_s']:7.0f} units/s  p50 "
            f"{row['p50_ms'] or 0:6.2f} ms  p99 {row['p99_ms'] or 0:6.2f} ms  "
            f"max {row['max_ms'] or 0:6.0f} ms  peak conns {row['peak_server_connections']:3}  "
            f"threads served {row['threads_served']:2}/{THREADS}  (rounds ±{row['rps_spread_pct'] or 0:.0f}%)"
            + (f"  errors {dict(errors)}" if errors else ""),
            flush=True,
        )
    return rows


def find(rows: list[dict[str, Any]], variant: str, unit: str) -> dict[str, Any] | None:
    return next((r for r in rows if (r["variant"], r["unit"]) == (variant, unit)), None)


def summary(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Return the verdict lines printed under the table, and the same numbers for the JSON."""
    lines: list[str] = []
    data: dict[str, Any] = {}
    for unit, _ in PLAN:
        base = find(rows, "django", unit)
        for key in ("transaction", "request64"):
            row = find(rows, key, unit)
            if base is None or row is None or not base["units_per_s"]:
                continue
            value = row["units_per_s"] / base["units_per_s"]
            name = f"{key}/django {unit}"
            data[name] = round(value, 3)
            text = f"{name:<24}: {value:.2f}"
            if key == "transaction":
                text += f"   ({'meets' if value >= TARGET else 'MISSES'} target >= {TARGET:.2f})"
            noise = max(base["rps_spread_pct"] or 0.0, row["rps_spread_pct"] or 0.0)
            if abs(value - 1.0) * 100 <= noise:
                text += f"; within the rounds' spread ({noise:.0f} %): no measurable difference"
            lines.append(text)
    for key, variant in VARIANTS.items():
        found = [r for r in rows if r["variant"] == key]
        if not found:
            continue
        peak = max(r["peak_server_connections"] for r in found)
        data[f"{key} peak server connections"] = peak
        text = f"{variant.label:<36}: peak {peak:3} server connections for {THREADS} threads"
        if key == "transaction":
            limit = SIZE + MAX_OVERFLOW
            text += f" ({'meets' if peak <= limit else 'MISSES'} target <= {limit})"
        served = min(r["threads_served"] for r in found)
        errors = sum(sum(r["errors"].values()) for r in found)
        if served < THREADS or errors:
            text += f"; only {served}/{THREADS} threads served, {errors} failed units"
        lines.append(text)
    return lines, data


def table(rows: list[dict[str, Any]]) -> str:
    header = ["variant", "unit", "units/s", "p50 ms", "p99 ms", "max ms", "peak conns", "served", "failed",
              "vs django"]  # fmt: skip
    lines = []
    for row in rows:
        base = find(rows, "django", row["unit"])
        ratio = row["units_per_s"] / base["units_per_s"] if base and base["units_per_s"] else None
        lines.append(
            [
                row["label"],
                row["unit"],
                f"{row['units_per_s']:.0f}",
                "-" if row["p50_ms"] is None else f"{row['p50_ms']:.2f}",
                "-" if row["p99_ms"] is None else f"{row['p99_ms']:.2f}",
                "-" if row["max_ms"] is None else f"{row['max_ms']:.0f}",
                str(row["peak_server_connections"]),
                f"{row['threads_served']}/{row['threads']}",
                str(sum(row["errors"].values())),
                "-" if ratio is None else f"{ratio:.2f}",
            ]
        )
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)])


def machine_info(cluster: Any) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "django": version("django"),
        "psycopg2": version("psycopg2-binary") or version("psycopg2"),
        "sqlalchemy": version("sqlalchemy"),
        "postgresql": cluster.primary.scalar("SHOW server_version"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="short runs (1.5 s per variant) to check it works"
    )
    parser.add_argument("--duration", type=float, help="seconds measured per variant and unit (default 5)")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured work first (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds the duration is split in")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args()
    seconds = args.duration or (1.5 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    rounds = max(1, args.rounds)

    from benchmarks.common import start_measuring, write_results
    from replicarouter.testing import LocalCluster

    measured = start_measuring("threads_bench", MEASURES)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with sigterm_as_interrupt(), LocalCluster(replicas=0, redis=False) as cluster:
        primary = cluster.primary
        print(
            f"server up in {cluster.startup_seconds:.1f} s (:{primary.port}); {THREADS} threads per variant, "
            f"{warmup:g} s warm-up + {seconds:g} s in {rounds} alternating rounds per variant and unit",
            flush=True,
        )
        create_table(primary)
        machine = machine_info(cluster)
        configure(primary)
        account = CpuAccount(cluster)
        crews = {key: Crew(key) for key in VARIANTS}
        try:
            for unit, keys in PLAN:
                rows += measure_unit(unit, keys, crews, primary, seconds, warmup, rounds)
        finally:
            for crew in crews.values():
                crew.stop()
        foreign = account.foreign()

    lines, ratios = summary(rows)
    print()
    print(table(rows))
    print()
    print("\n".join(lines))
    share = foreign["share_of_machine"]
    print(
        f"other processes used {share:.0%} of the machine's {os.cpu_count()} CPUs while measuring"
        + (": NOTE the numbers are noisier than on an otherwise idle machine" if share > 0.05 else "")
    )
    report = {
        "benchmark": "threads_bench (issue 15)",
        "quick": args.quick,
        "duration_s": seconds,
        "warmup_s": warmup,
        "rounds": rounds,
        "total_wall_s": round(time.monotonic() - started, 1),
        "foreign_cpu": foreign,
        "machine": machine,
        "setup": {
            "cluster": "LocalCluster(replicas=0): one PostgreSQL server, sslmode=disable",
            "process": f"one Python process, {THREADS} threads per variant, none ever calls close()",
            "rows": ROWS,
            "units": {
                "read": f"{READS} indexed Item.objects.get() in autocommit",
                "mixed": f"{READS} indexed reads + 1 UPDATE in one transaction.atomic()",
            },
            "threads": THREADS,
            "aggregation": "units/s: mean of the rounds; p50/p99 per unit: median of the rounds; peak: max",
        },
        "variants": {key: {"label": v.label, "pool": v.pool} for key, v in VARIANTS.items()},
        "runs": rows,
        "ratios": ratios,
        "summary": lines,
        "table": table(rows),
    }
    out = write_results("threads_bench", measured, report, args.output)
    print(f"\nsaved {out} (total {report['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
