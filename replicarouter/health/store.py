"""What the router knows about node health: the process-local snapshot it reads on every decision.

The monitor (``health.monitor``, started by the router on first use in each process) refreshes it every
``CHECK_INTERVAL``. The router asks two questions, both answered from memory: which replicas are usable,
and how far each lags. No snapshot yet (the monitor has not finished its first round) or a snapshot older
than ``STALE_INTERVALS`` intervals plus one ``CHECK_TIMEOUT`` means "unknown": no replica is usable and
reads go to the primary. The timeout is part of it because a round may legitimately last that long (its
probes' deadline) right after a short one: with ``CHECK_TIMEOUT`` near ``2 × CHECK_INTERVAL`` a single
slow probe would otherwise make a healthy monitor's snapshot stale and send every read to the primary.
Unknown lag is never zero.

It also answers the backend's question "which node takes this cluster's writes?" (``writer``):
the node the monitor elected (the configured primary, or a promoted replica on a newer timeline), or
None when the primary is down and nothing was promoted. And it keeps this process's *suspects*: replicas
a request just failed to read from (connection refused, broken or timed out). A suspect gets no reads
in this process until a probe that started after the failure finds it healthy, so a dead replica costs
at most the reads already in flight on it, which are retried elsewhere.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from replicarouter import runtime

from .rules import NodeHealth

STALE_INTERVALS = 3


@dataclass(frozen=True)
class Snapshot:
    """One cluster's health as this process last saw it."""

    nodes: Mapping[str, NodeHealth]
    usable: frozenset[str]
    lag_seconds: Mapping[str, float]
    #: WAL position per node when probed (replayed, for replicas)
    positions: Mapping[str, int | None]
    #: ``time.monotonic()`` when this process got it; its age decides staleness
    received: float
    #: wall-clock time the prober published it (for status output)
    published_at: float
    source: str  # "local" (probed here), "redis" (published by the leader)
    leader: str | None = None
    interval: float = 1.0
    #: the probe deadline (``CHECK_TIMEOUT``) of the rounds that refresh it: one round may take that long
    timeout: float = 0.0
    extra: Mapping[str, object] = field(default_factory=dict)
    #: the node that takes writes (see ``writer()``); None: no primary available
    writer: str | None = None
    #: why ``writer`` is what it is (for errors and status)
    reason: str = ""
    #: the newest timeline seen in this cluster
    timeline: int = 0

    @property
    def max_age(self) -> float:
        """Return how old this snapshot may get before it says nothing (see the module docstring)."""
        return STALE_INTERVALS * self.interval + self.timeout

    def stale(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) - self.received > self.max_age


_snapshots: dict[str, Snapshot] = {}
#: how many successful probes of each node are remembered (monotonic reads, ``probe_after``)
HISTORY = 16
#: (cluster, alias) → its last successful probes, oldest first: (probed_at, position, started_at)
_history: dict[tuple[str, str], collections.deque[tuple[float, int, float | None]]] = {}
_NOTHING: frozenset[str] = frozenset()
#: (cluster, alias) → wall-clock time a request found the node broken, in this process
_suspects: dict[tuple[str, str], float] = {}


def usable_replicas(cluster: str) -> frozenset[str]:
    """Return the usable replicas of ``cluster`` (none while health is unknown or stale)."""
    snapshot = _snapshots.get(cluster)
    if snapshot is None or time.monotonic() - snapshot.received > snapshot.max_age:
        return _NOTHING
    if _suspects:
        return snapshot.usable - {alias for (name, alias) in list(_suspects) if name == cluster}
    return snapshot.usable


def suspect(cluster: str, alias: str) -> None:
    """Take ``alias`` out of this process's reads until a later probe finds it healthy."""
    _suspects[(cluster, alias)] = time.time()


def is_suspect(cluster: str, alias: str) -> bool:
    """Return whether a request of this process found ``alias`` broken since it was last probed healthy."""
    return bool(_suspects) and (cluster, alias) in _suspects


