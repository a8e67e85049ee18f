"""Shared set-up of the integration tests that route through a running monitor."""

from __future__ import annotations

from typing import Any


def ready_for_routing(cluster: Any) -> None:
    """Start the monitor, wait until both replicas are usable, seed one row and wait for replication."""
    from replicarouter import health, request_context
    from replicarouter.health import monitor
    from replicarouter.testing.base import wait_for
    from tests.testapp.models import Item

    monitor.ensure_started()
    wait_for(
        "both replicas usable",
        lambda: health.usable_replicas("default") == {"replica1", "replica2"},
        timeout=10,
    )
    with request_context():
        Item.objects.create(name="seed")
    cluster.wait_caught_up()
