"""The health monitor: one daemon thread per process, one prober per cluster across all processes.

Design:

- **Lazy and fork-aware.** ``ensure_started()`` runs on the router's path; it starts the thread
  (``replicarouter-monitor``) the first time a process routes, and again in a forked child (threads do
  not survive fork). ``AppConfig.ready()`` starts nothing, so a pre-fork master that never routes never
  runs one. ``stop()`` (also at interpreter exit) sets an Event and joins the thread.
- **One leader per cluster.** With ``REDIS_URL``, each round a process tries to take or renew the
  cluster's lease (``SET NX PX``, renewed only by its holder through a compare-and-expire script; it
  expires after ``LEASE_INTERVALS`` intervals). The holder probes every node and publishes the snapshot;
  the others read it. A leader that dies stops renewing and another takes over within a lease period;
  until then, followers that find the snapshot stale probe for themselves. Redis errors never reach a
  request: the process probes for itself until Redis answers again.
- **Exclusion drops connections.** When a replica stops being usable in this process's view, its pool's
  idle connections are closed: they may be stuck on a frozen server or point at a node that left.
- **Never Django's connections**: probes use their own (``probe.Prober``), with a hard deadline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, replace
from typing import Any

from replicarouter import pool as pools
from replicarouter import redis_client as shared_redis
from replicarouter import runtime
from replicarouter.conf import settings, topology
from replicarouter.observability import stats
from replicarouter.routing.topology import Cluster

from .probe import Prober, ProbeResult, connection_params
from .rules import Election, NodeHealth, PrimaryHistory, Rules, elect, next_health, usable
from .store import Snapshot, clear, set_snapshot, snapshot

logger = logging.getLogger("replicarouter.health")

LEASE_INTERVALS = 3
SNAPSHOT_TTL_INTERVALS = 10

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


def rules() -> Rules:
    """Return the state-machine rules from the settings."""
    return Rules.from_settings(settings)


def _databases() -> dict[str, Any]:
    from django.conf import settings as django_settings

    return dict(django_settings.DATABASES)


def initial_nodes(cluster: Cluster, databases: dict[str, Any]) -> dict[str, NodeHealth]:
    """Return ``unknown`` health for every node of ``cluster``, with host and port from DATABASES."""
    nodes = {}
    for alias in (cluster.primary, *cluster.replicas):
        entry = databases.get(alias, {})
        role = "primary" if alias == cluster.primary else "replica"
        nodes[alias] = NodeHealth(
            alias, role, host=str(entry.get("HOST") or ""), port=str(entry.get("PORT") or "")
        )
    return nodes


class ClusterProbe:
    """Probing one cluster: the prober's connections, the primary's history, the nodes' states."""

    def __init__(self, cluster: Cluster, databases: dict[str, Any], timeout: float) -> None:
        self.cluster = cluster
        self.key = self._key(cluster, databases, timeout)
        params = {a: connection_params(databases[a], timeout) for a in (cluster.primary, *cluster.replicas)}
        self.prober = Prober(params)
        self.history = PrimaryHistory()

    @staticmethod
    def _key(cluster: Cluster, databases: dict[str, Any], timeout: float) -> str:
        aliases = (cluster.primary, *cluster.replicas)
        return repr(
            (cluster, timeout, [sorted((k, repr(v)) for k, v in databases[a].items()) for a in aliases])
        )

    def round(
        self, nodes: dict[str, NodeHealth], timeout: float, rules: Rules, previous: Election | None
    ) -> tuple[dict[str, NodeHealth], Election]:
        """Probe every node once and return their next health and writer (changes are logged)."""
        return judge(
            self.cluster,
            nodes,
            self.prober.probe(timeout),
            rules=rules,
            history=self.history,
            previous=previous.active if previous is not None else None,
            known_timeline=previous.timeline if previous is not None else 0,
            elected_before=previous is not None,
        )

    def close(self) -> None:
        self.prober.close()


