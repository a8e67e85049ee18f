"""``ReplicaRouter``: writes to each cluster's primary, reads to a usable replica unless that could be stale.

A read goes to the primary when ``use_primary()`` is in force, when an atomic block is open on the
primary (reads in a transaction must see its own writes and a consistent snapshot), or when this request
or task already wrote to the cluster; otherwise to a replica chosen by ``BALANCE`` among the usable ones,
and to the primary when none is usable. ``use_replica()`` lifts the last two rules except inside a
transaction that wrote. A session with a read-your-writes position reads only from replicas that replayed
it. The rules are ``selection.route_read``, a pure function; ``choose_read_alias`` gathers its inputs
(routing context, health snapshot, the session's position) and acts on its answer. Settings and topology
are cached, context and health are in memory: the only I/O is the first look at a session's stored
position (one Redis call per request, see ``sticky``), made only when the rules get that far.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from replicarouter.conf import monotonic_reads, routing, topology
from replicarouter.health import monitor
from replicarouter.health import store as health
from replicarouter.observability import stats
from replicarouter.sticky import policy as sticky

from . import context, selection
from .topology import Cluster


def _cluster(model: Any) -> Cluster | None:
    return topology().cluster_for_app(model._meta.app_label)


class ReplicaRouter:
    """Django database router for replicarouter clusters (``DATABASE_ROUTERS``)."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        """Return the alias that should serve a read of ``model``."""
        topo, balance = routing()
        cluster = topo.by_app.get(model._meta.app_label, topo.default)
        if cluster is None:
            return None
        alias = choose_read_alias(cluster, balance)
        stats.incr("reads_routed", cluster.name, alias)
        return alias

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        """Return the primary of the model's cluster."""
        cluster = _cluster(model)
        if cluster is None:
            return None
        stats.incr("writes_routed", cluster.name, cluster.primary)
        return cluster.primary

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        """Allow relations between objects of one cluster; refuse across clusters; else no opinion."""
        topo = topology()
        first = topo.by_alias.get(obj1._state.db)
        second = topo.by_alias.get(obj2._state.db)
        if first is None or second is None:
            return None
        return first is second

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        """Migrate on primaries only (replicas get schema by replication), each app on its cluster's."""
        topo = topology()
        role = topo.role(db)
        if role is None:
            return None
        if role == "replica":
            return False
        return topo.by_alias[db] is topo.cluster_for_app(app_label)


def choose_read_alias(cluster: Cluster, balance: str = "round_robin") -> str:
    """Return the alias for a read on ``cluster`` given the current context (see the module docstring)."""
    forced = context.forced_mode()
    in_atomic = context.in_atomic(cluster.primary)
    wrote = context.wrote(cluster.name)
    if selection.primary_only(cluster, forced, in_atomic, wrote):
        if forced != context.REPLICA:
            observe(cluster, cluster.primary)
        return cluster.primary  # before starting the monitor or loading the session's position
    monitor.ensure_running()
    usable = health.usable_replicas(cluster.name)
    limits = _limits(cluster, forced)
    route = selection.route_read(
        cluster,
        balance,
        forced=forced,
        in_atomic=in_atomic,
        wrote=wrote,
        usable=usable,
        sticky_mode=limits.mode,
        required=limits.required,
        positions=health.positions(cluster.name),
        lag=health.lag_seconds(cluster.name),
        pinned=limits.pinned,
        replayed=limits.replayed,
        monotonic=limits.monotonic,
        prefer=limits.prefer,
    )
    if route.sticky is not None:
        stats.incr("sticky_decisions", cluster.name, route.sticky)
    if limits.state is not None:
        if route.release:
            limits.state.release.add(cluster.name)
        if monotonic_reads():
            limits.state.observe(cluster.name, route.alias, limits.bound)
            if route.alias == cluster.primary:
                limits.state.primary_reads.add(cluster.name)
    return route.alias


