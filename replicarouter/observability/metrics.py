"""Prometheus metrics for replicarouter (the ``prometheus`` extra): nodes, lag, pools, routing, failures.

Everything is read at scrape time from what the process keeps anyway (the health snapshot, the pool
registry, the ``stats`` counters): the request path does no Prometheus work. The numbers are this
process's: with several worker processes, scrape each one (or sum them) as with any per-process client
metrics. Node state and lag are the same in every process (the monitor's snapshot, shared through Redis).
The ``fleet_*`` gauges are the exception: sums over every live process of the site, read from the
reports the processes' monitors publish in Redis (``fleet``; one Redis read per cluster per scrape), so
that a scrape that reaches any one worker behind a shared port still sees every worker's pools.

Use it with ``path("metrics", replicarouter.metrics.metrics_view)`` in your URLconf, or ``register()`` on
the registry your exporter already serves. Names are listed in ``METRIC_NAMES`` and docs/metrics.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "replicarouter.metrics needs prometheus-client: pip install 'django-replicarouter[prometheus]'"
    ) from exc

from replicarouter import __version__, pool_stats
from replicarouter import redis_client as shared_redis
from replicarouter.conf import settings, topology
from replicarouter.health import store as health
from replicarouter.health.monitor import running
from replicarouter.sticky import guard
from replicarouter.sticky.breaker import CLOSED

from . import fleet, stats

STATES = ("up", "lagging", "down", "unknown")

#: (name, help, label names) of the gauges read from the health snapshot and the pools
GAUGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("node_state", "1 for the node's current state (up, lagging, down, unknown), 0 for the others",
     ("cluster", "alias", "role", "state")),
    ("node_writer", "1 for the node that takes the cluster's writes now", ("cluster", "alias")),
    ("node_fenced", "1 for a second primary on an older timeline (it gets no traffic)", ("cluster", "alias")),
    ("replica_lag_bytes", "WAL bytes the replica has not replayed yet (absent when unknown)",
     ("cluster", "alias")),
    ("replica_lag_seconds", "Seconds the replica's replay is behind the primary (absent when unknown)",
     ("cluster", "alias")),
    ("health_snapshot_age_seconds", "Seconds since this process's health snapshot was published",
     ("cluster",)),
    ("monitor_leader", "1 when this process probes the cluster for everyone (holds the Redis lease)",
     ("cluster",)),
    ("redis_breaker_open", "1 while the request path skips Redis (circuit breaker open or half-open)", ()),
    ("pool_size", "Pool SIZE of the alias in this process", ("alias",)),
    ("pool_checked_out", "Connections of the alias's pool in use now", ("alias",)),
    ("pool_overflow", "Connections in use beyond SIZE (up to MAX_OVERFLOW)", ("alias",)),
    ("pool_idle", "Open connections waiting in the alias's pool", ("alias",)),
    ("info", "replicarouter version", ("version",)),
    ("fleet_processes", "Processes of the site whose pools and counters were summed (live reports in Redis)",
     ("cluster",)),
    ("fleet_pool_size", "Pool SIZE of the alias summed over every live process of the site",
     ("cluster", "alias")),
    ("fleet_pool_checked_out", "Connections of the alias in use now, summed over every live process",
     ("cluster", "alias")),
    ("fleet_pool_overflow", "Connections beyond SIZE, summed over every live process", ("cluster", "alias")),
    ("fleet_pool_idle", "Idle connections of the alias, summed over every live process",
     ("cluster", "alias")),
    ("fleet_reads_routed", "Sum of the live processes' reads_routed counters: a gauge, it falls when a "
     "process exits (rate() the per-process counter instead)", ("cluster", "alias")),
    ("fleet_writes_routed", "Sum of the live processes' writes_routed counters: a gauge, it falls when a "
     "process exits (rate() the per-process counter instead)", ("cluster", "alias")),
)  # fmt: skip

#: counters whose sums over the live processes are exported as ``fleet_<name>`` gauges
FLEET_COUNTERS = ("reads_routed", "writes_routed")

#: every family name as it appears in PromQL (counters with their ``_total`` suffix)
METRIC_NAMES: frozenset[str] = frozenset(
    {f"replicarouter_{name}" for name, _, _ in GAUGES}
    | {f"replicarouter_{name}_total" for name in stats.COUNTERS}
    | {"replicarouter_pool_exhausted_total"}
)


class ReplicaRouterCollector(Collector):
    """Collect replicarouter's metrics from the process's own state at scrape time."""

    def collect(self) -> Iterator[Metric]:
        """Yield one family per metric in ``METRIC_NAMES``."""
        gauges = {
            name: GaugeMetricFamily(f"replicarouter_{name}", text, labels=list(labels))
            for name, text, labels in GAUGES
        }
        gauges["info"].add_metric([__version__], 1)
        gauges["redis_breaker_open"].add_metric([], guard.breaker().state != CLOSED)
        self._nodes(gauges)
        self._fleet(gauges)
        exhausted = CounterMetricFamily(
            "replicarouter_pool_exhausted",
            "Checkouts that gave up with PoolExhausted (SIZE + MAX_OVERFLOW in use for TIMEOUT)",
            labels=["alias"],
        )
        for alias, values in sorted(pool_stats().items()):
            for key in ("size", "checked_out", "overflow", "idle"):
                gauges[f"pool_{key}"].add_metric([alias], values[key])
            exhausted.add_metric([alias], values["timeouts"])
        yield from gauges.values()
        yield exhausted
        for name, (text, labels) in stats.COUNTERS.items():
            family = CounterMetricFamily(f"replicarouter_{name}", text, labels=list(labels))
            for values_, count in sorted(stats.values(name).items()):
                family.add_metric(list(values_), count)
            yield family

    @staticmethod
    def _fleet(gauges: dict[str, GaugeMetricFamily]) -> None:
        """Add the sums over every live process of the site (one Redis read per cluster, see fleet)."""
        monitor = running()
        client = shared_redis.client()
        for cluster in topology().clusters:
            view = fleet.view(
                cluster,
                client,
                identity=None if monitor is None else monitor.identity,
                interval=settings.CHECK_INTERVAL,
                timeout=settings.CHECK_TIMEOUT,
            )
            gauges["fleet_processes"].add_metric([cluster.name], view.processes)
            for alias, figures in view.pools.items():
                for key, value in figures.items():
                    gauges[f"fleet_pool_{key}"].add_metric([cluster.name, alias], value)
            for name in FLEET_COUNTERS:
                for values, count in sorted(view.counters.get(name, {}).items()):
                    gauges[f"fleet_{name}"].add_metric(list(values), count)

    @staticmethod
    def _nodes(gauges: dict[str, GaugeMetricFamily]) -> None:
        monitor = running()
        identity = monitor.identity if monitor is not None else None
        state_gauge = gauges["node_state"]
        for cluster in topology().clusters:
            snap = health.snapshot(cluster.name)
            if snap is None:
                for alias in (cluster.primary, *cluster.replicas):
                    role = "primary" if alias == cluster.primary else "replica"
                    for state in STATES:
                        state_gauge.add_metric([cluster.name, alias, role, state], state == "unknown")
                continue
            gauges["health_snapshot_age_seconds"].add_metric(
                [cluster.name], max(0.0, time.time() - snap.published_at)
            )
            leads = identity is not None and snap.leader == identity
            gauges["monitor_leader"].add_metric([cluster.name], leads)
            for alias, node in snap.nodes.items():
                role = node.role if node.role in ("primary", "replica") else node.configured_role
                for state in STATES:
                    state_gauge.add_metric([cluster.name, alias, role, state], node.state == state)
                gauges["node_writer"].add_metric([cluster.name, alias], alias == snap.writer)
                gauges["node_fenced"].add_metric([cluster.name, alias], node.fenced)
                if node.lag_bytes is not None:
                    gauges["replica_lag_bytes"].add_metric([cluster.name, alias], node.lag_bytes)
                if node.lag_seconds is not None:
                    gauges["replica_lag_seconds"].add_metric([cluster.name, alias], node.lag_seconds)


_registered: dict[int, ReplicaRouterCollector] = {}


def register(registry: CollectorRegistry = REGISTRY) -> ReplicaRouterCollector:
    """Register the collector on ``registry`` (the default one unless given); again is a no-op."""
    collector = _registered.get(id(registry))
    if collector is None:
        collector = _registered[id(registry)] = ReplicaRouterCollector()
        registry.register(collector)
    return collector


def metrics_view(request: Any) -> Any:
    """Serve the default registry (replicarouter's metrics included) in Prometheus text format."""
    from django.http import HttpResponse

    from replicarouter.health import monitor

    register()
    monitor.ensure_running()  # a scrape before the first routed read still reports measured nodes
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
