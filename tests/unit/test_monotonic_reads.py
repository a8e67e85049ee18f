"""Monotonic reads and the cookie that carries them, decided without servers (``sticky.policy``)."""

from __future__ import annotations

import time

import pytest

from replicarouter.routing.selection import ReadRoute, route_read
from replicarouter.routing.topology import Cluster, smooth_rotation
from replicarouter.sticky import policy as sticky
from replicarouter.sticky.policy import CLOCK_MARGIN, Probe, Seen

TWO = Cluster("c", "primary", ("r1", "r2"), (1, 1), (), smooth_rotation(("r1", "r2"), (1, 1)))
SEEN = Seen("r1", since=100.0, until=200.0, floor=50)


def test_a_probe_of_the_node_read_after_the_reads_bounds_them():
    after = Probe(probed_at=200.0 + CLOCK_MARGIN + 0.01, position=900, started_at=10.0)
    assert sticky.switch_bound(SEEN, after, None) == 900


@pytest.mark.parametrize(
    "probe",
    [
        Probe(probed_at=200.0, position=900, started_at=10.0),  # started before the last read: a lower bound
        Probe(probed_at=200.0 + CLOCK_MARGIN, position=900, started_at=10.0),  # within the clock margin
        Probe(
            probed_at=300.0, position=900, started_at=150.0
        ),  # restarted since the session began reading it
        Probe(probed_at=300.0, position=900, started_at=None),  # start unknown: cannot tell
        Probe(probed_at=300.0, position=None, started_at=10.0),
        Probe(probed_at=None, position=900, started_at=10.0),
        None,
    ],
)
def test_no_bound_from_a_probe_that_cannot_prove_one(probe):
    assert sticky.switch_bound(SEEN, probe, None) is None


def test_the_writer_bounds_reads_of_a_node_that_restarted_and_the_smaller_bound_wins():
    restarted = Probe(probed_at=300.0, position=700, started_at=150.0)
    writer = Probe(probed_at=300.0, position=1000, started_at=150.0)  # a writer's restart does not matter
    assert sticky.switch_bound(SEEN, restarted, writer) == 1000
    continuous = Probe(probed_at=300.0, position=700, started_at=10.0)
    assert sticky.switch_bound(SEEN, continuous, writer) == 700
    # the node's own probe needs continuity (this one restarted), the writer's does not
    assert sticky.switch_bound(SEEN, writer, continuous) == 700


def test_the_floor_is_never_lowered_and_alone_bounds_a_session_that_only_wrote():
    low = Probe(probed_at=300.0, position=10, started_at=1.0)
    assert sticky.switch_bound(SEEN, low, None) == 50
    wrote = Seen("", since=0.0, until=0.0, floor=777)
    assert sticky.switch_bound(wrote, None, None) == 777


def test_the_node_read_last_stays_allowed_unless_it_restarted():
    assert sticky.stays(SEEN, Probe(150.0, 1, started_at=99.0))
    assert not sticky.stays(SEEN, Probe(150.0, 1, started_at=100.0))
    assert not sticky.stays(SEEN, Probe(150.0, 1, started_at=None))
    assert not sticky.stays(SEEN, None)


def test_allowed_replicas():
    positions = {"r1": 10, "r2": 500, "r3": None}
    everyone = ("r1", "r2", "r3")
    assert sticky.monotonic_allowed(None, everyone, positions, bound=None, stay=False) == set(everyone)
    assert sticky.monotonic_allowed(SEEN, everyone, positions, bound=None, stay=True) == {"r1"}
    assert sticky.monotonic_allowed(SEEN, everyone, positions, bound=None, stay=False) == frozenset()
    assert sticky.monotonic_allowed(SEEN, everyone, positions, bound=500, stay=False) == {"r2"}
    assert sticky.monotonic_allowed(SEEN, everyone, positions, bound=501, stay=True) == {"r1"}
    assert sticky.monotonic_allowed(SEEN, ("r2",), positions, bound=None, stay=True) == frozenset()


def test_after_read_extends_a_claim_switches_with_the_bound_as_floor():
    assert sticky.after_read(None, "r2", 5.0, None) == Seen("r2", 5.0, 5.0, 0)
    assert sticky.after_read(SEEN, "r1", 150.0, None) is SEEN  # within the claim: unchanged (no cookie)
    assert sticky.after_read(SEEN, "r1", 250.0, None) == Seen("r1", 100.0, 250.0, 50)
    assert sticky.after_read(SEEN, "r2", 250.0, 900) == Seen("r2", 250.0, 250.0, 900)
    assert sticky.after_read(SEEN, "primary", 250.0, None) == Seen("primary", 250.0, 250.0, 50)
    assert sticky.after_read(Seen("r1", 1.0, 2.0, 80), "r2", 3.0, 60) == Seen("r2", 3.0, 3.0, 80)


