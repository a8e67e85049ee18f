"""The routing and lending decisions without servers: plain inputs in, exact alias out.

``selection.route_read`` holds every rule the router applies to a read; ``choose_read_alias`` only
gathers its inputs, which the last tests check with a health snapshot installed by hand.
"""

from __future__ import annotations

import time

import pytest

from replicarouter.health import monitor
from replicarouter.health import store as health
from replicarouter.health.rules import NodeHealth
from replicarouter.observability import stats
from replicarouter.routing import context, router, selection
from replicarouter.routing.context import PRIMARY, REPLICA
from replicarouter.routing.selection import ReadRoute, fallback_replica, primary_only, route_read
from replicarouter.routing.topology import Cluster, smooth_rotation
from replicarouter.sticky import policy as sticky

BALANCES = ["round_robin", "random", "least_lag"]


def cluster(*replicas: str, name: str = "c") -> Cluster:
    weights = tuple(1 for _ in replicas)
    return Cluster(name, "primary", replicas, weights, (), smooth_rotation(replicas, weights))


TWO = cluster("r1", "r2")
NONE = cluster()


@pytest.fixture(autouse=True)
def fresh_rotation():
    selection._counters.clear()
    yield
    selection._counters.clear()


# -- primary_only: the rules that need no health -----------------------------------------------------------


@pytest.mark.parametrize(
    ("forced", "in_atomic", "wrote", "expected"),
    [
        (None, False, False, False),
        (None, False, True, True),  # read-your-writes within the request
        (None, True, False, True),  # a transaction reads its own snapshot
        (None, True, True, True),
        (PRIMARY, False, False, True),
        (PRIMARY, False, True, True),
        (PRIMARY, True, False, True),
        (PRIMARY, True, True, True),
        (REPLICA, False, False, False),
        (REPLICA, False, True, False),  # use_replica() accepts stale reads after a write
        (REPLICA, True, False, False),  # ...and inside a transaction that has not written
        (REPLICA, True, True, True),  # but a replica cannot see uncommitted writes
    ],
)
def test_primary_only_rules(forced, in_atomic, wrote, expected):
    assert primary_only(TWO, forced, in_atomic, wrote) is expected


@pytest.mark.parametrize("forced", [None, PRIMARY, REPLICA])
def test_primary_only_without_replicas(forced):
    assert primary_only(NONE, forced, False, False) is True


@pytest.mark.parametrize("balance", BALANCES)
@pytest.mark.parametrize(
    ("forced", "in_atomic", "wrote"),
    [(PRIMARY, False, False), (None, True, False), (None, False, True), (REPLICA, True, True)],
)
def test_route_read_goes_to_the_primary_when_the_rules_say_so(balance, forced, in_atomic, wrote):
    route = route_read(
        TWO,
        balance,
        forced=forced,
        in_atomic=in_atomic,
        wrote=wrote,
        usable=frozenset({"r1", "r2"}),
        required=5,
        positions={"r1": 10, "r2": 10},
    )
    assert route == ReadRoute("primary", None, False)


# -- balance among usable replicas ---------------------------------------------------------------------


def test_round_robin_walks_the_usable_replicas_in_rotation():
    usable = frozenset({"r1", "r2"})
    lag = {"r1": 5.0, "r2": 0.0}  # ignored: least_lag would always take r2
    picks = [route_read(TWO, "round_robin", usable=usable, lag=lag).alias for _ in range(4)]
    assert picks == ["r1", "r2", "r1", "r2"]


@pytest.mark.parametrize("balance", BALANCES)
def test_only_usable_replicas_are_read(balance):
    routes = {route_read(TWO, balance, usable=frozenset({"r2"}), lag={"r1": 0.0}) for _ in range(6)}
    assert routes == {ReadRoute("r2", None, False)}


@pytest.mark.parametrize("balance", BALANCES)
def test_replicas_configured_but_none_usable_reads_the_primary(balance):
    assert route_read(TWO, balance, usable=frozenset()) == ReadRoute("primary", None, False)


@pytest.mark.parametrize("balance", BALANCES)
def test_use_replica_with_none_usable_reads_the_primary(balance):
    route = route_read(TWO, balance, forced=REPLICA, wrote=True, usable=frozenset())
    assert route == ReadRoute("primary", None, False)


