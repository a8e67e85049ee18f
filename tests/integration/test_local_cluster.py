"""Self-tests of replicarouter.testing.LocalCluster alone, against real PostgreSQL and Redis servers.

What every backend must do (streaming, replay and process faults, promotion, teardown) is tested against
each backend in test_cluster_contract.py; here are the tests that have no Docker counterpart: settings and
SQL-level controls on the session cluster, and the local backend's own lifecycle (its directory, its
processes, interpreter exit, reaping of killed runs, running as a normal user).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from replicarouter.testing import ClusterError, LocalCluster, procs, registry
from replicarouter.testing.base import wait_for
from tests.helpers import new_table, row_count, server_pids

pytestmark = pytest.mark.integration


# -- settings and SQL-level controls (session cluster) -------------------------------------------


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


def test_delay_replay_delays_visibility(replica_cluster):
    table = new_table(replica_cluster)
    replica_cluster.wait_caught_up()
    replica_cluster.delay_replay("replica2", 1.5)
    assert replica_cluster.node("replica2").scalar("SHOW recovery_min_apply_delay") == "1500ms"
    try:
        replica_cluster.primary.query(f"INSERT INTO {table} VALUES (1, 'late')")
        committed = time.monotonic()
        replica_cluster.wait_caught_up(["replica1"])
        assert row_count(replica_cluster.node("replica2"), table) == 0
        wait_for(
            "the delayed row",
            lambda: row_count(replica_cluster.node("replica2"), table) == 1,
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


def test_heal_undoes_every_fault(replica_cluster):
    replica_cluster.pause_replay("replica1")
    replica_cluster.freeze("replica2")
    replica_cluster.stop_redis()
    replica_cluster.heal()
    assert not replica_cluster.faults.any()
    assert replica_cluster.node("replica1").scalar("SELECT pg_get_wal_replay_pause_state()") == "not paused"
    assert replica_cluster.node("replica2").accepts_connections()
    assert procs.port_open(replica_cluster.redis_port)


def test_freeze_redis_hangs_clients_until_thawed_and_heal_thaws_it(replica_cluster):
    """Fault: Redis frozen (SIGSTOP): calls time out, data is kept; thaw_redis and heal() resume it."""
    import redis

    client = redis.Redis.from_url(replica_cluster.redis_url, socket_timeout=0.3)
    try:
        client.set("frozen-probe", "kept")
        replica_cluster.freeze_redis()
        assert replica_cluster.faults.redis_frozen
        assert procs.process_state(replica_cluster.redis_proc.pid) in ("T", "t")
        with pytest.raises(redis.TimeoutError):
            client.get("frozen-probe")
        replica_cluster.thaw_redis()
        assert not replica_cluster.faults.any()
        assert client.get("frozen-probe") == b"kept"  # a thawed Redis keeps its data
        replica_cluster.freeze_redis()
        replica_cluster.heal()
        assert not replica_cluster.faults.any()
        assert client.get("frozen-probe") == b"kept"
    finally:
        client.close()


def test_fault_controls_reject_bad_arguments(replica_cluster):
    with pytest.raises(ClusterError, match="no node 'replica9'"):
        replica_cluster.stop("replica9")
    with pytest.raises(ValueError, match="mode must be one of"):
        replica_cluster.stop("replica1", "gently")
    with pytest.raises(ClusterError, match="already running"):
        replica_cluster.start("replica1")
    with pytest.raises(ClusterError, match="cannot promote primary"):
        replica_cluster.promote("primary")


# -- lifecycle of the local backend --------------------------------------------------------------


def test_exception_inside_with_block_still_cleans_up():
    cluster = LocalCluster(replicas=1)
    with pytest.raises(RuntimeError, match="boom"), cluster:
        pids = server_pids(cluster)
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
