"""Health monitor, shared state in Redis and replicastatus, against real servers and real faults."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from django.db.models.expressions import RawSQL
from django.test import override_settings

from replicarouter import pool as pools
from replicarouter import request_context
from replicarouter.health import monitor
from replicarouter.health import store as health
from replicarouter.health.probe import ClusterProbe
from replicarouter.health.rules import RISE_SLACK, Rules, initial_nodes, usable
from replicarouter.health.shared import LEASE_INTERVALS
from replicarouter.routing.topology import build, fingerprint
from replicarouter.testing import django_settings
from replicarouter.testing.base import wait_for
from tests.helpers import RoundsOfRecords
from tests.testapp.models import Item

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases="__all__")]

FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.4, "FALL": 2, "RISE": 2}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def fast_monitor(replica_cluster):
    """The process's monitor on fast settings, with a key prefix of its own; stopped afterwards."""
    values = replica_cluster.replicarouter_settings(KEY_PREFIX=f"t{uuid.uuid4().hex[:6]}", **FAST)
    monitor.stop()
    with override_settings(REPLICAROUTER=values):
        running = monitor.ensure_started()
        wait_for(
            "both replicas up",
            lambda: health.usable_replicas("default") == {"replica1", "replica2"},
            timeout=10,
        )
        yield running
        monitor.stop()
    wait_for(
        "the cluster healed", lambda: all(n.accepts_connections() for n in replica_cluster.nodes), timeout=30
    )


def connections_close_all():
    from django.db import connections

    connections.close_all()


def _state(alias):
    return health.snapshot("default").nodes[alias]


def _served(ports):
    with request_context():
        port = Item.objects.annotate(port=RawSQL("inet_server_port()", ())).values_list("port", flat=True)[0]
    return ports[port]


@pytest.fixture
def ports(replica_cluster):
    with request_context():
        Item.objects.create(name="seed")
    replica_cluster.wait_caught_up()
    return {n.port: ("default" if n.role == "primary" else n.name) for n in replica_cluster.nodes}


def test_killed_replica_goes_down_and_comes_back(replica_cluster, fast_monitor, ports, caplog):
    """Fault: replica killed (SIGKILL) → down within FALL probe rounds, no read goes there; restarted → up."""
    for _ in range(4):
        _served(ports)
    connections_close_all()
    assert pools.registry.stats("replica1")["idle"] >= 1  # pooled connections to replica1 exist
    with (
        RoundsOfRecords(fast_monitor) as changes,
        caplog.at_level(logging.INFO, logger="replicarouter.health"),
    ):
        replica_cluster.stop("replica1", "kill")
        killed_in = fast_monitor.rounds  # the round under way (or just done) once the port refuses
        wait_for("replica1 down", lambda: _state("replica1").state == "down", timeout=5)
        # Detection counted in probe rounds (load stretches seconds, not rounds): the round under way at
        # the kill may still have found replica1 answering, the FALL rounds after it fail, and the last
        # of those marks it down; one extra failed probe would take a round more.
        went_down = changes.rounds("node replica1: up -> down")
        assert went_down and went_down[0] - killed_in <= FAST["FALL"], (killed_in, went_down)
        assert "replica1" not in health.usable_replicas("default")
        assert pools.registry.stats("replica1")["idle"] == 0  # excluded: its pooled connections dropped
        assert {_served(ports) for _ in range(10)} == {"replica2"}
        replica_cluster.start("replica1")
        wait_for("replica1 up", lambda: _state("replica1").state == "up", timeout=5)
    assert {_served(ports) for _ in range(10)} == {"replica1", "replica2"}
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("node replica1: up -> down (probe failed (2/2)") for m in messages)
    assert any(m.startswith("node replica1: down -> up") for m in messages)


