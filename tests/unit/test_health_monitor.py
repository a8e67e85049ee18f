"""The judgement of one round (pure: results in, transitions out), the log lines the monitor makes of the
transitions, and how long its snapshot holds, without servers."""

from __future__ import annotations

import logging
import time

from replicarouter.health import store as health
from replicarouter.health.election import Election
from replicarouter.health.events import log_transition
from replicarouter.health.probe import ProbeResult
from replicarouter.health.rules import (
    NodeChange,
    NodeHealth,
    PrimaryHistory,
    Rules,
    Verdict,
    WriterChange,
    initial_nodes,
    judge,
)
from replicarouter.health.store import STALE_INTERVALS, Snapshot, set_snapshot, usable_replicas
from replicarouter.routing.topology import Cluster

CLUSTER = Cluster("default", "default", ("replica1",))
NONE: frozenset[str] = frozenset()


def primary(alias="default", position=100, timeline=1):
    return ProbeResult(alias, True, in_recovery=False, position=position, timeline=timeline)


def standby(alias="replica1", position=100):
    return ProbeResult(
        alias, True, in_recovery=True, position=position, receive_position=position, replay_age=0.0
    )


def failed(alias):
    return ProbeResult(alias, False, error="Connection refused")


def one_round(nodes, previous, default, replica1, *, fall=1, history=None, now=50.0) -> Verdict:
    return judge(
        CLUSTER,
        nodes,
        {"default": default, "replica1": replica1},
        rules=Rules(fall=fall, rise=1),
        history=history,
        previous=previous,
        now=now,
    )


def _round(nodes, previous, *, primary_answers, replica1_promoted):
    return one_round(
        nodes,
        previous,
        primary() if primary_answers else failed("default"),
        primary("replica1", timeline=2) if replica1_promoted else standby(),
    )


def _log(verdict):
    for transition in verdict.transitions:
        log_transition(CLUSTER, transition)
    return verdict.nodes, verdict.election


def test_a_failover_after_a_time_without_primary_is_logged(caplog):
    """Primary down (writes go to None), then replica1 promoted: both changes of writer are logged."""
    first = _round(initial_nodes(CLUSTER, {}), None, primary_answers=True, replica1_promoted=False)
    nodes, election = _log(first)
    assert election.writer == "default"
    with caplog.at_level(logging.INFO, logger="replicarouter.health"):
        nodes, election = _log(_round(nodes, election, primary_answers=False, replica1_promoted=False))
        assert election.writer is None
        nodes, election = _log(_round(nodes, election, primary_answers=False, replica1_promoted=True))
        assert election.writer == "replica1"
    writers = [m for m in caplog.messages if "writes now go to" in m]
    assert len(writers) == 2, caplog.messages
    assert writers[0].startswith("cluster default: writes now go to None (were default)")
    assert writers[1].startswith("cluster default: writes now go to replica1 (were None)")


def test_the_first_round_reports_no_change_of_writer():
    verdict = _round(initial_nodes(CLUSTER, {}), None, primary_answers=True, replica1_promoted=False)
    assert not [t for t in verdict.transitions if isinstance(t, WriterChange)]
    assert verdict.election == Election("default", NONE, 1, "default is primary on timeline 1")


def test_a_round_reports_every_node_change_then_the_writer_change():
    nodes = initial_nodes(CLUSTER, {})
    first = one_round(nodes, None, primary(), standby())
    assert first.transitions == (
        NodeChange(nodes["default"], first.nodes["default"], "probe ok"),
        NodeChange(nodes["replica1"], first.nodes["replica1"], "probe ok"),
    )
    assert (first.nodes["default"].state, first.nodes["replica1"].state) == ("up", "up")
    second = one_round(first.nodes, first.election, failed("default"), primary("replica1", timeline=2))
    reason = "replica1 is primary on timeline 2"
    assert second.election == Election("replica1", NONE, 2, reason)
    assert second.transitions == (
        NodeChange(first.nodes["default"], second.nodes["default"], "probe failed (1/1): Connection refused"),
        NodeChange(first.nodes["replica1"], second.nodes["replica1"], "promoted: no longer in recovery"),
        WriterChange("replica1", "default", reason),
    )
    assert second.nodes["replica1"].state == "up" and second.nodes["replica1"].promoted  # same state


def test_a_round_without_change_reports_nothing():
    first = one_round(initial_nodes(CLUSTER, {}), None, primary(), standby())
    again = one_round(first.nodes, first.election, primary(), standby(), now=51.0)
    assert again.transitions == ()
    assert again.nodes["replica1"].checked_at == 51.0 and again.election == first.election