class _Limits(NamedTuple):
    """What the session's state allows a read of one cluster (all None/False: no restriction)."""

    state: sticky.StickyState | None = None
    mode: str = "lsn"
    required: int | None = None
    pinned: bool = False
    replayed: Mapping[str, int | None] | None = None
    monotonic: frozenset[str] | None = None
    prefer: str | None = None
    bound: int | None = None


_FREE = _Limits()


def _limits(cluster: Cluster, forced: str | None) -> _Limits:
    """Return what this context's session allows a read of ``cluster`` (``use_replica()``: nothing)."""
    if forced == context.REPLICA:  # use_replica() ignores the position: do not load it
        return _FREE
    state = context.current_state()
    if state is None or state.sticky is None:
        return _FREE
    current: sticky.StickyState = state.sticky
    required = current.required(cluster.name)
    pinned = current.pinned(cluster.name)
    replayed = _replayed(cluster) if required is not None and current.mode == "lsn" else None
    seen = current.seen.get(cluster.name) if monotonic_reads() else None
    if seen is None:
        return _Limits(current, current.mode, required, pinned, replayed)
    bound, stay = _bound(cluster, seen)
    allowed = sticky.monotonic_allowed(
        seen, cluster.replicas, health.positions(cluster.name), bound=bound, stay=stay
    )
    return _Limits(current, current.mode, required, pinned, replayed, allowed, seen.node or None, bound)


def _bound(cluster: Cluster, seen: sticky.Seen) -> tuple[int | None, bool]:
    """Return ``switch_bound`` of ``seen`` from the health snapshot, and whether its node may stay."""
    if not seen.node:
        return seen.floor, False
    snapshot = health.snapshot(cluster.name)
    latest = _probe(snapshot.nodes.get(seen.node)) if snapshot is not None else None
    after = seen.until + sticky.CLOCK_MARGIN
    last = health.probe_after(cluster.name, seen.node, after)
    writer = snapshot.writer if snapshot is not None else None
    first = health.probe_after(cluster.name, writer, after) if writer else None
    bound = sticky.switch_bound(
        seen, sticky.Probe(*last) if last else None, sticky.Probe(*first) if first else None
    )
    return bound, sticky.stays(seen, latest)


def _probe(node: Any) -> sticky.Probe | None:
    if node is None or node.failures:
        return None
    return sticky.Probe(node.probed_at, node.position, node.started_at)


def _replayed(cluster: Cluster) -> dict[str, int | None]:
    """Return the replicas' positions a fresh snapshot knows from successful probes."""
    snapshot = health.snapshot(cluster.name)
    if snapshot is None or snapshot.stale():
        return {}
    return {
        alias: node.position
        for alias, node in snapshot.nodes.items()
        if alias in cluster.replicas and not node.failures and node.checked_at is not None
    }


def observe(cluster: Cluster, node: str) -> None:
    """Record that this context's session read ``cluster`` from ``node`` (monotonic reads)."""
    state = context.current_state()
    if state is None or state.sticky is None or not monotonic_reads():
        return
    current: sticky.StickyState = state.sticky
    if node == cluster.primary:
        current.primary_reads.add(cluster.name)
    seen = current.seen.get(cluster.name)
    if seen is not None and seen.node == node and time.time() <= seen.until:
        return
    current.observe(cluster.name, node, None if seen is None else _bound(cluster, seen)[0])


def fallback_candidates(cluster: Cluster, alias: str) -> frozenset[str]:
    """Return the replicas that may lend reads of ``alias`` to this context: usable, caught up with the
    session's position, allowed by monotonic reads (the primary, always allowed, comes after them)."""
    usable = health.usable_replicas(cluster.name) - {alias}
    limits = _limits(cluster, context.forced_mode())
    if limits.pinned or (limits.required is not None and limits.mode == "time"):
        return frozenset()
    if limits.required is not None:
        usable = sticky.caught_up(usable, health.positions(cluster.name), limits.required)
    if limits.monotonic is not None:
        usable &= limits.monotonic
    return usable
