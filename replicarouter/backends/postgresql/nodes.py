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
from replicarouter.health import store as health
from replicarouter.observability import stats
from replicarouter.routing import selection
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


def borrow_fallback(cluster: Cluster, alias: str, error: Exception | None) -> pools.Borrowed:
    """Lend, for reads of replica ``alias``, a connection to another usable replica, else the primary."""
    failures = [f"{alias}: {first_line(error) if error else 'found broken by an earlier request'}"]
    replica = selection.fallback_replica(cluster, alias, health.usable_replicas(cluster.name))
    if replica is not None:
        lender = wrapper(replica)
        try:
            borrowed = lender.checkout_from(lender.connection_pool(lender.get_connection_params()))
        except psycopg2.OperationalError as exc:
            health.suspect(cluster.name, replica)
            failures.append(f"{replica}: {first_line(exc)}")
        else:
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
