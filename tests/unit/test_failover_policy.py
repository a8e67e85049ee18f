"""Failover decisions without servers: who takes writes, who is fenced, who gets promoted, suspects,
the read watchdog's cut, and what status says about it."""

from __future__ import annotations

import socket
import threading
import time

from replicarouter.backends.watchdog import Watchdog
from replicarouter.health import store as health
from replicarouter.health.election import elect
from replicarouter.health.failover import candidate
from replicarouter.health.rules import NodeHealth
from replicarouter.health.store import Snapshot, set_snapshot
from replicarouter.observability import stats
from replicarouter.observability.report import exit_code
from replicarouter.routing.topology import Cluster

NONE: frozenset[str] = frozenset()


def test_the_configured_primary_writes_while_it_answers():
    election = elect("default", {"default": 1}, previous=None, known_timeline=0, unreachable=NONE)
    assert election.writer == "default" and election.timeline == 1 and not election.fenced


def test_a_failed_probe_is_not_an_outage_but_down_is():
    kept = elect("default", {}, previous="default", known_timeline=1, unreachable=NONE)
    assert kept.writer == "default"
    lost = elect("default", {}, previous="default", known_timeline=1, unreachable=frozenset({"default"}))
    assert lost.writer is None and "default is down and no replica has been promoted" in lost.reason


def test_a_promoted_replica_on_a_newer_timeline_takes_the_writes_and_the_old_primary_is_fenced():
    election = elect("default", {"replica1": 2}, previous="default", known_timeline=1, unreachable=NONE)
    assert election.writer == "replica1" and election.timeline == 2
    both = elect(
        "default", {"default": 1, "replica1": 2}, previous="replica1", known_timeline=2, unreachable=NONE
    )
    assert both.writer == "replica1" and both.fenced == {"default"}
    assert "fenced default" in both.reason


def test_an_old_primary_alone_is_fenced_when_a_newer_timeline_was_seen():
    """Split brain guard: the promoted node is unreachable, the old one answers: nobody takes writes."""
    election = elect("default", {"default": 1}, previous="replica1", known_timeline=2, unreachable=NONE)
    assert election.writer is None and election.fenced == {"default"}
    assert "split brain" in election.reason


def test_on_a_tie_the_current_writer_keeps_its_place():
    election = elect(
        "default", {"default": 3, "replica1": 3}, previous="replica1", known_timeline=3, unreachable=NONE
    )
    assert election.writer == "replica1" and election.fenced == {"default"}
    fresh = elect("default", {"default": 3, "replica1": 3}, previous=None, known_timeline=0, unreachable=NONE)
    assert fresh.writer == "default"


def _replica(alias, received, position, **kw):
    fields = {"role": "replica", "state": "up", "checked_at": 1.0, **kw}
    return NodeHealth(alias, "replica", received=received, position=position, **fields)


def test_the_most_caught_up_answering_replica_is_promoted():
    cluster = Cluster("default", "default", ("replica1", "replica2"))
    nodes = {
        "default": NodeHealth("default", "primary", state="down", failures=5),
        "replica1": _replica("replica1", 900, 900),
        "replica2": _replica("replica2", 1000, 800),  # received more, replayed less: still the better one
    }
    assert candidate(cluster, nodes) == "replica2"
    nodes["replica2"] = _replica("replica2", 1000, 800, failures=1)
    assert candidate(cluster, nodes) == "replica1"
    nodes["replica1"] = _replica("replica1", 900, 900, fenced=True)
    assert candidate(cluster, nodes) is None


