"""Read-your-writes across requests: the decisions, apart from any I/O.

A session (or user) that wrote is given the primary's WAL position at the end of that request. Later,
its reads may go to a replica only if the health snapshot shows that replica replayed at least that far;
otherwise they go to the primary. Positions travel two ways, both always written: in Redis under a hash
of the session key or user id (forward-only updates, compare-and-delete release), and in a signed cookie
(so that Redis being down, or a client without a session, never means a stale read). ``STICKY="time"``
pins to the primary for ``STICKY_SECONDS`` after a write; ``"off"`` disables all of it.

This module decides; ``stickystore`` talks to Redis. Nothing here imports Redis or a database driver.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core import signing

COOKIE_NAME = "replicarouter_pos"
COOKIE_SALT = "replicarouter.sticky"


def identity(scope: str, value: str, secret: str) -> str:
    """Return the key under which a session's or user's position is stored: never the raw value."""
    return hmac.new(secret.encode(), f"{scope}:{value}".encode(), hashlib.sha256).hexdigest()


def caught_up(usable: Collection[str], positions: Mapping[str, int | None], required: int) -> frozenset[str]:
    """Return the usable replicas that replayed at least ``required``."""
    return frozenset(a for a in usable if (positions.get(a) or -1) >= required)


def merge(*sources: Mapping[str, int]) -> dict[str, int]:
    """Return, per cluster, the furthest position of any source."""
    merged: dict[str, int] = {}
    for source in sources:
        for cluster, position in source.items():
            if position > merged.get(cluster, -1):
                merged[cluster] = position
    return merged


def encode_cookie(positions: Mapping[str, int], mode: str) -> str:
    """Return the signed cookie value carrying ``positions`` (LSNs, or pin deadlines in ``time`` mode)."""
    return str(signing.dumps({"m": mode, "p": dict(positions)}, salt=COOKIE_SALT, compress=True))


def decode_cookie(value: str | None, mode: str, max_age: float) -> dict[str, int]:
    """Return the positions of a cookie, or {} when it is missing, forged, expired or malformed."""
    if not value:
        return {}
    try:
        data = signing.loads(value, salt=COOKIE_SALT, max_age=max_age)
    except (signing.BadSignature, ValueError, TypeError):
        return {}
    if not isinstance(data, dict) or data.get("m") != mode or not isinstance(data.get("p"), dict):
        return {}
    return {
        str(k): int(v)
        for k, v in data["p"].items()
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0
    }


@dataclass
class StickyState:
    """One request's or task's view of its session's positions (filled lazily, at most one Redis call)."""

    mode: str
    identity: str | None = None
    #: positions known without I/O (the cookie, a task's captured token)
    known: dict[str, int] = field(default_factory=dict)
    loader: Any = None  # callable returning {cluster: position} from Redis, called once
    loaded: dict[str, int] | None = None
    #: clusters where every usable replica had caught up: release the stored position at request end
    release: set[str] = field(default_factory=set)

    def required(self, cluster: str) -> int | None:
        """Return the position (``lsn``) or pin deadline (``time``) that applies to ``cluster``."""
        if self.loaded is None:
            fetched: Mapping[str, int] = {}
            if self.loader is not None:
                try:
                    fetched = self.loader()
                except Exception:  # Redis trouble: the cookie (known) still protects the session
                    fetched = {}
            self.loaded = merge(self.known, fetched)
        value = self.loaded.get(cluster)
        if value is None:
            return None
        if self.mode == "time" and value <= time.time() * 1000:
            return None
        return value
