"""A process's report of its pools and counters (pure): encoding within bounds, validation, sums."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from replicarouter.health.schema import CLOCK_ALLOWANCE, MAX_INT, MAX_NAME
from replicarouter.observability import fleet_records as records
from replicarouter.observability.fleet_records import BadRecord, Record

ALIASES = ("default", "replica1", "replica2")
LABELS = {"reads_routed": ("cluster", "alias"), "sticky_store_errors": (), "warm_starts": ("result",)}
NOW = 1_700_000_000.0
MAX_AGE = records.max_age(0.5, 0.5)


def _pool(out: int, size: int = 10, overflow: int = 0, idle: int = 0) -> dict[str, int]:
    return {"size": size, "checked_out": out, "overflow": overflow, "idle": idle}


def _record(identity: str, out: int, reads: int = 0, at: float = NOW) -> Record:
    return Record(
        identity,
        at,
        {"default": _pool(0), "replica1": _pool(out, idle=1)},
        {"reads_routed": {("default", "replica1"): reads}},
    )


def _payload(**changes: Any) -> dict[str, Any]:
    raw = records.encode("host:1:abc", NOW, {"replica1": _pool(2)}, {"reads_routed": {("default", "r"): 3}})
    payload: dict[str, Any] = json.loads(raw)
    payload.update(changes)
    return payload


def _decode(payload: Any) -> Record:
    return records.decode(json.dumps(payload), ALIASES, LABELS, now=NOW, max_age=MAX_AGE)


def test_a_record_round_trips() -> None:
    raw = records.encode(
        "host:1:abc", NOW, {"replica1": _pool(2, idle=3)}, {"reads_routed": {("default", "replica1"): 41}}
    )
    record = records.decode(raw, ALIASES, LABELS, now=NOW + 1, max_age=MAX_AGE)
    assert record == Record(
        "host:1:abc", NOW, {"replica1": _pool(2, idle=3)}, {"reads_routed": {("default", "replica1"): 41}}
    )


def test_pools_are_summed_over_processes_and_zero_for_an_alias_nobody_reports() -> None:
    summed = records.sum_pools([_record("a", 2), _record("b", 3), _record("c", 0)], ALIASES)
    assert summed["replica1"] == _pool(5, size=30, idle=3)
    assert summed["default"] == _pool(0, size=30)
    assert summed["replica2"] == _pool(0, size=0)


def test_counters_are_summed_per_series() -> None:
    summed = records.sum_counters([_record("a", 0, reads=4), _record("b", 0, reads=6)])
    assert summed == {"reads_routed": {("default", "replica1"): 10}}


def test_one_record_per_identity_the_latest() -> None:
    kept = records.unique([_record("a", 1, at=NOW - 1), _record("b", 2), _record("a", 7, at=NOW)])
    assert [(r.identity, r.pools["replica1"]["checked_out"]) for r in kept] == [("a", 7), ("b", 2)]


def test_counters_go_with_the_cluster_they_name_the_others_with_the_first() -> None:
    counters = {
        "reads_routed": {("default", "replica1"): 1, ("other", "o1"): 2, ("gone", "x"): 3},
        "sticky_store_errors": {(): 4},
    }
    split = records.split_counters(counters, LABELS, ["default", "other"])
    assert split["default"] == {
        "reads_routed": {("default", "replica1"): 1, ("gone", "x"): 3},
        "sticky_store_errors": {(): 4},
    }
    assert split["other"] == {"reads_routed": {("other", "o1"): 2}}


def test_encode_keeps_at_most_max_series_and_drops_long_labels() -> None:
    many = {("default", f"a{i:04d}"): i for i in range(records.MAX_SERIES + 50)}
    many[("default", "x" * (records.MAX_LABEL + 1))] = 1
    payload = json.loads(records.encode("p", NOW, {}, {"reads_routed": many}))
    series = payload["counters"]["reads_routed"]
    assert len(series) == records.MAX_SERIES
    assert all(len(values[1]) <= records.MAX_LABEL for values, _ in series)


def test_encode_drops_the_counters_rather_than_exceed_max_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "MAX_BYTES", 300)
    counters = {"reads_routed": {("default", f"alias{i}"): i for i in range(20)}}
    raw = records.encode("p", NOW, {"replica1": _pool(1)}, counters)
    assert len(raw) <= 300
    assert json.loads(raw)["counters"] == {} and json.loads(raw)["pools"] == {"replica1": _pool(1)}


def test_an_oversized_record_is_refused_before_parsing() -> None:
    with pytest.raises(BadRecord) as caught:
        records.decode("[" * (records.MAX_BYTES + 1), ALIASES, LABELS, now=NOW, max_age=MAX_AGE)
    assert caught.value.kind == "procs_size"


def test_not_json() -> None:
    with pytest.raises(BadRecord) as caught:
        records.decode(b"\xff{", ALIASES, LABELS, now=NOW, max_age=MAX_AGE)
    assert caught.value.kind == "procs_json"


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ([], "procs_schema"),
        (_payload(v=2), "procs_schema"),
        (_payload(identity=""), "procs_schema"),
        (_payload(identity=7), "procs_schema"),
        (_payload(identity="p" * (MAX_NAME + 1)), "procs_schema"),
        (_payload(published_at="now"), "procs_time"),
        (_payload(published_at=math.inf), "procs_time"),
        (_payload(published_at=True), "procs_time"),
        (_payload(published_at=NOW + 60), "procs_time"),
        (_payload(published_at=NOW - MAX_AGE - 1), "procs_time"),
        (_payload(published_at=-1), "procs_time"),
        (_payload(pools=[]), "procs_schema"),
        (_payload(pools={"elsewhere": _pool(1)}), "procs_schema"),
        (_payload(pools={"replica1": [1, 2]}), "procs_schema"),
        (_payload(pools={"replica1": {**_pool(1), "checked_out": -1}}), "procs_schema"),
        (_payload(pools={"replica1": {**_pool(1), "checked_out": "2"}}), "procs_schema"),
        (_payload(pools={"replica1": {**_pool(1), "checked_out": True}}), "procs_schema"),
        (_payload(pools={"replica1": {**_pool(1), "idle": 2.5}}), "procs_schema"),
        (_payload(pools={"replica1": {**_pool(1), "size": records.MAX_GAUGE + 1}}), "procs_schema"),
        (_payload(pools={"replica1": {"size": 1}}), "procs_schema"),
        (_payload(counters=[]), "procs_schema"),
        (_payload(counters={"reads_routed": {}}), "procs_schema"),
        (_payload(counters={"reads_routed": [["default", 1]]}), "procs_schema"),
        (_payload(counters={"reads_routed": [[["default"], 1]]}), "procs_schema"),
        (_payload(counters={"reads_routed": [[["default", "r"]]]}), "procs_schema"),  # no count
        (_payload(counters={"reads_routed": [[["default", "r"], 1, 2]]}), "procs_schema"),
        (_payload(counters={"reads_routed": [5]}), "procs_schema"),
        (_payload(counters={"reads_routed": [[["default", 5], 1]]}), "procs_schema"),
        (_payload(counters={"reads_routed": [[["default", "r"], -1]]}), "procs_schema"),
        (_payload(counters={"reads_routed": [[["default", "r"], 2**64]]}), "procs_schema"),
        (_payload(counters={"reads_routed": [[["d", "x" * (records.MAX_LABEL + 1)], 1]]}), "procs_schema"),
        (
            _payload(counters={"unknown": [[[], 1]] * (records.MAX_SERIES + 1)}),
            "procs_schema",
        ),
        (  # the bound is on the record's series, not each counter's
            _payload(counters={"unknown": [[[], 1]] * 300, "sticky_store_errors": [[[], 1]] * 213}),
            "procs_schema",
        ),
    ],
)
def test_invalid_records_are_refused_naming_the_kind(payload: Any, kind: str) -> None:
    with pytest.raises(BadRecord) as caught:
        _decode(payload)
    assert caught.value.kind == kind


def test_counters_of_another_release_are_skipped_not_refused() -> None:
    record = _decode(_payload(counters={"from_the_future": [[["x"], 1]], "sticky_store_errors": [[[], 2]]}))
    assert record.counters == {"sticky_store_errors": {(): 2}}


def test_the_ttl_is_a_few_rounds() -> None:
    assert records.ttl(1.0, 0.5) == pytest.approx(4.5)
    assert records.max_age(1.0, 0.5) > records.ttl(1.0, 0.5)


def test_values_at_their_bounds_are_accepted() -> None:
    many = [[["default", f"r{i}"], 1] for i in range(records.MAX_SERIES - 1)]
    top = [["default", "x" * records.MAX_LABEL], MAX_INT]
    payload = _payload(
        identity="p" * MAX_NAME,
        pools={alias: _pool(records.MAX_GAUGE, records.MAX_GAUGE, records.MAX_GAUGE, 0) for alias in ALIASES},
        counters={"reads_routed": [*many, top]},  # exactly MAX_SERIES series
    )
    record = _decode(payload)
    assert set(record.pools) == set(ALIASES)
    assert record.pools["default"]["size"] == records.MAX_GAUGE
    assert len(record.counters["reads_routed"]) == records.MAX_SERIES
    assert record.counters["reads_routed"][("default", "x" * records.MAX_LABEL)] == MAX_INT
    assert _decode(_payload(identity="p")).identity == "p"


def test_published_at_within_the_bounds_is_accepted() -> None:
    assert _decode(_payload(published_at=NOW + CLOCK_ALLOWANCE)).published_at == NOW + CLOCK_ALLOWANCE
    assert _decode(_payload(published_at=NOW - MAX_AGE)).published_at == NOW - MAX_AGE  # old, still possible
    raw = json.dumps(_payload(published_at=0))
    assert records.decode(raw, ALIASES, LABELS, now=1.0, max_age=MAX_AGE).published_at == 0


def test_a_record_of_max_bytes_is_accepted() -> None:
    """What ``encode`` may write (up to ``MAX_BYTES``), ``decode`` reads."""
    raw = json.dumps(_payload())
    raw += " " * (records.MAX_BYTES - len(raw))  # JSON allows trailing whitespace
    assert _decode_raw(raw).identity == "host:1:abc"
    records.check_size(records.MAX_BYTES)


def _decode_raw(raw: str) -> Record:
    return records.decode(raw, ALIASES, LABELS, now=NOW, max_age=MAX_AGE)


def test_a_record_without_counters_is_accepted() -> None:
    """The counters are the part a record may go without (``encode`` drops them rather than exceed)."""
    payload = _payload()
    del payload["counters"]
    record = _decode(payload)
    assert (record.pools, record.counters) == ({"replica1": _pool(2)}, {})


@pytest.mark.parametrize(
    ("payload", "kind", "message"),
    [
        ([], "procs_schema", "not an object but list"),
        (_payload(v=2), "procs_schema", "version 2 is not 1"),
        (_payload(identity=""), "procs_schema", "identity ''"),
        (_payload(published_at="now"), "procs_time", "published_at 'now'"),
        (_payload(published_at=NOW + 60), "procs_time",
         "published_at 1700000060.0 is in the future (now 1700000000.000)"),
        (_payload(published_at=0), "procs_time", "published_at 0.0 is older than a record lives in Redis"),
        (_payload(pools=[]), "procs_schema", "pools is not an object"),
        (_payload(pools={str(i): _pool(1) for i in range(10)}), "procs_schema",
         "pools ['0', '1', '2', '3', '4', '5', '6', '7'] are not the cluster's "
         "['default', 'replica1', 'replica2']"),
        (_payload(pools={"replica1": [1, 2]}), "procs_schema", "pools.replica1 is not an object"),
        (_payload(pools={"replica1": {**_pool(1), "checked_out": -1}}), "procs_schema",
         "pools.replica1.checked_out -1"),
        (_payload(counters=[]), "procs_schema", "counters is not an object"),
        (_payload(counters={"reads_routed": {}}), "procs_schema", "counters.reads_routed is not a list"),
        (_payload(counters={"unknown": [[[], 1]] * (records.MAX_SERIES + 1)}), "procs_schema",
         "more than 512 counter series"),
        (_payload(counters={"reads_routed": [["default", 1]]}), "procs_schema",
         "counters.reads_routed entry ['default', 1]"),
        (_payload(counters={"reads_routed": [[["default"], 1]]}), "procs_schema",
         "counters.reads_routed labels ['default']"),
        (_payload(counters={"reads_routed": [[["default", "r"], -1]]}), "procs_schema",
         "counters.reads_routed count -1"),
    ],
)  # fmt: skip
def test_each_rejection_names_its_kind_and_the_field(payload: Any, kind: str, message: str) -> None:
    """The message is what the ``bad_process_record`` warning tells the operator."""
    with pytest.raises(BadRecord) as caught:
        _decode(payload)
    assert (caught.value.kind, str(caught.value)) == (kind, message)


def test_the_size_and_json_rejections_say_why() -> None:
    with pytest.raises(BadRecord, match=r"^65537 bytes, more than the 65536 allowed$"):
        records.check_size(records.MAX_BYTES + 1)
    with pytest.raises(BadRecord, match=r"^not JSON \(.+\)$"):
        _decode_raw("{")


def test_encode_keeps_a_label_of_max_label_characters() -> None:
    label = "x" * records.MAX_LABEL
    raw = records.encode("p", NOW, {}, {"reads_routed": {("default", label): 1}})
    assert _decode_raw(raw).counters == {"reads_routed": {("default", label): 1}}


def test_encode_publishes_the_gauges_only_zero_for_one_not_reported() -> None:
    figures = {"size": 10, "checked_out": 2, "idle": 3, "connects": 40}  # registry.stats has more
    raw = records.encode("p", NOW, {"replica1": figures}, {})
    assert json.loads(raw)["pools"] == {"replica1": _pool(2, idle=3)}
    assert _decode_raw(raw).pools == {"replica1": _pool(2, idle=3)}


def test_a_record_is_compact_json() -> None:
    """No byte of ``MAX_BYTES`` (nor of Redis's memory, per process) goes to whitespace."""
    raw = records.encode("p", NOW, {"replica1": _pool(1)}, {"reads_routed": {("default", "r"): 3}})
    assert raw == json.dumps(json.loads(raw), separators=(",", ":"))


def test_a_record_of_exactly_max_bytes_keeps_its_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    counters = {"reads_routed": {("default", f"alias{i}"): i for i in range(20)}}
    full = records.encode("p", NOW, {"replica1": _pool(1)}, counters)
    pools_only = records.encode("p", NOW, {"replica1": _pool(1)}, {})
    monkeypatch.setattr(records, "MAX_BYTES", len(full))
    assert records.encode("p", NOW, {"replica1": _pool(1)}, counters) == full
    monkeypatch.setattr(records, "MAX_BYTES", len(full) - 1)
    assert records.encode("p", NOW, {"replica1": _pool(1)}, counters) == pools_only
    # and the record without its counters is within the bound whenever the pools alone fit
    monkeypatch.setattr(records, "MAX_BYTES", len(pools_only))
    assert records.encode("p", NOW, {"replica1": _pool(1)}, counters) == pools_only


def test_a_series_without_a_cluster_value_goes_with_the_first_cluster() -> None:
    counters = {"reads_routed": {(): 1}, "not_in_labels": {("other",): 2}}
    split = records.split_counters(counters, LABELS, ["default", "other"])
    assert split == {"default": {"reads_routed": {(): 1}, "not_in_labels": {("other",): 2}}, "other": {}}
