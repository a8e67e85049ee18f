"""Read-your-writes across requests on the real cluster: Redis positions, signed cookie, time/off modes."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from django.contrib.auth.models import User
from django.core import signing
from django.test import Client, override_settings

from replicarouter import capture_position, read_after, redis_client, request_context
from replicarouter.health import store as health
from replicarouter.observability import stats
from replicarouter.sticky import policy as sticky
from replicarouter.sticky import store as stickystore
from replicarouter.testing.base import wait_for
from tests.helpers import routed
from tests.testapp.models import Item

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases="__all__")]

FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.4}


@pytest.fixture
def routing(replica_cluster):
    """Fast health settings with a private key prefix (yielded, to derive variants from)."""
    with routed(replica_cluster, **FAST) as base:
        yield base


def _roles(replica_cluster):
    return {n.port: ("primary" if n.role == "primary" else "replica") for n in replica_cluster.nodes}


def _write(client, name="w"):
    response = client.get("/sticky/write/", {"name": name})
    assert response.status_code == 200
    return response.json()["id"]


def _read(client, item_id):
    response = client.get("/sticky/read/", {"id": item_id})
    assert response.status_code == 200
    return response.json()


def test_500_write_read_cycles_with_replay_paused_never_read_stale(replica_cluster, routing):
    """Fault: replay paused on replica1 while a session writes and reads 500 times: never a stale read."""
    roles = _roles(replica_cluster)
    writer, bystander = Client(), Client()
    seed = Item.objects.using("default").order_by("pk").values_list("pk", flat=True).first()
    replica_cluster.pause_replay("replica1")
    stale = 0
    bystander_roles = []
    sticky_reads = stats.total("sticky_decisions")
    try:
        for i in range(500):
            item_id = _write(writer, f"v{i}")
            if not _read(writer, item_id)["found"]:
                stale += 1
            if i % 10 == 0:
                bystander_roles.append(roles[_read(bystander, seed)["port"]])
    finally:
        replica_cluster.resume_replay("replica1")
    assert stale == 0
    assert stats.total("sticky_decisions") - sticky_reads >= 500
    from replicarouter import status

    assert status()["sticky"]["sticky_primary_reads"] > 0  # visible to operators
    # a session that did not write keeps reading from replicas
    assert bystander_roles.count("replica") >= 0.9 * len(bystander_roles)


def test_reads_return_to_replicas_once_they_caught_up(replica_cluster, routing):
    import redis

    roles = _roles(replica_cluster)
    client = Client()
    _write(client, "opens the session")  # a session has no key (nothing in Redis) until its first response
    item_id = _write(client)
    key_pattern = f"{routing['KEY_PREFIX']}:sticky:default:*"
    r = redis.Redis.from_url(replica_cluster.redis_url)
    try:
        assert len(list(r.scan_iter(key_pattern))) == 1  # the session's position, stored
    finally:
        r.close()
    replica_cluster.wait_caught_up()
    required = sticky.decode_cookie(client.cookies[sticky.COOKIE_NAME].value, "lsn", 60)["default"]
    wait_for(
        "the snapshot to show both replicas past the write",
        lambda: all((health.positions("default").get(r) or 0) >= required for r in ("replica1", "replica2")),
        timeout=5,
    )
    served = [roles[_read(client, item_id)["port"]] for _ in range(20)]
    assert served.count("replica") == 20
    # the position was released from Redis once every replica had it
    r = redis.Redis.from_url(replica_cluster.redis_url)
    try:
        assert list(r.scan_iter(key_pattern)) == []
    finally:
        r.close()


def _cookie_position(client):
    morsel = client.cookies.get(sticky.COOKIE_NAME)
    return sticky.decode_cookie(morsel.value if morsel else None, "lsn", 60).get("default")


def test_one_replica_caught_up_keeps_the_session_off_the_other(replica_cluster, routing):
    """Bug guarded: the position released when ANY usable replica has replayed it (not every one).

    replica2 replays the write, replica1 (paused, within MAX_LAG: still usable) does not. Every read of
    the session, request after request, must go to replica2 and find the write; the position must stay
    (cookie), since released it would send the next read to replica1, which does not have the row.
    """
    ports = {n.name: n.port for n in replica_cluster.nodes}
    client = Client()
    replica_cluster.pause_replay("replica1")
    try:
        item_id = _write(client)
        required = _cookie_position(client)
        assert required is not None
        wait_for(
            "the snapshot to show replica2 past the write",
            lambda: (health.positions("default").get("replica2") or 0) >= required,
            timeout=5,
        )
        assert (health.positions("default").get("replica1") or 0) < required  # replica1 lacks the write
        assert health.usable_replicas("default") == {"replica1", "replica2"}  # yet may serve reads
        served = [_read(client, item_id) for _ in range(6)]
        assert served == [{"found": True, "port": ports["replica2"]}] * 6
        assert _cookie_position(client) == required  # not released: replica1 has not replayed it
        assert health.usable_replicas("default") == {"replica1", "replica2"}  # the whole time
    finally:
        replica_cluster.resume_replay("replica1")


def test_session_pinned_to_the_primary_leaves_the_rotation_alone(replica_cluster, routing):
    """Bug guarded: the sticky branch's "no replica caught up → primary" return removed.

    The read then falls through to the balancer, which finds no candidate (the primary still answers)
    but takes a turn of the round-robin rotation: other sessions' reads stop alternating. Both replicas
    are paused (usable, within MAX_LAG) after the pinned session's write; bystanders' reads (new
    sessions: a session keeps to the replica it read, monotonic reads), between the pinned session's,
    must alternate exactly between the replicas while every pinned read is answered by the primary and
    finds its row.
    """
    ports = {n.port: n.name for n in replica_cluster.nodes}
    pinned = Client()
    seed = Item.objects.using("default").order_by("pk").values_list("pk", flat=True).first()
    replica_cluster.pause_replay("replica1")
    replica_cluster.pause_replay("replica2")
    primary_decisions = stats.total("sticky_decisions", decision="primary")
    try:
        item_id = _write(pinned)
        assert health.usable_replicas("default") == {"replica1", "replica2"}
        seen, pinned_reads = [], []
        for _ in range(6):
            seen.append(ports[_read(Client(), seed)["port"]])
            pinned_reads.append(_read(pinned, item_id))
        assert health.usable_replicas("default") == {"replica1", "replica2"}  # the whole time
    finally:
        replica_cluster.resume_replay("replica1")
        replica_cluster.resume_replay("replica2")
    primary_port = replica_cluster.primary.port
    assert pinned_reads == [{"found": True, "port": primary_port}] * 6
    assert stats.total("sticky_decisions", decision="primary") - primary_decisions == 6
    assert set(seen) == {"replica1", "replica2"}
    assert all(a != b for a, b in zip(seen, seen[1:], strict=False)), seen


def test_position_only_moves_forward_under_concurrency(replica_cluster, routing):
    import redis

    identity = sticky.identity("session", uuid.uuid4().hex, "secret")
    positions = list(range(1000, 1200))

    def advance(chunk):
        for position in chunk:
            assert stickystore.advance(identity, "default", position)

    threads = [threading.Thread(target=advance, args=(positions[i::4][::-1],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stickystore.load(identity, ["default"]) == {"default": 1199}
    assert stickystore.advance(identity, "default", 5)  # an older request finishing late...
    assert stickystore.load(identity, ["default"]) == {"default": 1199}  # ...cannot move it back
    stickystore.release(identity, "default", 1000)  # compare-and-delete: not the stored value
    assert stickystore.load(identity, ["default"]) == {"default": 1199}
    r = redis.Redis.from_url(replica_cluster.redis_url)
    try:
        # one key, named by the hash (never by a raw session key), bound to the cluster's databases
        bound = redis_client.fingerprint("default")
        assert [k.decode() for k in r.scan_iter(f"{routing['KEY_PREFIX']}:sticky:*")] == [
            f"{routing['KEY_PREFIX']}:sticky:default:{bound}:{identity}"
        ]
        stickystore.release(identity, "default", 1199)
        assert stickystore.load(identity, ["default"]) == {}
        assert list(r.scan_iter(f"{routing['KEY_PREFIX']}:sticky:*")) == []
    finally:
        r.close()


def test_user_scope_follows_the_user_across_sessions(replica_cluster, routing):
    user = User.objects.create(username=f"u{uuid.uuid4().hex[:6]}")
    phone, laptop = Client(), Client()
    phone.force_login(user)
    laptop.force_login(user)
    with override_settings(REPLICAROUTER={**routing, "STICKY_SCOPE": "user"}):
        replica_cluster.pause_replay("replica1")
        replica_cluster.pause_replay("replica2")
        try:
            item_id = _write(phone)
            assert _read(laptop, item_id)["found"]  # another device, no cookie of the phone's: Redis
            other = Client()
            assert not _read(other, item_id)["found"]  # someone else reads a (paused) replica
        finally:
            replica_cluster.resume_replay("replica1")
            replica_cluster.resume_replay("replica2")


def test_signed_cookie_carries_the_position_while_redis_is_stopped(replica_cluster, routing):
    """Fault: Redis stopped + replay paused: the signed cookie alone keeps the session's reads fresh."""
    client = Client()
    replica_cluster.pause_replay("replica1")
    replica_cluster.pause_replay("replica2")
    replica_cluster.stop_redis()
    errors = stats.total("sticky_store_errors")
    try:
        for i in range(20):
            item_id = _write(client, f"r{i}")
            assert _read(client, item_id)["found"]
        assert stats.total("sticky_store_errors") > errors
    finally:
        replica_cluster.start_redis()
        replica_cluster.resume_replay("replica1")
        replica_cluster.resume_replay("replica2")


