"""Topology building without servers: what is built, and the exact text of every problem found."""

from __future__ import annotations

import pytest

from replicarouter.routing.topology import (
    ENGINE,
    Cluster,
    Problem,
    Topology,
    build,
    fingerprint,
    is_local_host,
    smooth_rotation,
)

POOLED = {"ENGINE": ENGINE}
DBS = {"default": POOLED, "replica1": POOLED, "replica2": POOLED}
WHERE = "REPLICAROUTER['CLUSTERS']['c']"


def problems(clusters, databases=DBS):
    return build(databases, clusters)[1]


def test_implicit_cluster_is_named_default_with_every_pooled_alias():
    databases = {**DBS, "plain": {"ENGINE": "django.db.backends.sqlite3"}, "odd": "not a dict"}
    topology, found = build(databases, None)
    default = Cluster("default", "default", ("replica1", "replica2"), (1, 1), (), ("replica1", "replica2"))
    assert found == []
    assert topology == Topology(
        (default,), default, {}, {"default": default, "replica1": default, "replica2": default}
    )


def test_no_default_alias_and_no_clusters_means_an_empty_topology():
    assert build({"other": POOLED}, None) == (Topology((), None, {}, {}), [])


def test_roles_and_app_lookup():
    topology, found = build(
        {**DBS, "o": POOLED},
        {"main": {"PRIMARY": "default", "REPLICAS": ["replica1"]}, "other": {"PRIMARY": "o", "APPS": ("x",)}},
    )
    assert found == []
    assert topology.role("default") == "primary"
    assert topology.role("o") == "primary"
    assert topology.role("replica1") == "replica"
    assert topology.role("replica2") is None
    assert topology.cluster_for_app("x").name == "other"
    assert topology.cluster_for_app("y").name == "main"  # the first cluster when none is named default


def test_the_cluster_named_default_is_the_default_wherever_it_is_listed():
    topology, _ = build({**DBS, "o": POOLED}, {"x": {"PRIMARY": "o"}, "default": {"PRIMARY": "default"}})
    assert topology.default.name == "default"
    assert [c.name for c in topology.clusters] == ["x", "default"]


def test_a_list_of_replicas_weighs_each_one():
    topology, _ = build(DBS, {"c": {"PRIMARY": "default", "REPLICAS": ["replica2", "replica1"]}})
    assert topology.default.weights == (1, 1)
    assert topology.default.rotation == ("replica2", "replica1")


def test_smooth_rotation_breaks_ties_by_order():
    assert smooth_rotation(("a", "b"), (1, 1)) == ("a", "b")
    assert smooth_rotation(("a", "b", "c"), (2, 2, 1)) == ("a", "b", "c", "a", "b")
    assert smooth_rotation((), ()) == ()


def test_clusters_setting_that_is_not_a_dict():
    assert problems(["default"]) == [
        Problem(
            "replicarouter.E010",
            "REPLICAROUTER['CLUSTERS'] must be a dict of cluster name -> "
            "{'PRIMARY': alias, 'REPLICAS': [...]}, not list.",
            "See docs/configuration.md#clusters.",
        )
    ]


def test_a_bad_cluster_is_reported_and_the_others_still_built():
    topology, found = build(DBS, {"bad": {"REPLICAS": []}, "good": {"PRIMARY": "default"}})
    assert [c.name for c in topology.clusters] == ["good"]
    assert found == [
        Problem(
            "replicarouter.E019",
            "REPLICAROUTER['CLUSTERS']['bad'] must be a dict with a 'PRIMARY' alias (and 'REPLICAS').",
            "For example {'PRIMARY': 'default', 'REPLICAS': ['replica1', 'replica2']}.",
        )
    ]


def test_unknown_keys():
    assert problems({"c": {"PRIMARY": "default", "REPLICA": [], "APP": []}}) == [
        Problem("replicarouter.E020", f"{WHERE} has unknown keys ['APP', 'REPLICA'].",
                "Valid keys: PRIMARY, REPLICAS, APPS.")
    ]  # fmt: skip


