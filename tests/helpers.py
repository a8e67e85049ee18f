"""Shared helpers of the tests: set-up of the integration tests that route through a running monitor,
small probes of a test cluster, and loading the scripts of benchmarks/ (not a package users install)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any


def load_script(path: Path, name: str) -> ModuleType:
    """Import the Python file at ``path`` as module ``name`` (for benchmarks/, which is no package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def new_table(cluster: Any) -> str:
    """Create a table of a fresh name (``id int PRIMARY KEY, v text``) on the primary; return its name."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    cluster.primary.query(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    return name


def row_count(node: Any, table: str) -> int:
    """Return how many rows ``node`` sees in ``table``."""
    return int(node.scalar(f"SELECT count(*) FROM {table}"))


def server_pids(cluster: Any) -> list[int]:
    """Return the pids of every process of a running LocalCluster: each postmaster's tree and Redis."""
    from replicarouter.testing import procs, registry

    pids = []
    for node in cluster.nodes:
        pid = cluster.postmaster_pid(node)
        assert pid is not None, f"{node.name} has no postmaster"
        pids.extend(procs.process_tree(pid))
    redis_pid = registry.redis_pid(cluster.dir)
    assert redis_pid is not None
    return [*pids, redis_pid]


def ready_for_routing(cluster: Any) -> None:
    """Start the monitor, wait until both replicas are usable, seed one row and wait for replication."""
    from replicarouter import request_context
    from replicarouter.health import monitor
    from replicarouter.health import store as health
    from replicarouter.testing.base import wait_for
    from tests.testapp.models import Item

    monitor.ensure_started()
    wait_for(
        "both replicas usable",
        lambda: health.usable_replicas("default") == {"replica1", "replica2"},
        timeout=10,
    )
    with request_context():
        Item.objects.create(name="seed")
    cluster.wait_caught_up()


@contextlib.contextmanager
def routed(cluster: Any, **replicarouter: Any) -> Iterator[dict[str, Any]]:
    """Route through ``cluster`` with these settings (a private key prefix) and a fresh monitor."""
    from django.test import override_settings

    from replicarouter.health import monitor
    from replicarouter.sticky import guard

    guard.forget()  # a breaker opened by an earlier test's Redis fault must not skip this one's calls
    values = cluster.replicarouter_settings(KEY_PREFIX=f"t{uuid.uuid4().hex[:6]}", **replicarouter)
    monitor.stop()
    with override_settings(REPLICAROUTER=values):
        try:
            ready_for_routing(cluster)
            yield values
        finally:
            monitor.stop()


def stray_threads(before: set[threading.Thread]) -> list[str]:
    """Return the threads started since ``before`` that still run (replicarouter's own daemons aside)."""
    return [t.name for t in set(threading.enumerate()) - before if not t.name.startswith("replicarouter-")]


class RoundsOfRecords(logging.Handler):
    """Note a monitor's round counter at each record, in the thread that logs it, as it logs it.

    Timing measured in the monitor's own rounds: CPU load stretches seconds, not rounds, and a test
    thread that polls for a state sees it late under load, while this counter is read when it happens.
    """

    def __init__(self, running: Any, logger: str = "replicarouter.health") -> None:
        super().__init__(logging.INFO)
        self.running = running
        self.logger = logging.getLogger(logger)
        self.seen: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((self.running.rounds, record.getMessage()))

    def rounds(self, text: str) -> list[int]:
        """Return the round of each record that contains ``text``."""
        return [n for n, message in self.seen if text in message]

    def __enter__(self) -> RoundsOfRecords:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


def child_settings(cluster: Any, **replicarouter: Any) -> dict[str, Any]:
    """Return ``django_settings(cluster, ...)`` for a child process of this test run.

    With the test databases' names (Django's test runner renamed them in this process): the child then
    reads testapp's tables and computes the same Redis key fingerprints as this process.
    """
    from django.conf import settings

    from replicarouter.testing import django_settings

    values = django_settings(cluster, **replicarouter)
    for alias, entry in values["DATABASES"].items():
        entry["NAME"] = settings.DATABASES[alias]["NAME"]
    return values