#: a position no replica has replayed: a cookie carrying it, if believed, pins reads to the primary
AHEAD = 2**62


def _tampered(value: str) -> str:
    return value[:-1] + ("A" if value[-1] != "A" else "B")


# the cookies are made when the test runs, not when it is collected: a signed cookie older than
# STICKY_SECONDS is expired, and a loaded machine can take that long to reach this test
def _current_cookie(positions):
    from replicarouter.sticky.incarnation import Incarnation

    now = health.incarnation("default")
    assert now is not None
    state = sticky.CookieState(positions, incarnations={c: Incarnation(now[0], now[1]) for c in positions})
    return sticky.write_cookie(state, "lsn")


@pytest.mark.parametrize(
    ("make_cookie", "expected"),
    [
        (lambda: "garbage", "replica"),
        (lambda: "", "replica"),
        (lambda: _tampered(sticky.encode_cookie({"default": AHEAD}, "lsn")), "replica"),
        (lambda: signing.b64_encode(json.dumps({"m": "lsn", "p": {"default": AHEAD}}).encode()).decode()
         + ":x:sig", "replica"),
        # control: the same position, correctly signed, is believed (so believing a forgery would show);
        # with the cluster's incarnation (one without, beyond the primary's position, would be dropped)
        (lambda: _current_cookie({"default": AHEAD}), "primary"),
    ],
    ids=["garbage", "empty", "bad-signature", "unsigned", "genuine"],
)  # fmt: skip
def test_forged_or_malformed_cookie_is_ignored(replica_cluster, routing, make_cookie, expected):
    roles = _roles(replica_cluster)
    client = Client()
    client.cookies[sticky.COOKIE_NAME] = make_cookie()
    seed = Item.objects.using("default").values_list("pk", flat=True).first()
    served = [roles[_read(client, seed)["port"]] for _ in range(4)]
    assert served == [expected] * 4


