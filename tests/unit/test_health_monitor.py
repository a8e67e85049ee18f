"""The monitor's judgement of one round and how long its snapshot holds, without servers."""

from __future__ import annotations

import logging
import time

from replicarouter.health import store as health
from replicarouter.health.monitor import initial_nodes, judge
from replicarouter.health.probe import ProbeResult
from replicarouter.health.rules import Rules
from replicarouter.health.store import STALE_INTERVALS, Snapshot, set_snapshot, usable_replicas
from replicarouter.routing.topology import Cluster

CLUSTER = Cluster("default", "default", ("replica1",))


def _round(nodes, previous, *, primary_answers, replica1_promoted):
    results = {
        "default": ProbeResult("default", True, False, 100, timeline=1)
        if primary_answers
        else ProbeResult("default", False, error="Connection refused"),
        "replica1": ProbeResult("replica1", True, False, 100, timeline=2)
        if replica1_promoted
        else ProbeResult("replica1", True, True, 100, 100, replay_age=0.0),
    }
    return judge(
        CLUSTER,
        nodes,
        results,
        rules=Rules(fall=1),
        history=None,
        previous=None if previous is None else previous.active,
        known_timeline=0 if previous is None else previous.timeline,
        elected_before=previous is not None,
    )


def test_a_failover_after_a_time_without_primary_is_logged(caplog):
    """Primary down (writes go to None), then replica1 promoted: both changes of writer are logged."""
    nodes, election = _round(initial_nodes(CLUSTER, {}), None, primary_answers=True, replica1_promoted=False)
    assert election.active == "default"
    with caplog.at_level(logging.INFO, logger="replicarouter.health"):
        nodes, election = _round(nodes, election, primary_answers=False, replica1_promoted=False)
        assert election.active is None
        nodes, election = _round(nodes, election, primary_answers=False, replica1_promoted=True)
        assert election.active == "replica1"
    writers = [m for m in caplog.messages if "writes now go to" in m]
    assert len(writers) == 2, caplog.messages
    assert writers[0].startswith("cluster default: writes now go to None (were default)")
    assert writers[1].startswith("cluster default: writes now go to replica1 (were None)")


def test_the_first_round_logs_no_change_of_writer(caplog):
    with caplog.at_level(logging.INFO, logger="replicarouter.health"):
        _round(initial_nodes(CLUSTER, {}), None, primary_answers=True, replica1_promoted=False)
    assert not [m for m in caplog.messages if "writes now go to" in m]


def _aged(seconds, *, interval, timeout):
    received = time.monotonic() - seconds
    return Snapshot({}, frozenset({"r1"}), {}, {}, received, time.time(), "local", interval=interval,
                    timeout=timeout)  # fmt: skip


def test_a_round_that_uses_its_whole_probe_deadline_leaves_the_snapshot_fresh():
    """CHECK_INTERVAL 0.2, CHECK_TIMEOUT 0.4: after a short round the next may end interval + timeout
    later; a snapshot is stale only once STALE_INTERVALS intervals and one timeout have gone by."""
    interval, timeout = 0.2, 0.4
    try:
        fresh = _aged(STALE_INTERVALS * interval + timeout / 2, interval=interval, timeout=timeout)
        set_snapshot("unit-age", fresh)
        assert usable_replicas("unit-age") == {"r1"}
        old = _aged(STALE_INTERVALS * interval + timeout * 2, interval=interval, timeout=timeout)
        set_snapshot("unit-age", old)
        assert usable_replicas("unit-age") == frozenset()
    finally:
        health.clear()
