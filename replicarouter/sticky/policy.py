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

from . import incarnation
from .incarnation import Incarnation, Tags
from .monotonic import CLOCK_MARGIN, Probe, Seen, after_read, monotonic_allowed, reached, stays, switch_bound

__all__ = [
    "CLOCK_MARGIN", "Probe", "Seen", "after_read", "monotonic_allowed", "stays", "switch_bound",
]  # fmt: skip

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


@dataclass
class CookieState:
    """What the signed cookie carries: positions, primary pins and what the session last read."""

    #: read-your-writes positions (``lsn``) or pin deadlines in ms (``time``), by cluster
    positions: dict[str, int] = field(default_factory=dict)
    #: clusters pinned to the primary until a deadline (ms): a write whose position could not be read
    pins: dict[str, int] = field(default_factory=dict)
    #: monotonic reads, by cluster
    seen: dict[str, Seen] = field(default_factory=dict)
    #: why the cookie was ignored (forged, expired, malformed); None when it was fine or absent
    problem: str | None = None
    #: the incarnation each position was recorded on (absent: unknown, a cookie of the previous format)
    incarnations: Tags = field(default_factory=dict)
    #: the incarnation of each ``seen`` floor
    seen_incarnations: Tags = field(default_factory=dict)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def write_cookie(state: CookieState, mode: str) -> str:
    """Return the signed cookie value carrying ``state`` (empty parts are left out)."""
    data: dict[str, Any] = {"m": mode, "p": dict(state.positions)}
    if state.pins:
        data["t"] = dict(state.pins)
    if state.seen:
        data["v"] = {c: [s.node, _ms(s.since), _ms(s.until), s.floor] for c, s in state.seen.items()}
    if state.incarnations:
        data["i"] = incarnation.tokens(state.incarnations, state.positions)
    if state.seen_incarnations:
        data["j"] = incarnation.tokens(state.seen_incarnations, state.seen)
    return str(signing.dumps(data, salt=COOKIE_SALT, compress=True))


def encode_cookie(positions: Mapping[str, int], mode: str) -> str:
    """Return the signed cookie value carrying ``positions`` (LSNs, or pin deadlines in ``time`` mode)."""
    return write_cookie(CookieState(dict(positions)), mode)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _seen(value: Any) -> Seen | None:
    if not isinstance(value, list) or len(value) != 4 or not isinstance(value[0], str):
        return None
    if not all(map(_count, value[1:])):
        return None
    return Seen(value[0], value[1] / 1000, value[2] / 1000, value[3])


def read_cookie(value: str | None, mode: str, max_age: float) -> CookieState:
    """Return what a cookie carries; an empty state (with ``problem`` set) when it is forged, expired or
    malformed. Entries of the wrong type are dropped one by one. Keys: ``m`` mode, ``p`` positions, ``t``
    pins, ``v`` seen, ``i``/``j`` the incarnations of positions/floors (absent in the previous format:
    unknown, judged by ``incarnation.keeps``)."""
    if not value:
        return CookieState()
    try:
        data = signing.loads(value, salt=COOKIE_SALT, max_age=max_age)
    except signing.SignatureExpired:
        return CookieState(problem="expired")
    except (signing.BadSignature, ValueError, TypeError):
        return CookieState(problem="bad signature")
    if not isinstance(data, dict) or not isinstance(data.get("p"), dict):
        return CookieState(problem="malformed")
    if data.get("m") != mode:
        return CookieState()  # written under another STICKY mode: not a problem, just not ours
    positions = {str(k): v for k, v in data["p"].items() if _count(v)}
    pins: dict[Any, Any] = data["t"] if isinstance(data.get("t"), dict) else {}
    seen_data: dict[Any, Any] = data["v"] if isinstance(data.get("v"), dict) else {}
    seen = {str(c): s for c, s in ((c, _seen(v)) for c, v in seen_data.items()) if s is not None}
    pins = {str(k): v for k, v in pins.items() if _count(v)}
    tags, seen_tags = (
        incarnation.from_tokens(data.get("i"), positions),
        incarnation.from_tokens(data.get("j"), seen),
    )
    return CookieState(positions, pins, seen, incarnations=tags, seen_incarnations=seen_tags)


def decode_cookie(value: str | None, mode: str, max_age: float) -> dict[str, int]:
    """Return the positions of a cookie, or {} when it is missing, forged, expired or malformed."""
    return read_cookie(value, mode, max_age).positions


def released(required: int, replicas: Collection[str], positions: Mapping[str, int | None]) -> bool:
    """Return whether every configured replica is known to have replayed ``required``.

    ``positions`` holds only what a fresh snapshot knows from a successful probe: a replica missing from
    it (down, never probed) may come back behind, so the position is kept.
    """
    return bool(replicas) and all(reached(positions.get(a), required) for a in replicas)


