"""Positions outlive the cluster (issue 17): a rebuilt cluster (a new initdb, lower LSNs) and a session that
still holds the old cluster's position, in its signed cookie and in Redis.

Cluster 1 is the session's cluster, its WAL pushed far ahead; cluster 2 is a fresh one (the "rebuild"),
whose site has the same SECRET_KEY, so cluster 1's cookie is valid there. Before the fix the session's
reads stayed on cluster 2's primary (the old position could never be replayed), and each write kept the
old maximum.
"""

from __future__ import annotations

import logging

import pytest
from django.conf import settings
from django.test import Client

from replicarouter.observability import stats
from replicarouter.sticky import policy as sticky
from replicarouter.sticky import store as stickystore
from replicarouter.testing.base import wait_for
from tests.helpers import routed
from tests.integration.test_promotion import django_on
from tests.testapp.models import Item

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases="__all__")]

#: how far cluster 1's WAL is pushed past cluster 2's (bytes)
AHEAD = 256 << 20


def _lsn(node):
    return stickystore.lsn_to_int(node.scalar("SELECT pg_current_wal_lsn()::text"))


def _ports(cluster):
    return {n.port: ("primary" if n.role == "primary" else "replica") for n in cluster.nodes}


def _where(client, item_id, cluster):
    response = client.get("/sticky/read/", {"id": item_id})
    assert response.status_code == 200
    return _ports(cluster)[response.json()["port"]]


def _foreign(reason):
    return stats.total("sticky_foreign_positions", cluster="default", reason=reason)


def test_rebuilt_cluster_with_an_old_cookie_and_redis_value_reads_from_replicas(
    replica_cluster, replica_cluster_factory, caplog
):
    caplog.set_level(logging.WARNING, logger="replicarouter.sticky")
    rebuilt = replica_cluster_factory(replicas=2)
    client = Client()
    with routed(replica_cluster, CHECK_INTERVAL=0.2, CHECK_TIMEOUT=0.4):
        while _lsn(replica_cluster.primary) < _lsn(rebuilt.primary) + AHEAD:
            replica_cluster.primary.query(
                "CREATE TABLE IF NOT EXISTS wal_push (i int); INSERT INTO wal_push VALUES (1); "
                "SELECT pg_switch_wal()"
            )
        assert client.get("/sticky/write/", {"name": "cluster 1"}).status_code == 200
    old = sticky.read_cookie(client.cookies[sticky.COOKIE_NAME].value, "lsn", 60)
    assert old.positions["default"] > _lsn(rebuilt.primary) + AHEAD // 2  # beyond cluster 2's future
    assert old.incarnations["default"].system  # recorded with cluster 1's identifier

    with django_on(rebuilt):
        interval = settings.REPLICAROUTER["CHECK_INTERVAL"]
        seed = Item.objects.using("default").values_list("pk", flat=True).first()
        dropped = _foreign("system")
        # the old cookie's reads go to replicas (the snapshot is fresh: from the first request on)
        wait_for("a read of the session on a replica", lambda: _where(client, seed, rebuilt) == "replica",
                 timeout=2 * interval + 5)  # fmt: skip
        assert [_where(client, seed, rebuilt) for _ in range(10)] == ["replica"] * 10
        assert _foreign("system") > dropped
        logged = [
            r for r in caplog.records if getattr(r, "replicarouter_event", "") == "sticky_foreign_position"
        ]
        assert logged and "rebuilt" in logged[0].getMessage(), caplog.messages

        # a session that keeps writing: its position is cluster 2's, not the old maximum
        assert client.get("/sticky/write/", {"name": "cluster 2"}).status_code == 200
        new = sticky.read_cookie(client.cookies[sticky.COOKIE_NAME].value, "lsn", 60)
        assert new.positions["default"] < old.positions["default"]
        assert new.incarnations["default"] != old.incarnations["default"]

        # the same session's Redis value from the old cluster (the previous format: no incarnation),
        # beyond cluster 2's primary: dropped, deleted, and reads go back to replicas
        session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
        identity = sticky.identity("session", session_key, settings.SECRET_KEY)
        key = stickystore._key("default", identity)
        import redis

        r = redis.Redis.from_url(rebuilt.redis_url)
        try:
            # a write replaces a stored position of another incarnation (the Lua advance: not the max). A
            # request-path Redis call may time out on a loaded machine (50 ms; the breaker then skips Redis
            # for a second): write until one reaches Redis
            huge = str(old.positions["default"])
            r.set(key, huge, px=60_000)

            def replaced():
                assert client.get("/sticky/write/", {"name": "again"}).status_code == 200
                stored = (r.get(key) or b"").decode()
                return stored not in ("", huge) and stored

            stored = wait_for("a write replacing the old Redis value", replaced, timeout=10)
            assert int(stored.split("@")[0]) < old.positions["default"], stored
            assert stored.endswith("@" + new.incarnations["default"].token()), stored
            # a read finds the old value again (no incarnation, beyond cluster 2's primary): dropped,
            # counted, deleted (compare and delete), and the read goes to a replica
            r.set(key, huge, px=60_000)
            unknown = _foreign("unknown")
            on_replica = lambda: _where(client, seed, rebuilt) == "replica"  # noqa: E731
            wait_for("a read on a replica despite the old Redis value", on_replica, timeout=interval * 2 + 5)
            assert _foreign("unknown") > unknown
            wait_for("the old value deleted", lambda: _where(client, seed, rebuilt) and r.get(key) is None,
                     timeout=10)  # fmt: skip
        finally:
            r.close()