def judge(
    cluster: Cluster,
    nodes: dict[str, NodeHealth],
    results: dict[str, ProbeResult],
    *,
    rules: Rules,
    history: PrimaryHistory | None,
    previous: str | None = None,
    known_timeline: int = 0,
    log: bool = True,
    elected_before: bool = False,
) -> tuple[dict[str, NodeHealth], Election]:
    """Return the nodes' next health and the elected writer, given one round of probe results.

    A change of writer is logged when an earlier round elected one (``elected_before``; its writer,
    ``previous``, may be None: a failover from "no primary" to a promoted replica is a change too).

    Lag is measured against the elected primary's position; while no primary answers, against the last
    position a primary was seen at (replicas that replayed it are as current as any readable node).
    """
    now = time.time()
    claims = {a: r.timeline for a, r in results.items() if r.ok and not r.in_recovery}
    unreachable = frozenset(
        a for a, r in results.items() if not r.ok and a in nodes and nodes[a].failures + 1 >= rules.fall
    )
    election = elect(
        cluster.primary, claims, previous=previous, known_timeline=known_timeline, unreachable=unreachable
    )
    primary_position = None
    if election.active in claims:
        primary_position = results[election.active].position
        if primary_position is not None and history is not None:
            history.add(now, primary_position)
    elif history is not None and history.samples:
        primary_position = history.samples[-1][1]
    updated = {}
    for alias, node in nodes.items():
        new, reason = next_health(
            node, results[alias], primary_position=primary_position, history=history, rules=rules, now=now
        )
        fenced = alias in election.fenced
        if fenced != new.fenced:
            new = replace(new, fenced=fenced)
            reason = "fenced: " + election.reason if fenced else "no longer fenced"
        if log and (new.state != node.state or new.promoted != node.promoted or new.fenced != node.fenced):
            log_change(node, new, reason)
        updated[alias] = new
    if log and elected_before and election.active != previous:
        level = logging.WARNING if election.active != cluster.primary else logging.INFO
        logger.log(
            level,
            "cluster %s: writes now go to %s (were %s): %s",
            cluster.name,
            election.active,
            previous,
            election.reason,
            extra={
                "replicarouter_event": "writer_change",
                "replicarouter_cluster": cluster.name,
                "replicarouter_writer": election.active,
                "replicarouter_previous_writer": previous,
                "replicarouter_reason": election.reason,
            },
        )
    return updated, election


def log_change(old: NodeHealth, new: NodeHealth, reason: str) -> None:
    """Log one state change as a structured line."""
    level = logging.INFO if new.state == "up" and not new.promoted else logging.WARNING
    logger.log(
        level,
        "node %s: %s -> %s (%s) lag_bytes=%s lag_seconds=%s%s",
        new.alias,
        old.state,
        new.state,
        reason,
        new.lag_bytes,
        new.lag_seconds,
        (" PROMOTED" if new.promoted else "") + (" FENCED" if new.fenced else ""),
        extra={
            "replicarouter_event": "node_state",
            "replicarouter_node": new.alias,
            "replicarouter_old_state": old.state,
            "replicarouter_new_state": new.state,
            "replicarouter_reason": reason,
            "replicarouter_lag_bytes": new.lag_bytes,
            "replicarouter_lag_seconds": new.lag_seconds,
        },
    )


