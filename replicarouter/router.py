"""``ReplicaRouter``: writes to each cluster's primary, reads to a usable replica unless that could be stale.

A read goes to the primary when ``use_primary()`` is in force, when an atomic block is open on the
primary (reads in a transaction must see its own writes and a consistent snapshot), or when this request
or task already wrote to the cluster; otherwise to a replica chosen by ``BALANCE`` among the usable ones,
and to the primary when none is usable. ``use_replica()`` lifts the last two rules except inside a
transaction that wrote. Deciding does no I/O: settings and topology are cached, state is in contextvars.
"""

from __future__ import annotations

from typing import Any

from . import context, health, selection, stats, sticky
from .conf import routing, topology
from .health import monitor
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


def _sticky_candidates(cluster: Cluster, state: sticky.StickyState, usable: frozenset[str]) -> frozenset[str]:
    """Return the replicas that may serve this session's read: those that replayed its last write."""
    required = state.required(cluster.name)
    if required is None:
        return usable
    if state.mode == "time":
        eligible: frozenset[str] = frozenset()
    else:
        eligible = sticky.caught_up(usable, health.positions(cluster.name), required)
        if eligible and eligible == usable:
            state.release.add(cluster.name)  # every replica has it: the position can go
    stats.incr("sticky_decisions", cluster.name, "replica" if eligible else "primary")
    return eligible


def choose_read_alias(cluster: Cluster, balance: str = "round_robin") -> str:
    """Return the alias for a read on ``cluster`` given the current context (see the module docstring)."""
    primary = cluster.primary
    mode = context.forced_mode()
    if mode == context.PRIMARY or not cluster.replicas:
        return primary
    if context.in_atomic(primary):
        if mode != context.REPLICA or context.wrote(cluster.name):
            return primary
    elif mode != context.REPLICA and context.wrote(cluster.name):
        return primary
    monitor.ensure_running()
    usable = health.usable_replicas(cluster.name)
    if mode != context.REPLICA:
        state = context.current_state()
        if state is not None and state.sticky is not None:
            usable = _sticky_candidates(cluster, state.sticky, usable)
            if not usable:
                return primary
    if balance == "round_robin":
        choice = selection.round_robin(cluster, usable)
    elif balance == "random":
        choice = selection.weighted_random(cluster, usable)
    else:
        choice = selection.least_lag(cluster, usable, health.lag_seconds(cluster.name))
    return choice or primary
