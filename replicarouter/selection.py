"""Pick the replica for a read: pure policy over a cluster and the set of usable replicas. No I/O.

``round_robin`` walks the cluster's smooth weighted rotation (each replica ``weight`` times per cycle,
interleaved) skipping unusable replicas; ``random`` draws by weight among usable ones; ``least_lag`` takes
the usable replica with the smallest known lag (ties broken by the rotation). None means: use the primary.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Collection, Mapping

from .topology import Cluster

_counters: dict[str, itertools.count[int]] = {}


def _next(cluster: Cluster) -> int:
    counter = _counters.get(cluster.name)
    if counter is None:
        counter = _counters.setdefault(cluster.name, itertools.count())
    return next(counter)  # itertools.count is atomic under the GIL


def round_robin(cluster: Cluster, usable: Collection[str] | None) -> str | None:
    """Return the next usable replica in the cluster's weighted rotation."""
    rotation = cluster.rotation
    if not rotation:
        return None
    start = _next(cluster)
    size = len(rotation)
    for offset in range(size):
        alias = rotation[(start + offset) % size]
        if usable is None or alias in usable:
            return alias
    return None


def weighted_random(
    cluster: Cluster, usable: Collection[str] | None, rng: random.Random | None = None
) -> str | None:
    """Return a usable replica drawn with probability proportional to its weight."""
    pairs = [
        (a, w)
        for a, w in zip(cluster.replicas, cluster.weights, strict=True)
        if usable is None or a in usable
    ]
    if not pairs:
        return None
    choice: str = (rng or random).choices([a for a, _ in pairs], [w for _, w in pairs])[0]
    return choice


def least_lag(cluster: Cluster, usable: Collection[str] | None, lag: Mapping[str, float]) -> str | None:
    """Return the usable replica with the least lag (unknown lag sorts last); rotation order breaks ties."""
    candidates = [a for a in cluster.replicas if usable is None or a in usable]
    if not candidates:
        return None
    best = min(lag.get(a, float("inf")) for a in candidates)
    if best == float("inf"):
        return round_robin(cluster, usable)
    tied = {a for a in candidates if lag.get(a, float("inf")) == best}
    return round_robin(cluster, tied) if len(tied) > 1 else tied.pop()


Policy = Callable[[Cluster, Collection[str] | None], str | None]