def test_release_needs_every_configured_replica_known_past_the_position():
    assert sticky.released(100, ("r1", "r2"), {"r1": 100, "r2": 101})
    assert not sticky.released(100, ("r1", "r2"), {"r1": 100})
    assert not sticky.released(100, ("r1", "r2"), {"r1": 100, "r2": 99})
    assert not sticky.released(100, ("r1", "r2"), {"r1": 100, "r2": None})
    assert not sticky.released(0, (), {})


def test_route_prefers_the_node_read_last_and_reads_the_primary_when_nothing_is_allowed():
    usable = frozenset({"r1", "r2"})
    stay = route_read(TWO, "round_robin", usable=usable, monotonic=frozenset({"r1", "r2"}), prefer="r2")
    assert stay == ReadRoute("r2")
    assert route_read(TWO, "round_robin", usable=usable, monotonic=frozenset()) == ReadRoute("primary")
    only = route_read(TWO, "round_robin", usable=frozenset({"r2"}), monotonic=frozenset({"r1"}), prefer="r1")
    assert only == ReadRoute("primary")
    # a position and the monotonic bound together: both must allow the replica
    both = route_read(
        TWO, "round_robin", usable=usable, required=100, positions={"r1": 100, "r2": 50},
        monotonic=frozenset({"r2"}), prefer="r2",
    )  # fmt: skip
    assert both == ReadRoute("primary", "primary")
    pinned = route_read(TWO, "round_robin", usable=usable, pinned=True, monotonic=usable)
    assert pinned == ReadRoute("primary", "primary")


def test_use_replica_ignores_pins_positions_and_the_monotonic_bound():
    route = route_read(
        TWO, "round_robin", forced="replica", usable=frozenset({"r1"}), pinned=True, required=10**9,
        monotonic=frozenset(),
    )  # fmt: skip
    assert route.alias == "r1"


def test_the_cookie_carries_positions_pins_and_what_was_seen():
    state = sticky.CookieState({"c": 5}, {"c": 123_000}, {"c": Seen("r1", 1.5, 2.25, 9)})
    back = sticky.read_cookie(sticky.write_cookie(state, "lsn"), "lsn", 60)
    assert back == state
    assert sticky.read_cookie(sticky.write_cookie(state, "lsn"), "time", 60) == sticky.CookieState()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: "garbage", "bad signature"),
        (lambda: sticky.encode_cookie({"c": 1}, "lsn")[:-3] + "abc", "bad signature"),
        (lambda: sticky.signing.dumps(["not", "a", "dict"], salt=sticky.COOKIE_SALT), "malformed"),
    ],
    ids=["garbage", "tampered", "malformed"],
)
def test_a_bad_cookie_says_why(make, problem):
    # signed when the test runs, not when it is collected: a suite longer than max_age would see "expired"
    assert sticky.read_cookie(make(), "lsn", 60) == sticky.CookieState(problem=problem)


def test_an_expired_cookie_says_so():
    value = sticky.encode_cookie({"c": 1}, "lsn")
    assert sticky.read_cookie(value, "lsn", -1).problem == "expired"


def test_bad_entries_are_dropped_one_by_one():
    value = sticky.signing.dumps(
        {
            "m": "lsn",
            "p": {"c": 1},
            "t": {"c": "x", "d": 5},
            "v": {"c": ["r1", 1, 2], "d": ["r2", 1, 2, 3], "e": [1, 1, 1, 1]},
        },
        salt=sticky.COOKIE_SALT,
    )
    assert sticky.read_cookie(value, "lsn", 60) == sticky.CookieState(
        {"c": 1}, {"d": 5}, {"d": Seen("r2", 0.001, 0.002, 3)}
    )


