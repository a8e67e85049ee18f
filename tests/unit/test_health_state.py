"""The health state machine and lag arithmetic (pure), and the probe's deadline against a silent server."""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, replace
from types import SimpleNamespace

from replicarouter.health.election import Election
from replicarouter.health.lag import PrimaryHistory, measure_lag
from replicarouter.health.probe import Prober, ProbeResult, lsn_to_int
from replicarouter.health.rules import RISE_SLACK, NodeHealth, Rules, next_health, usable
from replicarouter.health.shared import Published, decode, encode
from replicarouter.health.store import STALE_INTERVALS, Snapshot, set_snapshot, usable_replicas
from replicarouter.settings_schema import REPLICAROUTER_OPTIONS

RULES = Rules(fall=2, rise=2, max_lag_seconds=5.0, max_lag_bytes=1000, interval=1.0)


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
    node = step(node, ok(), now=101.0)  # the next round, CHECK_INTERVAL later
    assert node.state == "up"


def test_lag_over_a_limit_is_lagging_at_once_and_needs_rise_to_recover():
    node = step(NodeHealth("r1", "replica", state="up"), ok(position=0), primary_position=5000)
    assert node.state == "lagging" and node.lag_bytes == 5000
    node = step(node, ok(position=5000), primary_position=5000)
    assert node.state == "lagging"
    node = step(node, ok(position=5000), primary_position=5000, now=101.0)
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


def judge(node, result, primary_position=1000, history=None, now=100.0):
    return next_health(node, result, primary_position=primary_position, history=history, rules=RULES, now=now)


def test_rise_counts_only_consecutive_healthy_probes():
    """A failure between healthy probes starts the streak again: down → ok → fail → ok is still down."""
    node = step(NodeHealth("r1", "replica", state="down", failures=2), ok())
    assert (node.state, node.healthy_streak, node.failures) == ("down", 1, 0)
    node = step(node, fail())
    assert (node.state, node.healthy_streak, node.failures) == ("down", 0, 1)
    node = step(node, ok())
    assert (node.state, node.healthy_streak) == ("down", 1)
    node = step(node, ok(), now=101.0)
    assert (node.state, node.healthy_streak) == ("up", 2)


def test_fall_counts_failures_exactly_and_a_good_probe_resets_them():
    node = step(NodeHealth("r1", "replica", state="up", healthy_streak=5), fail(), now=7.0)
    assert node == NodeHealth(
        "r1", "replica", state="up", failures=1, healthy_streak=0, error="connection refused", checked_at=7.0
    )
    node = step(node, ok())
    assert (node.state, node.failures) == ("up", 0)
    node = step(node, fail())
    assert (node.state, node.failures) == ("up", 1)  # FALL=2: one failure after a good probe is not enough
    node = step(node, fail())
    assert (node.state, node.failures) == ("down", 2)
    node = step(node, fail())
    assert (node.state, node.failures) == ("down", 3)


def test_failed_probe_reason_counts_against_fall():
    node = NodeHealth("r1", "replica", state="up")
    assert judge(node, fail())[1] == "probe failed (1/2): connection refused"
    assert judge(replace(node, failures=1), fail())[1] == "probe failed (2/2): connection refused"


def test_a_good_probe_records_everything_it_measured():
    result = ProbeResult(
        "r1", True, in_recovery=True, position=900, receive_position=950, replay_age=0.5, timeline=3
    )
    node = NodeHealth(
        "r1", "replica", host="h", port="5", state="down", failures=4, error="old", healthy_streak=1
    )
    updated, reason = judge(node, result, primary_position=1000, now=42.0)
    assert updated == NodeHealth(
        "r1", "replica", host="h", port="5", role="replica", state="up", lag_bytes=100, lag_seconds=0.5,
        checked_at=42.0, error=None, promoted=False, failures=0, healthy_streak=2, position=900,
        received=950, timeline=3, streak_at=42.0,
    )  # fmt: skip
    assert reason == "probe ok"


def test_lag_seconds_are_rounded_to_milliseconds():
    history = PrimaryHistory()
    history.add(100.0, 1000)
    history.add(101.0, 2000)
    node, reason = judge(NodeHealth("r1", "replica", state="up"), ok(position=1000), 2000, history, 102.23456)
    assert node.lag_seconds == 1.235 and node.lag_bytes == 1000 and node.state == "up"
    assert reason == "probe ok"