def test_least_lag_takes_the_replica_with_least_lag():
    usable = frozenset({"r1", "r2"})
    assert {
        route_read(TWO, "least_lag", usable=usable, lag={"r1": 2.0, "r2": 0.5}).alias for _ in range(8)
    } == {"r2"}
    assert {
        route_read(TWO, "least_lag", usable=usable, lag={"r1": 0.1, "r2": 0.5}).alias for _ in range(8)
    } == {"r1"}


def test_random_draws_among_usable_replicas_by_chance():
    usable = frozenset({"r1", "r2"})
    lag = {"r1": 5.0, "r2": 0.0}  # ignored: least_lag would always take r2
    picks = [route_read(TWO, "random", usable=usable, lag=lag).alias for _ in range(200)]
    assert set(picks) == {"r1", "r2"}  # chance of missing one: 2 * 2**-200
    # not the rotation's strict alternation (chance of drawing exactly that: 2**-199)
    assert picks != ["r1", "r2"] * 100 and picks != ["r2", "r1"] * 100


# -- the session's read-your-writes position -------------------------------------------------------------


@pytest.mark.parametrize("balance", BALANCES)
def test_position_restricts_reads_to_replicas_that_replayed_it(balance):
    usable = frozenset({"r1", "r2"})
    positions = {"r1": 99, "r2": 100}  # r2 replayed exactly the required position
    routes = {
        route_read(TWO, balance, usable=usable, required=100, positions=positions, lag={"r1": 0.0})
        for _ in range(6)
    }
    # r1 has not replayed it: the position must stay, or r1 would serve a stale read next time
    assert routes == {ReadRoute("r2", "replica", False)}


def test_position_is_released_when_every_replica_replayed_it():
    positions = {"r1": 100, "r2": 150}
    route = route_read(
        TWO, "round_robin", usable=frozenset(positions), required=100, positions=positions, replayed=positions
    )
    assert route == ReadRoute("r1", "replica", True)


def test_release_waits_for_replicas_that_are_not_usable():
    # issue 16: r1 is down (or lagging, or suspect) and behind; released now, the session would read
    # stale data from it the moment it is usable again within MAX_LAG_SECONDS
    usable = frozenset({"r2"})
    route = route_read(
        TWO, "round_robin", usable=usable, required=100, positions={"r2": 100}, replayed={"r2": 100}
    )
    assert route == ReadRoute("r2", "replica", False)
    behind = route_read(
        TWO, "round_robin", usable=usable, required=100, positions={"r2": 100}, replayed={"r1": 99, "r2": 100}
    )
    assert behind == ReadRoute("r2", "replica", False)
    known = route_read(
        TWO,
        "round_robin",
        usable=usable,
        required=100,
        positions={"r2": 100},
        replayed={"r1": 100, "r2": 100},
    )
    assert known == ReadRoute("r2", "replica", True)


def test_a_caught_up_replica_that_is_not_usable_is_not_read():
    route = route_read(
        TWO, "round_robin", usable=frozenset({"r1"}), required=100, positions={"r1": 50, "r2": 500}
    )
    assert route == ReadRoute("primary", "primary", False)


@pytest.mark.parametrize("balance", BALANCES)
def test_no_replica_replayed_the_position_reads_the_primary(balance):
    route = route_read(
        TWO, balance, usable=frozenset({"r1", "r2"}), required=100, positions={"r1": 99, "r2": None}
    )
    assert route == ReadRoute("primary", "primary", False)


def test_a_position_with_no_known_replica_positions_reads_the_primary():
    assert route_read(TWO, "round_robin", usable=frozenset({"r1"}), required=0) == ReadRoute(
        "primary", "primary", False
    )


def test_time_mode_pins_to_the_primary_whatever_the_positions():
    route = route_read(
        TWO,
        "round_robin",
        usable=frozenset({"r1", "r2"}),
        sticky_mode="time",
        required=int(time.time() * 1000) + 60_000,
        # positions past the deadline's value: in "lsn" mode both replicas would qualify
        positions={"r1": 10**15, "r2": 10**15},
    )
    assert route == ReadRoute("primary", "primary", False)


def test_use_replica_ignores_the_position():
    route = route_read(
        TWO, "round_robin", forced=REPLICA, usable=frozenset({"r2"}), required=100, positions={"r2": 1}
    )
    assert route == ReadRoute("r2", None, False)