def test_frozen_replica_does_not_stall_the_monitor(replica_cluster, fast_monitor, ports):
    """Fault: replica frozen (SIGSTOP) → every round still ends within the probe deadline; node goes down."""
    fast_monitor.max_round_seconds = 0.0
    replica_cluster.freeze("replica2")
    try:
        wait_for("replica2 down", lambda: _state("replica2").state == "down", timeout=5)
        assert "no answer within 0.4 s" in _state("replica2").error
        # the monitor went on while the node hung (a round stuck on it would never end)...
        hung_from = fast_monitor.rounds
        wait_for("four more rounds", lambda: fast_monitor.rounds - hung_from >= 4, timeout=10)
        # ...and kept its pace: no round outlived the probe deadline
        assert fast_monitor.max_round_seconds <= FAST["CHECK_TIMEOUT"] + 0.3
        assert {_served(ports) for _ in range(6)} == {"replica1"}  # and no request hung on the frozen node
    finally:
        replica_cluster.thaw("replica2")
    wait_for("replica2 up", lambda: _state("replica2").state == "up", timeout=5)


def test_frozen_replica_back_needs_rise_rounds_an_interval_apart(replica_cluster, monkeypatch):
    """Bug guarded: after a freeze RISE gave no hysteresis (issue 16).

    Fault: replica2 frozen (SIGSTOP) until down, then thawed once a round has waited on it for longer
    than CHECK_INTERVAL: that round ends with its answer and the next starts at once, so two healthy
    answers came milliseconds apart and RISE=2 made it up at the second. Expected: in the snapshots the
    monitor installed, at least (RISE-1) x CHECK_INTERVAL x (1 - RISE_SLACK) between replica2's first
    healthy answer and its becoming up (times as the monitor judged them: no polling delay in them).
    """
    fast = {"CHECK_INTERVAL": 0.3, "CHECK_TIMEOUT": 1.5, "FALL": 2, "RISE": 2}
    installed = []  # replica2's health in every snapshot the monitor installed, in order
    install = monitor.set_snapshot

    def record(cluster, value):
        if cluster == "default":
            installed.append(value.nodes["replica2"])
        install(cluster, value)

    monkeypatch.setattr(monitor, "set_snapshot", record)
    values = replica_cluster.replicarouter_settings(KEY_PREFIX=f"t{uuid.uuid4().hex[:6]}", **fast)
    monitor.stop()
    with override_settings(REPLICAROUTER=values):
        running = monitor.ensure_started()
        try:
            wait_for(
                "both up", lambda: health.usable_replicas("default") == {"replica1", "replica2"}, timeout=10
            )
            replica_cluster.freeze("replica2")
            try:
                wait_for("replica2 down", lambda: _state("replica2").state == "down", timeout=15)
                # thaw late in a round that waits on replica2 (its probe deadline is CHECK_TIMEOUT): past
                # CHECK_INTERVAL into it, so that the next round starts as soon as it ends
                under_way = running.rounds
                wait_for("a new round", lambda: running.rounds > under_way, timeout=10)
                began = time.monotonic()
                wait_for(
                    "the round to outlast CHECK_INTERVAL",
                    lambda: time.monotonic() - began >= 2 * fast["CHECK_INTERVAL"],
                    timeout=5,
                )
            finally:
                replica_cluster.thaw("replica2")
            wait_for("replica2 up", lambda: _state("replica2").state == "up", timeout=15)
        finally:
            monitor.stop()
    went_down = next(i for i, n in enumerate(installed) if n.state == "down")
    back = installed[went_down:]
    first_healthy = next(n for n in back if n.failures == 0 and n.healthy_streak >= 1)
    came_up = next(n for n in back if n.state == "up")
    assert first_healthy.state == "down"  # RISE=2: one healthy answer is not enough
    least = (fast["RISE"] - 1) * fast["CHECK_INTERVAL"] * (1 - RISE_SLACK)
    took = came_up.checked_at - first_healthy.checked_at
    assert took >= least, (took, [(n.state, n.healthy_streak, n.checked_at, n.error) for n in back])


