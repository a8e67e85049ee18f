"""Monotonic reads, the decisions (re-exported by ``policy``): what a session last read, and which nodes
may serve it next without going back in time. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import NamedTuple


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
        allowed.update(a for a in candidates if reached(positions.get(a), bound))
    return frozenset(allowed)


def after_read(seen: Seen | None, node: str, now: float, bound: int | None) -> Seen:
    """Return what the session has seen after reading ``node`` at ``now`` (``bound``: see switch_bound)."""
    if seen is None:
        return Seen(node, now, now)
    if node == seen.node:
        return seen if now <= seen.until else Seen(node, seen.since, now, seen.floor)
    return Seen(node, now, now, max(seen.floor, bound or 0))


def reached(position: int | None, bound: int) -> bool:
    return position is not None and position >= bound
