"""What the router knows about node health: the process-local snapshot it reads on every decision.

The health monitor (issue 5) fills it; until a monitor has published anything, every configured replica
counts as usable and lag is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping

_usable: dict[str, frozenset[str]] = {}
_lag_seconds: dict[str, Mapping[str, float]] = {}


def usable_replicas(cluster: str) -> frozenset[str] | None:
    """Return the replicas of ``cluster`` the last snapshot found usable, or None (no snapshot: all)."""
    return _usable.get(cluster)


def lag_seconds(cluster: str) -> Mapping[str, float]:
    """Return the last known replication lag of the replicas of ``cluster``, in seconds."""
    return _lag_seconds.get(cluster, {})
