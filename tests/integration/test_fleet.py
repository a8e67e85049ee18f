"""One view across processes (issue 17): ``replicastatus`` sums the pools of every live process of the site.

Real processes (``pool_worker``) hold pooled connections and report them through a real Redis; a fresh
``manage.py replicastatus`` process reads and sums them. A process killed with SIGKILL stops renewing its
record: it drops out when the record's TTL runs out. Records injected into Redis that are not valid are
ignored, counted and logged once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest
from django.test import override_settings

from replicarouter.observability import fleet, stats
from replicarouter.observability import fleet_records as records
from replicarouter.testing.base import wait_for
from tests.helpers import child_settings

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases="__all__")]

FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.4}
REPLICAS = ("replica1", "replica2")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(replica_cluster, prefix, **changes):
    values = child_settings(replica_cluster, KEY_PREFIX=prefix, **{**FAST, **changes})
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.cluster_settings",
            "REPLICAROUTER_TEST_SETTINGS": json.dumps(values)}  # fmt: skip


def _holder(replica_cluster, prefix, alias, count, log):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.pool_worker", alias, str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
        env=_env(replica_cluster, prefix), cwd=REPO,
    )  # fmt: skip
    return proc


def _ready(proc, log):
    line = proc.stdout.readline()
    if not line:
        log.seek(0)
        pytest.fail(f"pool_worker died: {log.read()[-3000:]}")
    return json.loads(line)


def _replicastatus(replica_cluster, prefix, *args, **changes):
    return subprocess.run(
        [sys.executable, "-m", "django", "replicastatus", *args],
        capture_output=True, text=True, env=_env(replica_cluster, prefix, **changes), cwd=REPO, timeout=60,
    )  # fmt: skip


def _pools(replica_cluster, prefix):
    result = _replicastatus(replica_cluster, prefix, "--json")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    cluster = json.loads(result.stdout)["clusters"]["default"]
    return {node["alias"]: node["pool"] for node in [cluster["primary"], *cluster["replicas"]]}


def _when(replica_cluster, prefix, condition):
    def check():
        pools = _pools(replica_cluster, prefix)
        return pools if condition(pools) else None

    return check


def test_replicastatus_sums_every_live_process_and_a_killed_one_drops_out(replica_cluster, transactional_db):
    import redis as redis_py

    prefix = f"f{uuid.uuid4().hex[:6]}"
    wanted = {"a": ("replica1", 2), "b": ("replica1", 3), "c": ("replica2", 1)}
    logs = {name: tempfile.TemporaryFile("w+") for name in wanted}  # noqa: SIM115 (closed in finally)
    procs = {name: _holder(replica_cluster, prefix, *spec, logs[name]) for name, spec in wanted.items()}
    client = redis_py.Redis.from_url(replica_cluster.redis_url)
    try:
        ready = {name: _ready(proc, logs[name]) for name, proc in procs.items()}
        assert [ready[n]["pool"]["checked_out"] for n in "abc"] == [2, 3, 1]  # each process's own
        # each holder published after taking its connections: the first read sees all three
        pools = wait_for(
            "replicastatus to sum the three processes",
            _when(replica_cluster, prefix, lambda p: p["replica1"]["processes"] == 3),
            timeout=30,
        )
        assert pools["replica1"]["checked_out"] == 5 and pools["replica2"]["checked_out"] == 1, pools
        assert pools["default"]["checked_out"] == 0, pools
        assert all(pool["processes"] == 3 for pool in pools.values()), pools
        # SIZE summed over the processes that opened a pool of the alias (two of replica1, one of replica2)
        assert pools["replica1"]["size"] == 2 * pools["replica2"]["size"] > 0, pools
        table = _replicastatus(replica_cluster, prefix)
        assert "pools: summed over 3 processes" in table.stdout, table.stdout
        assert any(line.split()[0] == "replica1" and " 5/" in line for line in table.stdout.splitlines())

        # fault: a holder killed (SIGKILL: its monitor cannot withdraw its record) -> it drops out within
        # the record's TTL; the others' figures stay
        killed = record_key = stopped_key = None
        with override_settings(REPLICAROUTER=replica_cluster.replicarouter_settings(KEY_PREFIX=prefix)):
            record_key = fleet.record_key("default", ready["b"]["identity"])
            stopped_key = fleet.record_key("default", ready["a"]["identity"])
            assert client.exists(record_key)
            killed = time.monotonic()
        procs["b"].send_signal(signal.SIGKILL)
        procs["b"].wait(timeout=10)
        pools = wait_for(
            "the killed process to drop out",
            _when(replica_cluster, prefix, lambda p: p["replica1"]["processes"] == 2),
            timeout=60,
        )
        gone_after = time.monotonic() - killed
        assert pools["replica1"]["checked_out"] == 2 and pools["replica2"]["checked_out"] == 1, pools
        assert not client.exists(record_key)  # expired in Redis (nobody deleted it)
        ttl = records.ttl(FAST["CHECK_INTERVAL"], FAST["CHECK_TIMEOUT"])
        print(
            f"killed process dropped out of replicastatus after {gone_after:.1f} s (record TTL {ttl:.1f} s)"
        )

        # a holder that stops cleanly withdraws its record at once
        procs["a"].stdin.close()
        procs["a"].wait(timeout=30)
        assert not client.exists(stopped_key)  # deleted as its monitor stopped, not left to expire
        pools = wait_for(
            "the stopped process to drop out",
            _when(replica_cluster, prefix, lambda p: p["replica1"]["processes"] == 1),
            timeout=30,
        )
        assert pools["replica1"]["checked_out"] == 0 and pools["replica2"]["checked_out"] == 1, pools
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
            proc.stdout.close()
            if not proc.stdin.closed:
                proc.stdin.close()
        for log in logs.values():
            log.close()
        client.close()


def test_without_redis_replicastatus_shows_this_process_alone(replica_cluster, transactional_db):
    """Fault: Redis refuses connections -> the pools are this process's own, as one process."""
    prefix = f"f{uuid.uuid4().hex[:6]}"
    pools = _pools_without_redis(replica_cluster, prefix)
    assert all(pool["processes"] == 1 for pool in pools.values()), pools
    assert all(pool["checked_out"] == 0 for pool in pools.values()), pools