def test_the_configured_primary_has_no_lag_and_is_not_promoted():
    primary = NodeHealth("default", "primary")
    node, reason = judge(primary, ok("default", position=5000, in_recovery=False), primary_position=None)
    assert (node.role, node.state, node.lag_bytes, node.lag_seconds, node.promoted) == (
        "primary", "up", 0, 0.0, False
    )  # fmt: skip
    assert reason == "probe ok"
    # a configured primary found in recovery (rejoined as a standby): reported, but no lag is judged for it
    node, reason = judge(primary, ok("default", position=5, in_recovery=True), primary_position=None)
    assert (node.role, node.state, node.lag_bytes, node.promoted) == ("replica", "up", 0, False)


def test_a_promoted_replica_is_judged_without_lag():
    node, reason = judge(
        NodeHealth("r1", "replica", state="up"), ok(position=0, in_recovery=False), primary_position=10**9
    )
    assert (node.role, node.state, node.lag_bytes, node.lag_seconds, node.promoted) == (
        "primary", "up", 0, 0.0, True
    )  # fmt: skip
    assert reason == "promoted: no longer in recovery"


def test_lag_limits_are_exclusive_and_each_reason_names_its_limit():
    up = NodeHealth("r1", "replica", state="up")
    node, reason = judge(up, ok(position=0, replay_age=0.0), primary_position=1000)  # MAX_LAG_BYTES behind
    assert node.state == "up" and node.lag_bytes == 1000 and reason == "probe ok"
    node, reason = judge(up, ok(position=0, replay_age=0.0), primary_position=1001)
    assert node.state == "lagging" and reason == "lag 1001 bytes > MAX_LAG_BYTES 1000"
    node, reason = judge(up, ok(position=10, replay_age=5.0), primary_position=20)  # exactly MAX_LAG_SECONDS
    assert node.state == "up" and node.lag_seconds == 5.0 and reason == "probe ok"
    node, reason = judge(up, ok(position=10, replay_age=5.01), primary_position=20)
    assert node.state == "lagging" and reason == "lag 5.0 s > MAX_LAG_SECONDS 5"
    node, reason = judge(up, ok(position=10, replay_age=None), primary_position=20)  # bytes known, age not
    assert (node.state, node.lag_bytes, node.lag_seconds) == ("lagging", 10, None)
    assert reason == "lag cannot be measured (primary position unknown)"
    node, reason = judge(up, ok(), primary_position=None)
    assert reason == "lag cannot be measured (primary position unknown)"


def test_a_healthy_probe_short_of_rise_says_how_far_it_is():
    lagging = NodeHealth("r1", "replica", state="lagging")
    node, reason = judge(lagging, ok())
    assert node.state == "lagging" and reason == "healthy 1/2"
    node, reason = judge(node, ok(), now=100.5)  # too soon after the first: says when one counts again
    assert node.state == "lagging" and reason == "healthy 1/2, next count after 0.40 s"
    node, reason = judge(node, ok(), now=101.0)
    assert node.state == "up" and reason == "probe ok"
    # an up node whose streak was broken by one failure stays up on its next good probe
    node, reason = judge(NodeHealth("r1", "replica", state="up", failures=1), ok())
    assert (node.state, node.healthy_streak, reason) == ("up", 1, "probe ok")


def test_lag_seconds_come_from_history_when_it_covers_the_gap():
    """The primary was seen passing the replica's position after the first sample: that moment counts,
    not the replay timestamp (which grows on an idle primary)."""
    history = PrimaryHistory()
    history.add(100.0, 1000)
    history.add(102.0, 2000)
    assert measure_lag(ok(position=1000, replay_age=50.0), 2000, history, 104.0) == (1000, 2.0)
    assert measure_lag(ok(position=1000, replay_age=50.0), 2000, history, 102.25) == (1000, 0.25)
    assert measure_lag(ok(position=1000, replay_age=50.0), 2000, history, 101.0) == (1000, 0.0)  # clock step


def test_lag_behind_since_before_history_uses_the_larger_bound():
    history = PrimaryHistory()
    history.add(100.0, 2000)  # the replica at 1000 was already behind when memory starts
    assert measure_lag(ok(position=1000, replay_age=30.0), 2000, history, 105.0) == (1000, 30.0)
    assert measure_lag(ok(position=1000, replay_age=2.0), 2000, history, 105.0) == (1000, 5.0)
    assert measure_lag(ok(position=1000, replay_age=None), 2000, history, 100.5) == (1000, 0.5)
    assert measure_lag(ok(position=1000, replay_age=0.0), 2000, history, 100.5) == (1000, 0.5)