def test_state_observes_reads_and_claims_a_horizon_in_the_cookie():
    state = sticky.StickyState("lsn")
    state.observe("c", "r1", None, now=10.0)
    assert state.seen == {"c": Seen("r1", 10.0, 10.0, 0)} and state.seen_changed
    cookie = state.cookie({"c": 7}, horizon=0.5)
    assert cookie.seen == {"c": Seen("r1", 10.0, 10.5, 0)} and cookie.positions == {"c": 7}
    unchanged = sticky.StickyState("lsn", seen={"c": Seen("r1", 10.0, 10.5, 0)})
    unchanged.observe("c", "r1", None, now=10.4)
    assert not unchanged.seen_changed
    assert unchanged.cookie({}, horizon=0.5).seen == {"c": Seen("r1", 10.0, 10.5, 0)}


def test_pins_expire_and_come_from_the_cookie_or_redis():
    now_ms = int(time.time() * 1000)
    state = sticky.StickyState("lsn", pins={"a": now_ms + 60_000, "b": now_ms - 1})
    state.loader = lambda: ({}, {"c": now_ms + 60_000})
    assert state.pinned("a") and not state.pinned("b") and state.pinned("c") and not state.pinned("d")
    assert set(state.cookie({}, horizon=0).pins) == {"a", "c"}


def test_bounds_edge_cases():
    writer = Probe(probed_at=300.0, position=1000, started_at=1.0)
    assert sticky.switch_bound(SEEN, None, writer) == 1000  # no probe of the node: the writer's alone
    same_start = Probe(probed_at=300.0, position=700, started_at=SEEN.since)  # started as reads began
    assert sticky.switch_bound(SEEN, same_start, None) is None
    # a replica at position 0 (never in practice) and a missing one are not past bound 0 / 1
    assert sticky.monotonic_allowed(SEEN, ("r1", "r2"), {"r1": 0}, bound=0, stay=False) == {"r1"}
    assert sticky.monotonic_allowed(SEEN, ("r2",), {}, bound=1, stay=False) == frozenset()
    assert sticky.released(0, ("r1",), {"r1": 0}) and not sticky.released(1, ("r1",), {})


def test_after_read_edges():
    assert sticky.after_read(SEEN, "r1", SEEN.until, None) is SEEN  # at the claim's end: still within
    assert sticky.after_read(Seen("r1", 1.0, 2.0, 0), "r2", 3.0, None).floor == 0
    assert sticky.after_read(None, "r1", 4.0, None).floor == 0


def test_seen_entries_with_bad_times_are_dropped():
    value = sticky.signing.dumps(
        {"m": "lsn", "p": {}, "v": {"a": ["r1", -1, 2, 3], "b": ["r1", 1, "2", 3], "c": ["r1", 1, 2, 3]}},
        salt=sticky.COOKIE_SALT,
    )
    assert set(sticky.read_cookie(value, "lsn", 60).seen) == {"c"}


def test_the_cookie_keeps_floors_and_cookie_pins_without_loading():
    now_ms = int(time.time() * 1000)
    state = sticky.StickyState("lsn", pins={"a": now_ms + 60_000}, seen={"c": Seen("r1", 1.0, 2.0, 77)})
    state.seen_changed = True
    cookie = state.cookie({}, horizon=1.0)
    assert cookie.seen == {"c": Seen("r1", 1.0, 3.0, 77)} and set(cookie.pins) == {"a"}


def test_observe_uses_the_clock_and_the_bound():
    state = sticky.StickyState("lsn", seen={"c": Seen("r1", 1.0, 2.0, 5)})
    before = time.time()
    state.observe("c", "r2", 900)
    seen = state.seen["c"]
    assert seen.node == "r2" and seen.floor == 900 and before <= seen.since <= time.time()


def test_route_edges_release_and_prefer():
    positions = {"r1": 100, "r2": 100}
    nothing_usable = route_read(
        TWO, "round_robin", usable=frozenset(), required=100, positions=positions, replayed=positions
    )
    assert nothing_usable == ReadRoute("primary", "primary", True)
    barred = route_read(
        TWO, "round_robin", usable=frozenset(positions), required=100, positions=positions,
        replayed=positions, monotonic=frozenset(),
    )  # fmt: skip
    assert barred == ReadRoute("primary", "primary", True)
    kept = route_read(
        TWO, "round_robin", usable=frozenset(positions), required=100, positions=positions,
        replayed=positions, monotonic=frozenset(positions), prefer="r2",
    )  # fmt: skip
    assert kept == ReadRoute("r2", "replica", True)
    elsewhere = route_read(
        TWO, "round_robin", usable=frozenset({"r1"}), monotonic=frozenset({"r1"}), prefer="r2"
    )
    assert elsewhere == ReadRoute("r1")