def test_paused_replay_is_lagging_and_avoided(replica_cluster, ports):
    """Fault: replay paused while the primary writes → lagging with measured lag; reads avoid it."""
    values = replica_cluster.replicarouter_settings(
        KEY_PREFIX=f"t{uuid.uuid4().hex[:6]}", MAX_LAG_SECONDS=0.5, **FAST
    )
    monitor.stop()
    with override_settings(REPLICAROUTER=values):
        monitor.ensure_started()
        wait_for("both up", lambda: health.usable_replicas("default") == {"replica1", "replica2"}, timeout=10)
        replica_cluster.pause_replay("replica1")
        try:
            with request_context():
                Item.objects.bulk_create(Item(name=f"w{i}") for i in range(200))
            wait_for("replica1 lagging", lambda: _state("replica1").state == "lagging", timeout=5)
            lagging = _state("replica1")
            assert lagging.lag_bytes > 0 and lagging.lag_seconds > 0.5
            assert _state("replica2").state == "up" and _state("replica2").lag_bytes == 0
            assert {_served(ports) for _ in range(6)} == {"replica2"}
        finally:
            replica_cluster.resume_replay("replica1")
        wait_for("replica1 up", lambda: _state("replica1").state == "up", timeout=5)
        assert _state("replica1").lag_bytes == 0
        monitor.stop()


def _worker(replica_cluster, prefix):
    values = django_settings(replica_cluster, KEY_PREFIX=prefix, **FAST)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.cluster_settings",
           "REPLICAROUTER_TEST_SETTINGS": json.dumps(values)}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.monitor_worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip


