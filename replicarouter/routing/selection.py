"""Decide which node serves a read: pure policy over plain inputs. No I/O.

``route_read`` is the router's whole decision: a read goes to the primary when ``use_primary()`` is in
force, when an atomic block is open on the primary (unless ``use_replica()`` is and the request has not
written), or when this request already wrote to the cluster (unless ``use_replica()``); otherwise to a
usable replica chosen by ``BALANCE``, restricted, when the session has a read-your-writes position, to
the replicas that replayed it; and to the primary when none is left. The router
(``router.choose_read_alias``) gathers the inputs and acts on the answer.

``round_robin`` walks the cluster's smooth weighted rotation (each replica ``weight`` times per cycle,
interleaved) skipping unusable replicas; ``random`` draws by weight among usable ones; ``least_lag`` takes
the usable replica with the smallest known lag (ties broken by the rotation). None means: use the primary.

``fallback_replica`` decides lending: which replica serves the reads of a replica alias whose own server
failed (the backend borrows the connection, and falls back to the primary when there is none).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Collection, Mapping
from typing import NamedTuple

from replicarouter.sticky.policy import caught_up, released

from .context import PRIMARY, REPLICA
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
    best = min(lag.get(a, math.inf) for a in candidates)
    if best == math.inf:
        return round_robin(cluster, usable)
    tied = {a for a in candidates if lag.get(a, math.inf) == best}
    return round_robin(cluster, tied) if len(tied) > 1 else tied.pop()


class ReadRoute(NamedTuple):
    """Where one read goes, and what the session's position decided on the way."""

    alias: str
    #: "replica" or "primary" when a read-your-writes position restricted the choice (the router counts
    #: it as a sticky decision), None when no position applied
    sticky: str | None = None
    #: every usable replica replayed the session's position: the router may release it at request end
    release: bool = False


def primary_only(cluster: Cluster, forced: str | None, in_atomic: bool, wrote: bool) -> bool:
    """Return whether a read must go to the primary whatever the replicas' health and positions.

    ``forced`` is the innermost ``use_primary()``/``use_replica()`` mode, ``in_atomic`` whether an atomic
    block is open on the primary, ``wrote`` whether this request or task wrote to the cluster.
    """
    if forced == PRIMARY or not cluster.replicas:
        return True
    if in_atomic:
        # a transaction's reads must see its own writes and one snapshot; use_replica() lifts that
        # only for a transaction that has not written
        return forced != REPLICA or wrote
    return forced != REPLICA and wrote


def route_read(
    cluster: Cluster,
    balance: str,
    *,
    forced: str | None = None,
    in_atomic: bool = False,
    wrote: bool = False,
    usable: frozenset[str] = frozenset(),
    sticky_mode: str = "lsn",
    required: int | None = None,
    positions: Mapping[str, int | None] | None = None,
    lag: Mapping[str, float] | None = None,
    pinned: bool = False,
    replayed: Mapping[str, int | None] | None = None,
    monotonic: frozenset[str] | None = None,
    prefer: str | None = None,
) -> ReadRoute:
    """Return where a read on ``cluster`` goes (see the module docstring for the rules).

    ``usable`` are the replicas the health snapshot allows; ``required`` is the session's position on
    this cluster (a WAL position, or a pin deadline when ``sticky_mode`` is ``"time"``), None when it has
    none; ``positions`` are the replicas' replayed positions and ``lag`` their lag in seconds.
    ``pinned``: the session is pinned to the primary (its last write's position could not be read).
    ``replayed``: the positions a fresh snapshot knows from successful probes (release is decided on
    them: every configured replica must be in it, past ``required``). ``monotonic``: the replicas the
    session may read without going back in time (None: no restriction), ``prefer`` the one it read
    last (kept while allowed). A caller may leave out what ``primary_only`` makes unnecessary, and the
    session's state under ``use_replica()``, which ignores it.
    """
    primary = cluster.primary
    if primary_only(cluster, forced, in_atomic, wrote):
        return ReadRoute(primary)
    sticky: str | None = None
    release = False
    if forced != REPLICA:
        if pinned:
            return ReadRoute(primary, "primary")
        if required is not None:
            if sticky_mode == "time":
                return ReadRoute(primary, "primary")  # pinned to the primary until the deadline
            eligible = caught_up(usable, positions or {}, required)
            # the position goes only when no replica, usable now or not, could still serve a stale read
            release = released(required, cluster.replicas, replayed or {})
            if not eligible:
                return ReadRoute(primary, "primary", release)
            sticky = "replica"
            usable = eligible
        if monotonic is not None:
            usable = usable & monotonic
            if not usable:
                return ReadRoute(primary, sticky and "primary", release)
            if prefer is not None and prefer in usable:
                return ReadRoute(prefer, sticky, release)
    if balance == "round_robin":
        choice = round_robin(cluster, usable)
    elif balance == "random":
        choice = weighted_random(cluster, usable)
    else:
        choice = least_lag(cluster, usable, lag or {})
    return ReadRoute(choice or primary, sticky, release)


def fallback_replica(cluster: Cluster, alias: str, usable: Collection[str]) -> str | None:
    """Return the replica that lends reads of replica ``alias`` whose server failed (None: the primary).

    The first other replica in configuration order among ``usable``, which the caller restricts as it
    restricts the router's choice (health, the session's position, monotonic reads). Only that one is
    tried before the primary, each failed connection attempt costing up to ``CONNECT_TIMEOUT``.
    """
    return next((other for other in cluster.replicas if other != alias and other in usable), None)
