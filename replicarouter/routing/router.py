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

from typing import Any

from replicarouter.conf import routing, topology
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
        return cluster.primary  # before starting the monitor or loading the session's position
    monitor.ensure_running()
    usable = health.usable_replicas(cluster.name)
    sticky_state: sticky.StickyState | None = None
    required = None
    if forced != context.REPLICA:  # use_replica() ignores the position: do not load it
        state = context.current_state()
        if state is not None and state.sticky is not None:
            sticky_state = state.sticky
            required = sticky_state.required(cluster.name)
    route = selection.route_read(
        cluster,
        balance,
        forced=forced,
        in_atomic=in_atomic,
        wrote=wrote,
        usable=usable,
        sticky_mode=sticky_state.mode if sticky_state is not None else "lsn",
        required=required,
        positions=health.positions(cluster.name),
        lag=health.lag_seconds(cluster.name),
    )
    if route.sticky is not None:
        stats.incr("sticky_decisions", cluster.name, route.sticky)
    if route.release and sticky_state is not None:
        sticky_state.release.add(cluster.name)
    return route.alias
