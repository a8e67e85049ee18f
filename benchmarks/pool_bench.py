"""Benchmark of issue 3: our pooled backend against Django's own ways to connect, behind a real WSGI server.

Usage: .venv/bin/python benchmarks/pool_bench.py [--quick] [--duration SECONDS]
(results: benchmarks/results/pool_bench.json, documentation: docs/benchmarks.md)

One LocalCluster (primary + 2 streaming replicas, TLS enabled on every server) holds a 10 000-row table.
For each variant the tiny project in ``benchmarks/app`` runs in its own gunicorn (one gthread worker) and
``wrk`` drives it over loopback. The variants compared with each other (one *group*: same view, TLS or
not, same number of clients) run side by side: their servers are all up, each is warmed up, then wrk
measures them in turn for ``--rounds`` rounds in alternating order (a b c d, d c b a, a b c d), so that
drift on this shared machine spreads over all of them. During each measurement a thread of this process
counts, every 50 ms, the primary's client backends with that variant's ``application_name``. Variants:

  (a) Django postgresql + psycopg2, CONN_MAX_AGE=0 (one server connection per request)
  (b) the same, CONN_MAX_AGE=None (one persistent connection per thread)
  (c) Django postgresql + psycopg 3 with Django's own pool (min 8, max 16)
  (d) replicarouter.backends.postgresql, primary only, POOL SIZE 8 + MAX_OVERFLOW 8, RELEASE "transaction"
      (the default: the connection goes back to the pool after each unit of work, here each statement
      of the read view and the atomic block of the mixed view)
  (d2) the same with RELEASE "request" (held from the first query until Django closes the connection at
      the end of the request, as in 0.1)
  (e) replicarouter with two replicas: the same pools on primary and replicas, reads routed by
      ReplicaRouter (peak connections count the primary only: that is the load replicas take off it)

Django uses psycopg 3 whenever it can import it, so the driver is chosen per gunicorn process: psycopg 3
and psycopg-pool live in their own directory (``<venv>/bench-psycopg3``, installed with ``pip --target``
on first use) that only (c)'s PYTHONPATH names, and the other variants block ``import psycopg`` in
``benchmarks/app/wsgi.py``. Every server reports its engine, driver and TLS state at ``/info`` and the
benchmark refuses to measure a server that does not use what its variant says.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# this process only ever talks psycopg2 (the sampler, the micro-benchmark of our psycopg2 backend)
sys.modules.setdefault("psycopg", None)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "pool_bench.json"
MEASURES = ["replicarouter", ":(exclude)replicarouter/testing", "benchmarks/pool_bench.py", "benchmarks/app",
            "benchmarks/common.py"]  # fmt: skip
PSYCOPG3_DIR = Path(sys.prefix) / "bench-psycopg3"
PSYCOPG3_REQUIREMENTS = ["psycopg[binary]>=3.1.8", "psycopg-pool>=3.2"]

ROWS = 10_000
READS = 5
THREADS = 8  # gunicorn threads = wrk connections in the main table
MANY = 64  # the many-clients comparison
SAMPLE_INTERVAL = 0.05

VARIANTS: dict[str, str] = {
    "a": "(a) psycopg2, CONN_MAX_AGE=0",
    "b": "(b) psycopg2, CONN_MAX_AGE=None",
    "c": "(c) psycopg 3 + Django pool 8..16",
    "d": "(d) replicarouter 8+8, transaction",
    "d2": "(d2) replicarouter 8+8, request",
    "e": "(e) replicarouter + 2 replicas",
}
#: the variants on our backend, and the POOL["RELEASE"] each uses
RELEASE = {"d": "transaction", "d2": "request", "e": "transaction"}

CLIENT_BACKENDS_SQL = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND datname = %s AND pid <> pg_backend_pid()"
)
VARIANT_BACKENDS_SQL = CLIENT_BACKENDS_SQL + " AND application_name = %s"


@dataclass(frozen=True)
class Group:
    """Variants measured side by side: one view, TLS or not, ``threads`` gunicorn threads = wrk clients."""

    view: str
    variants: tuple[str, ...]
    tls: bool = False
    threads: int = THREADS

    @property
    def name(self) -> str:
        if self.threads != THREADS:
            return f"{self.threads} clients"
        return "TLS" if self.tls else "plain"


def plan() -> list[Group]:
    return [
        Group("read", ("a", "b", "c", "d", "d2", "e")),
        Group("mixed", ("a", "b", "c", "d", "d2", "e")),
        Group("read", ("a", "b", "c", "d"), tls=True),
        Group("read", ("b", "d"), threads=MANY),
    ]


#: the cluster's replicas, for variant (e)
REPLICAS: list[Any] = []


def driver(variant: str) -> str:
    return "psycopg" if variant == "c" else "psycopg2"


def application_name(variant: str) -> str:
    return f"pool-bench-{variant}"


# -- setup ----------------------------------------------------------------------------------------------


def ensure_tools() -> dict[str, str]:
    """Install what is missing (wrk, gunicorn, psycopg 3 apart); return the environment additions for (c)."""
    if shutil.which("wrk") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            sys.exit("wrk is not installed: install it (Debian/Ubuntu: apt-get install wrk)")
        print("installing wrk (apt-get) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    from benchmarks.common import ensure_gunicorn

    ensure_gunicorn()
    check = [sys.executable, "-c", "import psycopg, psycopg_pool"]
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if subprocess.run(check, env=clean, capture_output=True).returncode == 0:
        return {}  # psycopg 3 is in the venv itself: (c) simply does not block it
    extra = {"PYTHONPATH": str(PSYCOPG3_DIR)}
    if subprocess.run(check, env={**clean, **extra}, capture_output=True).returncode != 0:
        print(f"installing psycopg 3 + psycopg-pool into {PSYCOPG3_DIR} (for variant c only) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(PSYCOPG3_DIR)]
            + PSYCOPG3_REQUIREMENTS,
            check=True,
        )
    return extra


def create_table(node: Any) -> None:
    node.query("DROP TABLE IF EXISTS bench_item")
    node.query(
        "CREATE TABLE bench_item (id bigserial PRIMARY KEY, key integer NOT NULL UNIQUE, "
        "value integer NOT NULL, payload varchar(100) NOT NULL)"
    )
    node.query(
        "INSERT INTO bench_item (key, value, payload) "
        f"SELECT i, i % 1000, repeat(md5(i::text), 3) FROM generate_series(0, {ROWS - 1}) AS i"
    )
    node.query("VACUUM ANALYZE bench_item", timeout=60)


def database_settings(node: Any, variant: str, tls: bool) -> dict[str, Any]:
    """Return ``DATABASES`` for one variant (``sslmode`` explicit: the server offers TLS to everyone)."""
    options: dict[str, Any] = {
        "sslmode": "require" if tls else "disable",
        "application_name": application_name(variant),
    }
    django_engine = "django.db.backends.postgresql"
    if variant == "a":
        entry = node.settings(django_engine, CONN_MAX_AGE=0, OPTIONS=options)
    elif variant == "b":
        entry = node.settings(django_engine, CONN_MAX_AGE=None, OPTIONS=options)
    elif variant == "c":
        options["pool"] = {"min_size": 8, "max_size": 16}
        entry = node.settings(django_engine, CONN_MAX_AGE=0, OPTIONS=options)
    elif variant in RELEASE:
        pool = {"SIZE": 8, "MAX_OVERFLOW": 8, "RELEASE": RELEASE[variant]}
        pooled = {"CONN_MAX_AGE": 0, "OPTIONS": options, "POOL": pool}
        entry = node.settings("replicarouter.backends.postgresql", **pooled)
        if variant == "e":  # the same pool on each replica, reads routed by ReplicaRouter
            replicas = {
                replica.name: replica.settings(
                    "replicarouter.backends.postgresql", TEST={"MIRROR": "default"}, **pooled
                )
                for replica in REPLICAS
            }
            return {"default": entry, **replicas}
    else:
        raise ValueError(f"no settings for variant {variant!r}")
    return {"default": entry}


# -- servers ----------------------------------------------------------------------------------------------


@dataclass
class Server:
    """One running gunicorn."""

    variant: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path


class Servers:
    """Every gunicorn this benchmark started, so that all of them stop whatever happens."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[Server] = []

    def start(self, variant: str, group: Group, node: Any, psycopg3_env: dict[str, str]) -> Server:
        from replicarouter.testing import procs

        port = procs.free_ports(1)[0]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(
            BENCH_DATABASES=json.dumps(database_settings(node, variant, group.tls)),
            BENCH_ROUTER="1" if variant == "e" else "",
            BENCH_DRIVER=driver(variant),
            BENCH_ROWS=str(ROWS),
            BENCH_READS=str(READS),
            DJANGO_SETTINGS_MODULE="benchmarks.app.settings",
            PYTHONPATH=str(ROOT),
        )
        if driver(variant) == "psycopg" and psycopg3_env.get("PYTHONPATH"):
            env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{psycopg3_env['PYTHONPATH']}"
        log = self.logdir / f"gunicorn-{variant}-{group.view}-{group.name.replace(' ', '')}.log"
        args = [
            sys.executable, "-m", "gunicorn", "benchmarks.app.wsgi:application",
            "--chdir", str(ROOT),
            "--bind", f"127.0.0.1:{port}",
            "--worker-class", "gthread",
            "--workers", "1",
            "--threads", str(group.threads),
            "--keep-alive", "75",
            "--backlog", "2048",
            "--timeout", "120",
            "--graceful-timeout", "5",
            "--log-level", "warning",
            "--error-logfile", str(log),
        ]  # fmt: skip
        proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C reaches us, and we stop it in order
        )
        server = Server(variant, proc, port, log)
        self.running.append(server)
        return server

    def stop(self, server: Server, timeout: float = 10.0) -> None:
        proc = server.proc
        if proc.poll() is None:
            proc.terminate()  # gunicorn's master stops its worker gracefully
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if server in self.running:
            self.running.remove(server)

    def stop_all(self) -> None:
        for server in list(self.running):
            self.stop(server)