class Monitor:
    """Keeps every cluster's snapshot fresh in this process (see the module docstring)."""

    def __init__(self) -> None:
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probes: dict[str, ClusterProbe] = {}
        self._nodes: dict[str, dict[str, NodeHealth]] = {}
        self._elections: dict[str, Election] = {}
        #: when each cluster was first seen without a writer (for PROMOTE_AFTER)
        self._writer_lost: dict[str, float] = {}
        self._promotions: dict[str, threading.Thread] = {}
        #: the last node seen taking each cluster's writes (a failover is counted when another one does)
        self._last_writer: dict[str, str] = {}
        self._redis_ok: bool | None = None
        #: rounds this process probed a cluster itself (tests and benchmarks count them)
        self.probe_rounds = 0
        self.rounds = 0
        #: how long the last round took, and the longest one (a frozen node must not stretch them)
        self.last_round_seconds = 0.0
        self.max_round_seconds = 0.0

    # -- thread ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = runtime.start_thread("replicarouter-monitor", self._run)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, close probe connections, release leases."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for promotion in self._promotions.values():
            promotion.join(timeout)
        for probe in self._probes.values():
            probe.close()
        self._release_leases()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            interval = settings.CHECK_INTERVAL
            try:
                self.round()
            except Exception:  # the loop must survive anything: log and try again next interval
                logger.exception("health monitor round failed")
            self.last_round_seconds = time.monotonic() - started
            self.max_round_seconds = max(self.max_round_seconds, self.last_round_seconds)
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    # -- one round -----------------------------------------------------------------------------------------

    def round(self) -> None:
        """Refresh every cluster's snapshot once (lead and probe, or read the leader's)."""
        self.rounds += 1
        databases = _databases()
        timeout = settings.CHECK_TIMEOUT
        interval = settings.CHECK_INTERVAL
        current = rules()
        client = self._redis_client()
        for cluster in topology().clusters:
            nodes = self._nodes.get(cluster.name) or initial_nodes(cluster, databases)
            previous = self._elections.get(cluster.name)
            source, published_at = "local", time.time()
            leader: str | None = self.identity
            if client is not None:
                try:
                    if self._lead(client, cluster, interval):
                        nodes, election = self._probe(cluster, nodes, databases, timeout, current, previous)
                        election = self._maybe_promote(cluster, nodes, election, databases)
                        published_at = time.time()
                        self._publish(client, cluster, nodes, election, interval, published_at)
                        source = "leader"
                    else:
                        fetched = self._fetch(client, cluster, interval)
                        if fetched is None:  # the leader is late or gone: see for ourselves meanwhile
                            probed = self._probe(cluster, nodes, databases, timeout, current, previous)
                            nodes, election = probed
                        else:
                            nodes, election, leader, published_at = fetched
                            if previous is not None and previous.timeline > election.timeline:
                                election = replace(election, timeline=previous.timeline)
                            source = "redis"
                    self._set_redis_ok(True)
                except Exception as exc:
                    self._set_redis_ok(False, exc)
                    nodes, election = self._probe(cluster, nodes, databases, timeout, current, previous)
                    source, leader, published_at = "local", self.identity, time.time()
            else:
                nodes, election = self._probe(cluster, nodes, databases, timeout, current, previous)
            self._nodes[cluster.name] = nodes
            self._elections[cluster.name] = election
            self._apply(cluster, nodes, election, source, leader, published_at, interval)

    def _probe(
        self,
        cluster: Cluster,
        nodes: dict[str, NodeHealth],
        databases: dict[str, Any],
        timeout: float,
        current: Rules,
        previous: Election | None,
    ) -> tuple[dict[str, NodeHealth], Election]:
        key = ClusterProbe._key(cluster, databases, timeout)
        probe = self._probes.get(cluster.name)
        if probe is None or probe.key != key:
            if probe is not None:
                probe.close()
            probe = self._probes[cluster.name] = ClusterProbe(cluster, databases, timeout)
        self.probe_rounds += 1
        return probe.round(nodes, timeout, current, previous)

    def _maybe_promote(
        self, cluster: Cluster, nodes: dict[str, NodeHealth], election: Election, databases: dict[str, Any]
    ) -> Election:
        """As the cluster's leader, start promoting a replica when PROMOTE_AFTER allows it (failover.py).

        The promotion runs in a thread of its own (``replicarouter-promote``): it waits for
        ``pg_promote()`` and re-points replicas, and the rounds must go on meanwhile, or the snapshot
        would go stale and every read fall back to the (dead) primary.
        """
        after = settings.PROMOTE_AFTER
        if after is None or election.active is not None:
            self._writer_lost.pop(cluster.name, None)
            return election
        lost = self._writer_lost.setdefault(cluster.name, time.monotonic())
        running = self._promotions.get(cluster.name)
        if time.monotonic() - lost < after or (running is not None and running.is_alive()):
            return election
        from . import failover

        self._promotions[cluster.name] = runtime.start_thread(
            "replicarouter-promote",
            failover.promote,
            cluster,
            dict(nodes),
            databases,
            waited=time.monotonic() - lost,
        )
        return replace(election, reason=f"promotion started: {election.reason}")

    def _apply(
        self,
        cluster: Cluster,
        nodes: dict[str, NodeHealth],
        election: Election,
        source: str,
        leader: str | None,
        published_at: float,
        interval: float,
    ) -> None:
        previous = snapshot(cluster.name)
        now_usable = usable(nodes)
        if previous is not None:
            for alias in previous.usable - now_usable:
                pools.registry.dispose(alias)  # idle connections to an excluded replica are suspect
            if previous.active != election.active:
                # the primary alias's connections point at the former writer: none may be reused
                pools.registry.dispose(cluster.primary)
            for alias in election.fenced - {a for a, n in previous.nodes.items() if n.fenced}:
                pools.registry.dispose(alias)
        last = self._last_writer.get(cluster.name)
        if election.active is not None:
            if last is not None and election.active != last:
                stats.incr("failovers", cluster.name)
            self._last_writer[cluster.name] = election.active
        lag = {a: n.lag_seconds for a, n in nodes.items() if n.lag_seconds is not None}
        set_snapshot(
            cluster.name,
            Snapshot(
                nodes=nodes,
                usable=now_usable,
                lag_seconds=lag,
                positions={a: n.position for a, n in nodes.items()},
                received=time.monotonic(),
                published_at=published_at,
                source=source,
                leader=leader,
                interval=interval,
                timeout=settings.CHECK_TIMEOUT,
                extra={"redis": self.redis_state()},
                active=election.active,
                reason=election.reason,
                timeline=election.timeline,
            ),
        )

    # -- redis ---------------------------------------------------------------------------------------------

    def redis_state(self) -> str:
        """Return ``up``, ``down`` or ``not configured``."""
        if not settings.REDIS_URL:
            return "not configured"
        return "up" if self._redis_ok else "down"

    def _set_redis_ok(self, ok: bool, exc: Exception | None = None) -> None:
        if ok and self._redis_ok is False:
            logger.warning(
                "redis is back: sharing health through it again", extra={"replicarouter_event": "redis_up"}
            )
        elif not ok and self._redis_ok is not False:
            logger.warning(
                "redis unreachable (%s): probing from this process until it returns",
                exc,
                extra={"replicarouter_event": "redis_down"},
            )
        self._redis_ok = ok

    def _redis_client(self) -> Any:
        return shared_redis.client()

    def _key(self, cluster: Cluster, what: str) -> str:
        return shared_redis.key("health", cluster.name, what)

    def _lead(self, client: Any, cluster: Cluster, interval: float) -> bool:
        key = self._key(cluster, "leader")
        ttl = int(LEASE_INTERVALS * interval * 1000)
        if client.set(key, self.identity, nx=True, px=ttl):
            logger.info(
                "this process (%s) now probes cluster %r",
                self.identity,
                cluster.name,
                extra={"replicarouter_event": "leader", "replicarouter_cluster": cluster.name},
            )
            return True
        return bool(client.eval(_RENEW, 1, key, self.identity, ttl))

    def _publish(
        self,
        client: Any,
        cluster: Cluster,
        nodes: dict[str, NodeHealth],
        election: Election,
        interval: float,
        published_at: float,
    ) -> None:
        payload = {
            "published_at": published_at,
            "leader": self.identity,
            "interval": interval,
            "nodes": {alias: asdict(node) for alias, node in nodes.items()},
            "active": election.active,
            "timeline": election.timeline,
            "reason": election.reason,
        }
        ttl = int(SNAPSHOT_TTL_INTERVALS * interval * 1000)
        client.set(self._key(cluster, "snapshot"), json.dumps(payload), px=ttl)

    def _fetch(
        self, client: Any, cluster: Cluster, interval: float
    ) -> tuple[dict[str, NodeHealth], Election, str | None, float] | None:
        return fetch_snapshot(client, self._key(cluster, "snapshot"), cluster, interval)

    def _release_leases(self) -> None:
        if not settings.REDIS_URL:
            return
        client = shared_redis.client()
        for name in list(self._nodes):
            key = shared_redis.key("health", name, "leader")
            with contextlib.suppress(Exception):  # expire our lease now, if it is still ours
                client.eval(_RENEW, 1, key, self.identity, 1)


