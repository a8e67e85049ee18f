"""The snapshot codec the processes share through Redis (pure), and fetching through a stand-in client."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

import pytest

from replicarouter import runtime
from replicarouter.health import shared
from replicarouter.health.election import Election
from replicarouter.health.rules import NodeHealth
from replicarouter.health.shared import LEASE_INTERVALS, Published, applies, decode, encode
from replicarouter.observability import stats
from replicarouter.redis_client import fingerprint
from replicarouter.routing.topology import Cluster

CLUSTER = Cluster("default", "default", ("replica1",))
INTERVAL = 0.5


def _published(writer="default", fenced=False, published_at=1000.0, timeline=1):
    nodes = {
        "default": NodeHealth("default", "primary", host="h", port="5432", role="primary", state="up",
                              checked_at=999.5, position=70, timeline=timeline, fenced=fenced),
        "replica1": NodeHealth("replica1", "replica", role="replica", state="lagging", lag_bytes=3,
                               lag_seconds=0.25, failures=0, healthy_streak=1, position=67, received=69),
    }  # fmt: skip
    election = Election(writer, frozenset({"default"}) if fenced else frozenset(), timeline, "why")
    return Published(nodes, election, "host:1:abc", published_at)


def test_a_snapshot_survives_the_round_trip():
    for published in (_published(), _published(writer=None, fenced=True), _published(writer="replica1")):
        assert decode(encode(published, INTERVAL), "default") == published
        assert decode(encode(published, INTERVAL).encode(), "default") == published  # Redis gives bytes


def test_the_json_keeps_the_field_names_of_0_1():
    payload = json.loads(encode(_published(writer="replica1"), INTERVAL))
    assert set(payload) == {"published_at", "leader", "interval", "nodes", "active", "timeline", "reason"}
    assert (payload["active"], payload["timeline"], payload["reason"]) == ("replica1", 1, "why")
    assert (payload["published_at"], payload["leader"], payload["interval"]) == (1000.0, "host:1:abc", 0.5)
    assert payload["nodes"]["replica1"]["received"] == 69  # every field, counters included


def test_a_snapshot_without_a_writer_field_names_the_configured_primary():
    payload = json.loads(encode(_published(writer="replica1", timeline=0), INTERVAL))
    for key in ("active", "timeline", "reason"):
        del payload[key]
    published = decode(json.dumps(payload), "default")
    assert published.election == Election("default", frozenset(), 0, "")
    assert published.leader == "host:1:abc" and published.published_at == 1000.0


def test_the_fenced_nodes_are_those_marked_so():
    payload = json.loads(encode(_published(), INTERVAL))
    payload["nodes"]["replica1"]["fenced"] = True
    assert decode(json.dumps(payload), "default").election.fenced == {"replica1"}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",  # no nodes
        json.dumps({"nodes": {}}),  # no time
        json.dumps({"nodes": {}, "published_at": "noon"}),
        json.dumps({"nodes": {"default": {"alias": "default"}}, "published_at": 1.0}),  # a node without role
        json.dumps({"nodes": {"default": {"nonsense": 1}}, "published_at": 1.0}),
        json.dumps({"nodes": {}, "published_at": 1.0, "timeline": "two"}),
        json.dumps(["nodes"]),
    ],
)
def test_an_unreadable_snapshot_is_a_value_error(raw):
    with pytest.raises(ValueError, match="unreadable health snapshot"):
        decode(raw, "default")


def test_a_snapshot_applies_only_to_its_topology():
    published = _published()
    assert applies(published, CLUSTER, interval=INTERVAL, now=1000.0)
    for other in (
        Cluster("default", "default", ("replica1", "replica2")),  # a node more
        Cluster("default", "default", ()),  # a node less
        Cluster("default", "main", ("replica1",)),  # another primary
    ):
        assert not applies(published, other, interval=INTERVAL, now=1000.0)


def test_a_snapshot_older_than_a_lease_period_is_stale():
    published = _published(published_at=1000.0)
    period = LEASE_INTERVALS * INTERVAL
    assert applies(published, CLUSTER, interval=INTERVAL, now=1000.0 + period)
    assert not applies(published, CLUSTER, interval=INTERVAL, now=1000.0 + period + 0.01)
    assert applies(published, CLUSTER, interval=2 * INTERVAL, now=1000.0 + period + 0.01)


def test_a_snapshot_whose_writer_is_not_among_its_nodes_does_not_apply():
    assert not applies(_published(writer="elsewhere"), CLUSTER, interval=INTERVAL, now=1000.0)
    assert applies(_published(writer="replica1"), CLUSTER, interval=INTERVAL, now=1000.0)
    assert applies(_published(writer=None), CLUSTER, interval=INTERVAL, now=1000.0)  # no writer: still news


class _Client:
    """Redis as far as ``fetch`` and ``publish`` use it (the fetch script: length first, then the value)."""

    def __init__(self):
        self.data = {}
        self.reads = 0

    def eval(self, script, numkeys, key, limit):
        assert script == shared._FETCH and numkeys == 1
        value = self.data.get(key)
        if value is None or len(value) > limit:
            return None if value is None else len(value)
        self.reads += 1
        return value

    def set(self, key, value, px=None):
        self.data[key] = value.encode()


def test_fetch_reads_what_publish_wrote_and_logs_an_unreadable_snapshot(caplog, monkeypatch):
    monkeypatch.setattr(shared, "_warned", set())
    client = _Client()
    assert shared.fetch(client, CLUSTER, INTERVAL) is None  # nothing published yet
    published = _published(published_at=time.time())
    shared.publish(client, "default", published, INTERVAL)
    key = shared.snapshot_key("default")
    assert (
        list(client.data) == [key]
        and key == f"replicarouter:health:default:{fingerprint('default')}:snapshot"
    )
    assert shared.fetch(client, CLUSTER, INTERVAL) == published
    shared.publish(client, "default", _published(published_at=time.time() - 2), INTERVAL)
    assert shared.fetch(client, CLUSTER, INTERVAL) is None  # stale
    client.data[key] = b"garbage"
    with caplog.at_level(logging.WARNING, logger="replicarouter.health"):
        assert shared.fetch(client, CLUSTER, INTERVAL) is None
        assert shared.fetch(client, CLUSTER, INTERVAL) is None  # the same kind again: counted, not logged
    assert caplog.messages == [
        f"ignoring an invalid health snapshot at {key} (snapshot_json: not "
        "JSON (Expecting value: line 1 column 1 (char 0))): probing from this process meanwhile (further "
        "ones of this kind are only counted: redis_bad_values)"
    ]
    assert caplog.records[0].replicarouter_event == "bad_snapshot"
    assert caplog.records[0].replicarouter_kind == "snapshot_json"


def test_fetch_checks_the_size_before_it_reads_or_parses(caplog, monkeypatch):
    """A snapshot over ``schema.size_limit`` is neither transferred nor parsed: Redis reports its length."""
    monkeypatch.setattr(shared, "_warned", set())
    parsed = []
    monkeypatch.setattr(shared.json, "loads", lambda raw: parsed.append(raw))
    client = _Client()
    key = shared.snapshot_key("default")
    client.data[key] = b"{" + b" " * (shared.schema.size_limit(2) - 1)  # exactly the limit: read
    before = stats.total("redis_bad_values", kind="snapshot_size")
    with caplog.at_level(logging.WARNING, logger="replicarouter.health"):
        shared.fetch(client, CLUSTER, INTERVAL)
        assert (client.reads, len(parsed)) == (1, 1)
        client.data[key] += b" "  # a byte more: not read, not parsed
        assert shared.fetch(client, CLUSTER, INTERVAL) is None
    assert (client.reads, len(parsed)) == (1, 1)
    assert stats.total("redis_bad_values", kind="snapshot_size") == before + 1
    assert [r.replicarouter_kind for r in caplog.records] == ["snapshot_schema", "snapshot_size"]


def test_encode_cuts_long_text_to_what_the_schema_accepts():
    """A long server error must not make every process reject the leader's snapshots."""
    published = _published()
    nodes = dict(published.nodes)
    nodes["replica1"] = replace(nodes["replica1"], error="e" * (shared.schema.MAX_TEXT + 10))
    election = replace(published.election, reason="r" * (shared.schema.MAX_TEXT + 10))
    payload = json.loads(encode(published._replace(nodes=nodes, election=election), INTERVAL))
    assert len(payload["nodes"]["replica1"]["error"]) == len(payload["reason"]) == shared.schema.MAX_TEXT
    shared.schema.check(payload, ("default", "replica1"), now=1000.0, interval=INTERVAL)


