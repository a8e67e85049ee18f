"""Topology from settings without servers: every problem with its exact id, message and hint, the implicit
cluster, the default cluster, roles and lookups."""

from __future__ import annotations

import pytest

from replicarouter.topology import ENGINE, Cluster, Problem, build, smooth_rotation

PLAIN = "django.db.backends.postgresql"
DBS = {
    "default": {"ENGINE": ENGINE},
    "replica1": {"ENGINE": ENGINE},
    "replica2": {"ENGINE": ENGINE},
    "plain": {"ENGINE": PLAIN},
}
WHERE = "REPLICAROUTER['CLUSTERS']['c']"
KNOWN = "default, replica1, replica2, plain"
E010_EXAMPLE = "For example {'PRIMARY': 'default', 'REPLICAS': ['replica1', 'replica2']}."
E014_HINT = (
    "Use 1 for an ordinary replica, 2 for one that should take twice the reads; remove a replica instead "
    "of giving it weight 0."
)


@pytest.mark.parametrize(
    ("clusters", "problems"),
    [
        (
            ["default"],
            [Problem("replicarouter.E010",
                     "REPLICAROUTER['CLUSTERS'] must be a dict of cluster name -> {'PRIMARY': alias, "
                     "'REPLICAS': [...]}, not list.",
                     "See docs/configuration.md#clusters.")],
        ),
        (
            {"c": {"REPLICAS": ["replica1"]}},
            [Problem("replicarouter.E010", f"{WHERE} must be a dict with a 'PRIMARY' alias (and 'REPLICAS').",
                     E010_EXAMPLE)],
        ),
        (
            {"c": "default"},
            [Problem("replicarouter.E010", f"{WHERE} must be a dict with a 'PRIMARY' alias (and 'REPLICAS').",
                     E010_EXAMPLE)],
        ),
        (
            {"c": {"PRIMARY": "default", "REPLICA": [], "APP": []}},
            [Problem("replicarouter.E010", f"{WHERE} has unknown keys ['APP', 'REPLICA'].",
                     "Valid keys: PRIMARY, REPLICAS, APPS.")],
        ),
        (
            {"c": {"PRIMARY": "default", "REPLICAS": "replica1"}},
            [Problem("replicarouter.E010",
                     f"{WHERE}['REPLICAS'] must be a list of aliases or a dict alias -> weight.",
                     "For example ['replica1', 'replica2'] or {'replica1': 2, 'replica2': 1}.")],
        ),
        (
            {"c": {"PRIMARY": "default", "REPLICAS": ["replica9"]}},
            [Problem("replicarouter.E011", f"{WHERE} names alias 'replica9', which is not in DATABASES.",
                     f"Add DATABASES['replica9'] or fix the name (known: {KNOWN}).")],
        ),
        (
            {"c": {"PRIMARY": "nowhere"}},
            [Problem("replicarouter.E011", f"{WHERE} names alias 'nowhere', which is not in DATABASES.",
                     f"Add DATABASES['nowhere'] or fix the name (known: {KNOWN}).")],
        ),
        (
            {"a": {"PRIMARY": "default", "REPLICAS": ["replica1"]}, "b": {"PRIMARY": "replica1"}},
            [Problem("replicarouter.E012",
                     "Alias 'replica1' is both replica of cluster 'a' and primary of cluster 'b'.",
                     "Give each alias one role in one cluster; define a second alias (same server) if you "
                     "really need it twice.")],
        ),
        (
            {"a": {"PRIMARY": "default"}, "b": {"PRIMARY": "replica1", "REPLICAS": ["default"]}},
            [Problem("replicarouter.E012",
                     "Alias 'default' is both primary of cluster 'a' and replica of cluster 'b'.",
                     "Give each alias one role in one cluster; define a second alias (same server) if you "
                     "really need it twice.")],
        ),
        (
            {"c": {"PRIMARY": "default", "REPLICAS": ["plain"]}},
            [Problem("replicarouter.E013",
                     f"DATABASES['plain'] is in cluster 'c' but its ENGINE is '{PLAIN}'.",
                     f"Use ENGINE = '{ENGINE}': the router relies on it to detect writes and to pool.")],
        ),
        (
            {"c": {"PRIMARY": "default", "REPLICAS": {"replica1": 0, "replica2": True, "plain": 1.5}}},
            [Problem("replicarouter.E014", f"{WHERE}['REPLICAS']['{alias}'] has weight {weight}: weights are "
                     "positive integers.", E014_HINT)
             for alias, weight in [("replica1", 0), ("replica2", True), ("plain", 1.5)]],
        ),
        (
            {"c": {"PRIMARY": "default", "REPLICAS": ["default", "replica1"]}},
            [Problem("replicarouter.E015", f"{WHERE} lists its primary 'default' as one of its replicas.",
                     "Remove it from REPLICAS: reads fall back to the primary when no replica is usable.")],
        ),
        (
            {"a": {"PRIMARY": "default", "APPS": ["x"]}, "b": {"PRIMARY": "replica1", "APPS": ["x", "y"]}},
            [Problem("replicarouter.E016", "App label 'x' is routed to clusters 'a' and 'b'.",
                     "List each app label in the APPS of one cluster only.")],
        ),
        (
            {"c": {"PRIMARY": "default", "APPS": "billing"}},
            [Problem("replicarouter.E010", f"{WHERE}['APPS'] must be a list of app labels.",
                     "For example ['billing'].")],
        ),
        (
            {"c": {"PRIMARY": "default", "APPS": ["billing", 3]}},
            [Problem("replicarouter.E010", f"{WHERE}['APPS'] must be a list of app labels.",
                     "For example ['billing'].")],
        ),
    ],
)  # fmt: skip
def test_each_problem_exactly(clusters, problems):
    assert build(DBS, clusters)[1] == problems


