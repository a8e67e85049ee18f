"""A new process routes its first reads by the leader's fresh snapshot (issue 17: cold start).

Two real processes on one cluster and one Redis: a leader (``monitor_worker``) publishing snapshots, then a
new process (``cold_worker``) that reads at once, as a freshly started worker serving its first requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from replicarouter.testing.base import wait_for
from tests.helpers import child_settings

FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.4}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(replica_cluster, prefix):
    values = child_settings(replica_cluster, KEY_PREFIX=prefix, **FAST)
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.cluster_settings",
            "REPLICAROUTER_TEST_SETTINGS": json.dumps(values)}  # fmt: skip


def _leader(replica_cluster, prefix):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.monitor_worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(replica_cluster, prefix), cwd=REPO,
    )  # fmt: skip

    def leads():
        proc.stdin.write("\n")
        proc.stdin.flush()
        report = json.loads(proc.stdout.readline())
        return report["source"] == "leader" and report["rounds"] >= 3

    wait_for("the leader to publish a few snapshots", leads, timeout=30)
    return proc


def _cold_reads(replica_cluster, prefix, reads=100, *flags):
    from replicarouter import use_primary
    from tests.testapp.models import Item

    with use_primary():
        if not Item.objects.exists():
            Item.objects.create(name="read by the new process")
    replica_cluster.wait_caught_up()
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.cold_worker", str(reads), *flags],
        capture_output=True, text=True, env=_env(replica_cluster, prefix), cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_new_process_reads_from_replicas_from_its_first_request(replica_cluster, transactional_db):
    prefix = f"w{uuid.uuid4().hex[:6]}"
    leader = _leader(replica_cluster, prefix)
    try:
        report = _cold_reads(replica_cluster, prefix)
        before = _cold_reads(replica_cluster, prefix, 100, "--no-warm")  # what 0.1 did, for the log
    finally:
        leader.stdin.close()
        leader.wait(timeout=30)
        leader.stdout.close()
    replicas = {replica.port for replica in replica_cluster.replicas}
    ports = report["ports"]
    on_replicas = sum(port in replicas for port in ports)
    # the very first read already: a process without the warm start sends it to the primary (its monitor
    # has not finished a round yet); all of them, bar none, since both replicas stay up
    assert ports[0] in replicas, ports[:10]
    assert on_replicas == len(ports) == 100, ports
    assert report["warm_starts"] == {"snapshot": 1}
    print(
        f"first 100 reads of a new process on replicas: {on_replicas} (without the warm start: "
        f"{sum(port in replicas for port in before['ports'])})"
    )


def test_without_a_fresh_snapshot_a_new_process_starts_as_before(replica_cluster, transactional_db):
    """No leader (nothing in Redis under this prefix): nothing is installed, reads are still served."""
    prefix = f"w{uuid.uuid4().hex[:6]}"
    report = _cold_reads(replica_cluster, prefix, reads=20)
    assert report["warm_starts"] == {"none": 1}
    assert report["ports"][0] == replica_cluster.primary.port  # no snapshot yet: the safe default
    assert len(report["ports"]) == 20