def _pools_without_redis(replica_cluster, prefix):
    result = _replicastatus(replica_cluster, prefix, "--json", REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    cluster = json.loads(result.stdout)["clusters"]["default"]
    assert cluster["monitor"]["redis"].startswith("down"), cluster["monitor"]
    return {node["alias"]: node["pool"] for node in [cluster["primary"], *cluster["replicas"]]}


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(fleet, "_warned", set())


def test_invalid_process_records_are_ignored_counted_and_logged_once(
    replica_cluster, transactional_db, fresh_warnings, caplog
):
    """Values under the site's process keys that are not records: never summed; counted; logged once."""
    import redis as redis_py

    from replicarouter.conf import topology

    caplog.set_level(logging.WARNING, logger="replicarouter.fleet")
    prefix = f"f{uuid.uuid4().hex[:6]}"
    client = redis_py.Redis.from_url(replica_cluster.redis_url)
    with override_settings(REPLICAROUTER=replica_cluster.replicarouter_settings(KEY_PREFIX=prefix, **FAST)):
        (cluster,) = topology().clusters
        assert fleet.publish(client, "good:1:x", FAST["CHECK_INTERVAL"], FAST["CHECK_TIMEOUT"])
        index = fleet.index_key("default")
        good = json.loads(client.get(fleet.record_key("default", "good:1:x")))
        later = int(time.time() * 1000) + 60_000
        bad = {
            "json": "{not json",
            "schema": json.dumps({**good, "identity": "schema", "pools": {"replica1": {"checked_out": -5}}}),
            "future": json.dumps({**good, "identity": "future", "published_at": time.time() + 3600}),
            "size": "x" * (records.MAX_BYTES + 1),
        }
        for member, value in bad.items():
            client.set(fleet.record_key("default", member), value, px=60_000)
        client.hset(fleet.record_key("default", "hash"), "a", "b")
        client.pexpire(fleet.record_key("default", "hash"), 60_000)
        client.zadd(index, dict.fromkeys([*bad, "hash"], later))
        before = {kind: stats.total("redis_bad_values", kind=kind) for kind in records_kinds()}

        found = fleet.read(client, cluster, FAST["CHECK_INTERVAL"], FAST["CHECK_TIMEOUT"])
        again = fleet.read(client, cluster, FAST["CHECK_INTERVAL"], FAST["CHECK_TIMEOUT"])

        assert [r.identity for r in found] == [r.identity for r in again] == ["good:1:x"]
        counted = {k: stats.total("redis_bad_values", kind=k) - before[k] for k in records_kinds()}
        # per read: one procs_json, two procs_schema (the bad pool, the hash), one procs_time, one procs_size
        assert counted == {"procs_json": 2, "procs_schema": 4, "procs_time": 2, "procs_size": 2}, counted
        logged = [
            r for r in caplog.records if getattr(r, "replicarouter_event", None) == "bad_process_record"
        ]
        assert sorted(r.replicarouter_kind for r in logged) == sorted(counted), logged  # once per kind

        # the index itself of the wrong type: nothing read, counted
        client.delete(index)
        client.set(index, "not a sorted set", px=60_000)
        assert fleet.read(client, cluster, FAST["CHECK_INTERVAL"], FAST["CHECK_TIMEOUT"]) == []
        assert stats.total("redis_bad_values", kind="procs_schema") - before["procs_schema"] == 5
        # and the next publish does not raise (its record is kept; the index's expiry ends the stray key)
        assert not fleet.publish(client, "good:1:x", FAST["CHECK_INTERVAL"], FAST["CHECK_TIMEOUT"])
        assert 0 < client.pttl(index) <= 60_000
    client.close()


def records_kinds():
    return ("procs_json", "procs_schema", "procs_time", "procs_size")


def test_metrics_serve_the_sums_over_every_live_process(replica_cluster, transactional_db):
    """A scrape of one process shows the site's pools (another process's held connections included)."""
    from django.db import connections
    from django.test import Client
    from prometheus_client.parser import text_string_to_metric_families

    from replicarouter.health import monitor
    from replicarouter.routing.context import request_context
    from tests.helpers import routed
    from tests.testapp.models import Item

    def scrape():
        response = Client().get("/metrics")
        assert response.status_code == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.content.decode())
            for sample in family.samples
        }

    def fleet_view(samples):
        def value(name, **labels):
            return samples.get((f"replicarouter_{name}", frozenset(labels.items())))

        return {
            "processes": value("fleet_processes", cluster="default"),
            "checked_out": value("fleet_pool_checked_out", cluster="default", alias="replica1"),
            "own": value("pool_checked_out", alias="replica1"),
            "reads": sum(value("fleet_reads_routed", cluster="default", alias=a) or 0 for a in REPLICAS),
            "own_reads": sum(value("reads_routed_total", cluster="default", alias=a) or 0 for a in REPLICAS),
        }

    with routed(replica_cluster, **FAST) as values, tempfile.TemporaryFile("w+") as log:
        with request_context():
            for _ in range(4):
                assert Item.objects.count() >= 0  # routed to a replica
        connections.close_all()
        holder = _holder(replica_cluster, values["KEY_PREFIX"], "replica1", 2, log)
        try:
            _ready(holder, log)
            rounds = monitor.running().rounds
            # this process's monitor published after its reads (two rounds on): both processes are summed
            view = wait_for(
                "a scrape summing both processes",
                lambda: (
                    v
                    if (v := fleet_view(scrape()))["processes"] == 2
                    and monitor.running().rounds >= rounds + 2
                    else None
                ),
                timeout=30,
            )
            assert view["checked_out"] == 2 and view["own"] == 0, view  # the other process's connections
            # the routed reads, as this process published them (the holder routed none), and the
            # per-process counter still served beside the sum
            assert view["own_reads"] >= view["reads"] >= 4, view
        finally:
            holder.kill()
            holder.wait()
            holder.stdout.close()
            holder.stdin.close()
