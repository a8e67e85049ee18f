"""Lag arithmetic: how far, in bytes and in seconds, a standby is behind the primary. Pure.

Lag in bytes is the primary's current WAL position minus the replica's replayed position, both from the
same round. Lag in seconds is how long the replica has been missing data the primary had: the monitor
remembers the primary's position over time (``PrimaryHistory``), and a replica that replayed up to P is
behind since the first moment the primary was seen past P. This stays 0 on an idle primary, where the
usual ``now() - pg_last_xact_replay_timestamp()`` grows without any lag.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the probe's I/O is none of this module's business, only its results' type
    from .probe import ProbeResult


@dataclass
class PrimaryHistory:
    """The primary's WAL position over time, to tell how long a replica has been behind."""

    samples: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=600)
    )

    def add(self, when: float, position: int) -> None:
        if not self.samples or position != self.samples[-1][1]:
            self.samples.append((when, position))

    def behind_since(self, position: int) -> float | None:
        """Return when the primary was first seen past ``position`` (None: never, the replica is current)."""
        for when, primary_position in self.samples:
            if primary_position > position:
                return when
        return None


def measure_lag(
    result: ProbeResult, primary_position: int | None, history: PrimaryHistory | None, now: float
) -> tuple[int | None, float | None]:
    """Return ``(lag_bytes, lag_seconds)`` of a standby (None where unknown)."""
    if primary_position is None or result.position is None:
        return None, None
    lag_bytes = max(0, primary_position - result.position)
    if lag_bytes == 0:
        return 0, 0.0
    if history is None:  # no memory (a one-off probe): the replay timestamp is the best bound we have
        return lag_bytes, result.replay_age
    since = history.behind_since(result.position)
    if since is None:  # the primary was never seen past it: the same
        return lag_bytes, result.replay_age
    if since > history.samples[0][0]:
        return lag_bytes, max(0.0, now - since)
    # behind since before what we remember: the larger of the two bounds we have
    return lag_bytes, max(result.replay_age or 0.0, now - since)
