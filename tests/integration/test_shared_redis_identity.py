"""Two sites, one Redis, the default KEY_PREFIX and the same alias names: neither reads the other's data.

How the two sites run (two Django configurations in one test session):

- **Site A** is a second cluster of its own (primary + as many replicas as the session cluster, so the
  alias names are the same: ``default``, ``replica1``…) with its own Redis. Its monitor runs in a child
  process (``tests/integration/monitor_worker.py``) with A's DATABASES and the default KEY_PREFIX: a real
  second site, with settings no override in this process can leak into.
- **Site B** is this test process on the session cluster (its DATABASES, Django's ORM), with REDIS_URL
  pointed at **A's** Redis and the default KEY_PREFIX (``override_settings`` plus a fresh monitor, as the
  other health tests do). Its reads and writes go through the router, so what B's users see is tested.

The tests run in file order on one site A (module scope): the last one stops A's primary.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.db.models.expressions import RawSQL
from django.test import override_settings

from replicarouter import checks, request_context
from replicarouter import redis_client as shared_redis
from replicarouter.health import monitor, shared
from replicarouter.health import store as health
from replicarouter.health.probe import Prober, connection_params
from replicarouter.observability import stats
from replicarouter.routing.topology import build, fingerprint
from replicarouter.testing import django_settings
from replicarouter.testing.base import ClusterBase, wait_for
from replicarouter.testing.plugin import cluster_required
from replicarouter.testing.settings import cluster as make_cluster
from tests.testapp.models import Item

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases="__all__")]

FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.4, "FALL": 2, "RISE": 2, "MAX_LAG_SECONDS": 0.5}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = "replicarouter"  # the default KEY_PREFIX: neither site sets one


class SiteA:
    """The other site: its cluster, its monitor's process, and where it publishes in the shared Redis."""

    def __init__(self, cluster: ClusterBase) -> None:
        self.cluster = cluster
        self.values = django_settings(cluster, **FAST)
        spec = build(self.values["DATABASES"], self.values["REPLICAROUTER"]["CLUSTERS"])[0].default
        assert spec is not None
        self.fingerprint = fingerprint(spec, self.values["DATABASES"], socket.gethostname())
        self.redis = redis.Redis.from_url(cluster.redis_url)
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.cluster_settings",
               "REPLICAROUTER_TEST_SETTINGS": json.dumps(self.values)}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.monitor_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )  # fmt: skip

    def report(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def snapshot_key(self) -> str:
        return str(self.report()["snapshot_key"])  # where A's own process publishes

    def snapshot(self) -> shared.Published | None:
        raw = self.redis.get(self.snapshot_key())
        return None if raw is None else shared.decode(raw, "default")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.redis.close()


@pytest.fixture(scope="module")
def site_a(replica_cluster: ClusterBase) -> Iterator[SiteA]:
    instance = make_cluster(replicas=len(replica_cluster.replicas))
    try:
        instance.up()
    except Exception as exc:
        instance.down()
        message = f"could not start site A's cluster: {exc}"
        if cluster_required():  # CI=true: a cluster that cannot start fails, as the plugin's fixtures do
            pytest.fail(message + " (CI=true: failing instead of skipping)", pytrace=False)
        pytest.skip(message)
    site = SiteA(instance)
    try:
        wait_for("site A leading", lambda: site.report()["source"] == "leader", timeout=30)
        wait_for("site A's snapshot in its Redis", site.snapshot, timeout=10)
        yield site
    finally:
        site.close()
        instance.down()


def _site_b_settings(replica_cluster: ClusterBase, redis_url: str, **extra: Any) -> dict[str, Any]:
    return replica_cluster.replicarouter_settings(REDIS_URL=redis_url, **{**FAST, **extra})


@pytest.fixture
def site_b(replica_cluster: ClusterBase, site_a: SiteA) -> Iterator[monitor.Monitor]:
    """This process as site B: the session cluster, A's Redis, the default KEY_PREFIX, a fresh monitor."""
    monitor.stop()
    with override_settings(REPLICAROUTER=_site_b_settings(replica_cluster, site_a.cluster.redis_url)):
        running = monitor.ensure_started()
        wait_for("site B's first round", lambda: health.snapshot("default"), timeout=10)
        yield running
        monitor.stop()


def _ports(cluster: ClusterBase) -> dict[str, str]:
    return {alias: str(entry["PORT"]) for alias, entry in cluster.databases().items()}


def _b_ports() -> dict[str, str]:
    snapshot = health.snapshot("default")
    assert snapshot is not None
    return {alias: node.port for alias, node in snapshot.nodes.items()}


def _b_state(alias: str) -> str:
    snapshot = health.snapshot("default")
    assert snapshot is not None
    return snapshot.nodes[alias].state


def _served(cluster: ClusterBase) -> str:
    by_port = {n.port: ("default" if n.role == "primary" else n.name) for n in cluster.nodes}
    with request_context():
        port = Item.objects.annotate(port=RawSQL("inet_server_port()", ())).values_list("port", flat=True)[0]
    return by_port[port]


def _after_rounds(running: monitor.Monitor, rounds: int) -> None:
    start = running.rounds
    wait_for(f"{rounds} more rounds of site B", lambda: running.rounds >= start + rounds, timeout=20)


def test_site_b_never_adopts_site_a_snapshot(replica_cluster, site_a, site_b):
    """Bug: B found A's lease and snapshot under the same keys, stopped probing and showed A's ports."""
    assert _ports(site_a.cluster) != _ports(replica_cluster)
    before = site_b.probe_rounds, site_b.rounds
    _after_rounds(site_b, 5)
    snapshot = health.snapshot("default")
    assert snapshot is not None and snapshot.source == "leader"  # B leads its own cluster's keys...
    assert _b_ports() == _ports(replica_cluster)  # ...and shows its own servers
    assert site_b.probe_rounds - before[0] >= site_b.rounds - before[1] - 1  # it probed every round
    assert site_a.report()["source"] == "leader"  # and A still leads its own
    a_snapshot = site_a.snapshot()
    assert a_snapshot is not None
    assert {a: n.port for a, n in a_snapshot.nodes.items()} == _ports(site_a.cluster)
    # both sites' keys live side by side in the one Redis, told apart by their fingerprints
    ours = shared_redis.fingerprint("default")
    assert ours != site_a.fingerprint
    assert site_a.snapshot_key() == f"{PREFIX}:health:default:{site_a.fingerprint}:snapshot"
    keys = {k.decode() for k in site_a.redis.scan_iter(f"{PREFIX}:health:default:*", count=1000)}
    assert {f"{PREFIX}:health:default:{f}:{kind}" for f in (ours, site_a.fingerprint)
            for kind in ("leader", "snapshot")} <= keys  # fmt: skip


def test_site_b_replica_paused_is_avoided_while_site_a_says_fresh(replica_cluster, site_a, site_b):
    """Fault: replay paused on B's replica1 → B's reads avoid it, though A's snapshot says replica1 is up."""
    wait_for("B's replicas up", lambda: health.usable_replicas("default") >= {"replica1"}, timeout=10)
    replica_cluster.pause_replay("replica1")
    try:
        with request_context():
            Item.objects.bulk_create(Item(name=f"b{i}") for i in range(200))
        wait_for("B's replica1 lagging", lambda: _b_state("replica1") == "lagging", timeout=10)
        a_snapshot = site_a.snapshot()
        assert a_snapshot is not None and a_snapshot.nodes["replica1"].state == "up"  # A: fresh
        assert "replica1" not in {_served(replica_cluster) for _ in range(8)}
    finally:
        replica_cluster.resume_replay("replica1")
    wait_for("B's replica1 up again", lambda: "replica1" in health.usable_replicas("default"), timeout=10)


def test_probes_publish_the_server_system_identifier(replica_cluster, site_a, site_b):
    """Each site's snapshot carries its own servers' system identifier; a plain role can read it too."""
    expected = str(replica_cluster.primary.query("SELECT system_identifier FROM pg_control_system()")[0][0])
    mine = wait_for(
        "B's snapshot in Redis", lambda: site_a.redis.get(shared.snapshot_key("default")), timeout=5
    )
    assert {n.system_identifier for n in shared.decode(mine, "default").nodes.values()} == {expected}
    a_snapshot = site_a.snapshot()
    assert a_snapshot is not None
    assert {n.system_identifier for n in a_snapshot.nodes.values()} - {expected, None}
    # an application role, not a superuser: EXECUTE on pg_control_system() is PUBLIC's by default (PG 15);
    # revoked, the probe still answers, without the identifier
    primary = site_a.cluster.primary
    primary.query("DROP ROLE IF EXISTS rr_plain")
    primary.query("CREATE ROLE rr_plain LOGIN PASSWORD 'rr-plain'")
    params = {**connection_params(site_a.values["DATABASES"]["default"], 2.0), "user": "rr_plain",
              "password": "rr-plain"}  # fmt: skip
    try:
        allowed = Prober({"default": params})
        result = allowed.probe(2.0)["default"]
        allowed.close()
        assert result.ok and result.system_identifier == a_snapshot.nodes["default"].system_identifier
        primary.query("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
        refused = Prober({"default": params})
        first, second = refused.probe(2.0)["default"], refused.probe(2.0)["default"]
        refused.close()
        assert first.ok and second.ok and first.position is not None, (first, second)
        assert first.system_identifier is None and second.system_identifier is None
    finally:
        primary.query("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
        primary.query("DROP ROLE IF EXISTS rr_plain")


def test_a_foreign_snapshot_under_our_keys_is_ignored(replica_cluster, site_a, site_b, caplog):
    """Fault: A's snapshot lands under B's own keys (two sites whose DATABASES read the same) and A holds
    B's lease → B, which probed its cluster itself, ignores it (logged once, counted) and probes."""
    _after_rounds(site_b, 2)  # B led: it knows its servers' identifier
    stolen = stats.total("foreign_snapshots", cluster="default")
    lease, key = shared.lease_key("default"), shared.snapshot_key("default")

    def plant() -> None:
        site_a.redis.set(lease, "site-a:impostor", px=60_000)
        raw = site_a.redis.get(site_a.snapshot_key())
        assert raw is not None
        site_a.redis.set(key, raw, px=60_000)

    with caplog.at_level(logging.WARNING, logger="replicarouter.health"):
        try:
            plant()
            start, deadline = site_b.rounds, time.monotonic() + 20
            while site_b.rounds < start + 6:  # A's copy is refreshed before each of B's rounds
                assert time.monotonic() < deadline, "site B's monitor stopped going round"
                plant()
                snapshot = health.snapshot("default")
                assert snapshot is not None and snapshot.source != "redis", snapshot
                assert _b_ports() == _ports(replica_cluster)
                time.sleep(0.05)  # pacing the copies, not a condition: B's rounds are what is waited for
            assert snapshot.source == "local"
        finally:
            site_a.redis.delete(lease, key)
    assert stats.total("foreign_snapshots", cluster="default") - stolen >= 4
    foreign = [r for r in caplog.records if getattr(r, "replicarouter_event", None) == "foreign_snapshot"]
    assert len(foreign) == 1 and "ignoring the health snapshot" in foreign[0].getMessage()
    wait_for("B leading again", lambda: health.snapshot("default").source == "leader", timeout=10)


def test_w015_warns_when_another_site_shares_the_default_prefix(replica_cluster, site_a, site_b):
    """W015: the default KEY_PREFIX and another site's health keys in the Redis; silent otherwise."""
    [warning] = checks.check_shared_redis()  # A's keys are there, B's too
    assert warning.id == "replicarouter.W015" and site_a.fingerprint in warning.msg and warning.hint
    url = site_a.cluster.redis_url
    where = site_a.redis.connection_pool.connection_kwargs
    own_db = f"redis://{where['host']}:{where['port']}/7"  # another database of A's Redis: B's keys only
    with override_settings(REPLICAROUTER=_site_b_settings(replica_cluster, url, KEY_PREFIX="site-b")):
        assert checks.check_shared_redis() == []  # a prefix of its own: nothing to say
    with override_settings(REPLICAROUTER=_site_b_settings(replica_cluster, own_db)):
        client = shared_redis.client()
        client.set(shared.lease_key("default"), "b", px=10_000)  # only this site's keys in that database
        try:
            assert checks.check_shared_redis() == []
        finally:
            client.delete(shared.lease_key("default"))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with override_settings(REPLICAROUTER=_site_b_settings(replica_cluster, f"redis://127.0.0.1:{port}/0")):
        started = time.monotonic()
        assert checks.check_shared_redis() == []  # Redis down: no warning, no crash
        assert time.monotonic() - started < 5  # bounded by CHECK_TIMEOUT, generous for a loaded machine


def test_site_a_primary_stopped_does_not_fail_site_b_writes(replica_cluster, site_a, site_b):
    """Bug: B refused its own writes with PrimaryUnavailable when A's primary was down. Stops A's primary."""
    site_a.cluster.stop(site_a.cluster.primary)
    wait_for("A's snapshot: no writer", lambda: getattr(site_a.snapshot(), "election", None), timeout=5)
    wait_for("A's snapshot: no writer", lambda: site_a.snapshot().election.writer is None, timeout=15)
    _after_rounds(site_b, 3)
    with request_context():
        item = Item.objects.create(name="site b writes")  # raised PrimaryUnavailable
    assert Item.objects.using("default").filter(pk=item.pk).exists()
    assert health.snapshot("default").writer == "default"
