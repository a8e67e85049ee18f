"""The health state machine and lag arithmetic (pure), and the probe's deadline against a silent server."""

from __future__ import annotations

import socket
import time

from replicarouter.health import STALE_INTERVALS, Snapshot, set_snapshot, usable_replicas
from replicarouter.health.probe import Prober, ProbeResult, lsn_to_int
from replicarouter.health.state import NodeHealth, PrimaryHistory, Rules, measure_lag, next_health, usable

RULES = Rules(fall=2, rise=2, max_lag_seconds=5.0, max_lag_bytes=1000)


def ok(alias="r1", position=1000, in_recovery=True, replay_age=None):
    return ProbeResult(alias, True, in_recovery=in_recovery, position=position, replay_age=replay_age)


def fail(alias="r1"):
    return ProbeResult(alias, False, error="connection refused")


def step(node, result, primary_position=1000, history=None, now=100.0):
    return next_health(
        node, result, primary_position=primary_position, history=history, rules=RULES, now=now
    )[0]


def test_first_good_probe_is_up_and_fall_failures_make_down():
    node = step(NodeHealth("r1", "replica"), ok())
    assert node.state == "up" and node.lag_bytes == 0
    node = step(node, fail())
    assert node.state == "up" and node.failures == 1  # one failure is not enough
    node = step(node, fail())
    assert node.state == "down" and node.error == "connection refused"


def test_rise_good_probes_bring_a_down_node_back():
    node = NodeHealth("r1", "replica", state="down", failures=3)
    node = step(node, ok())
    assert node.state == "down" and node.healthy_streak == 1
    node = step(node, ok())
    assert node.state == "up"


def test_lag_over_a_limit_is_lagging_at_once_and_needs_rise_to_recover():
    node = step(NodeHealth("r1", "replica", state="up"), ok(position=0), primary_position=5000)
    assert node.state == "lagging" and node.lag_bytes == 5000
    node = step(node, ok(position=5000), primary_position=5000)
    assert node.state == "lagging"
    node = step(node, ok(position=5000), primary_position=5000)
    assert node.state == "up"


def test_unknown_primary_position_means_lagging_never_zero():
    node = step(NodeHealth("r1", "replica", state="up"), ok(), primary_position=None)
    assert node.state == "lagging" and node.lag_bytes is None


def test_promoted_replica_is_reported_and_not_usable():
    node = step(NodeHealth("r1", "replica", state="up"), ok(in_recovery=False))
    assert node.promoted and node.role == "primary" and node.state == "up"
    assert usable({"r1": node}) == frozenset()


def test_lag_seconds_from_primary_history_stays_zero_on_an_idle_primary():
    history = PrimaryHistory()
    history.add(100.0, 1000)
    history.add(101.0, 1000)  # idle: no new sample
    assert measure_lag(ok(position=1000, replay_age=3600.0), 1000, history, 500.0) == (0, 0.0)
    history.add(102.0, 2000)
    history.add(103.0, 3000)
    lag_bytes, lag_seconds = measure_lag(ok(position=2000), 3000, history, 104.0)
    assert lag_bytes == 1000 and lag_seconds == 1.0  # behind since the primary passed 2000 at t=103


def test_one_off_probe_without_history_uses_the_replay_timestamp():
    assert measure_lag(ok(position=10, replay_age=7.5), 20, None, 0.0) == (10, 7.5)


def test_lsn_to_int():
    assert lsn_to_int("0/0") == 0
    assert lsn_to_int("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert lsn_to_int(None) is None


def test_stale_snapshot_makes_nothing_usable():
    set_snapshot(
        "unit", Snapshot({}, frozenset({"r1"}), {}, {}, time.monotonic(), time.time(), "local", interval=0.1)
    )
    assert usable_replicas("unit") == {"r1"}
    old = time.monotonic() - (STALE_INTERVALS + 1) * 0.1
    set_snapshot("unit", Snapshot({}, frozenset({"r1"}), {}, {}, old, time.time(), "local", interval=0.1))
    assert usable_replicas("unit") == frozenset()
    assert usable_replicas("never-seen") == frozenset()


def test_probe_deadline_holds_against_a_server_that_never_answers():
    """A listening socket that never speaks (like a frozen server): the probe gives up at the deadline."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        prober = Prober({"frozen": {"host": "127.0.0.1", "port": port, "dbname": "x", "user": "x"}})
        started = time.monotonic()
        results = prober.probe(0.3)
        took = time.monotonic() - started
        prober.close()
    assert not results["frozen"].ok and "no answer within 0.3 s" in results["frozen"].error
    assert took < 1.0
