"""The validation of a health snapshot read from Redis (pure): every field's type, times, aliases, size."""

from __future__ import annotations

import json
import math

import pytest

from replicarouter.health import schema
from replicarouter.health.election import Election
from replicarouter.health.rules import NodeHealth
from replicarouter.health.schema import BadSnapshot, check, check_size, size_limit
from replicarouter.health.shared import Published, encode

NOW = 1_000_000.0
INTERVAL = 0.5
ALIASES = ("default", "replica1")


def _payload(**top):
    nodes = {
        "default": NodeHealth("default", "primary", host="h", port="5432", role="primary", state="up",
                              checked_at=NOW - 0.1, position=70, timeline=1, probed_at=NOW - 0.2),
        "replica1": NodeHealth("replica1", "replica", role="replica", state="lagging", lag_bytes=3,
                               lag_seconds=0.25, healthy_streak=1, position=67, received=69,
                               error="was down\nonce", started_at=NOW - 3600, streak_at=NOW - 0.1),
    }  # fmt: skip
    published = Published(nodes, Election("default", frozenset(), 1, "why"), "h:1:a", NOW)
    payload = json.loads(encode(published, INTERVAL))
    payload.update(top)
    return payload


def _check(payload, aliases=ALIASES):
    check(json.loads(json.dumps(payload)), aliases, now=NOW, interval=INTERVAL)


def test_a_valid_snapshot_is_accepted():
    _check(_payload())
    _check(_payload(active=None, leader=None, reason=None, timeline=None))  # nulls where they may be
    old = _payload()
    for node in old["nodes"].values():  # a snapshot of 0.1: fewer node fields, more top-level ones
        for name in ("received", "timeline", "fenced", "probed_at", "started_at", "streak_at"):
            node.pop(name)
    old["future_field"] = {"anything": [1, 2]}
    _check(old)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("position", "abc"),
        ("position", -1),
        ("position", 1.5),
        ("position", True),  # JSON true is no position, though Python's bool is an int
        ("position", 2**64),
        ("received", "12"),
        ("lag_bytes", -3),
        ("lag_bytes", 3.0),
        ("failures", None),
        ("healthy_streak", "1"),
        ("timeline", -1),
        ("lag_seconds", "0.25"),
        ("lag_seconds", math.inf),
        ("host", 5432),
        ("host", "h" * (schema.MAX_NAME + 1)),
        ("port", None),
        ("error", "e" * (schema.MAX_TEXT + 1)),
        ("error", ["list"]),
        ("state", "healthy"),
        ("state", None),
        ("role", "leader"),
        ("configured_role", "unknown"),
        ("alias", "replica2"),  # the entry of replica1 claims to be another node
        ("promoted", "yes"),
        ("fenced", 0),
    ],
)
def test_each_node_field_of_the_wrong_type_is_rejected(field, value):
    payload = _payload()
    payload["nodes"]["replica1"][field] = value
    with pytest.raises(BadSnapshot, match="nodes.replica1") as raised:
        _check(payload)
    assert raised.value.kind == "snapshot_schema"


def test_lag_seconds_and_started_at_need_only_be_finite():
    payload = _payload()
    payload["nodes"]["replica1"].update(lag_seconds=-0.01, started_at=NOW + 60)  # clocks differ
    _check(payload)
    for field, value in (("lag_seconds", math.nan), ("started_at", -1.0), ("started_at", math.inf)):
        payload = _payload()
        payload["nodes"]["replica1"][field] = value
        with pytest.raises(BadSnapshot, match=field):
            _check(payload)


@pytest.mark.parametrize("field", ["checked_at", "probed_at", "streak_at"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, NOW + schema.CLOCK_ALLOWANCE + 0.01, "noon"])
def test_each_node_timestamp_must_be_sane(field, value):
    payload = _payload()
    payload["nodes"]["default"][field] = value
    with pytest.raises(BadSnapshot, match=f"nodes.default.{field}") as raised:
        _check(payload)
    assert raised.value.kind == "snapshot_time"
    payload["nodes"]["default"][field] = NOW + schema.CLOCK_ALLOWANCE  # within the clock allowance
    _check(payload)


@pytest.mark.parametrize(
    "value",
    [
        1e12,  # 30 000 years ahead: never stale
        math.nan,  # every comparison false: never stale
        -math.inf,
        -1,
        NOW + schema.CLOCK_ALLOWANCE + 0.01,
        NOW - schema.max_age(INTERVAL) - 0.01,  # older than a snapshot lives in Redis
        "noon",
        None,
    ],
)
def test_published_at_must_be_sane(value):
    with pytest.raises(BadSnapshot, match="published_at") as raised:
        _check(_payload(published_at=value))
    assert raised.value.kind == "snapshot_time"


def test_published_at_within_the_bounds_is_accepted():
    _check(_payload(published_at=NOW + schema.CLOCK_ALLOWANCE))
    _check(_payload(published_at=NOW - schema.max_age(INTERVAL)))  # stale, but possible: not bad
    assert schema.max_age(INTERVAL) == schema.SNAPSHOT_TTL_INTERVALS * INTERVAL + schema.CLOCK_ALLOWANCE