def writer(cluster: str, configured: str) -> str | None:
    """Return the alias whose server takes ``cluster``'s writes now (None: no primary is available).

    Before the first snapshot, and when the monitor's view is stale and says nothing is available, the
    configured primary is tried: a connection attempt bounded by ``CONNECT_TIMEOUT`` decides.
    """
    snapshot = _snapshots.get(cluster)
    if snapshot is None:
        return configured
    if snapshot.writer is None and snapshot.stale():
        return configured
    return snapshot.writer


def node(cluster: str, alias: str) -> NodeHealth | None:
    """Return the last known health of one node (None before the first snapshot)."""
    snapshot = _snapshots.get(cluster)
    return None if snapshot is None else snapshot.nodes.get(alias)


def lag_seconds(cluster: str) -> Mapping[str, float]:
    """Return the last known replication lag of the replicas of ``cluster``, in seconds."""
    snapshot = _snapshots.get(cluster)
    return snapshot.lag_seconds if snapshot is not None else {}


def positions(cluster: str) -> Mapping[str, int | None]:
    """Return the WAL position each node of ``cluster`` had reached when last probed."""
    snapshot = _snapshots.get(cluster)
    return snapshot.positions if snapshot is not None else {}


def snapshot(cluster: str) -> Snapshot | None:
    """Return this process's latest snapshot of ``cluster`` (None before the first one)."""
    return _snapshots.get(cluster)


def incarnation(cluster: str) -> tuple[str, int, int | None] | None:
    """Return the writer's system identifier ("" unknown), the cluster's timeline and the writer's
    position, from a fresh snapshot with a writer; None when it does not know them (sticky positions
    of other incarnations are then kept: see ``sticky.incarnation``)."""
    snapshot = _snapshots.get(cluster)
    if snapshot is None or snapshot.writer is None or snapshot.stale():
        return None
    node = snapshot.nodes.get(snapshot.writer)
    if node is None or node.failures or node.checked_at is None:
        return None
    return node.system_identifier or "", snapshot.timeline, node.position


def probe_after(cluster: str, alias: str, moment: float) -> tuple[float, int, float | None] | None:
    """Return the earliest remembered successful probe of ``alias`` that started after ``moment``.

    ``(probed_at, position, started_at)``, or None when no such probe is remembered. The earliest, not
    the latest: under steady writes a replica's latest position trails the primary's latest one, but
    passes its position of a round or two before.
    """
    history = _history.get((cluster, alias))
    if not history:
        return None
    for entry in history:
        if entry[0] > moment:
            return entry
    return None


def _remember(cluster: str, value: Snapshot) -> None:
    for alias, node in value.nodes.items():
        if node.probed_at is None or node.position is None or node.failures:
            continue
        history = _history.get((cluster, alias))
        if history is None:
            history = _history[(cluster, alias)] = collections.deque(maxlen=HISTORY)
        if history and history[-1][0] >= node.probed_at:
            continue  # the same probe again (a snapshot refreshed without a new round), or an older one
        if history and node.started_at != history[-1][2]:
            history.clear()  # the server restarted: its earlier positions say nothing about it now
        history.append((node.probed_at, node.position, node.started_at))


def set_snapshot(cluster: str, value: Snapshot) -> None:
    """Install a new snapshot (called by the monitor); clear suspects it proves healthy again."""
    _snapshots[cluster] = value
    _remember(cluster, value)
    for key, since in list(_suspects.items()):
        name, alias = key
        if name != cluster or alias not in value.usable:
            continue
        node = value.nodes.get(alias)
        if node is None:
            continue
        # the probe must have started after the failure: its round's start when known, else the probe
        # ran between checked_at - interval and checked_at
        started = node.probed_at
        if started is None and node.checked_at is not None:
            started = node.checked_at - value.interval
        if started is not None and started > since:
            _suspects.pop(key, None)


def clear() -> None:
    """Forget every snapshot and suspect (the monitor stopped, or a forked child starts over)."""
    _snapshots.clear()
    _suspects.clear()
    _history.clear()


runtime.on_reset(clear)
