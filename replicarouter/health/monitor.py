"""The health monitor's loop: one daemon thread per process, one round per ``CHECK_INTERVAL``.

Design:

- **Lazy and fork-aware.** ``ensure_started()`` runs on the router's path; it starts the thread
  (``replicarouter-monitor``) the first time a process routes, and again in a forked child (threads do
  not survive fork). ``AppConfig.ready()`` starts nothing, so a pre-fork master that never routes never
  runs one. ``stop()`` (also at interpreter exit) sets an Event and joins the thread.
- **A round is a few named steps per cluster.** With ``REDIS_URL``: take or renew the cluster's lease
  (``shared.lead``); as its leader, probe, judge and log (``probe.ClusterProbe.round``), start a promotion
  when ``PROMOTE_AFTER`` allows (``failover.Promotions``) and publish (``shared.publish``); as a follower,
  read the leader's snapshot (``shared.fetch``), and probe for ourselves while it is missing, stale or
  names servers our own probes did not reach (another site's).
  Then dispose of the pools the round made suspect, count a failover, install the snapshot (``store``).
  Without Redis each process probes for itself. Redis errors never reach a request: the process probes
  for itself until Redis answers again. Last, the process reports its pools and counters
  (``observability.fleet.publish``) so that ``replicastatus`` and the metrics can sum every process's.
- **Exclusion drops connections.** When a replica stops being usable in this process's view, its pool's
  idle connections are closed: they may be stuck on a frozen server or point at a node that left. The
  same goes for the primary alias when the writer changes, and for a node that gets fenced.
- **Never Django's connections**: probes use their own (``probe.Prober``), with a hard deadline.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from replicarouter import redis_client as shared_redis
from replicarouter import runtime
from replicarouter.conf import settings, topology
from replicarouter.observability import fleet, stats
from replicarouter.routing.topology import Cluster

from . import shared
from .election import Election
from .failover import Promotions
from .probe import ClusterProbe
from .rules import NodeHealth, Rules, initial_nodes, usable
from .store import Snapshot, clear, set_snapshot, snapshot
from .views import Inputs, View, dispose_suspect_pools, followed

logger = logging.getLogger("replicarouter.health")


def rules() -> Rules:
    """Return the state-machine rules from the settings."""
    return Rules.from_settings(settings)


def _databases() -> dict[str, Any]:
    from django.conf import settings as django_settings

    return dict(django_settings.DATABASES)


class Monitor:
    """Keeps every cluster's snapshot fresh in this process (see the module docstring)."""

    def __init__(self) -> None:
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probes: dict[str, ClusterProbe] = {}
        self._nodes: dict[str, dict[str, NodeHealth]] = {}
        self._elections: dict[str, Election] = {}
        self._promotions = Promotions()
        #: the last node seen taking each cluster's writes (a failover is counted when another one does)
        self._last_writer: dict[str, str] = {}
        self._redis_ok: bool | None = None
        #: the system identifiers this process's own last probe of each cluster saw (fetch checks them)
        self._identifiers: dict[str, frozenset[str]] = {}
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
        self._promotions.join(timeout)
        for probe in self._probes.values():
            probe.close()
        client = shared_redis.client()
        if client is not None:
            shared.release(client, list(self._nodes), self.identity)
            fleet.withdraw(client, self.identity)

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
        inputs = Inputs(_databases(), settings.CHECK_INTERVAL, settings.CHECK_TIMEOUT, rules())
        client = shared_redis.client()
        for cluster in topology().clusters:
            nodes = self._nodes.get(cluster.name) or initial_nodes(cluster, inputs.databases)
            previous = self._elections.get(cluster.name)
            if client is None:
                view = self._local(cluster, nodes, previous, inputs)
            else:
                view = self._shared(client, cluster, nodes, previous, inputs)
            self._nodes[cluster.name] = view.nodes
            self._elections[cluster.name] = view.election
            self._apply(cluster, view, inputs)
        if client is not None:  # this process's pools and counters, for every process's one view
            fleet.publish(client, self.identity, inputs.interval, inputs.timeout)

    def _shared(
        self,
        client: Any,
        cluster: Cluster,
        nodes: dict[str, NodeHealth],
        previous: Election | None,
        inputs: Inputs,
    ) -> View:
        """Lead (probe, promote, publish) or follow the leader's snapshot; probe here while Redis fails."""
        try:
            if shared.lead(client, cluster.name, self.identity, inputs.interval):
                nodes, election = self._probe(cluster, nodes, previous, inputs)
                election = self._promotions.start_if_due(
                    cluster, nodes, election, inputs.databases, settings.PROMOTE_AFTER
                )
                published = shared.Published(nodes, election, self.identity, time.time())
                shared.publish(client, cluster.name, published, inputs.interval)
                view = View(nodes, election, "leader", self.identity, published.published_at)
            else:
                known = self._identifiers.get(cluster.name, frozenset())
                fetched = shared.fetch(client, cluster, inputs.interval, known)
                if fetched is None:  # the leader is late or gone: see for ourselves meanwhile
                    view = self._local(cluster, nodes, previous, inputs)
                else:
                    view = followed(fetched, previous)
            self._set_redis_ok(True)
        except Exception as exc:
            self._set_redis_ok(False, exc)
            view = self._local(cluster, nodes, previous, inputs)
        return view

    def warm(self) -> None:
        """Install the leader's fresh snapshots before the first round (the warm start).

        A new process then routes its first reads by them, not all to the primary. Only what
        ``shared.fetch`` accepts (fresh, this topology); one GET per cluster, on ``request_client()``.
        """
        client = shared_redis.request_client()
        inputs = Inputs(_databases(), settings.CHECK_INTERVAL, settings.CHECK_TIMEOUT, rules())
        installed = 0
        for cluster in topology().clusters if client is not None else ():
            try:
                fetched = shared.fetch(client, cluster, inputs.interval)
            except Exception as exc:  # slow or down: the first round decides, as without a snapshot
                logger.info("no warm start (redis: %s)", exc, extra={"replicarouter_event": "warm_skipped"})
                break
            if fetched is not None:
                view = followed(fetched, None)
                self._nodes[cluster.name], self._elections[cluster.name] = view.nodes, view.election
                self._apply(cluster, view, inputs)
                installed += 1
        stats.incr("warm_starts", "snapshot" if installed else "none")

    def _local(
        self, cluster: Cluster, nodes: dict[str, NodeHealth], previous: Election | None, inputs: Inputs
    ) -> View:
        published_at = time.time()
        nodes, election = self._probe(cluster, nodes, previous, inputs)
        return View(nodes, election, "local", self.identity, published_at)

    def _probe(
        self, cluster: Cluster, nodes: dict[str, NodeHealth], previous: Election | None, inputs: Inputs
    ) -> tuple[dict[str, NodeHealth], Election]:
        key = ClusterProbe.key_for(cluster, inputs.databases, inputs.timeout)
        probe = self._probes.get(cluster.name)
        if probe is None or probe.key != key:
            if probe is not None:
                probe.close()
            probe = self._probes[cluster.name] = ClusterProbe(cluster, inputs.databases, inputs.timeout)
        self.probe_rounds += 1
        nodes, election = probe.round(nodes, inputs.timeout, inputs.rules, previous)
        self._identifiers[cluster.name] = frozenset(
            n.system_identifier for n in nodes.values() if n.system_identifier
        )
        return nodes, election

    def _apply(self, cluster: Cluster, view: View, inputs: Inputs) -> None:
        """Dispose of the pools this round made suspect, count a failover, install the snapshot."""
        now_usable = usable(view.nodes)
        previous = snapshot(cluster.name)
        if previous is not None:
            dispose_suspect_pools(cluster, previous, now_usable, view.election)
        writer = view.election.writer
        if writer is not None:
            last = self._last_writer.get(cluster.name)
            if last is not None and writer != last:
                stats.incr("failovers", cluster.name)
            self._last_writer[cluster.name] = writer
        lag = {a: n.lag_seconds for a, n in view.nodes.items() if n.lag_seconds is not None}
        set_snapshot(
            cluster.name,
            Snapshot(
                nodes=view.nodes,
                usable=now_usable,
                lag_seconds=lag,
                positions={a: n.position for a, n in view.nodes.items()},
                received=time.monotonic(),
                published_at=view.published_at,
                source=view.source,
                leader=view.leader,
                interval=inputs.interval,
                timeout=inputs.timeout,
                extra={"redis": self.redis_state()},
                writer=writer,
                reason=view.election.reason,
                timeline=view.election.timeline,
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


_lock = threading.Lock()
_monitor: Monitor | None = None


def ensure_running() -> None:
    """Start this process's monitor unless it runs already (the router calls this: a flag check)."""
    runtime.check_fork()
    if _monitor is None:
        ensure_started()


def ensure_started() -> Monitor:
    """Return this process's monitor, starting it on first use (and again in a forked child)."""
    global _monitor
    runtime.check_fork()
    monitor = _monitor
    if monitor is not None and monitor.is_alive():
        return monitor
    with _lock:
        monitor = _monitor
        if monitor is None or not monitor.is_alive():
            monitor = Monitor()
            monitor.warm()
            monitor.start()
            _monitor = monitor
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
    global _monitor
    with _lock:
        monitor, _monitor = _monitor, None
    if monitor is not None:
        monitor.stop(timeout)
    clear()


@runtime.on_fork
def _forget_parent() -> None:
    """In a forked child: the parent's monitor thread is gone, and its snapshots say nothing certain."""
    global _monitor, _lock
    _monitor, _lock = None, threading.Lock()
    clear()