def test_fencing_is_a_transition_even_when_the_state_stays():
    first = one_round(initial_nodes(CLUSTER, {}), None, primary(), standby())
    both = one_round(first.nodes, first.election, primary(), primary("replica1", timeline=2))
    reason = "replica1 is primary on timeline 2; fenced default (also claiming primary, older timeline)"
    assert both.election == Election("replica1", frozenset({"default"}), 2, reason)
    assert both.nodes["default"].fenced and both.nodes["default"].state == "up"
    assert both.transitions == (
        NodeChange(first.nodes["default"], both.nodes["default"], "fenced: " + reason),
        NodeChange(first.nodes["replica1"], both.nodes["replica1"], "promoted: no longer in recovery"),
        WriterChange("replica1", "default", reason),
    )
    # the old primary rejoins as a standby: no longer a claimant, no longer fenced
    rejoined = one_round(both.nodes, both.election, standby("default"), primary("replica1", timeline=2))
    assert not rejoined.nodes["default"].fenced
    assert rejoined.transitions == (
        NodeChange(both.nodes["default"], rejoined.nodes["default"], "no longer fenced"),
    )


def test_the_writer_is_lost_only_once_its_failures_reach_fall():
    """FALL=2: the first failed probe of the writer keeps it (no claimant answers), the second loses it."""
    nodes = initial_nodes(CLUSTER, {})
    first = one_round(nodes, None, primary(), standby(), fall=2)
    once = one_round(first.nodes, first.election, failed("default"), standby(), fall=2)
    assert once.election == Election("default", NONE, 1, "default is primary (last probe did not answer)")
    assert not [t for t in once.transitions if isinstance(t, WriterChange)]
    twice = one_round(once.nodes, once.election, failed("default"), standby(), fall=2)
    reason = "default is down and no replica has been promoted"
    assert twice.election == Election(None, NONE, 1, reason)
    assert twice.transitions[-1] == WriterChange(None, "default", reason)


def test_without_a_claimant_the_current_writer_stays_and_at_first_the_configured_primary():
    nodes = initial_nodes(CLUSTER, {})
    first = one_round(nodes, None, failed("default"), standby(), fall=2)
    assert first.election == Election("default", NONE, 0, "default is primary (last probe did not answer)")
    promoted = Election("replica1", NONE, 2, "replica1 is primary on timeline 2")
    kept = one_round(first.nodes, promoted, standby("default"), failed("replica1"), fall=2)
    assert kept.election == Election("replica1", NONE, 2, "replica1 is primary (last probe did not answer)")


def test_only_failed_probes_make_the_writer_unreachable():
    """A writer that answers, even as a standby (it rejoined), is not down: FALL=1 does not lose it."""
    first = one_round(initial_nodes(CLUSTER, {}), None, primary(), standby())
    verdict = one_round(first.nodes, first.election, standby("default"), standby())
    assert verdict.election == Election("default", NONE, 1, "default is primary (last probe did not answer)")


def test_a_first_round_knows_no_timeline_and_a_previous_one_is_remembered():
    unnumbered = one_round(initial_nodes(CLUSTER, {}), None, primary(timeline=None), standby())
    assert unnumbered.election == Election("default", NONE, 0, "default is primary on timeline 0")
    seen = Election("replica1", NONE, 2, "replica1 is primary on timeline 2")
    old = one_round(unnumbered.nodes, seen, primary(timeline=1), failed("replica1"))
    assert old.election.writer is None and old.election.fenced == {"default"} and old.election.timeline == 2


def test_lag_is_measured_against_the_elected_primary_and_recorded_in_the_history():
    history = PrimaryHistory()
    verdict = one_round(initial_nodes(CLUSTER, {}), None, primary(position=3000), standby(position=1000),
                        history=history, now=10.0)  # fmt: skip
    assert list(history.samples) == [(10.0, 3000)]
    assert verdict.nodes["replica1"].lag_bytes == 2000 and verdict.nodes["replica1"].checked_at == 10.0
    # a standby's position is no primary's: it is not recorded
    one_round(verdict.nodes, verdict.election, standby("default", position=5000), standby(), history=history)
    assert list(history.samples) == [(10.0, 3000)]


def test_an_unknown_primary_position_is_not_recorded():
    history = PrimaryHistory()
    verdict = one_round(initial_nodes(CLUSTER, {}), None, primary(position=None), standby(), history=history)
    assert not history.samples and verdict.nodes["replica1"].state == "lagging"


