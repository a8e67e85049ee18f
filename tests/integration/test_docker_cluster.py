"""Self-tests of replicarouter.testing.DockerCluster against real containers.

They run only where a Docker engine answers; elsewhere the whole module is skipped with the reason, CI
included (CI has no Docker engine: the local backend is what CI tests).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
import redis

from replicarouter.testing.base import Node
from replicarouter.testing.docker import DockerCluster
from replicarouter.testing.settings import docker_available

pytestmark = [pytest.mark.docker]

NO_DOCKER = "no Docker engine answers: the Docker backend is tested only where Docker runs"


@pytest.fixture(scope="module", autouse=True)
def docker_engine() -> None:
    """Skip the module where no Docker engine answers (deliberately also under CI=true)."""
    if not docker_available():
        pytest.skip(NO_DOCKER)


@pytest.fixture(scope="module")
def module_cluster(docker_engine: None) -> Iterator[DockerCluster]:
    with DockerCluster(replicas=2, timeout=60) as cluster:
        yield cluster


@pytest.fixture
def cluster(module_cluster: DockerCluster) -> Iterator[DockerCluster]:
    """The module's cluster; whatever fault a test leaves behind is undone after it."""
    try:
        yield module_cluster
    finally:
        module_cluster.heal()


@pytest.fixture
def cluster_factory(docker_engine: None) -> Iterator[Callable[..., DockerCluster]]:
    """Yield ``factory(**kwargs)`` starting a cluster of the test's own, removed when the test ends."""
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


def _table(cluster: DockerCluster) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    cluster.primary.query(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    return name


def _count(node: Node, table: str) -> int:
    return int(node.scalar(f"SELECT count(*) FROM {table}"))


def _status(cluster: DockerCluster, node: str) -> str:
    container = cluster.container(node)
    container.reload()
    return str(container.status)


# -- topology --------------------------------------------------------------------------------------------


def test_replicas_stream_from_primary_and_are_read_only(cluster):
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
        assert _status(cluster, replica.name) == "running"
        assert replica.is_in_recovery()
        sender = replica.query("SELECT sender_host, sender_port FROM pg_stat_wal_receiver")
        assert sender == [(cluster.hostname(primary), 5432)]
        conn = replica.connect()
        try:
            with conn.cursor() as cur, pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute("CREATE TABLE must_fail (id int)")
        finally:
            conn.close()


def test_row_written_on_primary_appears_on_replicas(cluster):
    table = _table(cluster)
    cluster.primary.query(f"INSERT INTO {table} VALUES (1, 'hello')")
    lsn = cluster.wait_caught_up()
    for replica in cluster.replicas:
        assert replica.scalar(f"SELECT v FROM {table} WHERE id = 1") == "hello"
        assert cluster.lag_bytes(replica, lsn) == 0


# -- replay faults -------------------------------------------------------------------------------


def test_pause_replay_keeps_replica_behind_and_resume_catches_up(cluster):
    table = _table(cluster)
    cluster.wait_caught_up()
    paused_at = cluster.pause_replay("replica1")
    cluster.primary.query(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(1, 100) g")
    cluster.wait_caught_up(["replica2"])

    replica1 = cluster.node("replica1")
    assert cluster.replay_lsn(replica1) == paused_at
    assert cluster.lag_bytes(replica1) > 0
    assert _count(replica1, table) == 0
    assert _count(cluster.node("replica2"), table) == 100
    assert cluster.faults.paused == {"replica1"}

    cluster.resume_replay("replica1")
    assert cluster.lag_bytes(replica1) == 0
    assert _count(replica1, table) == 100
    assert not cluster.faults.any()


# -- container faults ----------------------------------------------------------------------------


def test_freeze_and_thaw(cluster):
    """Fault: replica frozen (docker pause); connects time out until it is thawed."""
    replica = cluster.node("replica1")
    cluster.freeze(replica)
    try:
        assert _status(cluster, "replica1") == "paused"
        assert cluster.faults.frozen == {"replica1"}
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(replica.dsn, connect_timeout=2)
        assert time.monotonic() - started >= 1.5  # it hung until the timeout rather than being refused
    finally:
        cluster.thaw(replica)
    assert _status(cluster, "replica1") == "running"
    conn = psycopg2.connect(replica.dsn, connect_timeout=2)
    conn.close()
    assert not cluster.faults.any()


@pytest.mark.parametrize("mode", ["smart", "fast", "immediate", "kill"])
def test_stop_and_start_replica(cluster, mode):
    """Fault: replica stopped (by each pg_ctl mode's signal) or killed; start brings it back streaming."""
    replica = cluster.node("replica2")
    port = replica.port
    cluster.stop(replica, mode)
    assert _status(cluster, "replica2") == "exited"
    assert not replica.accepts_connections(timeout=1)
    assert cluster.faults.stopped == {"replica2"}

    table = _table(cluster)
    cluster.primary.query(f"INSERT INTO {table} VALUES (1, 'while down')")
    cluster.start(replica)
    assert not cluster.faults.any()
    assert replica.port == port  # the host port survives the restart
    cluster.wait_caught_up()
    assert _count(replica, table) == 1


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


# -- promotion and lifecycle (own clusters) ------------------------------------------------------


def test_promote_makes_replica_writable_and_other_replica_follows(cluster_factory):
    cluster = cluster_factory()
    table = _table(cluster)
    cluster.primary.query(f"INSERT INTO {table} VALUES (1, 'before')")
    cluster.wait_caught_up()
    old_primary = cluster.primary
    # a primary left running could write WAL (a standby snapshot, say) that reaches replica2 but not the
    # promoted replica1, and replica2 could then never follow it: fail the primary over as in real life
    cluster.stop(old_primary, "fast")
    assert _status(cluster, "primary") == "exited"

    cluster.promote("replica1")
    new_primary = cluster.node("replica1")
    assert cluster.primary is new_primary and old_primary.role == "detached"
    assert not new_primary.is_in_recovery()
    new_primary.query(f"INSERT INTO {table} VALUES (2, 'after')")
    replica2 = cluster.node("replica2")
    assert cluster.replicas == [replica2]
    sender = replica2.query("SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver")
    assert sender == [("streaming", cluster.hostname(new_primary), 5432)]
    cluster.wait_caught_up()
    assert _count(replica2, table) == 2


def test_down_removes_containers_and_network(cluster_factory):
    import docker

    cluster = cluster_factory(replicas=1)
    ids = [cluster.container(node).id for node in cluster.nodes] + [cluster.redis_container.id]
    network = cluster.network_name
    assert network is not None
    cluster.freeze("replica1")  # a paused container goes too
    cluster.down()
    assert not cluster.is_up
    cluster.down()  # idempotent

    client = docker.from_env()
    try:
        for container_id in ids:
            with pytest.raises(docker.errors.NotFound):
                client.containers.get(container_id)
        with pytest.raises(docker.errors.NotFound):
            client.networks.get(network)
    finally:
        client.close()