def _report(proc):
    """Return the worker's monitor counters as they are now (it answers each line it reads)."""
    proc.stdin.write("\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def _reports_if(procs, condition):
    reports = [_report(p) for p in procs]
    return reports if condition(reports) else None


def _deltas(before, after, counter):
    return [b[counter] - a[counter] for a, b in zip(before, after, strict=True)]


def test_two_processes_one_leader_and_takeover(replica_cluster):
    """Two processes, one Redis: exactly one probes; the leader killed (SIGKILL) → the other takes over."""
    import redis

    prefix = f"t{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(replica_cluster.redis_url)
    procs = [_worker(replica_cluster, prefix), _worker(replica_cluster, prefix)]
    try:
        # past start-up, where a follower may probe once before any snapshot exists: one process leads,
        # the other reads the leader's snapshot from Redis
        first = wait_for(
            "one leader and one follower",
            lambda: _reports_if(procs, lambda r: sorted(str(x["source"]) for x in r) == ["leader", "redis"]),
            timeout=30,
        )
        lines = wait_for(
            "four more rounds in each process",
            lambda: _reports_if(procs, lambda r: min(_deltas(first, r, "rounds")) >= 4),
            timeout=30,
        )
        probes, rounds = _deltas(first, lines, "probe_rounds"), _deltas(first, lines, "rounds")
        leader_index = probes.index(max(probes))
        assert min(probes) == 0, (first, lines)  # the follower never probed in the window...
        # ...while the leader probed in every round (a sample may fall mid-round: one round of slack)
        assert probes[leader_index] >= rounds[leader_index] - 1 >= 3, (first, lines)
        # the workers' DATABASES are the cluster's own (not the test databases): their fingerprint
        databases = replica_cluster.databases()
        spec = build(databases, replica_cluster.replicarouter_settings()["CLUSTERS"])[0].default
        bound = fingerprint(spec, databases, socket.gethostname())
        leader_key = f"{prefix}:health:default:{bound}:leader"
        assert client.get(leader_key).decode() == lines[leader_index]["identity"]
        follower = procs[1 - leader_index]
        before_kill = _report(follower)

        procs[leader_index].send_signal(signal.SIGKILL)
        wait_for(
            "the follower to take the lease",
            lambda: (client.get(leader_key) or b"").decode() == before_kill["identity"],
            timeout=10,
        )
        # Counted in the follower's rounds, which load cannot shorten: the lease outlives its last renewal
        # (before the kill) by LEASE_INTERVALS intervals; rounds start at least one interval apart, so at
        # most LEASE_INTERVALS + 1 of them start in that time (the first may be the one in progress at
        # the report), and the next one takes the lease.
        took = _report(follower)["leader_rounds"][-1]
        assert took - before_kill["rounds"] <= LEASE_INTERVALS + 2, (before_kill, took)
        wait_for(
            "the follower to probe",
            lambda: _report(follower)["probe_rounds"] > before_kill["probe_rounds"],
            timeout=10,
        )
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()
        client.close()


def test_redis_stopped_then_back(replica_cluster, fast_monitor, ports, caplog):
    """Fault: Redis stopped → the process probes for itself, reads keep routing; Redis back → shared again."""
    wait_for("leading through redis", lambda: health.snapshot("default").source == "leader", timeout=5)
    with caplog.at_level(logging.WARNING, logger="replicarouter.health"):
        replica_cluster.stop_redis()
        wait_for("local probing", lambda: health.snapshot("default").source == "local", timeout=5)
        assert {_served(ports) for _ in range(6)} == {"replica1", "replica2"}
        assert fast_monitor.redis_state() == "down"
        replica_cluster.start_redis()
        wait_for("shared again", lambda: health.snapshot("default").source == "leader", timeout=5)
    messages = [r.getMessage() for r in caplog.records]
    assert any("redis unreachable" in m for m in messages)
    assert any("redis is back" in m for m in messages)


def test_promotion_is_reported(replica_cluster_factory):
    cluster = replica_cluster_factory(replicas=2, redis=False)
    databases = cluster.databases()
    topology, _ = build(databases, None)
    spec = topology.default
    probe = ClusterProbe(spec, databases, timeout=1.0)
    try:
        nodes, election = probe.round(initial_nodes(spec, databases), 1.0, Rules(), None)
        assert {a: n.state for a, n in nodes.items()} == {"default": "up", "replica1": "up", "replica2": "up"}
        assert election.writer == "default" and nodes["default"].timeline == 1
        cluster.stop(cluster.primary, "fast")
        cluster.promote("replica1")
        nodes, election = probe.round(nodes, 1.0, Rules(fall=1), election)
    finally:
        probe.close()
    assert nodes["replica1"].promoted and nodes["replica1"].role == "primary"
    assert nodes["replica1"].timeline == 2
    assert election.writer == "replica1" and election.timeline == 2
    assert nodes["default"].state == "down"
    # replica2 now streams from replica1 and is measured against it
    assert nodes["replica2"].state == "up"


def test_replica_back_from_down_needs_rise_healthy_rounds(replica_cluster, caplog):
    """Bug guarded: the healthy streak kept across failed probes (RISE not enforced after a failure).

    Fault: replica1 stopped (pg_ctl fast) after a run of healthy rounds, then started. The monitor's
    per-cluster round (``ClusterProbe.round``) is driven here one round at a time, so rounds are counted,
    not timed: down after FALL failed rounds, and back up only at the RISE-th healthy round after the
    last failure (a streak carried over from before the fault would bring it back at the first one).
    ``interval=0``: the rounds run back to back, and each healthy one counts (the spacing of counted
    answers is ``test_frozen_replica_back_needs_rise_rounds_an_interval_apart``'s).
    """
    rules = Rules(fall=2, rise=3, interval=0.0)
    databases = replica_cluster.databases()
    spec = build(databases, None)[0].default
    probe = ClusterProbe(spec, databases, timeout=2.0)
    state = {"nodes": initial_nodes(spec, databases), "election": None}

    def one_round():
        """Run one round; return replica1's state, whether it is usable, and its logged transitions."""
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="replicarouter.health"):
            state["nodes"], state["election"] = probe.round(state["nodes"], 2.0, rules, state["election"])
        moves = [
            (r.replicarouter_old_state, r.replicarouter_new_state)
            for r in caplog.records
            if getattr(r, "replicarouter_event", None) == "node_state" and r.replicarouter_node == "replica1"
        ]
        return state["nodes"]["replica1"].state, "replica1" in usable(state["nodes"]), moves

    try:
        assert [one_round() for _ in range(5)][-1] == ("up", True, [])  # a long healthy streak...
        replica_cluster.stop("replica1", "fast")
        failing = [one_round() for _ in range(rules.fall)]
        assert failing == [("up", True, []), ("down", False, [("up", "down")])]
        replica_cluster.start("replica1")
        replica_cluster.wait_caught_up()
        back = [one_round() for _ in range(rules.rise)]
    finally:
        probe.close()
        if replica_cluster.postmaster_pid("replica1") is None:
            replica_cluster.start("replica1")
    # ...does not count: RISE healthy rounds after the failure, the last one logged as down -> up
    assert back == [("down", False, []), ("down", False, []), ("up", True, [("down", "up")])]