def test_no_position_means_no_sticky_decision():
    assert route_read(TWO, "round_robin", usable=frozenset({"r1"})) == ReadRoute("r1", None, False)


# -- lending: which node serves a broken replica's reads ---------------------------------------------------

THREE = cluster("r1", "r2", "r3")


@pytest.mark.parametrize(
    ("alias", "usable", "expected"),
    [
        ("r1", {"r1", "r2", "r3"}, "r2"),  # the first other usable replica, in configuration order
        ("r2", {"r1", "r2", "r3"}, "r1"),
        ("r3", {"r2", "r3"}, "r2"),
        ("r1", {"r3"}, "r3"),
        ("r1", {"r1"}, None),  # only itself: the primary lends
        ("r1", set(), None),
    ],
)
def test_fallback_replica(alias, usable, expected):
    assert fallback_replica(THREE, alias, frozenset(usable)) == expected


# -- choose_read_alias gathers the inputs ----------------------------------------------------------------


@pytest.fixture
def snapshot_of(monkeypatch):
    """Install a health snapshot by hand (no monitor: it would probe servers) and clean up after."""
    started = []
    monkeypatch.setattr(monitor, "ensure_running", lambda: started.append(True))

    def install(c: Cluster, usable: set[str], positions: dict[str, int]) -> list[bool]:
        nodes = {
            a: NodeHealth(a, "replica", state="up", checked_at=time.time(), position=positions.get(a))
            for a in c.replicas
        }
        health.set_snapshot(
            c.name,
            health.Snapshot(
                nodes=nodes,
                usable=frozenset(usable),
                lag_seconds={},
                positions=positions,
                received=time.monotonic(),
                published_at=time.time(),
                source="local",
                interval=3600.0,  # never stale during the test
            ),
        )
        return started

    yield install
    health.clear()


def session(c: Cluster, position: int, loads: list[int]) -> sticky.StickyState:
    def loader() -> tuple[dict[str, int], dict[str, int]]:
        loads.append(1)
        return {c.name: position}, {}

    return sticky.StickyState(mode="lsn", loader=loader)


def test_choose_read_alias_releases_a_position_every_replica_replayed(snapshot_of):
    c = cluster("r1", "r2", name="gather-release")
    snapshot_of(c, {"r1", "r2"}, {"r1": 100, "r2": 100})
    before = stats.total("sticky_decisions", cluster=c.name, decision="replica")
    loads: list[int] = []
    with context.request_context() as state:
        state.sticky = session(c, 100, loads)
        assert router.choose_read_alias(c) == "r1"
        assert state.sticky.release == {c.name}
    assert loads == [1]
    assert stats.total("sticky_decisions", cluster=c.name, decision="replica") == before + 1


def test_choose_read_alias_keeps_a_position_some_replica_lacks(snapshot_of):
    c = cluster("r1", "r2", name="gather-keep")
    snapshot_of(c, {"r1", "r2"}, {"r1": 100, "r2": 99})
    with context.request_context() as state:
        state.sticky = session(c, 100, [])
        assert router.choose_read_alias(c) == "r1"
        assert state.sticky.release == set()


def test_choose_read_alias_reads_the_primary_when_no_replica_is_usable(snapshot_of):
    c = cluster("r1", "r2", name="gather-none")
    started = snapshot_of(c, set(), {})
    with context.request_context():
        assert router.choose_read_alias(c) == "primary"
    assert started == [True]


def test_choose_read_alias_loads_nothing_when_the_rules_need_the_primary(snapshot_of):
    c = cluster("r1", name="gather-wrote")
    started = snapshot_of(c, {"r1"}, {"r1": 100})
    loads: list[int] = []
    with context.request_context() as state:
        state.sticky = session(c, 1, loads)
        context.mark_write(c.name)
        assert router.choose_read_alias(c) == "primary"
    assert (started, loads) == ([], [])


def test_choose_read_alias_under_use_replica_never_loads_the_position(snapshot_of):
    c = cluster("r1", name="gather-use-replica")
    snapshot_of(c, {"r1"}, {"r1": 0})
    loads: list[int] = []
    with context.request_context() as state, context.use_replica():
        state.sticky = session(c, 100, loads)
        assert router.choose_read_alias(c) == "r1"
    assert loads == []
