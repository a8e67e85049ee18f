"""``replicarouter.status()``: what ``replicastatus`` shows, as data.

(The module is not called ``status``: importing a submodule of that name would replace the
``replicarouter.status`` function with the module.)

Where the numbers come from, freshest first: this process's monitor (if it runs here and is current),
the snapshot the cluster's leader published in Redis, or, for a fresh process with neither (a
``manage.py replicastatus`` on a box without Redis), one direct probe of every node, judged on that
probe alone. Passwords never appear: hosts and ports come from DATABASES, nothing else of it (also
when the numbers come from Redis: a snapshot there cannot make this process show another host).
A snapshot in Redis that fails validation (``health.schema``) is not used at all: a direct probe is.

A node's ``pool`` figures are summed over every live process of the site, each reporting its own through
Redis (``fleet``), with ``processes`` saying how many reported; without Redis they are this process's
own, and ``processes`` is 1.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import replace
from typing import Any

from replicarouter import redis_client as shared_redis
from replicarouter.conf import settings, topology
from replicarouter.health import shared
from replicarouter.health import store as health
from replicarouter.health.election import Election
from replicarouter.health.monitor import running
from replicarouter.health.probe import Prober, connection_params
from replicarouter.health.rules import NodeHealth, Rules, initial_nodes, judge

from . import fleet, stats

EXIT_HEALTHY, EXIT_DEGRADED, EXIT_CRITICAL = 0, 1, 2


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="milliseconds")


def _node(node: NodeHealth, configured: NodeHealth, processes: fleet.View) -> dict[str, Any]:
    data = node.public()
    data["host"], data["port"] = configured.host, configured.port  # DATABASES', not what Redis says
    data["checked_at"] = _iso(node.checked_at)
    # summed over every live process of the site (this one alone without Redis), and how many reported
    data["pool"] = {**processes.pools[node.alias], "processes": processes.processes}
    return data


def _probe_once(cluster: Any, databases: dict[str, Any]) -> tuple[dict[str, NodeHealth], Election]:
    timeout = settings.CHECK_TIMEOUT
    params = {a: connection_params(databases[a], timeout) for a in (cluster.primary, *cluster.replicas)}
    prober = Prober(params)
    try:
        results = prober.probe(timeout)
    finally:
        prober.close()
    rules = replace(Rules.from_settings(settings), fall=1, rise=1)
    # a one-off probe: judged on itself alone (no history; its transitions are not logged)
    verdict = judge(
        cluster,
        initial_nodes(cluster, databases),
        results,
        rules=rules,
        history=None,
        previous=None,
        now=time.time(),
    )
    return verdict.nodes, verdict.election


def status(cluster: str | None = None) -> dict[str, Any]:
    """Return ``{"clusters": {name: {"primary", "replicas", "monitor"}}, "sticky": {...}}`` (see docs).

    ``sticky`` holds this process's read-your-writes counters: reads checked against a session position,
    reads sent to the primary because of it, releases, Redis errors.
    """
    from django.conf import settings as django_settings

    databases = dict(django_settings.DATABASES)
    redis_client = shared_redis.client()
    out: dict[str, Any] = {"clusters": {}, "sticky": _sticky_counters(cluster)}
    for spec in topology().clusters:
        if cluster is not None and spec.name != cluster:
            continue
        out["clusters"][spec.name] = _cluster_status(spec, databases, redis_client)
    return out


def _sticky_counters(cluster: str | None) -> dict[str, int]:
    """Return this process's read-your-writes counters (see ``stats.COUNTERS``)."""
    match = {} if cluster is None else {"cluster": cluster}
    return {
        "sticky_reads": stats.total("sticky_decisions", **match),
        "sticky_primary_reads": stats.total("sticky_decisions", decision="primary", **match),
        "releases": stats.total("sticky_releases", **match),
        "redis_errors": stats.total("sticky_store_errors"),
        "redis_skipped": stats.total("redis_skipped"),
    }


def _cluster_status(spec: Any, databases: dict[str, Any], redis_client: Any) -> dict[str, Any]:
    interval = settings.CHECK_INTERVAL
    monitor: dict[str, Any] = {"interval": interval, "leader": None, "published_at": None}
    nodes: dict[str, NodeHealth] | None = None
    writer: str | None = spec.primary
    reason = ""
    local = health.snapshot(spec.name)
    if running() is not None and local is not None and not local.stale():
        nodes = dict(local.nodes)
        writer, reason = local.writer, local.reason
        monitor.update(
            source=f"this process ({local.source})", leader=local.leader, published_at=local.published_at
        )
        monitor["redis"] = local.extra.get("redis")
    if nodes is None and redis_client is not None:
        try:
            fetched = shared.fetch(redis_client, spec, interval)
            monitor["redis"] = "up"
        except Exception as exc:
            fetched = None
            monitor["redis"] = f"down ({exc})"
        if fetched is not None:
            nodes, election, leader, published_at = fetched
            writer, reason = election.writer, election.reason
            monitor.update(source="redis", leader=leader, published_at=published_at)
    if nodes is None:
        nodes, election = _probe_once(spec, databases)
        writer, reason = election.writer, election.reason
        monitor.update(source="direct probe", published_at=time.time())
        monitor.setdefault("redis", "not configured" if redis_client is None else monitor.get("redis"))
    published = monitor["published_at"]
    monitor["age_seconds"] = None if published is None else round(max(0.0, time.time() - published), 3)
    monitor["published_at"] = _iso(published)
    configured = initial_nodes(spec, databases)
    own = running()
    processes = fleet.view(
        spec,
        redis_client,
        identity=None if own is None else own.identity,
        interval=interval,
        timeout=settings.CHECK_TIMEOUT,
    )
    return {
        "primary": _node(nodes[spec.primary], configured[spec.primary], processes),
        "replicas": [_node(nodes[alias], configured[alias], processes) for alias in spec.replicas],
        # "writes_to", not "writer": users script against status() and replicastatus --json
        "writes_to": writer,
        "writer_reason": reason,
        "monitor": monitor,
    }


def exit_code(data: dict[str, Any]) -> int:
    """Return 0 (all healthy), 1 (degraded) or 2 (critical), as documented in docs/operations.md.

    Critical: the configured primary is not up (even when writes have moved to a promoted replica:
    someone must rebuild it or change DATABASES), no node takes writes, a second primary is fenced
    (split brain), or nothing is readable. Degraded: a replica is down, lagging, unknown or promoted.
    """
    code = EXIT_HEALTHY
    for cluster in data["clusters"].values():
        nodes = [cluster["primary"], *cluster["replicas"]]
        writer = cluster.get("writes_to", cluster["primary"]["alias"])
        if cluster["primary"]["state"] != "up" or writer is None or any(n.get("fenced") for n in nodes):
            return EXIT_CRITICAL
        replicas_up = [r for r in cluster["replicas"] if r["state"] == "up" and not r.get("promoted")]
        if len(replicas_up) < len(cluster["replicas"]):
            code = EXIT_DEGRADED
    return code