@dataclass
class StickyState:
    """One request's or task's view of its session's positions (filled lazily, at most one Redis call)."""

    mode: str
    identity: str | None = None
    #: positions known without I/O (the cookie, a task's captured token)
    known: dict[str, int] = field(default_factory=dict)
    #: primary pins known without I/O (the cookie): cluster -> deadline in ms
    pins: dict[str, int] = field(default_factory=dict)
    #: what the session last read, by cluster (monotonic reads; the cookie carries it)
    seen: dict[str, Seen] = field(default_factory=dict)
    #: whether ``seen`` changed in this request (the cookie must be set again)
    seen_changed: bool = False
    #: whether the request came with a position cookie (an emptied state deletes it)
    had_cookie: bool = False
    #: clusters this request read from the primary (monotonic reads: the primary's position at the end
    #: of the request bounds what those reads saw)
    primary_reads: set[str] = field(default_factory=set)
    #: callable returning ``({cluster: position}, {cluster: pin deadline})`` from Redis, called once
    loader: Any = None
    loaded: dict[str, int] | None = None
    loaded_pins: dict[str, int] = field(default_factory=dict)
    #: clusters where every replica had replayed the position: release the stored one at request end
    release: set[str] = field(default_factory=set)
    #: the incarnation of each ``known``/``loaded`` position and of each ``seen`` floor
    incarnations: Tags = field(default_factory=dict)
    loaded_incarnations: Tags = field(default_factory=dict)
    seen_incarnations: Tags = field(default_factory=dict)
    #: callable(cluster) returning ``(Incarnation, primary position or None)`` from a fresh snapshot,
    #: or None when unknown; None: positions of other incarnations are not looked for
    now: Any = None
    #: callable(cluster, reason, source) told of each position or floor dropped as foreign
    on_foreign: Any = None
    #: positions read from Redis and dropped as foreign, by cluster: deleted at the end of the request
    foreign_stored: dict[str, tuple[int, Incarnation | None]] = field(default_factory=dict)

    def _now(self, cluster: str) -> tuple[Incarnation, int | None] | None:
        if self.now is None or self.mode != "lsn":
            return None
        known: tuple[Incarnation, int | None] | None = self.now(cluster)
        return known

    def _foreign(self, cluster: str, tag: Incarnation | None, position: int, source: str) -> bool:
        """Return whether ``position`` is of another incarnation (see ``incarnation``); say so if it is."""
        known = self._now(cluster)
        reason = None if known is None else incarnation.foreign(tag, position, known[0], known[1])
        if reason is not None and self.on_foreign is not None:
            self.on_foreign(cluster, reason, source)
        return reason is not None

    def screen(self) -> None:
        """Drop the cookie's positions and monotonic floors of another incarnation (no I/O)."""
        for cluster, position in list(self.known.items()):
            if self._foreign(cluster, self.incarnations.get(cluster), position, "cookie"):
                del self.known[cluster]
                self.incarnations.pop(cluster, None)
                self.seen_changed = True  # the cookie is set again without it
        for cluster, seen in list(self.seen.items()):
            if self._foreign(cluster, self.seen_incarnations.get(cluster), seen.floor, "cookie"):
                del self.seen[cluster]
                self.seen_incarnations.pop(cluster, None)
                self.seen_changed = True

    def _load(self) -> dict[str, int]:
        if self.loaded is None:
            fetched: Mapping[str, int] = {}
            pins: Mapping[str, int] = {}
            tags: Tags = {}
            if self.loader is not None:
                try:
                    fetched, pins, *more = self.loader()
                except Exception:  # Redis trouble: the cookie (known) still protects the session
                    fetched, pins, more = {}, {}, []
                tags = more[0] if more else {}
            kept = {}
            for cluster, position in fetched.items():
                if self._foreign(cluster, tags.get(cluster), position, "redis"):
                    self.foreign_stored[cluster] = (position, tags.get(cluster))
                else:
                    kept[cluster] = position
            self.loaded, self.loaded_incarnations = incarnation.merge_kept(
                (self.known, self.incarnations), (kept, tags)
            )
            self.loaded_pins = merge(self.pins, pins)
        return self.loaded

    def required(self, cluster: str) -> int | None:
        """Return the position (``lsn``) or pin deadline (``time``) that applies to ``cluster``."""
        value = self._load().get(cluster)
        if value is None:
            return None
        if self.mode == "time" and value <= time.time() * 1000:
            return None
        return value

    def pinned(self, cluster: str) -> bool:
        """Return whether the session's reads of ``cluster`` stay on the primary (a pin in force)."""
        self._load()
        return self.loaded_pins.get(cluster, 0) > time.time() * 1000

    def observe(self, cluster: str, node: str, bound: int | None, now: float | None = None) -> None:
        """Record that a read of ``cluster`` went to ``node`` (monotonic reads)."""
        previous = self.seen.get(cluster)
        updated = after_read(previous, node, time.time() if now is None else now, bound)
        if updated is not previous:
            self.seen[cluster] = updated
            self.seen_changed = True
            known = self._now(cluster)  # its floor comes from this snapshot's positions, or before it
            if known is not None:
                self.seen_incarnations[cluster] = known[0]

    def cookie(self, positions: Mapping[str, int], horizon: float) -> CookieState:
        """Return the cookie's content: ``positions``, the pins in force, and ``seen`` claimed ``horizon``
        seconds ahead (reads of the same node until then need no new cookie)."""
        now_ms = time.time() * 1000
        pins = {c: d for c, d in merge(self.pins, self.loaded_pins).items() if d > now_ms}
        seen = {
            c: Seen(s.node, s.since, s.until + horizon, s.floor) if self.seen_changed else s
            for c, s in self.seen.items()
        }
        tags = {c: t for c, t in self.incarnations.items() if c in positions}
        seen_tags = {c: t for c, t in self.seen_incarnations.items() if c in seen}
        return CookieState(dict(positions), pins, seen, incarnations=tags, seen_incarnations=seen_tags)