def test_lag_without_a_sample_past_the_replica_uses_the_replay_timestamp():
    empty = PrimaryHistory()
    assert measure_lag(ok(position=10, replay_age=2.5), 20, empty, 50.0) == (10, 2.5)
    assert measure_lag(ok(position=10, replay_age=None), 20, empty, 50.0) == (10, None)
    assert measure_lag(ok(position=None), 20, empty, 50.0) == (None, None)
    assert measure_lag(ok(position=30), 20, empty, 50.0) == (0, 0.0)  # ahead of the sampled primary


def test_primary_history_keeps_changes_only():
    history = PrimaryHistory()
    history.add(1.0, 10)
    history.add(2.0, 10)
    history.add(3.0, 20)
    assert list(history.samples) == [(1.0, 10), (3.0, 20)]
    assert history.behind_since(5) == 1.0
    assert history.behind_since(10) == 3.0
    assert history.behind_since(20) is None


def test_only_up_standbys_of_the_configured_primary_are_usable():
    nodes = {
        "default": NodeHealth("default", "primary", state="up"),
        "r1": NodeHealth("r1", "replica", state="up"),
        "r2": NodeHealth("r2", "replica", state="lagging"),
        "r3": NodeHealth("r3", "replica", state="down"),
        "r4": NodeHealth("r4", "replica", state="unknown"),
        "r5": NodeHealth("r5", "replica", state="up", promoted=True),
        "r6": NodeHealth("r6", "replica", state="up", fenced=True),
        "r7": NodeHealth("r7", "replica", state="up"),
    }
    assert usable(nodes) == frozenset({"r1", "r7"})


def test_public_fields_leave_out_the_counters():
    node = NodeHealth("r1", "replica", host="h", port="5432", role="replica", state="up", lag_bytes=3,
                      lag_seconds=0.5, checked_at=9.0, failures=1, healthy_streak=2, position=7, received=8,
                      timeline=4)  # fmt: skip
    assert node.public() == {
        "alias": "r1", "host": "h", "port": "5432", "role": "replica", "state": "up", "lag_bytes": 3,
        "lag_seconds": 0.5, "checked_at": 9.0, "error": None, "promoted": False, "timeline": 4,
        "fenced": False,
    }  # fmt: skip


def test_rules_come_from_the_settings_and_default_to_the_schema():
    settings = SimpleNamespace(FALL=3, RISE=4, MAX_LAG_SECONDS=5.5, MAX_LAG_BYTES=600, CHECK_INTERVAL=1.5)
    assert Rules.from_settings(settings) == Rules(
        fall=3, rise=4, max_lag_seconds=5.5, max_lag_bytes=600, interval=1.5
    )
    keys = ("FALL", "RISE", "MAX_LAG_SECONDS", "MAX_LAG_BYTES")
    schema = {key.lower(): REPLICAROUTER_OPTIONS[key].default for key in keys}
    schema["interval"] = REPLICAROUTER_OPTIONS["CHECK_INTERVAL"].default
    assert asdict(Rules()) == schema
    assert schema == {
        "fall": 2, "rise": 2, "max_lag_seconds": 10.0, "max_lag_bytes": 16 * 1024 * 1024, "interval": 0.5
    }  # fmt: skip


def test_a_good_probe_records_when_its_round_started_and_when_the_server_started():
    node = NodeHealth("r1", "replica")
    good = replace(ok(), probed_at=99.5, server_started=12.25)
    after = step(node, good)
    assert (after.probed_at, after.started_at) == (99.5, 12.25)
    failed = step(after, fail())
    assert (failed.probed_at, failed.started_at) == (99.5, 12.25)  # the last good probe's, kept
    assert "probed_at" not in after.public() and "started_at" not in after.public()


# -- RISE: healthy answers at least CHECK_INTERVAL apart (issue 16) --------------------------------------


