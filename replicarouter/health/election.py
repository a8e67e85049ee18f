"""Which node takes a cluster's writes. Pure: the round's primary claims in, the writer out.

Every node that answers "not in recovery" claims to be a primary, on the timeline it writes on. A
promotion always starts a new timeline, so the newest one wins; every other claimant is fenced (it gets
no traffic at all). The newest timeline ever seen is remembered, so a former primary that comes back
alone while the promoted node does not answer is fenced rather than trusted (split brain).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Election:
    """Which node takes a cluster's writes after one round, and which primaries are fenced."""

    #: the alias of the node acting as primary; None when no primary is available
    writer: str | None
    fenced: frozenset[str]
    #: the newest timeline ever seen in this cluster (a primary on an older one is fenced)
    timeline: int
    reason: str


def elect(
    configured: str,
    claims: dict[str, int | None],
    *,
    previous: str | None,
    known_timeline: int,
    unreachable: frozenset[str],
) -> Election:
    """Return the node that takes writes, given the nodes that answered as primaries this round.

    ``claims`` maps each node that answered "not in recovery" to its timeline. The newest timeline wins
    (a promotion always starts a new one); on a tie the current writer keeps its place, then the
    configured primary. Every other claimant is fenced. A claimant older than a timeline seen before is
    a former primary that came back: fenced too, even when it is the only one answering. With no claimant
    the current writer stays (a failed probe is not yet an outage) until it is ``down``.
    """
    newest = max((t or 0 for t in claims.values()), default=0)
    timeline = max(known_timeline, newest)
    current = previous or configured
    if claims:
        if newest < known_timeline:
            return Election(
                None,
                frozenset(claims),
                timeline,
                f"{', '.join(sorted(claims))} claim primary on timeline {newest}, older than timeline "
                f"{known_timeline} seen before: fenced (split brain); the newer primary does not answer",
            )
        best = sorted(a for a, t in claims.items() if (t or 0) == newest)
        winner = current if current in best else configured if configured in best else best[0]
        fenced = frozenset(claims) - {winner}
        reason = f"{winner} is primary on timeline {newest}"
        if fenced:
            reason += f"; fenced {', '.join(sorted(fenced))} (also claiming primary, older timeline)"
        return Election(winner, fenced, timeline, reason)
    if current in unreachable:
        return Election(None, frozenset(), timeline, f"{current} is down and no replica has been promoted")
    return Election(current, frozenset(), timeline, f"{current} is primary (last probe did not answer)")
