"""The contract of replicarouter.testing's cluster backends, run against each: local processes and Docker.

Each test runs once per backend. ``local`` always runs (marked ``integration``); a local cluster that cannot
start skips it with the reason, except under ``CI=true`` where it fails (the plugin's ``_start``, as for
every cluster fixture). ``docker`` (marked ``docker``) runs only where a Docker engine answers and is
skipped with the reason elsewhere, CI included (CI has no Docker engine: the local backend is what CI
tests). What differs between backends is only how a test looks at a server from outside SQL (processes or
containers): ``LocalView`` and ``DockerView``. Tests of one backend alone are in test_local_cluster.py.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
import redis

from replicarouter.testing import ClusterBase, LocalCluster, Node, procs
from replicarouter.testing.docker import POSTGRES_PORT, DockerCluster
from replicarouter.testing.plugin import _start
from replicarouter.testing.settings import docker_available
from tests.helpers import new_table, row_count, server_pids

NO_DOCKER = "no Docker engine answers: the Docker backend is tested only where Docker runs"

#: a remaining() check: what of a removed cluster still exists (empty once everything is gone)
Remaining = Callable[[], list[str]]


# -- what differs between backends: how a test sees a server from outside SQL ---------------------------


class LocalView:
    """A LocalCluster's servers seen as processes and files."""

    @staticmethod
    def state(cluster: LocalCluster, node: str) -> str:
        """Return ``running``, ``frozen`` (every process SIGSTOPped) or ``stopped`` (no postmaster)."""
        pid = cluster.postmaster_pid(node)
        if pid is None:
            return "stopped"
        states = [procs.process_state(p) for p in procs.process_tree(pid)]
        if all(s == "T" for s in states):
            return "frozen"
        return "running" if all(s != "T" for s in states) else f"partly frozen: {states}"

    @staticmethod
    def upstream(cluster: LocalCluster, node: Node) -> tuple[str, int]:
        """Return the (sender_host, sender_port) a replica streaming from ``node`` reports."""
        return node.host, node.port

    @staticmethod
    def remaining(cluster: LocalCluster) -> Remaining:
        """Return a check listing the cluster's server processes and directory that still exist."""
        pids, directory = server_pids(cluster), cluster.dir
        assert directory is not None

        def remaining() -> list[str]:
            left = [f"pid {pid}" for pid in pids if procs.alive(pid)]
            return left + ([str(directory)] if directory.exists() else [])

        return remaining


class DockerView:
    """A DockerCluster's servers seen as containers on a network."""

    STATES = {"running": "running", "paused": "frozen", "exited": "stopped"}

    @classmethod
    def state(cls, cluster: DockerCluster, node: str) -> str:
        """Return ``running``, ``frozen`` (paused) or ``stopped`` (exited); any other status as it is."""
        container = cluster.container(node)
        container.reload()
        return cls.STATES.get(str(container.status), str(container.status))

    @staticmethod
    def upstream(cluster: DockerCluster, node: Node) -> tuple[str, int]:
        """Return the (sender_host, sender_port) a replica streaming from ``node`` reports."""
        return cluster.hostname(node), POSTGRES_PORT

    @staticmethod
    def remaining(cluster: DockerCluster) -> Remaining:
        """Return a check listing the cluster's containers and network that Docker still knows."""
        import docker

        ids = [cluster.container(node).id for node in cluster.nodes] + [cluster.redis_container.id]
        network = cluster.network_name
        assert network is not None

        def exists(get: Callable[[str], object], key: str) -> bool:
            try:
                get(key)
            except docker.errors.NotFound:
                return False
            return True

        def remaining() -> list[str]:
            client = docker.from_env()
            try:
                left = [f"container {c}" for c in ids if exists(client.containers.get, c)]
                return left + ([f"network {network}"] if exists(client.networks.get, network) else [])
            finally:
                client.close()

        return remaining


VIEWS: dict[str, Any] = {"local": LocalView, "docker": DockerView}


# -- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_engine() -> None:
    """Skip the Docker backend's tests where no Docker engine answers (deliberately also under CI=true)."""
    if not docker_available():
        pytest.skip(NO_DOCKER)


