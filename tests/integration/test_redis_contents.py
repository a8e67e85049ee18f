"""Redis contents are untrusted (issue 17): malformed values injected into a real Redis, real cluster.

Each test names the value, and checks what users see (no error, no stale read: replay is paused on both
replicas, so a read a fake snapshot sent to a replica would miss the session's write), that the value is
ignored, counted and logged once, and that the site recovers within a few CHECK_INTERVALs (the next
leader's snapshot replaces it; a lease without expiry is repaired and this process leads again).
The fake snapshots lie in the way that hurts most: every replica up and past any position.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import time

import pytest
from django.test import Client

from replicarouter.health import monitor, shared
from replicarouter.health import store as health
from replicarouter.observability import stats
from replicarouter.sticky import store as stickystore
from replicarouter.testing import django_settings
from replicarouter.testing.base import wait_for
from tests.helpers import child_settings, routed

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases="__all__")]

INTERVAL = 0.2
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: a position past anything the cluster will write during a test
FAR = 2**62


@pytest.fixture
def routing(replica_cluster):
    with routed(replica_cluster, CHECK_INTERVAL=INTERVAL, CHECK_TIMEOUT=0.4) as values:
        yield values


@pytest.fixture
def redis(replica_cluster):
    import redis as redis_py

    client = redis_py.Redis.from_url(replica_cluster.redis_url)
    yield client
    client.close()


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget what this process already logged (once per process and kind) before the test."""
    monkeypatch.setattr(shared, "_warned", set())
    monkeypatch.setattr(stickystore, "_warned", set())


def _events(caplog, event):
    return [r for r in caplog.records if getattr(r, "replicarouter_event", None) == event]


def _rounds():
    running = monitor.running()
    assert running is not None
    return running.rounds


def _become_follower(redis, seconds):
    """Give the lease to an intruder for ``seconds``; return once no round of ours can still publish."""
    leader = wait_for("this process leads", lambda: health.snapshot("default").source == "leader", timeout=10)
    assert leader
    published = json.loads(redis.get(shared.snapshot_key("default")))
    redis.set(shared.lease_key("default"), "intruder", px=int(seconds * 1000))
    start = _rounds()
    wait_for("two rounds as a follower", lambda: _rounds() >= start + 2, timeout=10)
    return published


def _lie(published, **top):
    """Return ``published`` changed to say every replica is up and past any position."""
    fake = json.loads(json.dumps(published))
    for alias in ("replica1", "replica2"):
        fake["nodes"][alias].update(state="up", position=FAR, received=FAR, lag_bytes=0, lag_seconds=0.0,
                                    probed_at=time.time(), failures=0)  # fmt: skip
    fake["published_at"] = time.time()
    fake.update(top)
    return fake


def _bad_position(fake):
    fake["nodes"]["replica1"]["position"] = "abc"
    return fake


MALFORMED = {
    # kind counted, how the lie is made malformed
    "position abc": ("snapshot_schema", lambda p: json.dumps(_bad_position(_lie(p)))),
    "published_at 1e12": ("snapshot_time", lambda p: json.dumps(_lie(p, published_at=1e12))),
    "published_at NaN": ("snapshot_time", lambda p: json.dumps(_lie(p, published_at=math.nan))),
    "published_at -1": ("snapshot_time", lambda p: json.dumps(_lie(p, published_at=-1))),
    "20 MB": (
        "snapshot_size",
        lambda p: json.dumps(_lie(p, published_at=time.time() + 4, reason="x" * 20_000_000)),
    ),
}


def _write_and_read(client):
    item = client.get("/sticky/write/", {"name": "mine"})
    assert item.status_code == 200
    read = client.get("/sticky/read/", {"id": item.json()["id"]})
    assert read.status_code == 200
    return read.json()["found"]


def _read_and_write(client, item):
    """Read ``item`` back (True if found), then write (the stored position advances)."""
    read = client.get("/sticky/read/", {"id": item})
    assert read.status_code == 200
    assert client.get("/sticky/write/", {"name": "more"}).status_code == 200
    return read.json()["found"]


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_snapshot_is_ignored_counted_logged_once_and_replaced(
    name, routing, paused, redis, fresh_warnings, caplog
):
    kind, make = MALFORMED[name]
    key = shared.snapshot_key("default")
    before = stats.total("redis_bad_values", kind=kind)
    with caplog.at_level(logging.WARNING, logger="replicarouter.health"):
        published = _become_follower(redis, seconds=25 * INTERVAL)
        redis.set(key, make(published))  # no TTL: only the next leader's publish removes it
        start = _rounds()
        wait_for("three rounds with it", lambda: _rounds() >= start + 3, timeout=10)
        client = Client()
        assert [_write_and_read(client) for _ in range(3)] == [True] * 3  # no 500, no stale read
        assert health.snapshot("default").source == "local"  # probed here, as with no snapshot at all
        assert stats.total("redis_bad_values", kind=kind) >= before + 3  # every round counted it
        # recovery: the intruder's lease expires, this process leads and its publish replaces the value
        wait_for(
            "this process leads again", lambda: health.snapshot("default").source == "leader", timeout=10
        )
        wait_for("a valid snapshot", lambda: shared.fetch(redis, _cluster(), INTERVAL), timeout=5)
        assert redis.pttl(key) > 0
    logged = [r for r in _events(caplog, "bad_snapshot") if r.replicarouter_kind == kind]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert key in logged[0].getMessage()


def _cluster():
    from replicarouter.conf import topology

    return topology().clusters[0]


