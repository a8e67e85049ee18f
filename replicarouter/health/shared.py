"""What the processes of a site share through Redis: who probes each cluster (the lease), and what it saw.

Design:

- **One leader per cluster.** Each round a process tries to take or renew the cluster's lease
  (``SET NX PX``, renewed only by its holder through a compare-and-expire script; it expires after
  ``LEASE_INTERVALS`` intervals). The holder probes every node and publishes the snapshot; the others
  read it. A leader that dies stops renewing and another takes over within a lease period; until then,
  followers find the snapshot stale (older than a lease period) and probe for themselves.
- **Codec apart from I/O.** ``encode`` / ``decode`` turn a snapshot into JSON and back, and ``applies``
  says whether a decoded one may be used (published for this topology, fresh, naming a writer among its
  nodes): pure, unit-tested without Redis. ``lead``, ``release``, ``publish`` and ``fetch`` do the Redis
  calls, on the process's client and keys from ``replicarouter.redis_client``.
- **Bound to the cluster's databases.** The keys carry the cluster's fingerprint (``redis_client.key``),
  so another site's lease and snapshot are other keys. In depth: nodes publish their server's
  ``system_identifier``, and a process that probed its cluster itself ignores a snapshot naming an
  identifier its own probes did not see (``foreign``: logged once, counted as ``foreign_snapshots``).
- **The JSON is an external format**: processes of another release read it during a rolling deploy.
- **What is read from Redis is untrusted.** ``fetch`` asks Redis for the snapshot's length first and
  reads it only if it is within ``schema.size_limit`` (a 20 MB value costs neither the transfer nor a
  parse), then checks it against ``schema.check`` before using it. A value that fails is ignored (the
  caller probes for itself), counted (``redis_bad_values{kind}``) and logged once per process and kind;
  the next leader's publish overwrites it. A lease key without an expiry (nobody could ever take it) is
  given one by the process that finds it, in the same script that renews (``lease_repaired``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, fields
from typing import Any, NamedTuple

from replicarouter import redis_client as shared_redis
from replicarouter import runtime
from replicarouter.observability import stats
from replicarouter.routing.topology import Cluster

from . import schema
from .election import Election
from .rules import NodeHealth
from .schema import SNAPSHOT_TTL_INTERVALS

logger = logging.getLogger("replicarouter.health")

LEASE_INTERVALS = 3
_NODE_FIELDS = frozenset(f.name for f in fields(NodeHealth))

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
#: renew our lease (1); or, when it is someone else's key without an expiry, give it one (2: repaired)
_RENEW_OR_REPAIR = """
local kind = redis.call('type', KEYS[1])['ok']
if kind == 'string' and redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
if kind ~= 'none' and redis.call('pttl', KEYS[1]) == -1 then
    redis.call('pexpire', KEYS[1], ARGV[2])
    return 2
end
return 0
"""
#: the snapshot if it is a string of at most ARGV[1] bytes; its length if longer; -1 if not a string
_FETCH = """
local kind = redis.call('type', KEYS[1])['ok']
if kind == 'none' then
    return false
end
if kind ~= 'string' then
    return -1
end
local size = redis.call('strlen', KEYS[1])
if size > tonumber(ARGV[1]) then
    return size
end
return redis.call('get', KEYS[1])
"""
#: kinds of bad values this process already logged (logged once per kind, counted always)
_warned: set[str] = set()
runtime.on_reset(_warned.clear)


class Published(NamedTuple):
    """A cluster's snapshot as its leader published it."""

    nodes: dict[str, NodeHealth]
    election: Election
    leader: str | None
    published_at: float


def lease_key(cluster: str) -> str:
    """Return the Redis key of ``cluster``'s lease."""
    return shared_redis.key("health", cluster, "leader")


def snapshot_key(cluster: str) -> str:
    """Return the Redis key of ``cluster``'s published snapshot."""
    return shared_redis.key("health", cluster, "snapshot")


def lead(client: Any, cluster: str, identity: str, interval: float) -> bool:
    """Take or renew ``cluster``'s lease for ``identity``; return whether it holds the lease now."""
    key = lease_key(cluster)
    ttl = int(LEASE_INTERVALS * interval * 1000)
    if client.set(key, identity, nx=True, px=ttl):
        logger.info(
            "this process (%s) now probes cluster %r",
            identity,
            cluster,
            extra={"replicarouter_event": "leader", "replicarouter_cluster": cluster},
        )
        return True
    renewed = client.eval(_RENEW_OR_REPAIR, 1, key, identity, ttl)
    if renewed == 2:
        stats.incr("leases_repaired", cluster)
        if "lease" not in _warned:
            _warned.add("lease")
            logger.warning(
                "the lease of cluster %r at %s had no expiry (nobody could ever take it over): gave it one "
                "of %d ms (further repairs are only counted: leases_repaired)",
                cluster, key, ttl,
                extra={"replicarouter_event": "lease_repaired", "replicarouter_cluster": cluster},
            )  # fmt: skip
    return bool(renewed == 1)


def release(client: Any, clusters: Iterable[str], identity: str) -> None:
    """Expire the leases of ``clusters`` that ``identity`` still holds, now (errors are ignored)."""
    for cluster in clusters:
        with contextlib.suppress(Exception):  # expire our lease now, if it is still ours
            client.eval(_RENEW, 1, lease_key(cluster), identity, 1)


def publish(client: Any, cluster: str, published: Published, interval: float) -> None:
    """Publish ``cluster``'s snapshot for the other processes (it expires if nobody renews it)."""
    ttl = int(SNAPSHOT_TTL_INTERVALS * interval * 1000)
    client.set(snapshot_key(cluster), encode(published, interval), px=ttl)


