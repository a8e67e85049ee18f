"""Sticky decisions without servers: cookies, identities, eligibility, lazy loading."""

from __future__ import annotations

import time

from django.core import signing

from replicarouter.sticky import policy as sticky


def test_cookie_round_trip_and_mode():
    value = sticky.encode_cookie({"default": 123}, "lsn")
    assert sticky.decode_cookie(value, "lsn", 60) == {"default": 123}
    assert sticky.decode_cookie(value, "time", 60) == {}  # written under another mode


def test_forged_expired_and_malformed_cookies_are_empty():
    good = sticky.encode_cookie({"default": 5}, "lsn")
    assert sticky.decode_cookie(good[:-2] + "xx", "lsn", 60) == {}
    assert sticky.decode_cookie("not-a-cookie", "lsn", 60) == {}
    assert sticky.decode_cookie(None, "lsn", 60) == {}
    other_salt = signing.dumps({"m": "lsn", "p": {"default": 5}}, salt="elsewhere")
    assert sticky.decode_cookie(other_salt, "lsn", 60) == {}
    bad_values = signing.dumps(
        {"m": "lsn", "p": {"a": -1, "b": "7", "c": True, "d": 9}}, salt=sticky.COOKIE_SALT
    )
    assert sticky.decode_cookie(bad_values, "lsn", 60) == {"d": 9}
    assert sticky.decode_cookie(good, "lsn", -1) == {}  # older than max_age


def test_identity_is_a_keyed_hash_never_the_raw_key():
    ident = sticky.identity("session", "abc123sessionkey", "secret")
    assert "abc123sessionkey" not in ident and len(ident) == 64
    assert ident != sticky.identity("session", "abc123sessionkey", "other-secret")
    assert ident != sticky.identity("user", "abc123sessionkey", "secret")


def test_caught_up_and_merge():
    assert sticky.caught_up({"r1", "r2"}, {"r1": 100, "r2": 99}, 100) == {"r1"}
    assert sticky.caught_up({"r1"}, {}, 1) == frozenset()  # unknown position: not caught up
    assert sticky.merge({"a": 1, "b": 5}, {"a": 3}) == {"a": 3, "b": 5}


def test_state_loads_once_and_survives_loader_errors():
    calls = []

    def loader():
        calls.append(1)
        raise ConnectionError("redis down")

    state = sticky.StickyState("lsn", known={"default": 10}, loader=loader)
    assert state.required("default") == 10
    assert state.required("default") == 10 and state.required("other") is None
    assert calls == [1]


def test_time_mode_deadline_expires():
    now_ms = int(time.time() * 1000)
    state = sticky.StickyState("time", known={"a": now_ms + 60_000, "b": now_ms - 1})
    assert state.required("a") == now_ms + 60_000
    assert state.required("b") is None


def test_merge_keeps_the_furthest_position_whatever_the_order():
    assert sticky.merge({"a": 5}, {"a": 3}) == {"a": 5}
    assert sticky.merge({"a": 3}, {"a": 5}) == {"a": 5}
    assert sticky.merge({"a": 0}) == {"a": 0}
    assert sticky.merge({}, {"b": 7}, {"b": 2, "c": 1}) == {"b": 7, "c": 1}
    assert sticky.merge() == {}


def test_caught_up_is_at_least_the_required_position():
    positions = {"r1": 100, "r2": 99, "r3": 101, "r4": None}
    assert sticky.caught_up({"r1", "r2", "r3", "r4"}, positions, 100) == {"r1", "r3"}
    assert sticky.caught_up({"r2"}, positions, 100) == frozenset()  # only the usable ones count
    assert sticky.caught_up(set(), positions, 0) == frozenset()


def test_a_cookie_keeps_position_zero_and_is_compressed():
    assert sticky.decode_cookie(sticky.encode_cookie({"z": 0, "a": 1}, "lsn"), "lsn", 60) == {"z": 0, "a": 1}
    many = {f"cluster{i}": 10**12 + i for i in range(30)}
    value = sticky.encode_cookie(many, "time")
    assert value.startswith(".")  # django.core.signing marks a compressed payload with a leading dot
    assert len(value) < len(signing.dumps({"m": "time", "p": many}, salt=sticky.COOKIE_SALT))
    assert sticky.decode_cookie(value, "time", 60) == many


def test_identity_is_the_hmac_of_scope_and_value():
    import hashlib
    import hmac

    expected = hmac.new(b"secret", b"session:abc", hashlib.sha256).hexdigest()
    assert sticky.identity("session", "abc", "secret") == expected


def test_state_merges_the_loaded_positions_with_the_known_ones():
    state = sticky.StickyState(
        "lsn", known={"a": 10, "b": 50}, loader=lambda: ({"a": 20, "b": 40, "c": 5}, {})
    )
    assert (state.required("a"), state.required("b"), state.required("c")) == (20, 50, 5)
    assert state.loaded == {"a": 20, "b": 50, "c": 5}
    assert sticky.StickyState("lsn").required("a") is None  # neither cookie nor store


def test_time_mode_pin_ends_at_its_deadline(monkeypatch):
    monkeypatch.setattr(sticky.time, "time", lambda: 1000.0)
    state = sticky.StickyState("time", known={"at": 1_000_000, "after": 1_000_001})
    assert state.required("at") is None  # the deadline itself is past the pin
    assert state.required("after") == 1_000_001
    assert sticky.StickyState("lsn", known={"old": 5}).required("old") == 5  # lsn positions never expire