@pytest.mark.parametrize(
    "top",
    [
        {"leader": 7},
        {"leader": "x" * (schema.MAX_NAME + 1)},
        {"active": ["default"]},
        {"timeline": "two"},
        {"timeline": -1},
        {"reason": {"a": 1}},
        {"interval": math.nan},
        {"nodes": []},
        {"nodes": None},
    ],
)
def test_each_top_level_field_of_the_wrong_type_is_rejected(top):
    with pytest.raises(BadSnapshot) as raised:
        _check(_payload(**top))
    assert raised.value.kind == "snapshot_schema"
    assert next(iter(top)) in str(raised.value)


@pytest.mark.parametrize("aliases", [("default",), ("default", "replica1", "replica2"), ("main", "replica1")])
def test_the_nodes_must_be_exactly_the_clusters(aliases):
    with pytest.raises(BadSnapshot, match="are not the cluster's"):
        _check(_payload(), aliases)


@pytest.mark.parametrize("payload", [[], "snapshot", 1, None])
def test_a_snapshot_that_is_not_an_object_is_rejected(payload):
    with pytest.raises(BadSnapshot, match="not an object"):
        _check(payload)


def test_a_node_without_alias_or_role_or_not_an_object_is_rejected():
    for broken in ({"alias": "replica1"}, {"configured_role": "replica"}, "replica1", None):
        payload = _payload()
        payload["nodes"]["replica1"] = broken
        with pytest.raises(BadSnapshot, match="nodes.replica1"):
            _check(payload)


def test_the_size_limit_scales_with_the_nodes():
    assert size_limit(3) == 3 * schema.BYTES_PER_NODE == 3 * 64 * 1024
    assert size_limit(0) == schema.BYTES_PER_NODE
    check_size(size_limit(3), 3)
    with pytest.raises(BadSnapshot, match="more than the") as raised:
        check_size(size_limit(3) + 1, 3)
    assert raised.value.kind == "snapshot_size"
    # a real snapshot is far below it, even with every string at its bound
    payload = _payload()
    for node in payload["nodes"].values():
        node.update(host="h" * schema.MAX_NAME, port="p" * schema.MAX_NAME, error="e" * schema.MAX_TEXT)
    assert len(json.dumps(payload)) < size_limit(2) / 4


@pytest.mark.parametrize(
    ("change", "kind", "message"),
    [
        (lambda p: p.pop("published_at"), "snapshot_schema", "published_at missing"),
        (lambda p: p.update(published_at=1e12), "snapshot_time",
         "published_at 1000000000000.0 is in the future (now 1000000.000)"),
        (lambda p: p.update(published_at=0), "snapshot_time",
         "published_at 0 is older than a snapshot lives in Redis"),
        (lambda p: p.update(published_at=math.nan), "snapshot_time", "published_at nan"),
        (lambda p: p.update(leader=1), "snapshot_schema", "leader 1"),
        (lambda p: p.update(interval="1"), "snapshot_schema", "interval '1'"),
        (lambda p: p.update(active=1), "snapshot_schema", "active 1"),
        (lambda p: p.update(timeline=1.5), "snapshot_schema", "timeline 1.5"),
        (lambda p: p.update(reason=1), "snapshot_schema", "reason 1"),
        (lambda p: p.update(nodes=[]), "snapshot_schema", "nodes is not an object"),
        (lambda p: p.update(nodes={str(i): {} for i in range(10)}), "snapshot_schema",
         "nodes ['0', '1', '2', '3', '4', '5', '6', '7'] are not the cluster's ['default', 'replica1']"),
        (lambda p: p["nodes"].update(replica1=[]), "snapshot_schema", "nodes.replica1 is not an object"),
        (lambda p: p["nodes"]["replica1"].pop("alias"), "snapshot_schema", "nodes.replica1.alias missing"),
        (lambda p: p["nodes"]["replica1"].update(state="ok"), "snapshot_schema",
         "nodes.replica1.state 'ok' is not one of ('up', 'lagging', 'down', 'unknown')"),
        (lambda p: p["nodes"]["replica1"].update(alias="x"), "snapshot_schema",
         "nodes.replica1.alias is 'x'"),
        (lambda p: p["nodes"]["replica1"].update(error="e" * 5000), "snapshot_schema",
         "nodes.replica1.error " + repr("e" * 5000)[:80]),
        (lambda p: p["nodes"]["default"].update(probed_at=-1), "snapshot_time", "nodes.default.probed_at -1"),
    ],
)  # fmt: skip
def test_each_rejection_names_its_kind_and_the_field(change, kind, message):
    payload = _payload()
    change(payload)
    with pytest.raises(BadSnapshot) as raised:
        _check(payload)
    assert (raised.value.kind, str(raised.value)) == (kind, message)


def test_values_at_their_bounds_are_accepted():
    payload = _payload(interval=None, timeline=0)
    payload["nodes"]["replica1"].update(
        position=2**64 - 1, received=0, started_at=0, probed_at=0.0, lag_seconds=0,
        host="h" * schema.MAX_NAME, error="e" * schema.MAX_TEXT,
    )  # fmt: skip
    _check(payload)
    with pytest.raises(BadSnapshot, match="not an object but list"):
        _check([])


def test_the_schema_types_every_field_of_node_health():
    """A field added to NodeHealth must get a type here, or it would reach the router unchecked."""
    from dataclasses import fields

    assert [name for name, _ in schema._NODE_FIELDS] == [f.name for f in fields(NodeHealth)]