def get_json(port: int, path: str, timeout: float = 10.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def wait_ready(server: Server, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until ``server`` answers ``/info``; return what it says."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline and server.proc.poll() is None:
        try:
            return get_json(server.port, "/info")
        except Exception as exc:
            last = exc
            time.sleep(0.1)
    tail = server.log.read_text(errors="replace")[-3000:] if server.log.exists() else ""
    raise RuntimeError(
        f"gunicorn for ({server.variant}) on :{server.port} did not serve /info ({last}):\n{tail}"
    )


# -- measuring --------------------------------------------------------------------------------------------


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _millis(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"cannot parse wrk time {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def wrk(port: int, view: str, clients: int, seconds: float) -> dict[str, Any]:
    """Run wrk against one view; return requests/s, latency percentiles (ms) and errors."""
    args = [
        "wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
        f"http://127.0.0.1:{port}/{view}",
    ]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"cannot parse wrk's output:\n{out}")
    result: dict[str, Any] = {"requests_per_s": float(rps[1])}
    for pct in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)", out, re.MULTILINE)
        result[f"p{pct}_ms"] = _millis(match[1]) if match else None
    total = re.search(r"(\d+) requests in", out)
    result["requests"] = int(total[1]) if total else None
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = (int(non2xx[1]) if non2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    return result


class ConnectionSampler(threading.Thread):
    """Count the client backends with one ``application_name`` on ``node`` every ``interval`` seconds."""

    def __init__(self, node: Any, application: str, interval: float = SAMPLE_INTERVAL) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.application = application
        self.interval = interval
        self.samples: list[int] = []
        self._done = threading.Event()
        self._conn = node.connect(sslmode="disable")

    def run(self) -> None:
        try:
            with self._conn.cursor() as cursor:
                while not self._done.is_set():
                    cursor.execute(VARIANT_BACKENDS_SQL, (self.node.dbname, self.application))
                    self.samples.append(int(cursor.fetchone()[0]))
                    self._done.wait(self.interval)
        finally:
            self._conn.close()

    def finish(self) -> dict[str, Any]:
        self._done.set()
        self.join()
        samples = self.samples or [0]
        return {"peak": max(samples), "mean": sum(samples) / len(samples), "samples": len(self.samples)}


def client_backends(node: Any) -> int:
    return int(node.scalar(CLIENT_BACKENDS_SQL, (node.dbname,)))


def wait_no_clients(node: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while client_backends(node) and time.monotonic() < deadline:
        time.sleep(0.05)


def expected_engine(variant: str) -> str:
    return "replicarouter.backends.postgresql" if variant in RELEASE else "django.db.backends.postgresql"


def measure_group(
    group: Group,
    node: Any,
    servers: Servers,
    psycopg3_env: dict[str, str],
    seconds: float,
    warmup: float,
    rounds: int,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Measure every variant of ``group``, side by side; return one row per variant."""
    wait_no_clients(node)
    node.query("VACUUM ANALYZE bench_item", timeout=60)
    started = {variant: servers.start(variant, group, node, psycopg3_env) for variant in group.variants}
    try:
        info = {}
        for variant, server in started.items():
            info[variant] = wait_ready(server)
            said = info[variant]
            reported = (said["engine"], said["driver"], said["ssl"], said.get("release"))
            if reported != (expected_engine(variant), driver(variant), group.tls, RELEASE.get(variant)):
                raise RuntimeError(f"variant {variant} is misconfigured, its server reports {info[variant]}")
        for server in started.values():
            wrk(server.port, group.view, group.threads, warmup)
        segment = seconds / rounds
        measured: dict[str, list[dict[str, Any]]] = {variant: [] for variant in group.variants}
        for round_ in range(rounds):
            order = group.variants if round_ % 2 == 0 else group.variants[::-1]
            for variant in order:
                sampler = ConnectionSampler(node, application_name(variant))
                sampler.start()
                try:
                    result = wrk(started[variant].port, group.view, group.threads, segment)
                finally:
                    connections = sampler.finish()
                measured[variant].append({**result, "server_connections": connections})
        after = {variant: get_json(server.port, "/info") for variant, server in started.items()}
    finally:
        for server in started.values():
            servers.stop(server)
    rows = []
    for variant, results in measured.items():
        rps = [r["requests_per_s"] for r in results]
        mean_rps = sum(rps) / len(rps)
        row = {
            "variant": variant,
            "label": VARIANTS[variant],
            "view": group.view,
            "group": group.name,
            "tls": group.tls,
            "threads": group.threads,
            "clients": group.threads,
            "requests_per_s": round(mean_rps, 1),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "peak_server_connections": max(r["server_connections"]["peak"] for r in results),
            "requests": sum(r["requests"] or 0 for r in results),
            "errors": sum(r["errors"] for r in results),
            "rps_spread_pct": round((max(rps) - min(rps)) / mean_rps * 100, 1) if mean_rps else None,
            "rounds": results,
            "server": {
                k: info[variant].get(k)
                for k in ("engine", "driver", "driver_version", "ssl", "vendor_pool", "release")
            },
            "pool_stats_after": after[variant].get("pool_stats"),
        }
        rows.append(row)
        progress(
            f"{row['label']:<34} {group.view:<5} {group.name:<10} {row['requests_per_s']:7.0f} req/s  "
            f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  peak conns "
            f"{row['peak_server_connections']:3}  (rounds ±{row['rps_spread_pct']:.0f}%)"
            + (f"  ERRORS {row['errors']}" if row["errors"] else "")
        )
    return rows


# -- micro-benchmark -------------------------------------------------------------------------------------


SELECT_SQL = (
    'SELECT "bench_item"."id", "bench_item"."key", "bench_item"."value", "bench_item"."payload" '
    'FROM "bench_item" WHERE "bench_item"."key" = %s LIMIT 21'
)
UPDATE_SQL = 'UPDATE "bench_item" SET "value" = ("bench_item"."value" + %s) WHERE "bench_item"."key" = %s'


def micro_benchmark(node: Any, iterations: int, rounds: int = 3) -> dict[str, Any]:
    """In-process costs of our backend, in µs: checkout + return (through Django's wrapper, and on the pool
    itself), what its cursor adds to each statement compared with Django's own backend in either
    ``RELEASE`` mode, the borrow + return a statement pays with ``RELEASE = "transaction"``, and what an
    unconditional reset (``DISCARD ALL``) would cost against the classifier that decides when to reset."""
    import django
    import psycopg2.extensions
    from django.conf import settings

    class NoopCursor(psycopg2.extensions.cursor):
        """Sends nothing: isolates the Python cost of executing a statement through a backend."""

        def execute(self, query: Any, vars: Any = None) -> None:
            return None

    def noop_cursor(entry: dict[str, Any]) -> dict[str, Any]:
        return {**entry, "OPTIONS": {**entry["OPTIONS"], "cursor_factory": NoopCursor}}

    ours = database_settings(node, "d", tls=False)["default"]
    ours_request = database_settings(node, "d2", tls=False)["default"]
    stock = database_settings(node, "b", tls=False)["default"]
    databases = {
        "default": ours,
        "ours_noop": noop_cursor(ours),
        "ours_noop_request": noop_cursor(ours_request),
        "stock_noop": noop_cursor(stock),
        # with I/O: a real SELECT per statement, the connection reset on return only when dirty or always
        "stock_io": stock,
        "ours_io": ours,
        "ours_io_always": {**ours, "POOL": {**ours["POOL"], "RESET": "always"}},
    }
    settings.configure(
        DATABASES=databases,
        # each of our aliases the primary of a cluster of its own, as (d) is: borrows go to the writer
        REPLICAROUTER={
            "CLUSTERS": {
                alias: {"PRIMARY": alias}
                for alias, entry in databases.items()
                if entry["ENGINE"] == "replicarouter.backends.postgresql"
            }
        },
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=[],
    )
    django.setup()
    from django.db import connections

    from replicarouter import pool as pools
    from replicarouter.routing import statements

    wrapper = connections["default"]

    def noop() -> None:
        return None

    def timed(first: Callable[[], None], second: Callable[[], None], count: int = iterations) -> float:
        """Return the best round's µs per ``first(); second()``, minus nothing (see ``baseline``)."""
        for _ in range(min(1000, count)):  # warm up: the pool's connection, caches
            first()
            second()
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(count):
                first()
                second()
            best = min(best, time.perf_counter() - started)
        return best / count * 1e6

    baseline = timed(noop, noop)
    wrapper_us = timed(wrapper.ensure_connection, wrapper.close) - baseline
    pool = wrapper.connection_pool()
    holder: list[Any] = []

    def checkout() -> None:
        holder.append(pool.checkout())

    def checkin() -> None:
        pool.checkin(holder.pop())

    pool_us = timed(checkout, checkin) - baseline
    stats = pool.stats()

    def statement(alias: str, sql: str, params: list[int], fetch: bool = False) -> Callable[[], None]:
        connection = connections[alias]
        connection.ensure_connection()

        def execute() -> None:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                if fetch:
                    cursor.fetchall()

        return execute

    def checkouts(alias: str) -> int:
        return pools.registry.stats(alias)["checkouts"]

    per_statement = {}
    for name, sql, params in (("select", SELECT_SQL, [1]), ("update", UPDATE_SQL, [1, 1])):
        stock_us = timed(statement("stock_noop", sql, params), noop) - baseline
        before = checkouts("ours_noop")
        ours_us = timed(statement("ours_noop", sql, params), noop) - baseline
        borrowed_per_statement = (checkouts("ours_noop") - before) / (
            min(1000, iterations) + rounds * iterations
        )
        request_us = timed(statement("ours_noop_request", sql, params), noop) - baseline
        if borrowed_per_statement < 0.9:  # the transaction row must borrow once per statement
            raise RuntimeError(f"RELEASE=transaction borrowed {borrowed_per_statement:.2f} times per {name}")
        per_statement[name] = {
            "django_backend_us": round(stock_us, 2),
            "replicarouter_backend_us": round(ours_us, 2),
            "overhead_us": round(ours_us - stock_us, 2),
            "replicarouter_request_us": round(request_us, 2),
            "overhead_request_us": round(request_us - stock_us, 2),
        }

    # the borrow + return alone: a parked wrapper attaches (checkout, no re-preparation) and releases
    parked = connections["ours_noop"]
    statement("ours_noop", SELECT_SQL, [1])()
    if not parked.parked:
        raise RuntimeError("the RELEASE=transaction wrapper is not parked after a statement")
    attach_us = timed(parked.ensure_connection, parked.maybe_release) - baseline

    # detection against an unconditional reset: the classifier's cache hit, DISCARD ALL, a SELECT
    def classify() -> None:
        statements.classify(SELECT_SQL)

    classify_us = timed(classify, noop) - baseline
    io_count = max(200, iterations // 10)
    raw = node.connect(sslmode="disable")
    try:
        with raw.cursor() as cursor:

            def select() -> None:
                cursor.execute(SELECT_SQL, [1])
                cursor.fetchall()

            select_us = timed(select, noop, io_count) - baseline

            def discard() -> None:
                cursor.execute("DISCARD ALL")

            discard_us = timed(discard, noop, io_count) - baseline
    finally:
        raw.close()
    with_io = {
        alias: timed(statement(alias, SELECT_SQL, [1], fetch=True), noop, io_count) - baseline
        for alias in ("stock_io", "ours_io", "ours_io_always")
    }
    discards = {alias: pools.registry.stats(alias)["discards"] for alias in ("ours_io", "ours_io_always")}
    if discards["ours_io"] or discards["ours_io_always"] < io_count:
        raise RuntimeError(f"RESET auto/always discarded {discards}: the rows do not measure what they say")
    connections.close_all()
    return {
        "iterations": iterations,
        "io_iterations": io_count,
        "rounds": rounds,
        "statistic": "best round, minus an empty loop",
        "baseline_loop_us": round(baseline, 3),
        "wrapper_ensure_connection_close_us": round(wrapper_us, 2),
        "pool_checkout_checkin_us": round(pool_us, 2),
        "pool_stats": stats,
        "statement_without_io": per_statement,
        "borrow_return_parked_us": round(attach_us, 2),
        "reset": {
            "classify_cache_hit_us": round(classify_us, 3),
            "discard_all_round_trip_us": round(discard_us, 1),
            "select_round_trip_us": round(select_us, 1),
        },
        "statement_with_io": {
            "django_backend_us": round(with_io["stock_io"], 1),
            "replicarouter_reset_auto_us": round(with_io["ours_io"], 1),
            "replicarouter_reset_always_us": round(with_io["ours_io_always"], 1),
            "discards": discards,
        },
    }


# -- report -----------------------------------------------------------------------------------------------


def ratio(rows: list[dict[str, Any]], num: str, den: str, view: str, group: str) -> float | None:
    def rps(variant: str) -> float | None:
        for row in rows:
            if (row["variant"], row["view"], row["group"]) == (variant, view, group):
                return float(row["requests_per_s"])
        return None

    top, bottom = rps(num), rps(den)
    return None if top is None or not bottom else top / bottom


def table(rows: list[dict[str, Any]]) -> str:
    header = ["variant", "view", "set", "req/s", "p50 ms", "p99 ms", "peak conns", "vs (b)"]
    lines: list[list[str]] = []
    for group in dict.fromkeys(row["group"] for row in rows):
        for view in ("read", "mixed"):
            for row in (r for r in rows if r["group"] == group and r["view"] == view):
                vs_b = ratio(rows, row["variant"], "b", view, group)
                lines.append(
                    [
                        row["label"],
                        view,
                        group,
                        f"{row['requests_per_s']:.0f}",
                        f"{row['p50_ms']:.2f}",
                        f"{row['p99_ms']:.2f}",
                        str(row["peak_server_connections"]),
                        "-" if vs_b is None else f"{vs_b:.2f}",
                    ]
                )
    full = [line for line in lines if len(line) == len(header)]
    widths = [max(len(cells[i]) for cells in [header, *full]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        left = [cells[i].ljust(widths[i]) for i in range(3)]
        right = [cells[i].rjust(widths[i]) for i in range(3, len(cells))] if len(cells) == len(header) else []
        return "  ".join(left + (right or cells[3:])).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)])


def spread_pct(rows: list[dict[str, Any]], variants: tuple[str, ...], view: str, group: str) -> float | None:
    """Return the larger round-to-round req/s spread (%) of ``variants`` in one set, or None."""
    found = [
        r.get("rps_spread_pct")
        for r in rows
        if r["variant"] in variants and r["view"] == view and r["group"] == group
    ]
    values = [v for v in found if v is not None]
    return max(values) if len(values) == len(variants) else None


def summary(rows: list[dict[str, Any]], micro: dict[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    """Return the ratio lines printed under the table, and the same numbers for the JSON."""
    lines: list[str] = []
    data: dict[str, Any] = {}

    def line(
        key: str,
        value: float | None,
        target: str | None = None,
        passed: bool | None = None,
        noise: float | None = None,
    ) -> None:
        data[key] = None if value is None else round(value, 3)
        text = f"{key:<18}: " + ("not measured" if value is None else f"{value:.2f}")
        if target is not None and value is not None:
            text += f"   ({'meets' if passed else 'MISSES'} target {target})"
        if value is not None and noise is not None and abs(value - 1.0) * 100 <= noise:
            # a ratio closer to 1 than the rounds' spread says nothing about which is faster
            text += f"; within the rounds' spread ({noise:.0f} %): no measurable difference"
        lines.append(text)

    for num, den, target in (("d", "b", 0.95), ("d", "c", 1.0)):
        for view, group in (("read", "plain"), ("mixed", "plain"), ("read", "TLS")):
            value = ratio(rows, num, den, view, group)
            key = f"({num})/({den}) {view}{' TLS' if group == 'TLS' else ''}"
            passed = value is not None and value >= target
            line(key, value, f">= {target:.2f}", passed, spread_pct(rows, (num, den), view, group))
    for view in ("read", "mixed"):
        value = ratio(rows, "d2", "b", view, "plain")
        passed = value is not None and value >= 0.95
        line(f"(d2)/(b) {view}", value, ">= 0.95", passed, spread_pct(rows, ("d2", "b"), view, "plain"))
    for view in ("read", "mixed"):
        line(
            f"(d)/(d2) {view}",
            ratio(rows, "d", "d2", view, "plain"),
            noise=spread_pct(rows, ("d", "d2"), view, "plain"),
        )
    for group in ("plain", "TLS"):
        line(
            f"(d)/(a) read{' TLS' if group == 'TLS' else ''}",
            ratio(rows, "d", "a", "read", group),
            noise=spread_pct(rows, ("d", "a"), "read", group),
        )
    many = {r["variant"]: r for r in rows if r["group"] == f"{MANY} clients"}
    if "b" in many and "d" in many:
        b, d = many["b"], many["d"]
        data[f"{MANY} clients"] = {
            v: {k: r[k] for k in ("requests_per_s", "p99_ms", "peak_server_connections")}
            for v, r in many.items()
        }
        for variant, row in (("b", b), ("d", d)):
            lines.append(
                f"{MANY} clients, read, {VARIANTS[variant]:<31}: {row['requests_per_s']:5.0f} req/s, "
                f"p99 {row['p99_ms']:6.1f} ms, peak {row['peak_server_connections']:3} server connections"
            )
        lines.append(
            f"{MANY} clients, (d)/(b): req/s {d['requests_per_s'] / b['requests_per_s']:.2f}, "
            f"p99 {d['p99_ms'] / b['p99_ms']:.2f}, server connections "
            f"{d['peak_server_connections']}/{b['peak_server_connections']}"
        )
    if micro is not None:
        for key, text in (
            ("wrapper_ensure_connection_close_us", "DatabaseWrapper.ensure_connection() + close()"),
            ("pool_checkout_checkin_us", "ConnectionPool.checkout() + checkin()        "),
        ):
            value = micro[key]
            verdict = "meets" if value <= 15 else "MISSES"
            lines.append(f"micro: {text}: {value:5.1f} µs per request ({verdict} target <= 15 µs)")
        stmt = micro["statement_without_io"]
        for mode, key in (("transaction", "overhead_us"), ("request", "overhead_request_us")):
            lines.append(
                f"micro: added per statement vs Django's backend (no I/O), RELEASE={mode:<11}: "
                f"SELECT {stmt['select'][key]:.1f} µs, UPDATE {stmt['update'][key]:.1f} µs"
            )
        lines.append(
            "micro: borrow + return per statement (a parked wrapper attaches and releases): "
            f"{micro['borrow_return_parked_us']:.1f} µs"
        )
        reset, io = micro["reset"], micro["statement_with_io"]
        lines.append(
            f"micro: deciding to reset (classifier, cache hit): {reset['classify_cache_hit_us']:.2f} µs; "
            f"DISCARD ALL round trip: {reset['discard_all_round_trip_us']:.0f} µs "
            f"(an indexed SELECT: {reset['select_round_trip_us']:.0f} µs)"
        )
        lines.append(
            f"micro: one indexed SELECT with I/O: Django {io['django_backend_us']:.0f} µs, ours (RESET auto) "
            f"{io['replicarouter_reset_auto_us']:.0f} µs, ours (RESET always, i.e. unconditional) "
            f"{io['replicarouter_reset_always_us']:.0f} µs"
        )
    return lines, data


def machine_info(cluster: Any) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    wrk_out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        ),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "django": version("django"),
        "psycopg2": version("psycopg2-binary") or version("psycopg2"),
        "sqlalchemy": version("sqlalchemy"),
        "gunicorn": version("gunicorn"),
        "replicarouter": version("django-replicarouter"),
        "wrk": (wrk_out.stdout + wrk_out.stderr).split("\n", 1)[0].strip(),
        "postgresql": cluster.primary.scalar("SHOW server_version"),
    }


class CpuAccount:
    """How much CPU the rest of the machine used since creation: busy time minus ours.

    Ours is this process's tree (gunicorn and wrk, reaped or running) and each node's postmaster tree
    (backends included: the postmaster reaps them), counted with /proc's utime + stime + cutime + cstime.
    """

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.started = time.monotonic()
        self.busy0, self.ours0 = self._busy(), self._ours()

    @staticmethod
    def _busy() -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def _ours(self) -> float:
        from replicarouter.testing import procs

        roots = [os.getpid()] + [self.cluster.postmaster_pid(node) for node in self.cluster.nodes]
        total = 0
        for root in filter(None, roots):
            for pid in procs.process_tree(root):
                fields = procs._stat_fields(pid)
                if fields:
                    total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        return total / os.sysconf("SC_CLK_TCK")

    def foreign(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        busy, ours = self._busy() - self.busy0, self._ours() - self.ours0
        capacity = wall * (os.cpu_count() or 1)
        return {
            "wall_s": round(wall, 1),
            "machine_busy_cpu_s": round(busy, 1),
            "ours_cpu_s": round(ours, 1),
            "share_of_machine": round(max(0.0, busy - ours) / capacity, 3),
        }


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short runs (3 s per variant) to check it works")
    parser.add_argument("--duration", type=float, help="seconds measured per variant (default 15, --quick 3)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of unmeasured load first (default 3, --quick 1)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds the duration is split in")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args()
    seconds = args.duration or (3.0 if args.quick else 15.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    rounds = max(1, args.rounds)
    iterations = 5_000 if args.quick else 20_000

    sys.path.insert(0, str(ROOT))
    from benchmarks.common import start_measuring, write_results
    from replicarouter.testing import LocalCluster

    measured = start_measuring("pool_bench", MEASURES)
    psycopg3_env = ensure_tools()

    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    micro: dict[str, Any] | None = None
    foreign: dict[str, float] | None = None
    groups = plan()
    count = sum(len(group.variants) for group in groups)

    done = itertools.count(1)

    def progress(text: str) -> None:
        print(f"[{next(done):2}/{count}] {text}", flush=True)

    with (
        sigterm_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="pool-bench-") as logdir,
        LocalCluster(replicas=2, ssl=True, redis=False) as cluster,
    ):
        servers = Servers(Path(logdir))
        try:
            primary = cluster.primary
            REPLICAS[:] = cluster.replicas
            print(
                f"cluster up in {cluster.startup_seconds:.1f} s (primary :{primary.port}, replicas "
                f"{[r.port for r in cluster.replicas]}, TLS on); {count} variant runs: {warmup:g} s warm-up "
                f"+ {seconds:g} s in {rounds} alternating rounds",
                flush=True,
            )
            create_table(primary)
            machine = machine_info(cluster)
            account = CpuAccount(cluster)
            for group in groups:
                rows += measure_group(
                    group, primary, servers, psycopg3_env, seconds, warmup, rounds, progress
                )
            foreign = account.foreign()
            wait_no_clients(primary)
            micro = micro_benchmark(primary, iterations)
        finally:
            servers.stop_all()

    lines, ratios = summary(rows, micro)
    print()
    print(table(rows))
    print()
    print("\n".join(lines))
    if foreign is not None:
        share = foreign["share_of_machine"]
        print(
            f"other processes used {share:.0%} of the machine's {os.cpu_count()} CPUs while measuring"
            + (": NOTE the numbers are noisier than on an otherwise idle machine" if share > 0.05 else "")
        )
    errors = sum(row["errors"] for row in rows)
    if errors:
        print(f"WARNING: wrk saw {errors} failed requests (see 'errors' per run in the JSON)")
    report = {
        "benchmark": "pool_bench (issue 3)",
        "quick": args.quick,
        "duration_s": seconds,
        "warmup_s": warmup,
        "rounds": rounds,
        "total_wall_s": round(time.monotonic() - started, 1),
        # CPU that processes other than ours (benchmark, gunicorn, wrk, the cluster) used meanwhile
        "foreign_cpu": foreign,
        "machine": machine,
        "setup": {
            "cluster": "LocalCluster(replicas=2, ssl=True); plain rows sslmode=disable, TLS sslmode=require",
            "server": "gunicorn --worker-class gthread --workers 1 --threads N (N = wrk connections)",
            "load": "wrk -t1 -cN --latency, plain GET, loopback, not pinned (shares the CPUs)",
            "rows": ROWS,
            "reads_per_request": READS,
            "views": {"read": f"{READS} indexed reads", "mixed": f"{READS} indexed reads + 1 UPDATE, atomic"},
            "threads": THREADS,
            "many_clients": MANY,
            "sample_interval_s": SAMPLE_INTERVAL,
            "aggregation": "req/s: mean of the rounds; p50/p99: median of the rounds; peak: max",
            "psycopg3": "separate pip --target dir on (c)'s PYTHONPATH only"
            if psycopg3_env
            else "importable from the venv; blocked in (a), (b), (d)",
        },
        "variants": VARIANTS,
        "runs": rows,
        "ratios": ratios,
        "summary": lines,
        "micro": micro,
        "table": table(rows),
    }
    write_results("pool_bench", measured, report, args.output)
    print(f"\nsaved {args.output} (total {report['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