def test_two_healthy_answers_milliseconds_apart_do_not_bring_a_lagging_node_up():
    """Bug guarded: a round against a frozen node lasts CHECK_TIMEOUT and the next starts at once, so the
    thawed node answered twice 10 ms apart and RISE=2 made it up with no hysteresis at all. The rounds'
    starts (``probed_at``) are CHECK_TIMEOUT apart; the answers were judged 10 ms apart, and that counts."""
    lagging = NodeHealth("r1", "replica", state="lagging")
    node = step(lagging, replace(ok(), probed_at=99.0), now=100.0)
    assert (node.state, node.healthy_streak, node.streak_at) == ("lagging", 1, 100.0)
    node, reason = judge(node, replace(ok(), probed_at=100.0), now=100.01)
    assert (node.state, node.healthy_streak, node.streak_at) == ("lagging", 1, 100.0)  # kept, not counted
    assert reason == "healthy 1/2, next count after 0.89 s"
    assert "r1" not in usable({"r1": node})


def test_healthy_answers_an_interval_apart_bring_a_lagging_node_up():
    node = step(NodeHealth("r1", "replica", state="lagging"), ok(), now=100.0)
    node = step(node, ok(), now=100.01)  # too soon: ignored, the first one's time stays the mark
    assert (node.state, node.healthy_streak, node.streak_at) == ("lagging", 1, 100.0)
    node = step(node, ok(), now=101.0)
    assert (node.state, node.healthy_streak, node.streak_at) == ("up", 2, 101.0)
    assert "r1" in usable({"r1": node})


def test_a_lagging_or_failed_answer_in_between_starts_the_streak_again():
    """A lagging or failed answer resets the streak and its time: the next healthy answer counts at once,
    and the one after it only an interval after that one, not after the answers before the reset."""
    node = step(NodeHealth("r1", "replica", state="lagging"), ok(), now=100.0)
    node = step(node, ok(position=0), primary_position=5000, now=100.5)  # lagging again
    assert (node.state, node.healthy_streak, node.streak_at) == ("lagging", 0, None)
    node = step(node, ok(), now=100.6)
    assert (node.state, node.healthy_streak, node.streak_at) == ("lagging", 1, 100.6)
    node = step(node, ok(), now=101.0)  # an interval after the first healthy answer, not after the restart
    assert (node.state, node.healthy_streak, node.streak_at) == ("lagging", 1, 100.6)
    node = step(node, fail(), now=101.2)
    assert (node.state, node.healthy_streak, node.streak_at) == ("lagging", 0, None)
    node = step(node, ok(), now=101.3)
    assert (node.state, node.healthy_streak, node.streak_at) == ("lagging", 1, 101.3)
    node = step(node, ok(), now=102.3)
    assert (node.state, node.healthy_streak) == ("up", 2)


def test_rise_slack_an_answer_counts_from_interval_less_the_slack():
    gap = RULES.interval * (1 - RISE_SLACK)
    assert RISE_SLACK == 0.1 and RULES.rise_gap == gap
    # counted at 0.0: ``now - streak_at`` is then exactly ``gap`` (no rounding), so ``<`` vs ``<=`` shows
    down = NodeHealth("r1", "replica", state="down", healthy_streak=1, streak_at=0.0)
    early = step(down, ok(), now=gap - 0.001)
    assert (early.state, early.healthy_streak, early.streak_at) == ("down", 1, 0.0)
    at = step(down, ok(), now=gap)
    assert (at.state, at.healthy_streak, at.streak_at) == ("up", 2, gap)


def test_an_unknown_node_is_up_at_its_first_healthy_answer_and_stays_up():
    node = step(NodeHealth("r1", "replica"), ok(), now=100.0)
    assert (node.state, node.healthy_streak, node.streak_at) == ("up", 1, 100.0)
    node = step(node, ok(), now=100.01)  # up stays up, however soon the next answer comes
    assert (node.state, node.healthy_streak, node.streak_at) == ("up", 1, 100.0)


def test_streak_at_survives_the_shared_snapshot_and_stays_out_of_public():
    node = NodeHealth("r1", "replica", state="down", healthy_streak=1, streak_at=1234.5)
    published = Published({"r1": node}, Election("r1", frozenset(), 1, ""), "host:1:abc", 1000.0)
    assert decode(encode(published, 1.0), "r1").nodes["r1"].streak_at == 1234.5
    assert "streak_at" not in node.public()


def test_a_probe_s_server_identity_and_start_time_are_kept_in_the_node():
    """The snapshot carries what the probe read of the server (foreign snapshots, restarts need it)."""
    result = ProbeResult(
        "r1", True, in_recovery=True, position=1000, system_identifier="7001", server_started=5.0
    )
    node = step(NodeHealth("r1", "replica"), result)
    assert (node.system_identifier, node.started_at) == ("7001", 5.0)
