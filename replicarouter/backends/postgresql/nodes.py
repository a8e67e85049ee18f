"""Borrowing from the cluster's other nodes for one wrapper: what ``lending`` decides, done.

A replica alias whose own node cannot serve borrows from the replica ``selection.fallback_replica``
names (from that alias's pool, with its parameters), then from the primary alias's writer, in a
read-only session (the connection is marked tainted, so ``DISCARD ALL`` undoes that on its way back,
whatever ``RESET`` says). Each fallback is counted (``read_fallbacks``) and logged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg2

from replicarouter import pool as pools
from replicarouter.conf import topology
from replicarouter.exceptions import ConfigurationError
from replicarouter.health import store as health
from replicarouter.observability import stats
from replicarouter.routing import router, selection
from replicarouter.routing.topology import Cluster

if TYPE_CHECKING:
    from .base import DatabaseWrapper

logger = logging.getLogger("replicarouter.failover")


def wrapper(alias: str) -> DatabaseWrapper:
    """Return this thread's Django wrapper of ``alias``."""
    from django.db import connections

    found: DatabaseWrapper = connections[alias]
    return found


def connection_params(alias: str) -> dict[str, Any]:
    """Return the connection parameters of ``alias`` (those its own wrapper would connect with)."""
    params: dict[str, Any] = wrapper(alias).get_connection_params()
    return params


def server(conn: Any) -> str:
    """Return ``host:port`` of a driver connection ("?" when it cannot tell)."""
    try:
        return f"{conn.info.host}:{conn.info.port}"
    except Exception:
        return "?"


def first_line(exc: BaseException | None) -> str:
    """Return the first line of an error's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: the server's start time, as the monitor's probe reads it (the same expression: equal when unchanged)
STARTED_SQL = "SELECT extract(epoch FROM pg_postmaster_start_time())"


def connect(alias: str, params: dict[str, Any]) -> Any:
    """Open a new driver connection for the pool of ``alias``; refuse a replica restarted since its probe.

    A standby that restarts comes back at its last restart point, possibly behind the position the
    health snapshot still shows for it; reads routed by that position would be stale. So a new
    connection to a replica alias whose server started after the one the monitor last probed is closed
    and refused (``OperationalError``: the caller falls back, and the alias is a suspect of this process
    until a probe of the new server). Existing connections need no check: a restart broke them.
    """
    conn = psycopg2.connect(**params)
    try:
        cluster = topology().by_alias.get(alias)
    except ConfigurationError:
        return conn
    if cluster is None or alias not in cluster.replicas:
        return conn
    node = health.node(cluster.name, alias)
    known = None if node is None else node.started_at
    if known is None:
        return conn
    try:
        with conn.cursor() as cursor:
            cursor.execute(STARTED_SQL)
            started = float(cursor.fetchone()[0])
        conn.rollback()
    except Exception:
        conn.close()
        raise
    if abs(started - known) > 1e-3:
        conn.close()
        health.suspect(cluster.name, alias)
        logger.warning(
            "replica %s restarted after its last probe: not read until the monitor probes it again",
            alias,
            extra={"replicarouter_node": alias, "replicarouter_event": "replica_restarted"},
        )
        raise psycopg2.OperationalError(f"replica {alias} restarted after its last probe")
    return conn


def borrow_fallback(cluster: Cluster, alias: str, error: Exception | None) -> pools.Borrowed:
    """Lend, for reads of replica ``alias``, a connection to another usable replica, else the primary."""
    failures = [f"{alias}: {first_line(error) if error else 'found broken by an earlier request'}"]
    # the session's position and monotonic reads bind the fallback as they bound the router's choice
    replica = selection.fallback_replica(cluster, alias, router.fallback_candidates(cluster, alias))
    if replica is not None:
        lender = wrapper(replica)
        try:
            borrowed = lender.checkout_from(lender.connection_pool(lender.get_connection_params()))
        except psycopg2.OperationalError as exc:
            health.suspect(cluster.name, replica)
            failures.append(f"{replica}: {first_line(exc)}")
        else:
            router.observe(cluster, replica)
            stats.incr("read_fallbacks", alias)
            logger.warning(
                "replica %s unavailable (%s): its reads go to %s",
                alias, failures[0], replica,
                extra={"replicarouter_node": alias, "replicarouter_event": "read_fallback"},
            )  # fmt: skip
            return borrowed
    borrowed = wrapper(cluster.primary).borrow_from_writer(
        cluster, context="no replica could serve the read either (" + "; ".join(failures) + "); "
    )
    _make_read_only(borrowed)
    router.observe(cluster, cluster.primary)
    stats.incr("read_fallbacks", alias)
    logger.warning(
        "replicas unavailable (%s): reads of %s go to the primary (%s)",
        "; ".join(failures), alias, server(borrowed.connection),
        extra={"replicarouter_node": alias, "replicarouter_event": "read_fallback"},
    )  # fmt: skip
    return borrowed


def _make_read_only(borrowed: pools.Borrowed) -> None:
    """Make a primary's connection lent for a replica alias's reads refuse writes, on whatever node."""
    conn = borrowed.connection
    try:
        if not conn.autocommit:
            conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SET default_transaction_read_only = on")
        borrowed.tainted = True  # DISCARD ALL when it goes back, even with RESET = "rollback"
    except Exception:
        borrowed.pool.checkin(borrowed, reusable=False)
        raise