def fetch(
    client: Any, cluster: Cluster, interval: float, known: frozenset[str] = frozenset()
) -> Published | None:
    """Return the snapshot published for ``cluster``; None if missing, invalid or not applicable.

    An invalid one (too large, not JSON, failing ``schema.check``) is counted and logged once per kind.
    ``known``: the system identifiers this process's own probes of ``cluster`` saw (empty if it never
    probed); a snapshot naming another one is ignored, logged once and counted.
    """
    key = snapshot_key(cluster.name)
    aliases = (cluster.primary, *cluster.replicas)
    limit = schema.size_limit(len(aliases))
    raw = client.eval(_FETCH, 1, key, limit)
    if raw is None:
        return None
    now = time.time()
    try:
        if isinstance(raw, int):  # not read: Redis said how long it is (or that it is not a string)
            if raw < 0:
                raise schema.BadSnapshot("snapshot_schema", "the key does not hold a string")
            schema.check_size(raw, len(aliases))
        else:
            schema.check_size(len(raw), len(aliases))
        try:
            payload = json.loads(raw)
        except ValueError as exc:  # UnicodeDecodeError included
            raise schema.BadSnapshot("snapshot_json", f"not JSON ({exc})") from exc
        schema.check(payload, aliases, now=now, interval=interval)
        published = _published(payload, cluster.primary)
    except ValueError as exc:
        kind = exc.kind if isinstance(exc, schema.BadSnapshot) else "snapshot_schema"
        _bad_snapshot(kind, key, exc)
        return None
    if not applies(published, cluster, interval=interval, now=now):
        return None
    stranger = foreign(published, known)
    if stranger is not None:
        stats.incr("foreign_snapshots", cluster.name)
        if f"foreign:{cluster.name}" not in _warned:
            _warned.add(f"foreign:{cluster.name}")
            logger.warning(
                "ignoring the health snapshot at %s: it names server %s, but this process's probes of "
                "cluster %r reached %s (another site's databases?); probing for itself",
                key,
                stranger,
                cluster.name,
                ", ".join(sorted(known)),
                extra={"replicarouter_event": "foreign_snapshot", "replicarouter_cluster": cluster.name},
            )
        return None
    return published


def _bad_snapshot(kind: str, key: str, exc: Exception) -> None:
    stats.incr("redis_bad_values", kind)
    if kind in _warned:
        return
    _warned.add(kind)
    logger.warning(
        "ignoring an invalid health snapshot at %s (%s: %s): probing from this process meanwhile "
        "(further ones of this kind are only counted: redis_bad_values)",
        key, kind, exc,
        extra={"replicarouter_event": "bad_snapshot", "replicarouter_kind": kind},
    )  # fmt: skip


def encode(published: Published, interval: float) -> str:
    """Return the JSON of a published snapshot."""
    payload = {
        "published_at": published.published_at,
        "leader": published.leader,
        "interval": interval,
        "nodes": {alias: _bounded(asdict(node)) for alias, node in published.nodes.items()},
        # "active", not "writer": processes of 0.1 read this key during a rolling deploy
        "active": published.election.writer,
        "timeline": published.election.timeline,
        "reason": published.election.reason[: schema.MAX_TEXT],
    }
    return json.dumps(payload)


def _bounded(node: dict[str, Any]) -> dict[str, Any]:
    """Return a node's fields with its free text cut to what ``schema.check`` accepts."""
    if node.get("error") is not None:
        node["error"] = node["error"][: schema.MAX_TEXT]
    return node


def decode(raw: str | bytes, configured: str) -> Published:
    """Return the snapshot in ``raw``; raise ValueError if it cannot be read.

    Its fenced nodes are those marked so. One without a writer field (published before failover
    existed) names the cluster's ``configured`` primary. (``fetch`` checks ``schema`` first.)
    """
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"unreadable health snapshot: {exc}") from exc
    return _published(payload, configured)


def _published(payload: Any, configured: str) -> Published:
    try:
        # fields a later release adds are ignored (a rolling deploy runs both releases side by side)
        nodes = {
            alias: NodeHealth(**{k: v for k, v in data.items() if k in _NODE_FIELDS})
            for alias, data in payload["nodes"].items()
        }
        published_at = float(payload["published_at"])
        writer = payload.get("active", configured)
        election = Election(
            None if writer is None else str(writer),
            frozenset(a for a, n in nodes.items() if n.fenced),
            int(payload.get("timeline") or 0),
            str(payload.get("reason") or ""),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"unreadable health snapshot: {exc}") from exc
    return Published(nodes, election, payload.get("leader"), published_at)


def applies(published: Published, cluster: Cluster, *, interval: float, now: float) -> bool:
    """Return whether a snapshot may be used: for ``cluster``'s nodes, fresh, its writer one of them."""
    if set(published.nodes) != {cluster.primary, *cluster.replicas}:
        return False  # published for another topology
    if now - published.published_at > LEASE_INTERVALS * interval:
        return False
    writer = published.election.writer
    return writer is None or writer in published.nodes


def foreign(published: Published, known: frozenset[str]) -> str | None:
    """Return a system identifier ``published`` names that is not in ``known`` (None: none, or nothing known).

    A primary and its standbys share one identifier; a node of another cluster has its own.
    """
    if not known:
        return None
    named = sorted({n.system_identifier for n in published.nodes.values() if n.system_identifier} - known)
    return named[0] if named else None