def test_a_lease_without_expiry_is_repaired_and_someone_leads_again(
    routing, paused, redis, fresh_warnings, caplog
):
    """Bug: a lease key without TTL meant no process ever led again, and nothing was logged."""
    key = shared.lease_key("default")
    wait_for("this process leads", lambda: health.snapshot("default").source == "leader", timeout=10)
    identity = monitor.running().identity
    repaired = stats.total("leases_repaired", cluster="default")
    with caplog.at_level(logging.WARNING, logger="replicarouter.health"):
        for attempt in (1, 2):  # the second is counted, not logged
            redis.set(key, "intruder")  # no expiry
            assert redis.pttl(key) == -1
            wait_for(
                "the lease repaired",
                lambda attempt=attempt: (
                    stats.total("leases_repaired", cluster="default") >= repaired + attempt
                ),
                timeout=10,
            )
            assert redis.pttl(key) > 0 or redis.get(key) in (None, identity.encode())
            assert _write_and_read(Client())  # requests never noticed
            wait_for(
                "this process leads again",
                lambda: (
                    (redis.get(key) or b"").decode() == identity
                    and health.snapshot("default").source == "leader"
                ),
                timeout=10,
            )
    assert stats.total("leases_repaired", cluster="default") == repaired + 2
    logged = _events(caplog, "lease_repaired")
    assert len(logged) == 1 and key in logged[0].getMessage()


def test_a_non_integer_sticky_value_without_ttl_is_overwritten_by_the_next_write(
    routing, paused, redis, fresh_warnings, caplog
):
    """Bug: a non-integer stored position made the advance script fail at every write, for ever."""
    from django.conf import settings as django_settings_module

    from replicarouter.sticky import policy as sticky

    client = Client()
    item = client.get("/sticky/write/", {"name": "mine"}).json()["id"]
    session_key = client.cookies[django_settings_module.SESSION_COOKIE_NAME].value
    identity = sticky.identity("session", session_key, django_settings_module.SECRET_KEY)
    key = stickystore._key("default", identity)
    errors, bad = stats.total("sticky_store_errors"), stats.total("redis_bad_values", kind="sticky_position")
    with caplog.at_level(logging.WARNING, logger="replicarouter.sticky"):
        for value in ("abc", "1.5e3"):  # the second: counted, not logged
            redis.set(key, value)  # no TTL
            assert _read_and_write(client, item)  # read: ignored (the cookie protects); write: overwritten
            assert re.fullmatch(rb"[0-9]+@[0-9]*/[0-9]+", redis.get(key)), redis.get(key)
            assert redis.pttl(key) > 0
    assert stats.total("sticky_store_errors") == errors  # the advance script never failed
    assert stats.total("redis_bad_values", kind="sticky_position") >= bad + 2
    logged = _events(caplog, "bad_sticky_value")
    assert len(logged) == 1 and logged[0].replicarouter_kind == "sticky_position"


def _replicastatus(replica_cluster, routing, *args):
    # a longer interval than the monitor's: the fresh process reads a snapshot published seconds ago
    values = child_settings(replica_cluster, KEY_PREFIX=routing["KEY_PREFIX"], CHECK_INTERVAL=5.0)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.cluster_settings",
           "REPLICAROUTER_TEST_SETTINGS": json.dumps(values)}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "django", "replicastatus", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )  # fmt: skip


def test_replicastatus_never_prints_control_characters_from_redis(replica_cluster, routing, redis):
    """Bug: a fake snapshot made replicastatus print its hosts and pass ANSI escapes to the terminal."""
    published = _become_follower(redis, seconds=60)
    fake = json.loads(json.dumps(published))
    fake["published_at"] = time.time()
    fake["leader"] = "\x1b[2Jintruder"
    fake["nodes"]["replica1"].update(host="\x1b[31mevil.example", error="\x1b]0;pwned\x07boom\r\nfake line")
    redis.set(shared.snapshot_key("default"), json.dumps(fake), px=60_000)
    table = _replicastatus(replica_cluster, routing)
    assert table.returncode == 0, table.stdout + table.stderr  # every node up, as the leader saw it
    as_json = _replicastatus(replica_cluster, routing, "--json")
    for result in (table, as_json):
        assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", result.stdout), repr(result.stdout)
        assert "evil.example" not in result.stdout  # hosts come from DATABASES
    assert "\\x1b]0;pwned\\x07boom\\r\\nfake line"[:60] in table.stdout
    assert "leader \\x1b[2Jintruder" in table.stdout
    data = json.loads(as_json.stdout)["clusters"]["default"]
    assert data["monitor"]["source"] == "redis"
    assert data["replicas"][0]["error"] == "\x1b]0;pwned\x07boom\r\nfake line"  # JSON keeps it, escaped
    configured = django_settings(replica_cluster)["DATABASES"]["replica1"]
    assert (data["replicas"][0]["host"], data["replicas"][0]["port"]) == (
        str(configured["HOST"]),
        str(configured["PORT"]),
    )


def test_replicastatus_does_not_use_an_invalid_snapshot(replica_cluster, routing, redis):
    """Bug: a fake snapshot (here published "in the future") said healthy while a replica was down."""
    published = _become_follower(redis, seconds=60)
    redis.set(shared.snapshot_key("default"), json.dumps(_lie(published, published_at=1e12)), px=60_000)
    replica_cluster.stop("replica2", "fast")
    try:
        result = _replicastatus(replica_cluster, routing, "--json")
    finally:
        replica_cluster.start("replica2")
    assert result.returncode == 1, result.stdout + result.stderr  # degraded, not healthy
    data = json.loads(result.stdout)["clusters"]["default"]
    assert data["monitor"]["source"] == "direct probe"
    assert data["replicas"][1]["state"] == "down"