def test_replicas_of_the_wrong_type():
    topology, found = build(DBS, {"c": {"PRIMARY": "default", "REPLICAS": "replica1"}})
    assert topology.default.replicas == ()
    assert found == [
        Problem(
            "replicarouter.E021",
            f"{WHERE}['REPLICAS'] must be a list of aliases or a dict alias -> weight.",
            "For example ['replica1', 'replica2'] or {'replica1': 2, 'replica2': 1}.",
        )
    ]


def test_the_primary_listed_as_a_replica_is_dropped_and_the_rest_kept():
    topology, found = build(DBS, {"c": {"PRIMARY": "default", "REPLICAS": ["default", "replica1"]}})
    assert topology.default.replicas == ("replica1",)
    assert found == [
        Problem(
            "replicarouter.E015",
            f"{WHERE} lists its primary 'default' as one of its replicas.",
            "Remove it from REPLICAS: reads fall back to the primary when no replica is usable.",
        )
    ]


@pytest.mark.parametrize("weight", [0, -1, 1.5, True, "2"])
def test_a_bad_weight_drops_that_replica_only(weight):
    topology, found = build(
        DBS, {"c": {"PRIMARY": "default", "REPLICAS": {"replica1": weight, "replica2": 3}}}
    )
    assert (topology.default.replicas, topology.default.weights) == (("replica2",), (3,))
    assert found == [
        Problem(
            "replicarouter.E014",
            f"{WHERE}['REPLICAS']['replica1'] has weight {weight!r}: weights are positive integers.",
            "Use 1 for an ordinary replica, 2 for one that should take twice the reads; remove a replica "
            "instead of giving it weight 0.",
        )
    ]


def test_aliases_missing_from_databases():
    assert problems({"c": {"PRIMARY": "default", "REPLICAS": ["replica9"]}}) == [
        Problem(
            "replicarouter.E011",
            f"{WHERE} names alias 'replica9', which is not in DATABASES.",
            "Add DATABASES['replica9'] or fix the name (known: default, replica1, replica2).",
        )
    ]
    assert problems({"c": {"PRIMARY": "default"}}, {}) == [
        Problem(
            "replicarouter.E011",
            f"{WHERE} names alias 'default', which is not in DATABASES.",
            "Add DATABASES['default'] or fix the name (known: none).",
        )
    ]


def test_an_alias_without_our_engine():
    databases = {**DBS, "plain": {"ENGINE": "django.db.backends.postgresql"}}
    assert problems({"c": {"PRIMARY": "default", "REPLICAS": ["plain"]}}, databases) == [
        Problem(
            "replicarouter.E013",
            "DATABASES['plain'] is in cluster 'c' but its ENGINE is 'django.db.backends.postgresql'.",
            f"Use ENGINE = {ENGINE!r}: the router relies on it to detect writes and to pool.",
        )
    ]


def test_an_alias_in_two_roles():
    found = problems({"a": {"PRIMARY": "default", "REPLICAS": ["replica1"]}, "b": {"PRIMARY": "replica1"}})
    assert found == [
        Problem(
            "replicarouter.E012",
            "Alias 'replica1' is both replica of cluster 'a' and primary of cluster 'b'.",
            "Give each alias one role in one cluster; define a second alias (same server) if you really need "
            "it twice.",
        )
    ]
    twice = problems({"a": {"PRIMARY": "default"}, "b": {"PRIMARY": "replica1", "REPLICAS": ["default"]}})
    assert [p.msg for p in twice] == [
        "Alias 'default' is both primary of cluster 'a' and replica of cluster 'b'."
    ]


@pytest.mark.parametrize("apps", ["billing", [1], ["billing", None], {"billing": 1}])
def test_apps_that_are_not_a_list_of_labels(apps):
    topology, found = build(DBS, {"c": {"PRIMARY": "default", "APPS": apps}})
    assert topology.default.apps == () and topology.by_app == {}
    assert found == [
        Problem(
            "replicarouter.E022", f"{WHERE}['APPS'] must be a list of app labels.", "For example ['billing']."
        )
    ]


