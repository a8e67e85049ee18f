"""Read-your-writes where 0.1 lost it (issue 16), on the real cluster with replay paused on both replicas.

Each test names the fault and checks what the user sees (the next request's read) and what was logged
or counted. With both replicas paused every replica read is stale: a session whose write is not
honoured sees it at once.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

from replicarouter.health import store as health
from replicarouter.observability import stats
from replicarouter.sticky import policy as sticky
from replicarouter.testing.base import wait_for
from tests.helpers import routed
from tests.testapp import views
from tests.testapp.models import Item

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases="__all__")]

SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
OURS = "replicarouter.middleware.ReplicaRouterMiddleware"
ORDERS = {
    "router-first": [OURS, SESSION, AUTH],
    "session-first": [SESSION, AUTH, OURS],  # the order 0.1's docs required: session saved after ours
}


@pytest.fixture
def routing(replica_cluster):
    with routed(replica_cluster, CHECK_INTERVAL=0.2, CHECK_TIMEOUT=0.4) as values:
        yield values


@pytest.fixture(params=sorted(ORDERS))
def db_sessions(request, routing):
    """Django's database sessions (its default engine), our middleware in either order."""
    with override_settings(
        SESSION_ENGINE="django.contrib.sessions.backends.db", MIDDLEWARE=ORDERS[request.param]
    ):
        yield request.param


def _ports(replica_cluster):
    return {n.name: n.port for n in replica_cluster.nodes}


def test_a_view_that_only_changes_the_session_is_read_back(db_sessions, paused):
    """Bug: with SessionMiddleware outside ours, the session save after our middleware set no position:
    30 of 30 new sessions saw an empty cart on the next request."""
    lost = []
    for i in range(12):
        client = Client()
        assert client.get("/session/put/", {"v": f"c{i}"}).status_code == 200
        assert sticky.COOKIE_NAME in client.cookies  # the save's position travels in the cookie
        cart = client.get("/session/get/").json()["cart"]
        if cart != f"c{i}":
            lost.append((i, cart))
    assert lost == []