def test_a_cluster_keeps_its_valid_parts_when_some_are_wrong():
    topology, _ = build(DBS, {"c": {"PRIMARY": "default", "REPLICAS": {"replica1": 0, "replica2": 2}}})
    assert topology.clusters == (Cluster("c", "default", ("replica2",), (2,), (), ("replica2", "replica2")),)


def test_a_cluster_without_primary_is_left_out():
    topology, _ = build(DBS, {"bad": {"REPLICAS": []}, "good": {"PRIMARY": "default", "APPS": ["x"]}})
    assert [c.name for c in topology.clusters] == ["good"]
    assert topology.default is topology.clusters[0]


def test_implicit_cluster_takes_every_pooled_alias_but_default_as_replica():
    topology, problems = build(DBS, None)
    assert problems == []
    assert topology.clusters == (
        Cluster("default", "default", ("replica1", "replica2"), (1, 1), (), ("replica1", "replica2")),
    )


def test_implicit_cluster_needs_a_default_alias():
    topology, problems = build({"replica1": {"ENGINE": ENGINE}}, None)
    assert (topology.clusters, topology.default, problems) == ((), None, [])


def test_the_cluster_named_default_is_the_default_wherever_it_is():
    clusters = {"other": {"PRIMARY": "replica1"}, "default": {"PRIMARY": "default"}}
    topology, _ = build(DBS, clusters)
    assert topology.default is not None and topology.default.name == "default"
    assert topology.cluster_for_app("anything") is topology.default


def test_without_a_default_cluster_the_first_one_is():
    topology, _ = build(DBS, {"one": {"PRIMARY": "replica1"}, "two": {"PRIMARY": "default"}})
    assert topology.default is not None and topology.default.name == "one"


def test_roles_and_lookups():
    clusters = {
        "main": {"PRIMARY": "default", "REPLICAS": ["replica1"]},
        "other": {"PRIMARY": "replica2", "APPS": ["billing"]},
    }
    topology, problems = build(DBS, clusters)
    assert problems == []
    main, other = topology.clusters
    assert [topology.role(a) for a in ("default", "replica1", "replica2", "plain")] == [
        "primary",
        "replica",
        "primary",
        None,
    ]
    assert topology.by_alias == {"default": main, "replica1": main, "replica2": other}
    assert topology.by_app == {"billing": other}
    assert topology.cluster_for_app("billing") is other
    assert topology.cluster_for_app("auth") is main


def test_rotation_of_no_replicas_is_empty():
    assert smooth_rotation((), ()) == ()
    assert smooth_rotation(("a",), (3,)) == ("a", "a", "a")


def test_the_primary_listed_as_a_replica_is_dropped_and_the_rest_kept():
    topology, problems = build(
        DBS, {"c": {"PRIMARY": "default", "REPLICAS": ["default", "replica1", "replica2"]}}
    )
    assert [p.id for p in problems] == ["replicarouter.E015"]
    assert topology.clusters[0].replicas == ("replica1", "replica2")


def test_unknown_alias_hint_with_no_databases_at_all():
    _, problems = build({}, {"c": {"PRIMARY": "default"}})
    assert problems == [
        Problem(
            "replicarouter.E011",
            f"{WHERE} names alias 'default', which is not in DATABASES.",
            "Add DATABASES['default'] or fix the name (known: none).",
        )
    ]