def test_background_job_reads_the_request_writes(replica_cluster, routing):
    replica_cluster.pause_replay("replica1")
    replica_cluster.pause_replay("replica2")
    try:
        with request_context():
            item = Item.objects.create(name="for the job")
            token = capture_position()
        assert token["positions"]["default"] > 0
        found = {}

        def job():
            with read_after(token, wait=0.2):
                found["job"] = Item.objects.filter(pk=item.pk).exists()
            with request_context():
                found["without token"] = Item.objects.filter(pk=item.pk).exists()

        worker = threading.Thread(target=job)
        worker.start()
        worker.join()
    finally:
        replica_cluster.resume_replay("replica1")
        replica_cluster.resume_replay("replica2")
    assert found == {"job": True, "without token": False}


def test_time_mode_pins_to_the_primary_for_sticky_seconds(replica_cluster, routing):
    roles = _roles(replica_cluster)
    with override_settings(REPLICAROUTER={**routing, "STICKY": "time", "STICKY_SECONDS": 1.0}):
        client = Client()
        item_id = _write(client)
        assert roles[_read(client, item_id)["port"]] == "primary"
        wait_for("the pin to expire", lambda: roles[_read(client, item_id)["port"]] == "replica", timeout=5)


def test_off_mode_keeps_no_position(replica_cluster, routing):
    roles = _roles(replica_cluster)
    with override_settings(REPLICAROUTER={**routing, "STICKY": "off"}):
        client = Client()
        item_id = _write(client)
        assert sticky.COOKIE_NAME not in client.cookies
        replica_cluster.wait_caught_up()
        assert roles[_read(client, item_id)["port"]] == "replica"