def test_a_session_change_is_read_back_through_the_async_stack(db_sessions, paused):
    """The same over ASGI (AsyncClient): the middleware runs as a coroutine, the save in a thread."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    async def get(client, path, data=None):  # Django 4.2's AsyncClient.get is not a coroutine function
        return await client.get(path, data)

    lost = []
    for i in range(5):
        client = AsyncClient()
        assert async_to_sync(get)(client, "/session/put/", {"v": f"a{i}"}).status_code == 200
        cart = async_to_sync(get)(client, "/session/get/").json()["cart"]
        if cart != f"a{i}":
            lost.append((i, cart))
    assert lost == []


def test_a_bad_value_in_redis_is_ignored_counted_and_the_cookie_still_protects(
    replica_cluster, routing, paused
):
    import redis

    from replicarouter import redis_client
    from replicarouter.sticky import store as stickystore

    client = Client()
    item_id = client.get("/sticky/write/", {"name": "protected"}).json()["id"]
    from django.conf import settings as django_settings

    session_key = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    identity = sticky.identity("session", session_key, django_settings.SECRET_KEY)
    r = redis.Redis.from_url(replica_cluster.redis_url)
    try:
        with override_settings(REPLICAROUTER=routing):
            r.set(redis_client.key("sticky", "default", identity), "abc")
    finally:
        r.close()
    stickystore._warned.clear()
    bad = stats.total("sticky_bad_values")
    read = client.get("/sticky/read/", {"id": item_id})
    assert read.status_code == 200 and read.json()["found"] is True
    assert stats.total("sticky_bad_values") == bad + 1


def test_login_is_read_back(db_sessions, paused):
    """login() cycles the session key; SessionMiddleware saves the user's id after the view.

    Django's own ``update_last_login`` writes in the view, which would make the request sticky anyway:
    disconnected here (as projects without ``last_login`` do), the session save is the only write.
    """
    from django.contrib.auth.models import update_last_login
    from django.contrib.auth.signals import user_logged_in

    name = f"u{uuid.uuid4().hex[:8]}"
    User.objects.create_user(name, password="x")
    client = Client()
    user_logged_in.disconnect(update_last_login)
    try:
        assert client.get("/login/", {"u": name}).status_code == 200
    finally:
        user_logged_in.connect(update_last_login)
    assert [client.get("/whoami/").json()["user"] for _ in range(3)] == [name] * 3


def test_mark_written_makes_a_write_no_parser_sees_read_your_writes(routing, paused):
    client = Client()
    unmarked = client.get("/sticky/unseen-write/", {"name": "unmarked"}).json()["id"]
    # without mark_written() the router cannot know: the next read goes to a (paused) replica
    assert client.get("/sticky/read/", {"id": unmarked}).json()["found"] is False
    marked = client.get("/sticky/unseen-write/", {"name": "marked", "mark": "1"}).json()["id"]
    assert client.get("/sticky/read/", {"id": marked}).json()["found"] is True


def test_mark_written_outside_any_cluster_and_unknown_aliases(routing):
    from replicarouter import mark_written, request_context

    with request_context() as state:
        mark_written("replica1")
        assert state.wrote == {"default"}
    with request_context() as state:
        mark_written()
        assert state.wrote == {"default"}
    with pytest.raises(ValueError, match="nope"):
        mark_written("nope")


def test_a_write_whose_position_cannot_be_read_pins_the_session_to_the_primary(
    replica_cluster, routing, caplog
):
    """Fault: the primary stops after the view's commit, before the middleware reads its position.

    0.1 answered the committed write with HTTP 500 (a client that retries duplicates it). Now: 200, the
    session pinned to the primary for STICKY_SECONDS (cookie), logged and counted.
    """
    ports = _ports(replica_cluster)
    client = Client()
    pins = stats.total("sticky_pins")
    views.AFTER_WRITE.append(lambda: replica_cluster.stop("primary", mode="immediate"))
    try:
        with caplog.at_level(logging.WARNING, logger="replicarouter.sticky"):
            response = client.get("/sticky/write-then-hook/", {"name": "committed"})
    finally:
        views.AFTER_WRITE.clear()
        replica_cluster.start("primary")
    assert response.status_code == 200
    item_id = response.json()["id"]
    assert stats.total("sticky_pins") == pins + 1
    assert any(getattr(r, "replicarouter_event", None) == "sticky_pin" for r in caplog.records)
    cookie = sticky.read_cookie(client.cookies[sticky.COOKIE_NAME].value, "lsn", 60)
    assert set(cookie.pins) == {"default"}
    replica_cluster.wait_streaming("replica1")
    replica_cluster.wait_streaming("replica2")
    wait_for(
        "the primary writable again", lambda: health.writer("default", "default") == "default", timeout=10
    )
    read = client.get("/sticky/read/", {"id": item_id}).json()
    assert read == {"found": True, "port": ports["primary"]}


def test_a_fallback_honours_the_position_only_one_replica_replayed(replica_cluster, routing, caplog):
    """Fault: replica2 paused, the session's write replayed by replica1 only, then replica1 stopped.

    The router picks replica1 (the only one caught up); its connection fails and the read is lent. 0.1
    lent it to the first other usable replica, replica2, which lacks the write. Now: the primary.
    """
    ports = _ports(replica_cluster)
    with override_settings(REPLICAROUTER={**routing, "FALL": 1000}):  # replica1 stays "up" while stopped
        client = Client()
        replica_cluster.pause_replay("replica2")
        item_id = client.get("/sticky/write/", {"name": "only-on-replica1"}).json()["id"]
        required = sticky.decode_cookie(client.cookies[sticky.COOKIE_NAME].value, "lsn", 60)["default"]
        wait_for(
            "the snapshot to show replica1 past the write",
            lambda: (health.positions("default").get("replica1") or 0) >= required,
            timeout=10,
        )
        assert client.get("/sticky/read/", {"id": item_id}).json() == {
            "found": True,
            "port": ports["replica1"],
        }
        replica_cluster.stop("replica1")
        fallbacks = stats.total("read_fallbacks")
        with caplog.at_level(logging.WARNING, logger="replicarouter.failover"):
            reads = [client.get("/sticky/read/", {"id": item_id}).json() for _ in range(5)]
        assert reads == [{"found": True, "port": ports["primary"]}] * 5
        assert stats.total("read_fallbacks") > fallbacks
        assert any("go to the primary" in r.getMessage() for r in caplog.records)


def test_a_position_is_kept_while_a_replica_that_lacks_it_is_down(replica_cluster, routing):
    """Bug: released when every *usable* replica had it; replica2, down and behind, came back within
    MAX_LAG_SECONDS and served the session stale data."""
    client = Client()
    replica_cluster.pause_replay("replica2")
    item_id = client.get("/sticky/write/", {"name": "kept"}).json()["id"]
    required = sticky.decode_cookie(client.cookies[sticky.COOKIE_NAME].value, "lsn", 60)["default"]
    replica_cluster.stop("replica2")
    wait_for(
        "replica2 out of the reads", lambda: "replica2" not in health.usable_replicas("default"), timeout=10
    )
    wait_for(
        "the snapshot to show replica1 past the write",
        lambda: (health.positions("default").get("replica1") or 0) >= required,
        timeout=10,
    )
    for _ in range(3):
        assert client.get("/sticky/read/", {"id": item_id}).json()["found"] is True
    assert sticky.decode_cookie(client.cookies[sticky.COOKIE_NAME].value, "lsn", 60) == {"default": required}


def test_a_session_never_reads_older_data_than_it_already_read(replica_cluster, routing):
    """Fault: replica2 paused; a row written by someone else is on replica1 and the primary only.

    Once the session has read it (from replica1), no later read may miss it: not round-robin onto
    replica2, and not after replica1 stops either (0.1: every other read missed it).
    """
    ports = _ports(replica_cluster)
    replica_cluster.pause_replay("replica2")
    item = Item.objects.create(name="someone else's")
    wait_for(
        "replica1 to replay the row",
        lambda: Item.objects.using("replica1").filter(pk=item.pk).exists(),
        timeout=10,
    )

    def first_read_finds_it() -> Client | None:
        # a new session's first read goes to either replica; one that read replica2 (paused) stays there
        candidate = Client()
        return candidate if candidate.get("/sticky/read/", {"id": item.pk}).json()["found"] else None

    client = wait_for("a session whose first read finds the row", first_read_finds_it, timeout=10)
    reads = [client.get("/sticky/read/", {"id": item.pk}).json() for _ in range(20)]
    assert all(r["found"] for r in reads)
    assert {r["port"] for r in reads} == {ports["replica1"]}  # it stays on the replica it read
    replica_cluster.stop("replica1")
    later = [client.get("/sticky/read/", {"id": item.pk}).json() for _ in range(10)]
    assert all(r["found"] for r in later)
    # a new session has seen nothing: it may read replica2
    assert Client().get("/sticky/read/", {"id": item.pk}).status_code == 200


def test_a_replica_restarted_since_its_probe_is_not_read_until_probed_again(replica_cluster, caplog):
    """Fault: replica1 restarted between two probes. A standby comes back at its last restart point,
    maybe behind the position the snapshot still shows: reads routed by that position could be stale.
    New connections to it are refused (its reads fall back) until the monitor has probed the new server.
    """
    from django.db.models.expressions import RawSQL

    from replicarouter.health import monitor

    ports = _ports(replica_cluster)
    with routed(replica_cluster, CHECK_INTERVAL=30.0, CHECK_TIMEOUT=2.0):  # no second round in this test
        before = health.node("default", "replica1")
        assert before is not None and before.started_at is not None
        replica_cluster.stop("replica1")
        replica_cluster.start("replica1")
        with caplog.at_level(logging.WARNING, logger="replicarouter.failover"):
            port = Item.objects.using("replica1").annotate(port=RawSQL("inet_server_port()", ()))
            served = list(port.values_list("port", flat=True)[:1])
        assert served == [ports["replica2"]]
        assert health.is_suspect("default", "replica1")
        assert any(getattr(r, "replicarouter_event", None) == "replica_restarted" for r in caplog.records)
        # the monitor's next round sees the new server: replica1 is read again
        running = monitor.running()
        assert running is not None

        def probed_again() -> bool:
            running.round()  # the first round may fail: its probe connection died with the old server
            return "replica1" in health.usable_replicas("default")

        wait_for("replica1 usable again", probed_again, timeout=10)
        assert health.node("default", "replica1").started_at > before.started_at
        served = list(
            Item.objects.using("replica1")
            .annotate(port=RawSQL("inet_server_port()", ()))
            .values_list("port", flat=True)[:1]
        )
        assert served == [ports["replica1"]]


#: raw-SQL writes of issue 16 that 0.1 classified as reads: (write, check read on the next request,
#: expected check value once the write is seen). {t} is a fresh table, {m} a fresh marker
RAW_WRITES = {
    "begin-insert-commit": (
        "BEGIN; INSERT INTO testapp_item (name, n) VALUES ('{m}', 0); COMMIT",
        "SELECT count(*) FROM testapp_item WHERE name = '{m}'", 1,
    ),
    "set-then-update": (
        "SET application_name TO 'rr'; INSERT INTO testapp_item (name, n) VALUES ('{m}', 0)",
        "SELECT count(*) FROM testapp_item WHERE name = '{m}'", 1,
    ),
    "select-then-drop": ("SELECT 1; DROP TABLE {t}", "SELECT to_regclass('{t}') IS NULL", True),
    "prepare-execute": (
        "PREPARE p_{m} AS INSERT INTO testapp_item (name, n) VALUES ('{m}', 0); "
        "EXECUTE p_{m}; DEALLOCATE p_{m}",
        "SELECT count(*) FROM testapp_item WHERE name = '{m}'", 1,
    ),
    "quoted-nextval": ("SELECT \"nextval\"('{t}_seq')", "SELECT is_called FROM {t}_seq", True),
    "e-string-nextval": ("SELECT E'\\'', nextval('{t}_seq')", "SELECT is_called FROM {t}_seq", True),
    "explain-analyze-create": (
        "EXPLAIN ANALYZE CREATE TABLE {t}_x AS SELECT 1", "SELECT to_regclass('{t}_x') IS NOT NULL", True,
    ),
    "copy-from-program": (
        "COPY testapp_item (name, n) FROM PROGRAM 'echo {m},0' WITH (FORMAT csv)",
        "SELECT count(*) FROM testapp_item WHERE name = '{m}'", 1,
    ),
    "lo-create": (
        "SELECT lo_create(0)", "SELECT count(*) FROM pg_largeobject_metadata WHERE oid = {row}", 1,
    ),
}  # fmt: skip


@pytest.mark.parametrize("form", sorted(RAW_WRITES))
def test_raw_sql_writes_are_read_your_writes(form, replica_cluster, routing):
    """Each raw-SQL write form of issue 16, run by a view through ``django.db.connection``; the next
    request of the session reads what it did, with replay paused on both replicas (0.1: stale)."""
    from django.db import connection

    write, check, expected = RAW_WRITES[form]
    marker = f"m{uuid.uuid4().hex[:8]}"
    table = f"t_{marker}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (a int); CREATE SEQUENCE {table}_seq")
    replica_cluster.wait_caught_up()
    for name in ("replica1", "replica2"):
        replica_cluster.pause_replay(name)
    client = Client()
    try:
        views.RAW_SQL["w"] = write.format(t=table, m=marker)
        response = client.get("/raw/write/", {"k": "w"})
        assert response.status_code == 200
        row = (response.json()["row"] or [None])[0]
        views.RAW_SQL["c"] = check.format(t=table, m=marker, row=row)
        assert client.get("/raw/read/", {"k": "c"}).json()["value"] == expected
    finally:
        views.RAW_SQL.clear()
        for name in ("replica1", "replica2"):
            replica_cluster.resume_replay(name)
