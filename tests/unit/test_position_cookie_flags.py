"""The position cookie follows Django's session cookie settings (Secure, SameSite, HttpOnly, domain, path)."""

from __future__ import annotations

import pytest
from django.http import HttpResponse
from django.test import override_settings

from replicarouter.routing import middleware
from replicarouter.sticky import policy as sticky


def _set(positions: dict[str, int], *, had_cookie: bool = False) -> str:
    """Return the Set-Cookie header of the position cookie (set for ``positions``, or deleted)."""
    response = HttpResponse()
    current = sticky.StickyState("lsn")
    current.had_cookie = had_cookie
    middleware._set_cookie(response, current, positions)
    return response.cookies[sticky.COOKIE_NAME].output(header="Set-Cookie:")


def _flags(header: str) -> dict[str, str]:
    parts = [p.strip() for p in header.split(":", 1)[1].split(";")][1:]
    return {k.lower(): v for k, _, v in (p.partition("=") for p in parts)}


def test_defaults_are_djangos_session_defaults():
    flags = _flags(_set({"default": 5}))
    assert flags["samesite"] == "Lax"
    assert "httponly" in flags
    assert "secure" not in flags
    assert flags["path"] == "/"
    assert "domain" not in flags


@override_settings(
    SESSION_COOKIE_SECURE=True,
    SESSION_COOKIE_SAMESITE="Strict",
    SESSION_COOKIE_HTTPONLY=False,
    SESSION_COOKIE_DOMAIN=".example.com",
    SESSION_COOKIE_PATH="/app/",
)
def test_set_cookie_follows_the_session_cookie_settings():
    flags = _flags(_set({"default": 5}))
    assert flags["samesite"] == "Strict"
    assert "secure" in flags
    assert "httponly" not in flags
    assert flags["domain"] == ".example.com"
    assert flags["path"] == "/app/"


@override_settings(SESSION_COOKIE_SAMESITE="None", SESSION_COOKIE_SECURE=False)
def test_samesite_none_makes_the_cookie_secure():
    flags = _flags(_set({"default": 5}))
    assert flags["samesite"] == "None"
    assert "secure" in flags  # browsers drop SameSite=None without Secure


@override_settings(SESSION_COOKIE_SAMESITE=False)
def test_samesite_disabled_sends_no_samesite():
    assert "samesite" not in _flags(_set({"default": 5}))


@pytest.mark.parametrize("samesite", ["Strict", "None"])
def test_delete_uses_the_same_domain_path_and_samesite(samesite):
    with override_settings(
        SESSION_COOKIE_SAMESITE=samesite, SESSION_COOKIE_DOMAIN=".example.com", SESSION_COOKIE_PATH="/app/"
    ):
        header = _set({}, had_cookie=True)
    flags = _flags(header)
    assert flags["max-age"] == "0"
    assert flags["domain"] == ".example.com"
    assert flags["path"] == "/app/"
    assert flags["samesite"] == samesite
    assert ("secure" in flags) is (samesite == "None")
