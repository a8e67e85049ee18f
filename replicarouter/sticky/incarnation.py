"""Which incarnation of a cluster a session's position belongs to, and whether it still applies.

A WAL position means something only on the cluster that wrote it: after a rebuild (a new ``initdb``,
another system identifier) or a point-in-time restore (a new timeline, positions that may be lower than
ones recorded before) a recorded position can lie beyond anything the cluster will have for a long
time, and a session holding it would read from the primary indefinitely. So each position is stored
with the *incarnation* of the primary that produced it: ``pg_control_system().system_identifier`` and
the timeline it wrote on (the monitor's source: the first 8 hex digits of the current WAL file name).

The rule (``keeps``), against what a fresh health snapshot says of the cluster now:

- same system identifier and timeline: kept;
- another system identifier: dropped (another cluster: a rebuild);
- same system identifier, an older timeline (a failover or a restore), or no incarnation at all (a
  value of the previous format): kept if at or below the current primary's position, else dropped. A
  promotion continues the LSN sequence, so positions up to the switch point stay meaningful and keep
  read-your-writes right after a failover; a position beyond what the current primary has reached
  belongs to a lost future (writes the failover or restore discarded) and can never be replayed;
- a newer timeline than the snapshot's: kept (the snapshot has not seen the promotion yet);
- nothing known now (no fresh snapshot, no writer, identifier unreadable): kept, as before.

Pure: no I/O. ``current`` (in ``sticky.judge``) reads the process-local health snapshot.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_TOKEN = re.compile(r"([0-9]{0,20})/([0-9]{1,10})")


class Incarnation(NamedTuple):
    """One life of a cluster: its system identifier ("" unknown) and a timeline (0 unknown)."""

    system: str
    timeline: int

    def token(self) -> str:
        """Return the compact form stored in Redis and in the cookie: ``"{system}/{timeline}"``."""
        return f"{self.system}/{self.timeline}"


def parse(token: object) -> Incarnation | None:
    """Return the incarnation ``token`` names, or None when it is not one (untrusted input)."""
    if not isinstance(token, str):
        return None
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    return Incarnation(match.group(1), int(match.group(2)))


#: why a position was dropped (label of ``sticky_foreign_positions``)
SYSTEM, TIMELINE, UNKNOWN = "system", "timeline", "unknown"


def foreign(
    incarnation: Incarnation | None, position: int, now: Incarnation | None, primary_position: int | None
) -> str | None:
    """Return why ``position`` (recorded on ``incarnation``) no longer applies, or None when it is kept.

    ``now``: the cluster's incarnation as a fresh snapshot knows it (None: unknown); ``primary_position``:
    the current primary's WAL position in that snapshot. See the module docstring for the rule.
    """
    if now is None:
        return None
    if incarnation is not None and incarnation.system and now.system and incarnation.system != now.system:
        return SYSTEM
    if incarnation is not None and incarnation.timeline and incarnation.timeline >= now.timeline:
        return None  # the same life, or a newer timeline than the snapshot has seen so far
    if primary_position is None or position <= primary_position:
        return None
    return UNKNOWN if incarnation is None else TIMELINE


def keeps(
    incarnation: Incarnation | None, position: int, now: Incarnation | None, primary_position: int | None
) -> bool:
    """Return whether ``position`` still applies (``foreign`` returns None)."""
    return foreign(incarnation, position, now, primary_position) is None


def merged(
    first: tuple[int, Incarnation | None], second: tuple[int, Incarnation | None]
) -> tuple[int, Incarnation | None]:
    """Return the position two sources agree on: the further one if both are of one incarnation; else
    ``second`` (the fresher source: a position just read on the primary, or just judged current)."""
    if first[1] == second[1]:
        return first if first[0] > second[0] else second
    return second


Tags = dict[str, Incarnation]


def merge_kept(
    first: tuple[dict[str, int], Tags], second: tuple[dict[str, int], Tags]
) -> tuple[dict[str, int], Tags]:
    """Return, per cluster, the further position of two sources whose positions all still apply (judged
    by ``keeps``: each is reachable on the current incarnation), with the incarnation it was recorded on."""
    positions, tags = dict(first[0]), {c: t for c, t in first[1].items() if c in first[0]}
    for cluster, position in second[0].items():
        if position > positions.get(cluster, -1) or (position == positions[cluster] and cluster not in tags):
            positions[cluster] = position
            tags.pop(cluster, None)
            if cluster in second[1]:
                tags[cluster] = second[1][cluster]
    return positions, tags


def merge_recorded(
    held: tuple[dict[str, int], Tags], recorded: tuple[dict[str, int], Tags]
) -> tuple[dict[str, int], Tags]:
    """Return ``held`` updated with positions just read on the primaries: the further one of the two
    when both are of one incarnation, else the recorded one (a position of another incarnation, or of
    none, is replaced: it is not comparable, and the primary's current position is past every position of
    its own incarnation anyway)."""
    positions, tags = dict(held[0]), {c: t for c, t in held[1].items() if c in held[0]}
    for cluster, position in recorded[0].items():
        tag = recorded[1].get(cluster)
        if cluster in positions:
            position, tag = merged((positions[cluster], tags.get(cluster)), (position, tag))
        positions[cluster] = position
        tags.pop(cluster, None)
        if tag is not None:
            tags[cluster] = tag
    return positions, tags


def tokens(tags: Tags, clusters: object) -> dict[str, str]:
    """Return the cookie's form of ``tags`` for the clusters in ``clusters``."""
    return {c: t.token() for c, t in tags.items() if c in clusters}  # type: ignore[operator]


def from_tokens(value: object, clusters: object) -> Tags:
    """Return the incarnations a cookie names for ``clusters``; malformed entries are left out."""
    if not isinstance(value, dict):
        return {}
    parsed = {str(c): parse(t) for c, t in value.items()}
    return {c: t for c, t in parsed.items() if t is not None and c in clusters}  # type: ignore[operator]