def _replicastatus(replica_cluster, *args):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.cluster_settings",
           "REPLICAROUTER_TEST_SETTINGS": json.dumps(django_settings(replica_cluster))}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "django", "replicastatus", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )  # fmt: skip


NODE_KEYS = {
    "alias",
    "host",
    "port",
    "role",
    "state",
    "lag_bytes",
    "lag_seconds",
    "checked_at",
    "error",
    "pool",
}


def test_replicastatus_from_a_fresh_process(replica_cluster):
    monitor.stop()
    result = _replicastatus(replica_cluster, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    cluster = data["clusters"]["default"]
    for node in [cluster["primary"], *cluster["replicas"]]:
        assert set(node) >= NODE_KEYS
        assert set(node["pool"]) == {"size", "checked_out", "overflow", "idle", "processes"}
        assert node["state"] == "up"
    assert [n["alias"] for n in cluster["replicas"]] == ["replica1", "replica2"]
    assert "monitor" in cluster and cluster["monitor"]["source"] in ("redis", "direct probe")

    table = _replicastatus(replica_cluster)
    assert table.returncode == 0
    assert (
        "alias" in table.stdout and "replica2" in table.stdout and "status: healthy (exit 0)" in table.stdout
    )


def test_replicastatus_exit_codes(replica_cluster):
    """Fault: replica stopped → exit 1 (degraded); primary stopped → exit 2 (critical)."""
    monitor.stop()
    replica_cluster.stop("replica2", "fast")
    degraded = _replicastatus(replica_cluster, "--json")
    assert degraded.returncode == 1, degraded.stdout
    data = json.loads(degraded.stdout)["clusters"]["default"]
    assert data["replicas"][1]["state"] == "down" and data["replicas"][1]["error"]
    replica_cluster.start("replica2")
    replica_cluster.stop("primary", "fast")
    critical = _replicastatus(replica_cluster)
    assert critical.returncode == 2
    assert "CRITICAL" in critical.stdout
    replica_cluster.start("primary")


def test_replicastatus_unknown_cluster_is_an_error(replica_cluster):
    result = _replicastatus(replica_cluster, "--cluster", "nope")
    assert result.returncode == 1
    assert "no cluster named 'nope'" in result.stderr


def test_passwords_never_shown(replica_cluster_factory):
    cluster = replica_cluster_factory(replicas=1, password="pw-s3cret-value")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.cluster_settings",
           "REPLICAROUTER_TEST_SETTINGS": json.dumps(django_settings(cluster))}  # fmt: skip
    for args in (["--json"], []):
        result = subprocess.run(
            [sys.executable, "-m", "django", "replicastatus", *args],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "pw-s3cret-value" not in result.stdout + result.stderr


def test_no_monitor_thread_survives_stop(replica_cluster):
    monitor.stop()
    monitor.ensure_started()
    assert any(t.name == "replicarouter-monitor" for t in threading.enumerate())
    monitor.stop()
    assert not any(t.name == "replicarouter-monitor" and t.is_alive() for t in threading.enumerate())


def test_forked_child_starts_its_own_monitor(replica_cluster):
    parent = monitor.ensure_started()
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_fd)
            mine = monitor.ensure_started()
            alive = mine.is_alive() and mine is not parent and f":{os.getpid()}:" in mine.identity
            os.write(write_fd, b"1" if alive else b"0")
            mine.stop(2)
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(child, 0)
    answer = os.read(read_fd, 1)
    os.close(read_fd)
    assert answer == b"1"
    assert parent.is_alive()
    monitor.stop()