def _with_identifiers(published, identifier):
    nodes = {a: replace(n, system_identifier=identifier) for a, n in published.nodes.items()}
    return published._replace(nodes=nodes)


def test_a_snapshot_naming_a_server_our_probes_did_not_reach_is_foreign():
    ours = _with_identifiers(_published(), "7001")
    theirs = _with_identifiers(_published(), "9009")
    assert shared.foreign(ours, frozenset({"7001"})) is None
    assert shared.foreign(theirs, frozenset({"7001"})) == "9009"
    # nothing known (this process never probed) or nothing published (a 0.1 leader, or not permitted)
    assert shared.foreign(theirs, frozenset()) is None
    assert shared.foreign(_with_identifiers(_published(), None), frozenset({"7001"})) is None
    # one node of another cluster is enough
    mixed = ours._replace(
        nodes={**ours.nodes, "replica1": replace(ours.nodes["replica1"], system_identifier="9")}
    )
    assert shared.foreign(mixed, frozenset({"7001"})) == "9"


def test_the_identifier_travels_in_the_snapshot_but_not_in_the_public_view():
    published = _with_identifiers(_published(), "7001")
    assert decode(encode(published, INTERVAL), "default") == published
    assert "system_identifier" not in published.nodes["default"].public()


def test_fetch_ignores_a_foreign_snapshot_logs_once_and_counts_each(caplog):
    """Fault: another site's snapshot under our key → ignored (None: we probe), logged once, counted."""
    stats.reset()
    runtime.reset()
    client = _Client()
    shared.publish(
        client, "default", _with_identifiers(_published(published_at=time.time()), "9009"), INTERVAL
    )
    with caplog.at_level(logging.WARNING, logger="replicarouter.health"):
        assert shared.fetch(client, CLUSTER, INTERVAL, frozenset({"7001"})) is None
        assert shared.fetch(client, CLUSTER, INTERVAL, frozenset({"7001"})) is None
    assert stats.total("foreign_snapshots", cluster="default") == 2
    assert [r.replicarouter_event for r in caplog.records] == ["foreign_snapshot"]
    assert "names server 9009" in caplog.messages[0] and "reached 7001" in caplog.messages[0]
    # the same snapshot is news to a process that never probed, and ours is always
    assert shared.fetch(client, CLUSTER, INTERVAL) is not None
    shared.publish(
        client, "default", _with_identifiers(_published(published_at=time.time()), "7001"), INTERVAL
    )
    assert shared.fetch(client, CLUSTER, INTERVAL, frozenset({"7001"})) is not None
    assert stats.total("foreign_snapshots") == 2
