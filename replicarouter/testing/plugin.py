"""pytest plugin (``pytest11`` entry point ``replicarouter``): real-cluster fixtures for any test suite.

Fixtures:

- ``replica_cluster`` (session): one primary, ``--replica-cluster-replicas`` replicas (default 2) and Redis,
  shared by the whole session. Faults a test applies to it (paused replay, frozen or stopped nodes,
  stopped Redis) are undone after that test, so they never leak into the next one.
- ``replica_cluster_factory`` (function): ``factory(**kwargs)`` starts a fresh cluster that is removed at
  the end of the test, for destructive tests such as promotion.

When no cluster can be started (binaries missing, no Docker), tests that use these fixtures are skipped
with the reason, except under ``CI=true`` (or ``REPLICAROUTER_REQUIRE_CLUSTER=1``) where they fail: a CI run
must never pass by skipping its integration tests. Importing this module touches neither Django nor a
database, since pytest loads it in every session of an environment that has replicarouter installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .base import ClusterBase

_TRUE = {"1", "true", "yes", "on"}


def cluster_required() -> bool:
    """Return whether a cluster that cannot start must fail the run rather than skip (CI)."""
    return any(
        os.environ.get(name, "").strip().lower() in _TRUE for name in ("CI", "REPLICAROUTER_REQUIRE_CLUSTER")
    )


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("replicarouter")
    group.addoption(
        "--replica-cluster-replicas",
        type=int,
        default=None,
        help="number of streaming replicas in the replica_cluster fixture (default 2)",
    )
    parser.addini(
        "replica_cluster_replicas", "number of replicas of the replica_cluster fixture", default="2"
    )


_SESSION_CLUSTER = pytest.StashKey[ClusterBase | None]()


def _start(**kwargs: Any) -> ClusterBase:
    from .settings import cluster

    instance: ClusterBase | None = None
    try:
        instance = cluster(**kwargs)
        return instance.up()
    except Exception as exc:
        if instance is not None:
            instance.down()
        message = f"replicarouter.testing could not start a cluster: {exc}"
        if cluster_required():
            pytest.fail(message + " (CI=true: failing instead of skipping)", pytrace=False)
        pytest.skip(message)
    except BaseException:
        if instance is not None:
            instance.down()
        raise


@pytest.fixture(scope="session")
def replica_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterBase]:
    """Yield a running cluster shared by the session (see the module docstring)."""
    replicas = request.config.getoption("--replica-cluster-replicas")
    if replicas is None:
        replicas = int(request.config.getini("replica_cluster_replicas"))
    instance = _start(replicas=replicas)
    request.config.stash[_SESSION_CLUSTER] = instance
    try:
        yield instance
    finally:
        request.config.stash[_SESSION_CLUSTER] = None
        # a replicarouter health monitor in this process would report the shutdown as failures
        # (and the read watchdog with it): stop every background thread replicarouter started
        process_runtime = sys.modules.get("replicarouter.runtime")
        if process_runtime is not None:
            process_runtime.stop()
        instance.down()


@pytest.fixture(autouse=True)
def _replica_cluster_heal(request: pytest.FixtureRequest) -> Iterator[None]:
    """Undo faults a test left on the session cluster (resume, thaw, start, undelay, Redis)."""
    yield
    instance = request.config.stash.get(_SESSION_CLUSTER, None)
    if instance is not None and instance.faults.any():
        instance.heal()


@pytest.fixture
def replica_cluster_factory() -> Iterator[Callable[..., ClusterBase]]:
    """Yield ``factory(**kwargs)`` that starts a fresh cluster, removed when the test ends."""
    started: list[ClusterBase] = []

    def factory(**kwargs: Any) -> ClusterBase:
        instance = _start(**kwargs)
        started.append(instance)
        return instance

    try:
        yield factory
    finally:
        for instance in started:
            instance.down()