def test_while_the_writer_does_not_answer_lag_is_measured_against_its_last_known_position():
    history = PrimaryHistory()
    history.add(1.0, 1000)
    history.add(2.0, 2000)
    first = one_round(initial_nodes(CLUSTER, {}), None, primary(position=2000), standby(position=2000),
                      fall=2, history=history, now=3.0)  # fmt: skip
    verdict = one_round(first.nodes, first.election, failed("default"), standby(position=1000),
                        fall=2, history=history, now=4.0)  # fmt: skip
    assert verdict.election.writer == "default"  # one failure: still the writer, but not a claimant
    replica = verdict.nodes["replica1"]
    assert (replica.lag_bytes, replica.lag_seconds) == (1000, 2.0)  # behind since the sample at t=2
    assert list(history.samples) == [(1.0, 1000), (2.0, 2000)]


def test_without_history_or_claimant_the_lag_cannot_be_measured():
    first = one_round(initial_nodes(CLUSTER, {}), None, primary(), standby(), fall=2)
    verdict = one_round(first.nodes, first.election, failed("default"), standby(), fall=2)
    assert verdict.nodes["replica1"].state == "lagging" and verdict.nodes["replica1"].lag_bytes is None
    empty = PrimaryHistory()
    verdict = one_round(first.nodes, first.election, failed("default"), standby(), fall=2, history=empty)
    assert verdict.nodes["replica1"].lag_bytes is None and not empty.samples


def test_initial_nodes_are_unknown_with_host_and_port_from_databases():
    cluster = Cluster("main", "db", ("r1", "r2"))
    nodes = initial_nodes(cluster, {"db": {"HOST": "h", "PORT": 5432}, "r1": {"HOST": None, "PORT": ""}})
    assert nodes == {
        "db": NodeHealth("db", "primary", host="h", port="5432"),
        "r1": NodeHealth("r1", "replica", host="", port=""),
        "r2": NodeHealth("r2", "replica", host="", port=""),
    }
    assert list(nodes) == ["db", "r1", "r2"] and nodes["db"].state == "unknown"


def _records(caplog, *transitions):
    """Log ``transitions``; return each record's (logger, level, message) and the records."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="replicarouter.health"):
        for transition in transitions:
            log_transition(CLUSTER, transition)
    assert {r.name for r in caplog.records} == {"replicarouter.health"}
    return [(r.levelno, r.getMessage()) for r in caplog.records], caplog.records


def _fields(record):
    return {k: v for k, v in vars(record).items() if k.startswith("replicarouter_")}


def test_node_changes_are_logged_with_their_level_and_fields(caplog):
    old = NodeHealth("replica1", "replica", state="up")
    down = NodeHealth("replica1", "replica", state="down", error="refused")
    lines, records = _records(caplog, NodeChange(old, down, "probe failed (2/2): refused"))
    message = "node replica1: up -> down (probe failed (2/2): refused) lag_bytes=None lag_seconds=None"
    assert lines == [(logging.WARNING, message)]
    assert _fields(records[0]) == {
        "replicarouter_event": "node_state",
        "replicarouter_node": "replica1",
        "replicarouter_old_state": "up",
        "replicarouter_new_state": "down",
        "replicarouter_reason": "probe failed (2/2): refused",
        "replicarouter_lag_bytes": None,
        "replicarouter_lag_seconds": None,
    }
    up = NodeHealth("replica1", "replica", state="up", lag_bytes=0, lag_seconds=0.0)
    promoted = NodeHealth("replica1", "replica", state="up", promoted=True, fenced=True)
    lines, _ = _records(caplog, NodeChange(down, up, "probe ok"), NodeChange(up, promoted, "fenced: x"))
    assert lines == [
        (logging.INFO, "node replica1: down -> up (probe ok) lag_bytes=0 lag_seconds=0.0"),
        (
            logging.WARNING,
            "node replica1: up -> up (fenced: x) lag_bytes=None lag_seconds=None PROMOTED FENCED",
        ),
    ]


def test_writer_changes_are_logged_with_their_level_and_fields(caplog):
    lines, records = _records(
        caplog, WriterChange("replica1", "default", "r"), WriterChange("default", None, "back")
    )
    assert lines == [
        (logging.WARNING, "cluster default: writes now go to replica1 (were default): r"),
        (logging.INFO, "cluster default: writes now go to default (were None): back"),
    ]
    assert _fields(records[0]) == {
        "replicarouter_event": "writer_change",
        "replicarouter_cluster": "default",
        "replicarouter_writer": "replica1",
        "replicarouter_previous_writer": "default",
        "replicarouter_reason": "r",
    }


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
