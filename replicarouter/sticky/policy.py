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
from typing import Any, NamedTuple

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


@dataclass(frozen=True, slots=True)
class Seen:
    """What a session last read on one cluster, for monotonic reads (see ``monotonic_allowed``).

    All times are wall-clock seconds (``time.time()``): they are compared with the monitor's probe times,
    which may come from another process or host through Redis.
    """

    #: the alias whose node served the session's latest reads ("": none since ``floor`` was set)
    node: str
    #: when the session began reading from ``node`` (a restart of the node after it voids "it only grew")
    since: float
    #: every read from ``node`` happened at or before this moment (a claim, extended ahead of time)
    until: float
    #: a WAL position at or past everything the session read before it turned to ``node``
    floor: int = 0


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


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def write_cookie(state: CookieState, mode: str) -> str:
    """Return the signed cookie value carrying ``state`` (empty parts are left out)."""
    data: dict[str, Any] = {"m": mode, "p": dict(state.positions)}
    if state.pins:
        data["t"] = dict(state.pins)
    if state.seen:
        data["v"] = {c: [s.node, _ms(s.since), _ms(s.until), s.floor] for c, s in state.seen.items()}
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
    malformed. Entries of the wrong type are dropped one by one."""
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
    return CookieState(positions, {str(k): v for k, v in pins.items() if _count(v)}, seen)


def decode_cookie(value: str | None, mode: str, max_age: float) -> dict[str, int]:
    """Return the positions of a cookie, or {} when it is missing, forged, expired or malformed."""
    return read_cookie(value, mode, max_age).positions


# -- monotonic reads ---------------------------------------------------------------------------------------


class Probe(NamedTuple):
    """What the health snapshot says of one node, as monotonic reads need it."""

    #: when its last successful probe started (None: never probed successfully)
    probed_at: float | None
    #: its WAL position then (replayed, for a standby; current, for a primary)
    position: int | None
    #: when its server started (None: unknown)
    started_at: float | None


#: probe times come from the process that probed (maybe another host): allow this much clock difference
CLOCK_MARGIN = 0.1


def switch_bound(seen: Seen, last: Probe | None, writer: Probe | None) -> int | None:
    """Return a WAL position at or past everything ``seen`` covers, or None when none is known yet.

    The session read ``seen.node`` up to ``seen.until``: a probe of that node started after ``until``
    reports a position at or past what those reads saw, provided the node did not restart since the
    session began reading it (a standby restarts at its last restart point: it can come back behind).
    The writer's position, probed after ``until``, bounds it too (every standby replays the writer's
    WAL). The smaller of the known bounds is the tighter one. A ``seen`` without a node (the session
    wrote: its write's position bounds everything it read) is bounded by its floor alone.
    """
    if not seen.node:
        return seen.floor
    after = seen.until + CLOCK_MARGIN
    bounds = []
    for probe, needs_continuity in ((last, True), (writer, False)):
        if probe is None or probe.probed_at is None or probe.position is None or probe.probed_at <= after:
            continue
        if needs_continuity and (probe.started_at is None or probe.started_at >= seen.since):
            continue
        bounds.append(probe.position)
    if not bounds:
        return None
    return max(seen.floor, min(bounds))


def stays(seen: Seen, probe: Probe | None) -> bool:
    """Return whether the session may go on reading ``seen.node``: it has not restarted since."""
    return probe is not None and probe.started_at is not None and probe.started_at < seen.since


def monotonic_allowed(
    seen: Seen | None,
    candidates: Collection[str],
    positions: Mapping[str, int | None],
    *,
    bound: int | None,
    stay: bool,
) -> frozenset[str]:
    """Return the candidate replicas a read may use without going back in time (the primary always may).

    The node the session last read (if it may ``stay``), and every replica whose position reached
    ``bound`` (``switch_bound``); none other while no bound is known. Without ``seen``, all of them.
    """
    if seen is None:
        return frozenset(candidates)
    allowed = {seen.node} & set(candidates) if stay else set()
    if bound is not None:
        allowed.update(a for a in candidates if _reached(positions.get(a), bound))
    return frozenset(allowed)


def after_read(seen: Seen | None, node: str, now: float, bound: int | None) -> Seen:
    """Return what the session has seen after reading ``node`` at ``now`` (``bound``: see switch_bound)."""
    if seen is None:
        return Seen(node, now, now)
    if node == seen.node:
        return seen if now <= seen.until else Seen(node, seen.since, now, seen.floor)
    return Seen(node, now, now, max(seen.floor, bound or 0))


def released(required: int, replicas: Collection[str], positions: Mapping[str, int | None]) -> bool:
    """Return whether every configured replica is known to have replayed ``required``.

    ``positions`` holds only what a fresh snapshot knows from a successful probe: a replica missing from
    it (down, never probed) may come back behind, so the position is kept.
    """
    return bool(replicas) and all(_reached(positions.get(a), required) for a in replicas)


def _reached(position: int | None, bound: int) -> bool:
    return position is not None and position >= bound


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

    def _load(self) -> dict[str, int]:
        if self.loaded is None:
            fetched: Mapping[str, int] = {}
            pins: Mapping[str, int] = {}
            if self.loader is not None:
                try:
                    fetched, pins = self.loader()
                except Exception:  # Redis trouble: the cookie (known) still protects the session
                    fetched, pins = {}, {}
            self.loaded = merge(self.known, fetched)
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

    def cookie(self, positions: Mapping[str, int], horizon: float) -> CookieState:
        """Return the cookie's content: ``positions``, the pins in force, and ``seen`` claimed ``horizon``
        seconds ahead (reads of the same node until then need no new cookie)."""
        now_ms = time.time() * 1000
        pins = {c: d for c, d in merge(self.pins, self.loaded_pins).items() if d > now_ms}
        seen = {
            c: Seen(s.node, s.since, s.until + horizon, s.floor) if self.seen_changed else s
            for c, s in self.seen.items()
        }
        return CookieState(dict(positions), pins, seen)
