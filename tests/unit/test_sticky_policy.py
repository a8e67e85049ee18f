"""Sticky decisions without servers: cookies, identities, eligibility, lazy loading."""

from __future__ import annotations

import time

from django.core import signing

from replicarouter import sticky


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
