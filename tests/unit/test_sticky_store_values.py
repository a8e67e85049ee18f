"""Session values read back from Redis (``sticky.store.load_state``) through a stand-in client: what is
ignored, counted and logged once per kind."""

from __future__ import annotations

import logging
import time

import pytest
from django.test import override_settings

from replicarouter.observability import stats
from replicarouter.sticky import store


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"0", 0),
        (b"123", 123),
        (b"18446744073709551615", 2**64 - 1),
        (b"18446744073709551616", None),  # past 64 bits
        (b"abc", None),
        (b"-1", None),
        (b" 12", None),  # int() would take these three
        (b"+12", None),
        (b"1_2", None),
        (b"1.5e3", None),
        (b"", None),
        (b"1" * 21, None),
        ("77", 77),  # a client with decode_responses
        (None, None),
    ],
)
def test_only_plain_digits_are_a_value(raw, expected):
    assert store._integer(raw) == expected


class _Client:
    def __init__(self, values):
        self.values = values

    def mget(self, keys):
        return [self.values.get(k) for k in keys]


def test_load_state_ignores_counts_and_logs_once_per_kind(monkeypatch, caplog):
    monkeypatch.setattr(store, "_warned", set())
    with override_settings(REPLICAROUTER={"REDIS_URL": "redis://unused", "STICKY_SECONDS": 10}):
        position, pin = store._key("default", "me"), store._pin_key("default", "me")
        soon = int((time.time() + 10) * 1000)
        values = {position: b"abc", pin: str(soon + 60_000).encode()}  # a pin a minute too far ahead
        monkeypatch.setattr(store, "client", lambda operation="load": _Client(values))
        before = {k: stats.total("redis_bad_values", kind=k) for k in ("sticky_position", "sticky_pin")}
        sticky_before = stats.total("sticky_bad_values")
        with caplog.at_level(logging.WARNING, logger="replicarouter.sticky"):
            assert store.load_state("me", ["default"]) == ({}, {})
            assert store.load_state("me", ["default"]) == ({}, {})
        assert [r.replicarouter_kind for r in caplog.records] == ["sticky_position", "sticky_pin"]
        assert stats.total("sticky_bad_values") == sticky_before + 4
        for kind in before:
            assert stats.total("redis_bad_values", kind=kind) == before[kind] + 2
        values.update({position: b"42", pin: str(soon).encode()})
        assert store.load_state("me", ["default"]) == ({"default": 42}, {"default": soon})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"42", (42, None)),  # the previous format: no incarnation
        (b"42@7300000000000000001/3", (42, store.Incarnation("7300000000000000001", 3))),
        (b"42@/3", (42, store.Incarnation("", 3))),  # the identifier was unreadable
        ("42@1/2", (42, store.Incarnation("1", 2))),
        (b"42@", None),
        (b"42@1/", None),
        (b"42@x/1", None),
        (b"42@1/2 ", None),
        (b"@1/2", None),
        (b"18446744073709551616@1/2", None),
    ],
)
def test_positions_carry_their_incarnation(raw, expected):
    assert store._marked(raw) == expected


def test_load_marks_returns_the_incarnations(monkeypatch):
    with override_settings(REPLICAROUTER={"REDIS_URL": "redis://unused", "STICKY_SECONDS": 10}):
        values = {store._key("default", "me"): b"42@9/2"}
        monkeypatch.setattr(store, "client", lambda operation="load": _Client(values))
        loaded = store.load_marks("me", ["default"])
        assert loaded.positions == {"default": 42}
        assert loaded.incarnations == {"default": store.Incarnation("9", 2)}
        values[store._key("default", "me")] = b"7"
        assert store.load_marks("me", ["default"]) == ({"default": 7}, {}, {})
