"""Process records at their bounds, and what a refusal says (its kind is a metric label, its message is
logged): exact values on both sides of every limit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from replicarouter.health.schema import CLOCK_ALLOWANCE, MAX_NAME
from replicarouter.observability import fleet_records as records
from replicarouter.observability.fleet_records import BadRecord, Record

ALIASES = ("a",)
LABELS = {"reads_routed": ("cluster", "alias")}
POOL = {"size": 1, "checked_out": 0, "overflow": 0, "idle": 0}


def _payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"v": 1, "identity": "p", "published_at": 100.0, "pools": {"a": dict(POOL)}}
    payload.update(changes)
    return payload


def _check(payload: Any, *, now: float = 100.0, max_age: float = 10.0) -> Record:
    return records.check(payload, ALIASES, LABELS, now=now, max_age=max_age)


def _refused(payload: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(BadRecord) as caught:
        _check(payload, **kwargs)
    return caught.value.kind, str(caught.value)


def test_what_each_refusal_says() -> None:
    assert _refused([]) == ("procs_schema", "not an object but list")
    assert _refused(_payload(v=2)) == ("procs_schema", "version 2 is not 1")
    assert _refused(_payload(identity="")) == ("procs_schema", "identity ''")
    assert _refused(_payload(published_at=-1)) == ("procs_time", "published_at -1")
    assert _refused(_payload(published_at=106.0)) == (
        "procs_time",
        "published_at 106.0 is in the future (now 100.000)",
    )
    assert _refused(_payload(published_at=89.0)) == (
        "procs_time",
        "published_at 89.0 is older than a record lives in Redis",
    )
    assert _refused(_payload(pools=[])) == ("procs_schema", "pools is not an object")
    assert _refused(_payload(pools={"a": []})) == ("procs_schema", "pools.a is not an object")
    assert _refused(_payload(pools={"a": {**POOL, "idle": "x"}})) == ("procs_schema", "pools.a.idle 'x'")
    many = {f"x{i}": dict(POOL) for i in range(9)}
    assert _refused(_payload(pools=many)) == (
        "procs_schema",
        f"pools {sorted(many)[:8]} are not the cluster's ['a']",
    )
    assert _refused(_payload(counters=[])) == ("procs_schema", "counters is not an object")
    assert _refused(_payload(counters={"reads_routed": 5})) == (
        "procs_schema",
        "counters.reads_routed is not a list",
    )
    assert _refused(_payload(counters={"reads_routed": [5]})) == (
        "procs_schema",
        "counters.reads_routed entry 5",
    )
    assert _refused(_payload(counters={"reads_routed": [[["a"], 1]]})) == (
        "procs_schema",
        "counters.reads_routed labels ['a']",
    )
    assert _refused(_payload(counters={"reads_routed": [[["c", "a"], -1]]})) == (
        "procs_schema",
        "counters.reads_routed count -1",
    )
    with pytest.raises(BadRecord) as caught:
        records.check_size(records.MAX_BYTES + 1)
    assert (caught.value.kind, str(caught.value)) == (
        "procs_size",
        f"{records.MAX_BYTES + 1} bytes, more than the {records.MAX_BYTES} allowed",
    )
    with pytest.raises(BadRecord) as caught:
        records.decode("{", ALIASES, LABELS, now=100.0, max_age=10.0)
    assert caught.value.kind == "procs_json" and str(caught.value).startswith("not JSON (")


def test_malformed_counter_entries_are_refused_not_crashed_on() -> None:
    for entry in ([["c", "a"], 1, 2], [1, 2], [["c", "a"]]):
        assert _refused(_payload(counters={"reads_routed": [entry]}))[0] == "procs_schema", entry


def test_values_at_the_limits_are_accepted() -> None:
    assert _check(_payload(identity="p")).identity == "p"  # one character
    assert _check(_payload(identity="p" * MAX_NAME)).identity == "p" * MAX_NAME
    assert _check(_payload(published_at=0.5), now=0.5).published_at == 0.5
    assert _check(_payload(published_at=100.0 + CLOCK_ALLOWANCE)).published_at == 105.0
    assert _check(_payload(published_at=90.0)).published_at == 90.0  # exactly max_age old
    top = {**POOL, "checked_out": records.MAX_GAUGE}
    assert _check(_payload(pools={"a": top})).pools == {"a": top}
    assert _check(_payload(pools={})).pools == {}
    assert _check(_payload()).counters == {}  # no counters at all
    label = "x" * records.MAX_LABEL
    assert _check(_payload(counters={"reads_routed": [[[label, "a"], 1]]})).counters == {
        "reads_routed": {(label, "a"): 1}
    }
    records.check_size(records.MAX_BYTES)


def test_the_series_limit_counts_over_every_counter() -> None:
    labels = {"reads_routed": ("cluster", "alias"), "writes_routed": ("cluster", "alias")}

    def series(count: int, prefix: str) -> list[Any]:
        return [[["c", f"{prefix}{i}"], 1] for i in range(count)]

    exactly = {"reads_routed": series(records.MAX_SERIES, "r")}
    assert (
        len(
            records.check(_payload(counters=exactly), ALIASES, labels, now=100.0, max_age=10.0).counters[
                "reads_routed"
            ]
        )
        == records.MAX_SERIES
    )
    half = records.MAX_SERIES // 2 + 1
    over = {"reads_routed": series(half, "r"), "writes_routed": series(half, "w")}
    with pytest.raises(BadRecord, match=f"more than {records.MAX_SERIES} counter series"):
        records.check(_payload(counters=over), ALIASES, labels, now=100.0, max_age=10.0)


def test_encode_fills_missing_figures_with_zero_writes_compact_json_and_keeps_labels_at_the_limit() -> None:
    label = "x" * records.MAX_LABEL
    raw = records.encode("p", 1.0, {"a": {"size": 3}}, {"reads_routed": {(label, "a"): 1}})
    payload = json.loads(raw)
    assert payload["pools"] == {"a": {"size": 3, "checked_out": 0, "overflow": 0, "idle": 0}}
    assert payload["counters"] == {"reads_routed": [[[label, "a"], 1]]}
    assert ", " not in raw and ": " not in raw
    huge = {"reads_routed": {(f"{i:0190d}", "a"): 1 for i in range(records.MAX_SERIES)}}
    dropped = records.encode("p", 1.0, {"a": {"size": 3}}, huge)
    assert json.loads(dropped)["counters"] == {} and ", " not in dropped and ": " not in dropped


def test_split_counters_tolerates_short_label_tuples_and_unknown_counters() -> None:
    labels = {"reads_routed": ("alias", "cluster")}
    out = records.split_counters({"reads_routed": {("r1",): 1}, "other": {("x",): 2}}, labels, ["c1", "c2"])
    assert out == {"c1": {"reads_routed": {("r1",): 1}, "other": {("x",): 2}}, "c2": {}}


def test_unique_keeps_the_first_of_two_records_published_at_the_same_time() -> None:
    first = Record("p", 1.0, {"a": dict(POOL)}, {})
    second = Record("p", 1.0, {}, {})
    assert records.unique([first, second]) == [first]


def test_a_bad_record_says_what_it_is() -> None:
    assert str(BadRecord("procs_schema", "why")) == "why"