def fetch_snapshot(
    client: Any, key: str, cluster: Cluster, interval: float
) -> tuple[dict[str, NodeHealth], Election, str | None, float] | None:
    """Return a published snapshot's nodes, writer, leader and time; None if missing, unreadable or stale."""
    raw = client.get(key)
    if raw is None:
        return None
    try:
        payload = json.loads(raw)
        nodes = {alias: NodeHealth(**data) for alias, data in payload["nodes"].items()}
        published_at = float(payload["published_at"])
        active = payload.get("active", cluster.primary)
        election = Election(
            None if active is None else str(active),
            frozenset(a for a, n in nodes.items() if n.fenced),
            int(payload.get("timeline") or 0),
            str(payload.get("reason") or ""),
        )
    except (ValueError, TypeError, KeyError):
        logger.warning(
            "ignoring an unreadable health snapshot at %s", key, extra={"replicarouter_event": "bad_snapshot"}
        )
        return None
    if set(nodes) != {cluster.primary, *cluster.replicas}:
        return None  # published for another topology
    if time.time() - published_at > LEASE_INTERVALS * interval:
        return None
    if election.active is not None and election.active not in nodes:
        return None
    return nodes, election, payload.get("leader"), published_at


_lock = threading.Lock()
_monitor: Monitor | None = None
_started = False


def ensure_running() -> None:
    """Start this process's monitor unless it runs already (the router calls this: a flag check)."""
    runtime.check_fork()
    if not _started:
        ensure_started()


def ensure_started() -> Monitor:
    """Return this process's monitor, starting it on first use (and again in a forked child)."""
    global _monitor, _started
    runtime.check_fork()
    monitor = _monitor
    if monitor is not None and monitor.is_alive():
        return monitor
    with _lock:
        monitor = _monitor
        if monitor is None or not monitor.is_alive():
            monitor = Monitor()
            monitor.start()
            _monitor = monitor
            _started = True
        return monitor


def running() -> Monitor | None:
    """Return this process's running monitor, if any."""
    monitor = _monitor
    if monitor is not None and monitor.is_alive():
        return monitor
    return None


@runtime.on_stop
def stop(timeout: float = 5.0) -> None:
    """Stop this process's monitor (no thread is left behind) and forget its snapshots."""
    global _monitor, _started
    with _lock:
        monitor, _monitor = _monitor, None
        _started = False
    if monitor is not None:
        monitor.stop(timeout)
    clear()


@runtime.on_fork
def _forget_parent() -> None:
    """In a forked child: the parent's monitor thread is gone, and its snapshots say nothing certain."""
    global _monitor, _started, _lock
    _monitor, _started, _lock = None, False, threading.Lock()
    clear()
