"""The pytest plugin and the command line, each against a real cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from replicarouter.testing import procs

pytestmark = pytest.mark.integration

FAULT_LEAK_TESTS = """
def test_a_leaves_faults_behind(replica_cluster):
    replica_cluster.pause_replay("replica1")
    replica_cluster.freeze("replica2")
    replica_cluster.stop_redis()

def test_b_sees_a_healthy_cluster(replica_cluster):
    assert not replica_cluster.faults.any()
    assert replica_cluster.node("replica1").scalar("SELECT pg_get_wal_replay_pause_state()") == "not paused"
    assert replica_cluster.node("replica2").accepts_connections(timeout=2)
    replica_cluster.wait_caught_up()

def test_c_factory_cluster_is_separate(replica_cluster, replica_cluster_factory):
    other = replica_cluster_factory(replicas=1)
    assert other.primary.port != replica_cluster.primary.port
    assert len(other.replicas) == 1
"""


def test_plugin_undoes_faults_between_tests(pytester):
    """Fault: a test pauses replay, freezes a replica and stops Redis, then ends without undoing it."""
    pytester.makepyfile(FAULT_LEAK_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:django", "-v")
    result.assert_outcomes(passed=3)


def test_cli_up_json_prints_working_settings_and_down_stops_it(private_runtime):
    proc = subprocess.Popen(
        [sys.executable, "-m", "replicarouter.testing", "up", "--replicas", "1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=private_runtime,
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        data = json.loads(line)
        assert data["startup_seconds"] > 0  # measured and reported (how long it took is no test's business)
        directory = Path(data["dir"])
        default = data["DATABASES"]["default"]
        conn = psycopg2.connect(
            host=default["HOST"], port=default["PORT"], dbname=default["NAME"], user=default["USER"]
        )
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            assert cur.fetchone() == (False,)
        conn.close()
        replica = data["DATABASES"]["replica1"]
        conn = psycopg2.connect(data["nodes"][1]["dsn"])
        with conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery(), inet_server_port()")
            assert cur.fetchone() == (True, int(replica["PORT"]))
        conn.close()
        assert data["env"]["REPLICAROUTER_REDIS_URL"] == data["REPLICAROUTER"]["REDIS_URL"]

        status = subprocess.run(
            [sys.executable, "-m", "replicarouter.testing", "status", "--json"],
            capture_output=True, text=True, timeout=60, env=private_runtime,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout
        mine = [c for c in json.loads(status.stdout)["clusters"] if c["dir"] == str(directory)]
        assert [n["state"] for n in mine[0]["nodes"]] == ["primary", "replica"]
        assert mine[0]["redis"]["state"] == "up"

        down = subprocess.run(
            [sys.executable, "-m", "replicarouter.testing", "down"],
            capture_output=True,
            text=True,
            timeout=60,
            env=private_runtime,
        )
        assert down.returncode == 0, down.stderr
        assert "stopped and removed" in down.stdout
        assert proc.wait(timeout=30) == 0
        assert "cluster stopped and removed" in proc.stderr.read()
        assert not directory.exists()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


#: start the CLI as a non-interactive shell starts a background job: with SIGINT ignored (inherited
#: through exec), so that Python would never raise KeyboardInterrupt unless ``up`` installs its own handler
SIGINT_IGNORED = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def test_cli_up_stops_on_ctrl_c_even_when_started_with_sigint_ignored():
    """Fault: ``up`` inherits SIGINT ignored → Ctrl-C (SIGINT) still stops it and removes the cluster."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGINT_IGNORED, "-m", "replicarouter.testing", "up", "--replicas", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = ""
        while "stops it" not in out:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            out += line
        assert "export REPLICAROUTER_PRIMARY_URL=postgresql://postgres@127.0.0.1:" in out
        directory = Path(out.split("(", 1)[1].split(")", 1)[0])
        pid = int((directory / "primary/postmaster.pid").read_text().split()[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not procs.alive(pid)
        assert not directory.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_cli_reports_missing_binaries_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "replicarouter.testing", "up", "--backend", "local"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "REPLICAROUTER_PG_BINDIR": str(tmp_path / "nope")},
    )
    assert result.returncode == 2
    assert "error: " in result.stderr and "apt-get install postgresql" in result.stderr