def test_an_app_routed_to_several_clusters_is_reported_against_the_first():
    clusters = {
        "a": {"PRIMARY": "default", "APPS": ["x"]},
        "b": {"PRIMARY": "replica1", "APPS": ["x"]},
        "c": {"PRIMARY": "replica2", "APPS": ["x"]},
    }
    assert problems(clusters) == [
        Problem(
            "replicarouter.E016",
            "App label 'x' is routed to clusters 'a' and 'b'.",
            "List each app label in the APPS of one cluster only.",
        ),
        Problem(
            "replicarouter.E016",
            "App label 'x' is routed to clusters 'a' and 'c'.",
            "List each app label in the APPS of one cluster only.",
        ),
    ]


def _node(host, port="5432", name="app"):
    return {"ENGINE": ENGINE, "HOST": host, "PORT": port, "NAME": name}


def test_the_fingerprint_is_the_nodes_not_their_aliases_nor_their_order():
    """Two sites may name their aliases alike: only host:port/dbname of the nodes makes the fingerprint."""
    site = {"default": _node("db1.a"), "replica1": _node("db2.a"), "replica2": _node("db3.a")}
    spec = Cluster("default", "default", ("replica1", "replica2"))
    base = fingerprint(spec, site, "web1")
    assert len(base) == 16 and int(base, 16) >= 0
    # other aliases for the same servers, listed in another order: the same identity
    renamed = {"main": site["replica2"], "r1": site["default"], "r2": site["replica1"]}
    assert fingerprint(Cluster("x", "r1", ("main", "r2")), renamed, "web1") == base
    # remote nodes: the machine the process runs on does not matter
    assert fingerprint(spec, site, "web2") == base
    # one port, one host or one database name apart: another identity
    for alias, changed in (("replica2", _node("db3.a", port="5433")), ("default", _node("db9.a")),
                           ("replica1", _node("db2.a", name="app2"))):  # fmt: skip
        assert fingerprint(spec, {**site, alias: changed}, "web1") != base, alias


@pytest.mark.parametrize(
    "host", ["", "localhost", "127.0.0.1", "127.0.1.1", "::1", "[::1]", "/var/run/postgresql"]
)
def test_a_local_node_makes_the_hostname_part_of_the_fingerprint(host):
    """Two dev machines on 127.0.0.1:5432 sharing one Redis are two databases."""
    site = {"default": _node(host), "replica1": _node("db2.a")}
    spec = Cluster("default", "default", ("replica1",))
    assert is_local_host(host)
    assert fingerprint(spec, site, "laptop-a") != fingerprint(spec, site, "laptop-b")
    assert fingerprint(spec, site, "laptop-a") == fingerprint(spec, site, "laptop-a")


def test_remote_hosts_are_not_local():
    for host in ("db1.example", "10.0.0.5", "128.0.0.1", "::2", "localhost-db"):
        assert not is_local_host(host), host


def test_the_fingerprint_format_is_fixed():
    """An external format: processes of one site (and of two releases) must compute the same keys.

    sha256 of the sorted ``host:port/name`` lines (missing parts empty), plus ``@hostname`` when a node
    is local, first 16 hex digits.
    """
    import hashlib

    def expected(material):
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    remote = {"default": _node("db1.a"), "replica1": {"ENGINE": ENGINE, "HOST": "db2.a"}}
    spec = Cluster("default", "default", ("replica1",))
    assert fingerprint(spec, remote, "web1") == expected("db1.a:5432/app\ndb2.a:/")
    local = {"default": _node("db1.a,localhost"), "replica1": _node("db2.a", port="5433")}
    assert fingerprint(spec, local, "web1") == expected("db1.a,localhost:5432/app\ndb2.a:5433/app\n@web1")
    # an alias the settings lack (a check reports it): still a fingerprint, from what is known
    assert fingerprint(Cluster("c", "default", ("gone",)), remote, "w") == expected(":/\ndb1.a:5432/app\n@w")


@pytest.mark.parametrize(
    "host", ["@abstract", "localhost.localdomain", "LOCALHOST", "db.localhost", "app.LOCALHOST"]
)
def test_more_names_of_this_machine_are_local(host):
    assert is_local_host(host)
