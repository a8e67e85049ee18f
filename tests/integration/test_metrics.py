"""Prometheus metrics scraped over HTTP from a Django site routing through the real cluster."""

from __future__ import annotations

import logging
import time

import pytest
from django.db import connections
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from replicarouter import __version__, pool_stats, request_context
from replicarouter.health import store as health
from replicarouter.observability import stats
from replicarouter.observability.metrics import METRIC_NAMES
from replicarouter.testing.base import wait_for
from tests.helpers import routed
from tests.testapp.models import Item

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases="__all__")]

FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.4, "MAX_LAG_SECONDS": 1.0}
REPLICAS = ("replica1", "replica2")


def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics and return every sample as {(name, labels): value}."""
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def node_state(samples, alias, state) -> float | None:
    role = "primary" if alias == "default" else "replica"
    return value(samples, "replicarouter_node_state", cluster="default", alias=alias, role=role, state=state)


@pytest.fixture
def routing(replica_cluster, caplog):
    caplog.set_level(logging.INFO, logger="replicarouter")
    with routed(replica_cluster, **FAST) as values:
        yield values
        replica_cluster.heal()


def test_metrics_report_nodes_routing_and_pools(replica_cluster, routing, settings):
    """Every documented family is served; nodes up, writer, lag, routed reads/writes and pools add up."""
    before = scrape()
    with request_context():
        Item.objects.create(name="metrics")
    with request_context():  # a request that only reads
        for _ in range(10):
            assert Item.objects.count() >= 1
    connections.close_all()  # the end of both requests: nothing checked out
    replica_cluster.wait_caught_up()

    def caught_up_scrape():
        """Return a scrape taken between two rounds that shows both replicas caught up, and its times."""
        published, started = health.snapshot("default").published_at, time.time()
        current = scrape()
        ended = time.time()
        lag = "replicarouter_replica_lag_bytes"
        lags = [value(current, lag, cluster="default", alias=a) for a in REPLICAS]
        if health.snapshot("default").published_at != published or lags != [0, 0]:
            return None
        return current, started - published, ended - published

    samples, least, most = wait_for("a scrape showing both replicas caught up", caught_up_scrape, timeout=10)

    # the default registry also carries prometheus_client's process_* / python_* families
    families = {name.removesuffix("_total") for name, _ in samples if name.startswith("replicarouter_")}
    documented = {name.removesuffix("_total") for name in METRIC_NAMES}
    # counters with no event yet have no sample; everything that has one is documented
    assert families <= documented, families - documented
    assert value(samples, "replicarouter_info", version=__version__) == 1
    for alias in ("default", "replica1", "replica2"):
        assert node_state(samples, alias, "up") == 1
        assert node_state(samples, alias, "down") == 0
        assert value(samples, "replicarouter_node_fenced", cluster="default", alias=alias) == 0
    assert value(samples, "replicarouter_node_writer", cluster="default", alias="default") == 1
    assert value(samples, "replicarouter_node_writer", cluster="default", alias="replica1") == 0
    for alias in REPLICAS:
        assert value(samples, "replicarouter_replica_lag_seconds", cluster="default", alias=alias) == 0
    age = value(samples, "replicarouter_health_snapshot_age_seconds", cluster="default")
    assert age is not None and least <= age <= most  # the age of the snapshot the scrape read
    assert age < 3 * FAST["CHECK_INTERVAL"] + 1
    assert value(samples, "replicarouter_monitor_leader", cluster="default") == 1  # the only process

    def routed_reads(snapshot, alias):
        return value(snapshot, "replicarouter_reads_routed_total", cluster="default", alias=alias) or 0

    new_reads = sum(routed_reads(samples, a) - routed_reads(before, a) for a in ("replica1", "replica2"))
    assert new_reads >= 10  # Item.objects.count() x 10, none of them sticky (no session here)
    writes = [
        value(snapshot, "replicarouter_writes_routed_total", cluster="default", alias="default") or 0
        for snapshot in (before, samples)
    ]
    assert writes[1] - writes[0] >= 1
    size = settings.DATABASES["default"].get("POOL", {}).get("SIZE", 10)
    assert value(samples, "replicarouter_pool_size", alias="default") == size
    pool = pool_stats("default")["default"]
    assert value(samples, "replicarouter_pool_checked_out", alias="default") == pool["checked_out"] == 0
    assert value(samples, "replicarouter_pool_idle", alias="default") == pool["idle"] >= 1
    assert value(samples, "replicarouter_pool_exhausted_total", alias="default") == pool["timeouts"]


def test_replay_paused_shows_lag_and_sticky_decisions(replica_cluster, routing):
    """Fault: replay paused → replica1 reported lagging, bytes and seconds behind; sticky reads counted."""
    client = Client()
    replica_cluster.pause_replay("replica1")
    replica_cluster.pause_replay("replica2")
    try:
        decisions = stats.total("sticky_decisions", decision="primary")
        item = client.get("/sticky/write/", {"name": "lagging"}).json()["id"]
        assert client.get("/sticky/read/", {"id": item}).json()["found"]  # read-your-writes: from the primary

        samples = wait_for(
            "replica1 reported lagging",
            lambda: s if node_state(s := scrape(), "replica1", "lagging") == 1 else None,
            timeout=10,
        )
        assert value(samples, "replicarouter_replica_lag_bytes", cluster="default", alias="replica1") > 0
        assert value(samples, "replicarouter_replica_lag_seconds", cluster="default", alias="replica1") > 0
        now = value(samples, "replicarouter_sticky_decisions_total", cluster="default", decision="primary")
        assert now == decisions + 1  # the one read of the session
    finally:
        replica_cluster.resume_replay("replica1")
        replica_cluster.resume_replay("replica2")


def test_replica_killed_shows_down_and_counts_the_fallback(replica_cluster, routing, caplog):
    """Fault: replica1 killed → its explicit read served elsewhere, counted as a fallback, reported down."""
    replica_cluster.stop("replica1", "kill")
    connections["replica1"].close()
    from replicarouter import pool as pools

    pools.registry.dispose("replica1")
    before = stats.total("read_fallbacks", alias="replica1")
    assert Item.objects.using("replica1").filter(name="seed").exists()  # the user's read still succeeds
    samples = wait_for(
        "replica1 reported down",
        lambda: s if node_state(s := scrape(), "replica1", "down") == 1 else None,
        timeout=10,
    )
    assert value(samples, "replicarouter_read_fallbacks_total", alias="replica1") >= before + 1
    assert any("replica replica1 unavailable" in m for m in caplog.messages)
