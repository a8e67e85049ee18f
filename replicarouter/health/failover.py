"""Promotion by the monitor leader (``PROMOTE_AFTER``; off by default).

When the cluster has had no writer for ``PROMOTE_AFTER`` seconds (the primary is ``down`` and no replica
was promoted by anything else), the process holding the cluster's Redis lease promotes the replica
that has *received* the most WAL (``pg_promote()``), then points every other replica at it
(``ALTER SYSTEM SET primary_conninfo`` with the promoted node's HOST/PORT from DATABASES, then
``pg_reload_conf()``). The next round sees the promoted node on a new timeline and elects it; the former
primary, if it comes back, is fenced.

Risks (docs/operations.md): a primary that is only unreachable *from the application* keeps running and
accepting writes from elsewhere (split brain that fencing hides from this application only); writes it
acknowledged but the replica had not received are lost; it needs superuser (or ``pg_promote`` and
``ALTER SYSTEM`` grants) on the replicas. Patroni, with a consensus store and real fencing, is the tool
for production; this is for small set-ups and tests.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from replicarouter import runtime
from replicarouter.observability import stats
from replicarouter.routing.topology import Cluster

from .election import Election
from .probe import connection_params
from .rules import NodeHealth

logger = logging.getLogger("replicarouter.health")

PROMOTE_WAIT_SECONDS = 10


def candidate(cluster: Cluster, nodes: Mapping[str, NodeHealth]) -> str | None:
    """Return the replica to promote: answering, a standby, not fenced, the most WAL received."""
    eligible = [
        n
        for alias, n in nodes.items()
        if alias in cluster.replicas
        and n.failures == 0
        and n.role == "replica"
        and n.state != "down"
        and not n.fenced
        and n.checked_at is not None
    ]
    if not eligible:
        return None

    def caught_up(n: NodeHealth) -> tuple[int, int]:
        received = max(n.received or 0, n.position or 0)
        return received, n.position or 0

    best = max(eligible, key=lambda n: (*caught_up(n), -cluster.replicas.index(n.alias)))
    return best.alias


def _connect(settings_dict: Mapping[str, Any]) -> Any:
    import psycopg2

    params = connection_params(dict(settings_dict), 2.0)
    params["application_name"] = "replicarouter-failover"
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    return conn


def _event(name: str, cluster: Cluster) -> dict[str, str]:
    return {"replicarouter_event": name, "replicarouter_cluster": cluster.name}


def promote(
    cluster: Cluster, nodes: Mapping[str, NodeHealth], databases: Mapping[str, Any], *, waited: float
) -> str | None:
    """Promote the best replica and re-point the others at it; return its alias (None: nothing done)."""
    alias = candidate(cluster, nodes)
    if alias is None:
        logger.error(
            "cluster %s: no writer for %.1f s, no replica answers: nothing to promote",
            cluster.name,
            waited,
            extra=_event("promotion_failed", cluster),
        )
        return None
    node = nodes[alias]
    logger.warning(
        "cluster %s: no writer for %.1f s (PROMOTE_AFTER): promoting %s (received up to %s)",
        cluster.name,
        waited,
        alias,
        node.received,
        extra={**_event("promotion", cluster), "replicarouter_node": alias},
    )
    try:
        conn = _connect(databases[alias])
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_promote(true, %s)", (PROMOTE_WAIT_SECONDS,))
                promoted = bool(cursor.fetchone()[0])
        finally:
            conn.close()
    except Exception as exc:
        logger.error(
            "cluster %s: promoting %s failed: %s",
            cluster.name,
            alias,
            exc,
            extra=_event("promotion_failed", cluster),
        )
        return None
    if not promoted:
        logger.error(
            "cluster %s: %s did not finish promotion within %d s",
            cluster.name,
            alias,
            PROMOTE_WAIT_SECONDS,
            extra=_event("promotion_failed", cluster),
        )
        return None
    target = databases[alias]
    for other in cluster.replicas:
        if other == alias or nodes[other].failures:
            continue
        try:
            repoint(databases[other], str(target.get("HOST") or ""), str(target.get("PORT") or ""))
        except Exception as exc:
            logger.error(
                "cluster %s: could not point %s at %s: %s",
                cluster.name, other, alias, exc,
                extra=_event("repoint_failed", cluster),
            )  # fmt: skip
        else:
            logger.warning(
                "cluster %s: %s now streams from %s",
                cluster.name,
                other,
                alias,
                extra=_event("repoint", cluster),
            )
    stats.incr("promotions", cluster.name)
    return alias


class Promotions:
    """The promotions this process starts as its clusters' leader, each in a thread of its own.

    A promotion (``replicarouter-promote``) waits for ``pg_promote()`` and re-points replicas, and the
    monitor's rounds must go on meanwhile, or the snapshot would go stale and every read fall back to
    the (dead) primary.
    """

    def __init__(self) -> None:
        #: when each cluster was first seen without a writer (for PROMOTE_AFTER)
        self._writer_lost: dict[str, float] = {}
        self._threads: dict[str, threading.Thread] = {}

    def start_if_due(
        self,
        cluster: Cluster,
        nodes: Mapping[str, NodeHealth],
        election: Election,
        databases: Mapping[str, Any],
        after: float | None,
    ) -> Election:
        """Start promoting a replica once ``cluster`` had no writer for ``after`` seconds (never: None).

        Return the election, whose reason then says that a promotion started. Nothing starts while an
        earlier promotion of the cluster still runs.
        """
        if after is None or election.writer is not None:
            self._writer_lost.pop(cluster.name, None)
            return election
        lost = self._writer_lost.setdefault(cluster.name, time.monotonic())
        running = self._threads.get(cluster.name)
        if time.monotonic() - lost < after or (running is not None and running.is_alive()):
            return election
        self._threads[cluster.name] = runtime.start_thread(
            "replicarouter-promote", promote, cluster, dict(nodes), databases, waited=time.monotonic() - lost
        )
        return replace(election, reason=f"promotion started: {election.reason}")

    def join(self, timeout: float) -> None:
        """Wait for the promotions under way, each up to ``timeout`` seconds."""
        for thread in self._threads.values():
            thread.join(timeout)


def repoint(settings_dict: Mapping[str, Any], host: str, port: str) -> None:
    """Make a standby stream from ``host:port``: its own primary_conninfo with host and port replaced."""
    from psycopg2.extensions import make_dsn, parse_dsn

    conn = _connect(settings_dict)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT setting FROM pg_settings WHERE name = 'primary_conninfo'")
            current = parse_dsn(cursor.fetchone()[0] or "")
            if host:
                current["host"] = host
            if port:
                current["port"] = port
            cursor.execute("ALTER SYSTEM SET primary_conninfo = %s", (make_dsn(**current),))
            cursor.execute("SELECT pg_reload_conf()")
    finally:
        with contextlib.suppress(Exception):
            conn.close()
