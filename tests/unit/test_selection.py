"""Replica selection without servers: exact rotation order, per-cluster counters, weights, lag ties."""

from __future__ import annotations

import pytest

from replicarouter.routing import selection
from replicarouter.routing.topology import Cluster, smooth_rotation

THREE = Cluster("three", "p", ("r1", "r2", "r3"), (1, 1, 1), (), ("r1", "r2", "r3"))


@pytest.fixture(autouse=True)
def fresh_counters(monkeypatch):
    """Each test starts every cluster's rotation at its first replica."""
    monkeypatch.setattr(selection, "_counters", {})


def picks(policy, cluster, usable, n, *args):
    return [policy(cluster, usable, *args) for _ in range(n)]


def test_round_robin_walks_the_rotation_in_order():
    assert picks(selection.round_robin, THREE, None, 4) == ["r1", "r2", "r3", "r1"]


def test_round_robin_skips_forward_past_unusable_replicas():
    assert picks(selection.round_robin, THREE, {"r2", "r3"}, 4) == ["r2", "r2", "r3", "r2"]
    assert picks(selection.round_robin, THREE, {"r1"}, 2) == ["r1", "r1"]
    assert selection.round_robin(THREE, set()) is None
    assert selection.round_robin(Cluster("empty", "p"), None) is None


def test_each_cluster_has_its_own_rotation():
    other = Cluster("other", "q", ("s1", "s2"), (1, 1), (), ("s1", "s2"))
    order = [selection.round_robin(c, None) for c in (THREE, other, THREE, other, other)]
    assert order == ["r1", "s1", "r2", "s2", "s1"]


def test_round_robin_follows_the_weighted_rotation():
    weighted = Cluster("w", "p", ("a", "b"), (2, 1), (), smooth_rotation(("a", "b"), (2, 1)))
    assert picks(selection.round_robin, weighted, None, 6) == ["a", "b", "a", "a", "b", "a"]


class RecordingRandom:
    """Stands in for random.Random: records what it was asked and picks the last candidate."""

    def __init__(self):
        self.calls = []

    def choices(self, population, weights):
        self.calls.append((population, weights))
        return [population[-1]]


def test_weighted_random_draws_among_usable_replicas_by_weight():
    cluster = Cluster("w", "p", ("r1", "r2", "r3"), (5, 2, 1), (), ())
    rng = RecordingRandom()
    assert selection.weighted_random(cluster, None, rng) == "r3"
    assert selection.weighted_random(cluster, {"r1", "r2"}, rng) == "r2"
    assert rng.calls == [(["r1", "r2", "r3"], [5, 2, 1]), (["r1", "r2"], [5, 2])]
    assert selection.weighted_random(cluster, set(), rng) is None
    assert selection.weighted_random(cluster, {"r2"}) == "r2"  # the module's generator when none is given


def test_weighted_random_refuses_a_cluster_whose_weights_do_not_match():
    broken = Cluster("broken", "p", ("r1", "r2"), (1,), (), ())
    with pytest.raises(ValueError, match="shorter than argument 1"):
        selection.weighted_random(broken, None, RecordingRandom())


def test_least_lag_takes_the_smallest_known_lag_among_usable_replicas():
    lag = {"r1": 5.0, "r2": 0.1, "r3": 2.0}
    assert selection.least_lag(THREE, None, lag) == "r2"
    assert selection.least_lag(THREE, {"r1", "r3"}, lag) == "r3"
    assert selection.least_lag(THREE, {"r1"}, lag) == "r1"
    assert selection.least_lag(THREE, set(), lag) is None
    assert selection.least_lag(THREE, None, {"r3": 9.0}) == "r3"  # unknown lag sorts last


def test_least_lag_clear_winner_leaves_the_rotation_alone():
    assert selection.least_lag(THREE, None, {"r1": 1.0, "r2": 0.0, "r3": 1.0}) == "r2"
    assert selection.round_robin(THREE, None) == "r1"  # still at the start


def test_least_lag_ties_rotate_among_the_tied_only():
    lag = {"r1": 1.0, "r2": 0.0, "r3": 0.0}
    assert picks(selection.least_lag, THREE, None, 3, lag) == ["r2", "r2", "r3"]  # rotation r1, r2, r3
    two = Cluster("two", "p", ("r1", "r2"), (1, 1), (), ("r1", "r2"))
    assert picks(selection.least_lag, two, None, 4, {"r1": 0.0, "r2": 0.0}) == ["r1", "r2", "r1", "r2"]


def test_least_lag_with_no_lag_known_rotates_among_usable_replicas():
    assert picks(selection.least_lag, THREE, {"r3"}, 2, {}) == ["r3", "r3"]
    assert picks(selection.least_lag, THREE, None, 3, {}) == ["r3", "r1", "r2"]  # the rotation went on