BACKENDS = [
    pytest.param("local", marks=pytest.mark.integration),
    pytest.param("docker", marks=pytest.mark.docker),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Run the test once per backend (the Docker one only where an engine answers)."""
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    return str(request.param)


@pytest.fixture
def view(backend: str) -> Any:
    """The backend's view of its servers from outside SQL (``LocalView`` or ``DockerView``)."""
    return VIEWS[backend]


@pytest.fixture(scope="module")
def local_module_cluster() -> Iterator[ClusterBase]:
    """The module's local cluster, started as the plugin starts its own (skipped, or failed under CI=true)."""
    instance = _start(backend="local", replicas=2)
    try:
        yield instance
    finally:
        instance.down()


@pytest.fixture(scope="module")
def docker_module_cluster(docker_engine: None) -> Iterator[DockerCluster]:
    """The module's Docker cluster (its containers are slower to start: a 60 s timeout)."""
    with DockerCluster(replicas=2, timeout=60) as instance:
        yield instance


@pytest.fixture
def cluster(request: pytest.FixtureRequest, backend: str) -> Iterator[Any]:
    """The backend's cluster of this module; whatever fault a test leaves behind is undone after it."""
    instance: ClusterBase = request.getfixturevalue(f"{backend}_module_cluster")
    try:
        yield instance
    finally:
        instance.heal()


@pytest.fixture
def cluster_factory(backend: str, replica_cluster_factory: Any) -> Iterator[Callable[..., Any]]:
    """Yield ``factory(**kwargs)`` starting a cluster of the test's own on the backend, removed at its end."""
    if backend == "local":
        yield functools.partial(replica_cluster_factory, backend="local")
        return
    started: list[DockerCluster] = []

    def factory(**kwargs: Any) -> DockerCluster:
        kwargs.setdefault("timeout", 60)
        instance = DockerCluster(**kwargs)
        started.append(instance)
        return instance.up()

    try:
        yield factory
    finally:
        for instance in started:
            instance.down()


# -- contract: topology ----------------------------------------------------------------------------------


def test_replicas_stream_from_primary_and_are_read_only(cluster, view):
    primary = cluster.primary
    assert [n.name for n in cluster.nodes] == ["primary", "replica1", "replica2"]
    assert {n.host for n in cluster.nodes} == {"127.0.0.1"}
    assert len({n.port for n in cluster.nodes} | {cluster.redis_port}) == 4
    assert not primary.is_in_recovery()
    streaming = {
        row[0]: row[1] for row in primary.query("SELECT application_name, state FROM pg_stat_replication")
    }
    assert streaming == {"replica1": "streaming", "replica2": "streaming"}
    for replica in cluster.replicas:
        assert view.state(cluster, replica.name) == "running"
        assert replica.is_in_recovery()
        sender = replica.query("SELECT sender_host, sender_port FROM pg_stat_wal_receiver")
        assert sender == [view.upstream(cluster, primary)]
        conn = replica.connect()
        try:
            with conn.cursor() as cur, pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute("CREATE TABLE must_fail (id int)")
        finally:
            conn.close()


def test_row_written_on_primary_appears_on_replicas(cluster):
    table = new_table(cluster)
    cluster.primary.query(f"INSERT INTO {table} VALUES (1, 'hello')")
    lsn = cluster.wait_caught_up()
    for replica in cluster.replicas:
        assert replica.scalar(f"SELECT v FROM {table} WHERE id = 1") == "hello"
        assert cluster.lag_bytes(replica, lsn) == 0


# -- contract: replay faults -----------------------------------------------------------------------------


def test_pause_replay_keeps_replica_behind_and_resume_catches_up(cluster):
    table = new_table(cluster)
    cluster.wait_caught_up()
    paused_at = cluster.pause_replay("replica1")
    cluster.primary.query(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(1, 100) g")
    cluster.wait_caught_up(["replica2"])

    replica1 = cluster.node("replica1")
    assert cluster.replay_lsn(replica1) == paused_at
    assert cluster.lag_bytes(replica1) > 0
    assert row_count(replica1, table) == 0
    assert row_count(cluster.node("replica2"), table) == 100
    assert cluster.faults.paused == {"replica1"}

    cluster.resume_replay("replica1")
    assert cluster.lag_bytes(replica1) == 0
    assert row_count(replica1, table) == 100
    assert not cluster.faults.any()


# -- contract: process faults ----------------------------------------------------------------------------


def test_freeze_and_thaw(cluster, view):
    """Fault: replica frozen (SIGSTOP of its process tree, docker pause); connects time out until thawed."""
    replica = cluster.node("replica1")
    cluster.freeze(replica)
    try:
        assert view.state(cluster, "replica1") == "frozen"
        assert cluster.faults.frozen == {"replica1"}
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(replica.dsn, connect_timeout=2)
        assert time.monotonic() - started >= 1.5  # it hung until the timeout rather than being refused
    finally:
        cluster.thaw(replica)
    assert view.state(cluster, "replica1") == "running"
    conn = psycopg2.connect(replica.dsn, connect_timeout=2)
    conn.close()
    assert not cluster.faults.any()


@pytest.mark.parametrize("mode", ["smart", "fast", "immediate", "kill"])
def test_stop_and_start_replica(cluster, view, mode):
    """Fault: replica stopped (each pg_ctl mode, or its signal) or killed; start brings it back streaming."""
    replica = cluster.node("replica2")
    port = replica.port
    cluster.stop(replica, mode)
    assert view.state(cluster, "replica2") == "stopped"
    assert not replica.accepts_connections(timeout=1)
    assert cluster.faults.stopped == {"replica2"}

    table = new_table(cluster)
    cluster.primary.query(f"INSERT INTO {table} VALUES (1, 'while down')")
    cluster.start(replica)
    assert not cluster.faults.any()
    assert replica.port == port  # the port survives the restart
    cluster.wait_caught_up()
    assert row_count(replica, table) == 1


def test_stop_and_start_primary(cluster):
    """Fault: primary stopped; writes are impossible until it is started, then replicas stream again."""
    primary = cluster.primary
    cluster.stop(primary, "fast")
    with pytest.raises(psycopg2.OperationalError):
        primary.connect(timeout=2)
    assert cluster.node("replica1").scalar("SELECT 1") == 1  # replicas still serve reads
    cluster.start(primary)
    rows = primary.query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
    assert {r[0] for r in rows} == {"replica1", "replica2"}


def test_stop_and_start_redis(cluster):
    """Fault: Redis stopped; clients get connection errors until it is started again (empty)."""
    client = redis.Redis.from_url(cluster.redis_url, socket_timeout=1)
    try:
        client.set("k", "v")
        cluster.stop_redis()
        with pytest.raises(redis.ConnectionError):
            client.get("k")
        assert cluster.faults.redis_stopped
        cluster.start_redis()
        assert client.ping()
        assert client.get("k") is None  # no persistence: a restarted Redis is empty
        assert not cluster.faults.any()
    finally:
        client.close()


# -- contract: promotion and lifecycle (own clusters) ----------------------------------------------------


def test_promote_makes_replica_writable_and_other_replica_follows(cluster_factory, view):
    cluster = cluster_factory()
    table = new_table(cluster)
    cluster.primary.query(f"INSERT INTO {table} VALUES (1, 'before')")
    cluster.wait_caught_up()
    old_primary = cluster.primary
    # a primary left running could write WAL (a standby snapshot, say) that reaches replica2 but not the
    # promoted replica1, and replica2 could then never follow it: fail the primary over as in real life
    cluster.stop(old_primary, "fast")
    assert view.state(cluster, "primary") == "stopped"

    cluster.promote("replica1")
    new_primary = cluster.node("replica1")
    assert cluster.primary is new_primary and old_primary.role == "detached"
    assert not new_primary.is_in_recovery()
    new_primary.query(f"INSERT INTO {table} VALUES (2, 'after')")
    replica2 = cluster.node("replica2")
    assert cluster.replicas == [replica2]
    sender = replica2.query("SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver")
    assert sender == [("streaming", *view.upstream(cluster, new_primary))]
    cluster.wait_caught_up()
    assert row_count(replica2, table) == 2


def test_down_removes_every_server_and_what_it_created(cluster_factory, view):
    """Processes and directory (local), containers and network (Docker); a frozen server goes too."""
    cluster = cluster_factory(replicas=1)
    remaining = view.remaining(cluster)
    assert len(remaining()) > 0  # the check sees the running cluster
    cluster.freeze("replica1")
    cluster.down()
    assert not cluster.is_up
    cluster.down()  # idempotent
    assert remaining() == []