def test_a_suspect_gets_no_reads_until_a_later_probe_finds_it_healthy():
    health.clear()
    try:
        node = NodeHealth("r1", "replica", role="replica", state="up", checked_at=time.time())
        snap = Snapshot(
            {"r1": node}, frozenset({"r1"}), {}, {}, time.monotonic(), time.time(), "local", interval=0.1
        )
        set_snapshot("unit", snap)
        health.suspect("unit", "r1")
        assert health.usable_replicas("unit") == frozenset() and health.is_suspect("unit", "r1")
        set_snapshot("unit", snap)  # the same (earlier) probe: still suspect
        assert health.is_suspect("unit", "r1")
        later = NodeHealth("r1", "replica", role="replica", state="up", checked_at=time.time() + 1)
        set_snapshot("unit", Snapshot({"r1": later}, frozenset({"r1"}), {}, {}, time.monotonic(), time.time(),
                                      "local", interval=0.1))  # fmt: skip
        assert health.usable_replicas("unit") == {"r1"} and not health.is_suspect("unit", "r1")
    finally:
        health.clear()


def test_the_writer_before_any_snapshot_is_the_configured_primary():
    health.clear()
    assert health.writer("nowhere", "default") == "default"


def test_watchdog_cuts_a_read_stuck_on_an_unresponsive_node_only():
    """A socket that never answers stands for a frozen server: the blocked recv() returns end-of-file."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    responsive = {"yes": True}
    dog = Watchdog(lambda cluster, alias: not responsive["yes"])
    cut_before = stats.total("reads_aborted", alias="r1")
    try:
        for answers in (True, False):
            responsive["yes"] = answers
            client = socket.create_connection(server.getsockname())
            peer, _ = server.accept()
            result = {}

            def read(client=client, result=result):
                with dog.watching(client, "c", "r1", 0.2) as watch:
                    client.settimeout(1.5)
                    try:
                        result["data"] = client.recv(10)
                    except TimeoutError:
                        result["data"] = "still waiting"
                    result["aborted"] = watch.aborted

            thread = threading.Thread(target=read)
            started = time.monotonic()
            thread.start()
            thread.join(5)
            elapsed = time.monotonic() - started
            if answers:  # a slow read on a node that answers probes is left alone
                assert result == {"data": "still waiting", "aborted": False} and elapsed >= 1.4
            else:
                assert result == {"data": b"", "aborted": True} and elapsed < 1.0
            client.close()
            peer.close()
        assert stats.total("reads_aborted", alias="r1") == cut_before + 1  # the one cut is counted
        thread = dog._thread
        assert thread is not None and thread.is_alive()
    finally:
        dog.stop()
        server.close()
    assert not thread.is_alive()  # stop() leaves no thread behind


def _status(primary_state="up", writer="default", fenced=False, replica_state="up"):
    def node(alias, role, state, **kw):
        return {"alias": alias, "role": role, "state": state, "promoted": False, "fenced": False, **kw}

    return {"clusters": {"default": {
        "primary": node("default", "primary", primary_state, fenced=fenced),
        "replicas": [node("replica1", "replica", replica_state)],
        "writes_to": writer,
    }}}  # fmt: skip


def test_exit_codes_for_failover_states():
    assert exit_code(_status()) == 0
    assert exit_code(_status(replica_state="lagging")) == 1
    assert exit_code(_status(primary_state="down", writer=None)) == 2  # writes fail
    assert exit_code(_status(primary_state="down", writer="replica1")) == 2  # failed over: still critical
    assert exit_code(_status(fenced=True, writer="replica1")) == 2  # split brain


def test_status_stays_a_function_after_every_submodule_is_imported():
    import importlib
    import pkgutil

    import replicarouter

    for module in pkgutil.walk_packages(replicarouter.__path__, "replicarouter."):
        if ".testing" not in module.name and "docker" not in module.name:
            importlib.import_module(module.name)
    assert callable(replicarouter.status) and replicarouter.status.__module__ == "replicarouter"


def test_elections_state_every_field():
    from replicarouter.health.election import Election

    assert elect("default", {}, previous=None, known_timeline=0, unreachable=NONE) == Election(
        "default", NONE, 0, "default is primary (last probe did not answer)"
    )
    assert elect(
        "default", {}, previous="replica1", known_timeline=4, unreachable=frozenset({"replica1"})
    ) == (Election(None, NONE, 4, "replica1 is down and no replica has been promoted"))
    # a primary that does not report its timeline counts as timeline 0
    assert elect("default", {"default": None}, previous=None, known_timeline=0, unreachable=NONE) == Election(
        "default", NONE, 0, "default is primary on timeline 0"
    )
    split = elect("default", {"default": 1, "replica2": 2}, previous="replica1", known_timeline=3,
                  unreachable=NONE)  # fmt: skip
    assert split == Election(
        None, frozenset({"default", "replica2"}), 3,
        "default, replica2 claim primary on timeline 2, older than timeline 3 seen before: "
        "fenced (split brain); the newer primary does not answer",
    )  # fmt: skip
    claims = {"default": 1, "replica1": 2, "replica2": 1}
    three = elect("default", claims, previous="default", known_timeline=1, unreachable=NONE)
    assert three == Election(
        "replica1", frozenset({"default", "replica2"}), 2,
        "replica1 is primary on timeline 2; fenced default, replica2 (also claiming primary, older timeline)",
    )  # fmt: skip


def test_on_a_tie_without_the_current_writer_the_configured_primary_wins():
    election = elect("main", {"alpha": 2, "main": 2}, previous="gone", known_timeline=2, unreachable=NONE)
    assert (election.writer, election.fenced) == ("main", frozenset({"alpha"}))
    anonymous = elect("main", {"zeta": None, "beta": None}, previous=None, known_timeline=0, unreachable=NONE)
    assert (anonymous.writer, anonymous.timeline) == ("beta", 0)  # neither: the first by name


def test_a_down_replica_is_not_promoted_even_when_it_answers_again():
    """After FALL failures a replica stays down until RISE good probes: its failures are 0 meanwhile."""
    cluster = Cluster("default", "default", ("replica1", "replica2"))
    nodes = {
        "replica1": _replica("replica1", 900, 900),
        "replica2": NodeHealth(
            "replica2",
            "replica",
            role="replica",
            state="down",
            checked_at=1.0,
            received=5000,
            position=5000,
            healthy_streak=1,
        ),
    }
    assert candidate(cluster, nodes) == "replica1"
    nodes["replica1"] = _replica("replica1", 900, 900, state="lagging")  # lagging still answers: eligible
    assert candidate(cluster, nodes) == "replica1"


def test_promotion_candidate_rules_for_unknown_positions_and_ties():
    cluster = Cluster("default", "default", ("replica1", "replica2"))

    def pick(first, second):
        return candidate(
            cluster, {"replica1": _replica("replica1", *first), "replica2": _replica("replica2", *second)}
        )

    assert pick((None, None), (1, None)) == "replica2"  # knowing nothing never beats one received byte
    assert pick((None, 500), (400, 400)) == "replica1"  # receive position unknown: the replayed one counts
    assert pick((1000, 800), (1000, 900)) == "replica2"  # same received: the one that replayed more
    assert pick((5, None), (5, 1)) == "replica2"
    assert pick((1000, 900), (1000, 900)) == "replica1"  # a full tie: the first configured replica
    assert pick((0, 0), (0, 0)) == "replica1"
    nodes = {"replica2": _replica("replica2", 1, 1), "replica1": _replica("replica1", 1, 1)}
    assert candidate(cluster, nodes) == "replica1"  # configuration order, not the mapping's


def test_promotion_candidates_must_be_answering_standbys_of_this_cluster():
    cluster = Cluster("default", "default", ("replica1", "replica2"))
    best = _replica("replica1", 100, 100)
    strangers = {
        "other": _replica("other", 10**6, 10**6),  # not one of this cluster's replicas
        "replica2": _replica("replica2", 10**6, 10**6, role="primary"),  # already promoted by someone else
    }
    assert candidate(cluster, {"replica1": best, **strangers}) == "replica1"
    never_checked = NodeHealth(
        "replica2", "replica", role="replica", state="up", received=10**6, position=10**6
    )
    assert candidate(cluster, {"replica1": best, "replica2": never_checked}) == "replica1"
    assert candidate(cluster, {}) is None
