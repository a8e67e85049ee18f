"""Self-tests of replicarouter.testing.LocalCluster against real PostgreSQL and Redis servers."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
import redis

from replicarouter.testing import ClusterError, LocalCluster, procs, registry
from replicarouter.testing.base import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _table(cluster: LocalCluster) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    cluster.primary.query(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    return name


def _count(node, table: str) -> int:
    return int(node.scalar(f"SELECT count(*) FROM {table}"))


def _server_pids(cluster: LocalCluster) -> list[int]:
    pids = []
    for node in cluster.nodes:
        pid = cluster.postmaster_pid(node)
        assert pid is not None, f"{node.name} has no postmaster"
        pids.extend(procs.process_tree(pid))
    redis_pid = registry.redis_pid(cluster.dir)
    assert redis_pid is not None
    return [*pids, redis_pid]


# -- topology ------------------------------------------------------------------------------------


def test_replicas_stream_from_primary_and_are_read_only(replica_cluster):
    primary = replica_cluster.primary
    assert not primary.is_in_recovery()
    streaming = {
        row[0]: row[1] for row in primary.query("SELECT application_name, state FROM pg_stat_replication")
    }
    assert streaming == {"replica1": "streaming", "replica2": "streaming"}
    for replica in replica_cluster.replicas:
        assert replica.is_in_recovery()
        conn = replica.connect()
        try:
            with conn.cursor() as cur, pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute("CREATE TABLE must_fail (id int)")
        finally:
            conn.close()


def test_row_written_on_primary_appears_on_replicas(replica_cluster):
    table = _table(replica_cluster)
    replica_cluster.primary.query(f"INSERT INTO {table} VALUES (1, 'hello')")
    lsn = replica_cluster.wait_caught_up()
    for replica in replica_cluster.replicas:
        assert replica.scalar(f"SELECT v FROM {table} WHERE id = 1") == "hello"
        assert replica_cluster.lag_bytes(replica, lsn) == 0


def test_node_settings_and_dsn_reach_the_node(replica_cluster):
    primary = replica_cluster.primary
    conn = psycopg2.connect(primary.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT inet_server_port(), current_database()")
            assert cur.fetchone() == (primary.port, "replicarouter")
    finally:
        conn.close()
    settings = replica_cluster.databases()
    assert settings["default"]["PORT"] == str(primary.port)
    assert settings["replica1"]["TEST"] == {"MIRROR": "default", "MIRROR_CONNECTION": False}
    assert replica_cluster.replicarouter_settings()["CLUSTERS"]["default"]["REPLICAS"] == [
        "replica1",
        "replica2",
    ]


# -- replay faults -------------------------------------------------------------------------------


def test_pause_replay_keeps_replica_behind_and_resume_catches_up(replica_cluster):
    table = _table(replica_cluster)
    replica_cluster.wait_caught_up()
    paused_at = replica_cluster.pause_replay("replica1")
    replica_cluster.primary.query(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(1, 100) g")
    replica_cluster.wait_caught_up(["replica2"])

    replica1 = replica_cluster.node("replica1")
    assert replica_cluster.replay_lsn(replica1) == paused_at
    assert replica_cluster.lag_bytes(replica1) > 0
    assert _count(replica1, table) == 0
    assert _count(replica_cluster.node("replica2"), table) == 100
    assert replica_cluster.faults.paused == {"replica1"}

    replica_cluster.resume_replay("replica1")
    assert replica_cluster.lag_bytes(replica1) == 0
    assert _count(replica1, table) == 100
    assert not replica_cluster.faults.any()


def test_delay_replay_delays_visibility(replica_cluster):
    table = _table(replica_cluster)
    replica_cluster.wait_caught_up()
    replica_cluster.delay_replay("replica2", 1.5)
    assert replica_cluster.node("replica2").scalar("SHOW recovery_min_apply_delay") == "1500ms"
    try:
        replica_cluster.primary.query(f"INSERT INTO {table} VALUES (1, 'late')")
        committed = time.monotonic()
        replica_cluster.wait_caught_up(["replica1"])
        assert _count(replica_cluster.node("replica2"), table) == 0
        wait_for(
            "the delayed row",
            lambda: _count(replica_cluster.node("replica2"), table) == 1,
            timeout=10,
        )
        assert time.monotonic() - committed >= 1.0
    finally:
        replica_cluster.delay_replay("replica2", 0)
    assert replica_cluster.node("replica2").scalar("SHOW recovery_min_apply_delay") == "0"
    assert not replica_cluster.faults.delayed


def test_terminate_backends_kills_client_connections(replica_cluster):
    replica = replica_cluster.node("replica1")
    victim = replica.connect()
    try:
        with victim.cursor() as cur:
            cur.execute("SELECT 1")
        assert replica_cluster.terminate_backends(replica, application_name="replicarouter-testing") >= 1
        with pytest.raises(psycopg2.OperationalError), victim.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        victim.close()
    assert replica.scalar("SELECT 1") == 1


# -- process faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate", "kill"])
def test_stop_and_start_replica(replica_cluster, mode):
    """Fault: replica stopped (pg_ctl fast/immediate) or killed (SIGKILL); start brings it back streaming."""
    replica = replica_cluster.node("replica2")
    replica_cluster.stop(replica, mode)
    assert replica_cluster.postmaster_pid(replica) is None
    assert not replica.accepts_connections(timeout=1)
    assert replica_cluster.faults.stopped == {"replica2"}

    table = _table(replica_cluster)
    replica_cluster.primary.query(f"INSERT INTO {table} VALUES (1, 'while down')")
    replica_cluster.start(replica)
    assert not replica_cluster.faults.any()
    replica_cluster.wait_caught_up()
    assert _count(replica, table) == 1


def test_stop_and_start_primary(replica_cluster):
    """Fault: primary stopped; writes are impossible until it is started, then replicas stream again."""
    primary = replica_cluster.primary
    replica_cluster.stop(primary, "fast")
    with pytest.raises(psycopg2.OperationalError):
        primary.connect(timeout=2)
    assert replica_cluster.node("replica1").scalar("SELECT 1") == 1  # replicas still serve reads
    replica_cluster.start(primary)
    rows = primary.query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
    assert {r[0] for r in rows} == {"replica1", "replica2"}


def test_freeze_and_thaw(replica_cluster):
    """Fault: replica frozen (SIGSTOP of its process tree); connects time out until it is thawed."""
    replica = replica_cluster.node("replica1")
    postmaster = replica_cluster.postmaster_pid(replica)
    replica_cluster.freeze(replica)
    try:
        assert all(procs.process_state(pid) == "T" for pid in procs.process_tree(postmaster))
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(replica.dsn, connect_timeout=2)
        assert time.monotonic() - started >= 1.5  # it hung until the timeout rather than being refused
    finally:
        replica_cluster.thaw(replica)
    assert all(procs.process_state(pid) != "T" for pid in procs.process_tree(postmaster))
    conn = psycopg2.connect(replica.dsn, connect_timeout=2)
    conn.close()
    assert not replica_cluster.faults.any()


def test_stop_and_start_redis(replica_cluster):
    """Fault: Redis stopped; clients get connection errors until it is started again (empty)."""
    client = redis.Redis.from_url(replica_cluster.redis_url, socket_timeout=1)
    try:
        client.set("k", "v")
        replica_cluster.stop_redis()
        with pytest.raises(redis.ConnectionError):
            client.get("k")
        assert replica_cluster.faults.redis_stopped
        replica_cluster.start_redis()
        assert client.ping()
        assert client.get("k") is None  # no persistence: a restarted Redis is empty
    finally:
        client.close()


def test_heal_undoes_every_fault(replica_cluster):
    replica_cluster.pause_replay("replica1")
    replica_cluster.freeze("replica2")
    replica_cluster.stop_redis()
    replica_cluster.heal()
    assert not replica_cluster.faults.any()
    assert replica_cluster.node("replica1").scalar("SELECT pg_get_wal_replay_pause_state()") == "not paused"
    assert replica_cluster.node("replica2").accepts_connections()
    assert procs.port_open(replica_cluster.redis_port)


def test_fault_controls_reject_bad_arguments(replica_cluster):
    with pytest.raises(ClusterError, match="no node 'replica9'"):
        replica_cluster.stop("replica9")
    with pytest.raises(ValueError, match="mode must be one of"):
        replica_cluster.stop("replica1", "gently")
    with pytest.raises(ClusterError, match="already running"):
        replica_cluster.start("replica1")
    with pytest.raises(ClusterError, match="cannot promote primary"):
        replica_cluster.promote("primary")


# -- promotion and lifecycle (own clusters) ------------------------------------------------------


def test_promote_makes_replica_writable_and_other_replica_follows(replica_cluster_factory):
    cluster = replica_cluster_factory()
    table = _table(cluster)
    cluster.primary.query(f"INSERT INTO {table} VALUES (1, 'before')")
    cluster.wait_caught_up()
    old_primary = cluster.primary
    cluster.stop(old_primary, "fast")

    cluster.promote("replica1")
    new_primary = cluster.node("replica1")
    assert cluster.primary is new_primary and old_primary.role == "detached"
    assert not new_primary.is_in_recovery()
    new_primary.query(f"INSERT INTO {table} VALUES (2, 'after')")
    replica2 = cluster.node("replica2")
    assert cluster.replicas == [replica2]
    assert replica2.scalar("SELECT sender_port FROM pg_stat_wal_receiver") == new_primary.port
    cluster.wait_caught_up()
    assert _count(replica2, table) == 2


def test_down_leaves_no_process_and_no_directory(replica_cluster_factory):
    cluster = replica_cluster_factory(replicas=1)
    pids = _server_pids(cluster)
    directory = cluster.dir
    started = time.monotonic()
    cluster.down()
    took = time.monotonic() - started
    assert [pid for pid in pids if procs.alive(pid)] == []
    assert not directory.exists()
    assert not cluster.is_up
    print(f"down took {took:.3f} s")


def test_exception_inside_with_block_still_cleans_up():
    cluster = LocalCluster(replicas=1)
    with pytest.raises(RuntimeError, match="boom"), cluster:
        pids = _server_pids(cluster)
        directory = cluster.dir
        raise RuntimeError("boom")
    assert [pid for pid in pids if procs.alive(pid)] == []
    assert not directory.exists()


def _python(code: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, **kwargs)


def test_interpreter_exit_cleans_up_a_cluster_never_closed():
    result = _python(
        "import json; from replicarouter.testing import LocalCluster\n"
        "c = LocalCluster(replicas=1).up()\n"
        "from replicarouter.testing import registry, procs\n"
        "pids = [p for n in c.nodes for p in procs.process_tree(c.postmaster_pid(n))]\n"
        "print(json.dumps({'dir': str(c.dir), 'pids': pids + [registry.redis_pid(c.dir)]}))\n"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [pid for pid in data["pids"] if procs.alive(pid)] == []
    assert not Path(data["dir"]).exists()


def test_leftovers_of_a_killed_run_are_reaped(private_runtime):
    """Fault: the process owning a cluster is SIGKILLed; `down --all` removes its servers and files."""
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import json, sys, time; from replicarouter.testing import LocalCluster\n"
         "c = LocalCluster(replicas=1).up()\n"
         "print(json.dumps({'dir': str(c.dir), 'pid': c.postmaster_pid('primary')}), flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True, env=private_runtime,
    )  # fmt: skip
    try:
        data = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    directory = Path(data["dir"])
    assert directory.exists() and procs.alive(data["pid"])
    assert not registry.owner_alive(directory)
    result = subprocess.run(
        [sys.executable, "-m", "replicarouter.testing", "down", "--all"],
        capture_output=True,
        text=True,
        timeout=60,
        env=private_runtime,
    )
    assert result.returncode == 0, result.stderr
    assert str(directory) in result.stdout
    assert not procs.alive(data["pid"])
    assert not directory.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the suite already runs as a normal user")
def test_works_for_a_normal_user_too():
    """As root we run servers as `postgres`; here the whole harness runs as `postgres` itself.

    The child starts as root (so that it can load this interpreter, which may live under /root), imports
    what it needs, then drops to the postgres account before starting a cluster.
    """
    code = (
        "import os, pwd, json, subprocess, psycopg2, shutil, weakref, tempfile, socket, encodings.idna\n"
        "import replicarouter.testing as t, replicarouter.testing.local, replicarouter.testing.settings\n"
        "pw = pwd.getpwnam('postgres'); os.setgroups([]); os.setgid(pw.pw_gid); os.setuid(pw.pw_uid)\n"
        "with t.LocalCluster(replicas=1) as c:\n"
        "    c.primary.query('CREATE TABLE t (id int)'); c.primary.query('INSERT INTO t VALUES (1)')\n"
        "    c.wait_caught_up()\n"
        "    owner = pwd.getpwuid(os.stat(c.datadir('primary')).st_uid).pw_name\n"
        "    print(json.dumps({'count': c.replicas[0].scalar('SELECT count(*) FROM t'),\n"
        "                      'dir': str(c.dir), 'owner': owner, 'euid': os.geteuid()}))\n"
    )
    result = _python(code, cwd="/")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    postgres_uid = pwd.getpwnam("postgres").pw_uid
    assert data["count"] == 1
    assert data["owner"] == "postgres" and data["euid"] == postgres_uid
    assert f"replicarouter-testing-{postgres_uid}" in data["dir"]
    assert not Path(data["dir"]).exists()


def test_password_authentication(replica_cluster_factory):
    cluster = replica_cluster_factory(replicas=1, password="s3cret-pw")
    primary = cluster.primary
    assert "password=s3cret-pw" in primary.dsn
    assert "s3cret-pw" not in repr(primary)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host=primary.host, port=primary.port, user="postgres", password="wrong",
                         dbname=primary.dbname)  # fmt: skip
    cluster.primary.query("CREATE TABLE t (id int)")
    cluster.wait_caught_up()
    assert cluster.replicas[0].scalar("SELECT count(*) FROM t") == 0
