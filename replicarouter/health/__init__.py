"""What the router knows about node health: the process-local snapshot it reads on every decision.

The monitor (``health.monitor``, started by the router on first use in each process) refreshes it every
``CHECK_INTERVAL``. The router asks two questions, both answered from memory: which replicas are usable,
and how far each lags. No snapshot yet (the monitor has not finished its first round) or a snapshot older
than ``STALE_INTERVALS`` intervals means "unknown": no replica is usable and reads go to the primary.
Unknown lag is never zero.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .state import NodeHealth

STALE_INTERVALS = 3


@dataclass(frozen=True)
class Snapshot:
    """One cluster's health as this process last saw it."""

    nodes: Mapping[str, NodeHealth]
    usable: frozenset[str]
    lag_seconds: Mapping[str, float]
    #: WAL position per node when probed (replayed, for replicas)
    positions: Mapping[str, int | None]
    #: ``time.monotonic()`` when this process got it; its age decides staleness
    received: float
    #: wall-clock time the prober published it (for status output)
    published_at: float
    source: str  # "local" (probed here), "redis" (published by the leader)
    leader: str | None = None
    interval: float = 1.0
    extra: Mapping[str, object] = field(default_factory=dict)

    def stale(self, now: float | None = None) -> bool:
        return (
            now if now is not None else time.monotonic()
        ) - self.received > STALE_INTERVALS * self.interval


_snapshots: dict[str, Snapshot] = {}
_NOTHING: frozenset[str] = frozenset()


def usable_replicas(cluster: str) -> frozenset[str]:
    """Return the usable replicas of ``cluster`` (none while health is unknown or stale)."""
    snapshot = _snapshots.get(cluster)
    if snapshot is None or time.monotonic() - snapshot.received > STALE_INTERVALS * snapshot.interval:
        return _NOTHING
    return snapshot.usable


def lag_seconds(cluster: str) -> Mapping[str, float]:
    """Return the last known replication lag of the replicas of ``cluster``, in seconds."""
    snapshot = _snapshots.get(cluster)
    return snapshot.lag_seconds if snapshot is not None else {}


def positions(cluster: str) -> Mapping[str, int | None]:
    """Return the WAL position each node of ``cluster`` had reached when last probed."""
    snapshot = _snapshots.get(cluster)
    return snapshot.positions if snapshot is not None else {}


def snapshot(cluster: str) -> Snapshot | None:
    """Return this process's latest snapshot of ``cluster`` (None before the first one)."""
    return _snapshots.get(cluster)


def set_snapshot(cluster: str, value: Snapshot) -> None:
    """Install a new snapshot (called by the monitor)."""
    _snapshots[cluster] = value


def clear() -> None:
    """Forget every snapshot (the monitor stopped, or a forked child starts over)."""
    _snapshots.clear()
