"""What a monitor round reads and makes: its inputs, one cluster's view, the pools a change makes suspect.

Apart from ``monitor.py`` (the loop) so that the loop stays small; nothing here runs by itself.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

from replicarouter import pool as pools
from replicarouter.routing.topology import Cluster

from . import shared
from .election import Election
from .rules import NodeHealth, Rules
from .store import Snapshot


class Inputs(NamedTuple):
    """What one round reads from the settings, once."""

    databases: dict[str, Any]
    interval: float
    timeout: float
    rules: Rules


class View(NamedTuple):
    """One cluster as this process sees it after a round, and where that came from."""

    nodes: dict[str, NodeHealth]
    election: Election
    source: str  # "local" (probed here), "leader" (probed and published here), "redis" (the leader's)
    leader: str | None
    published_at: float


def followed(fetched: shared.Published, previous: Election | None) -> View:
    """Return the view a follower takes from the leader's snapshot (its timeline never goes back)."""
    election = fetched.election
    if previous is not None and previous.timeline > election.timeline:
        election = replace(election, timeline=previous.timeline)
    return View(fetched.nodes, election, "redis", fetched.leader, fetched.published_at)


def dispose_suspect_pools(
    cluster: Cluster, previous: Snapshot, now_usable: frozenset[str], election: Election
) -> None:
    """Close the pooled connections that the change from ``previous`` to this round makes suspect."""
    for alias in previous.usable - now_usable:
        pools.registry.dispose(alias)  # idle connections to an excluded replica are suspect
    if previous.writer != election.writer:
        # the primary alias's connections point at the former writer: none may be reused
        pools.registry.dispose(cluster.primary)
    for alias in election.fenced - {a for a, n in previous.nodes.items() if n.fenced}:
        pools.registry.dispose(alias)
