"""``POOL["RELEASE"] = "transaction"``: a pooled connection per unit of work, not per thread.

Threads that never close their connections (Django's test ``Client``, thread pools, long-running
commands) share a small pool; a long-lived thread follows failover and comes back to a recovered replica;
what Django and users expect of ``connection`` keeps working; nothing a borrower did reaches the next one.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from django.core.signals import got_request_exception
from django.db import OperationalError, connections, transaction
from django.db.backends.signals import connection_created
from django.db.models.expressions import RawSQL
from django.test import Client
from django.test.utils import CaptureQueriesContext

from replicarouter import PrimaryUnavailable, request_context
from replicarouter import pool as pools
from replicarouter.backends.postgresql.base import DatabaseWrapper
from replicarouter.health import store as health
from replicarouter.testing.base import wait_for
from tests.helpers import routed
from tests.testapp.models import Item

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases="__all__")]

FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.4, "READ_TIMEOUT": 1.0}


@contextlib.contextmanager
def pooled(**pool: Any) -> Iterator[None]:
    """Give every alias these ``POOL`` settings (fresh pools), then put the old ones back."""
    saved = {alias: connections.settings[alias].get("POOL") for alias in connections.settings}
    connections.close_all()
    pools.registry.dispose()
    for alias in saved:
        connections.settings[alias]["POOL"] = dict(pool)
    try:
        yield
    finally:
        connections.close_all()
        pools.registry.dispose()
        for alias, value in saved.items():
            if value is None:
                connections.settings[alias].pop("POOL", None)
            else:
                connections.settings[alias]["POOL"] = value


def _app_connections(node: Any, dbname: str) -> int:
    count: int = node.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = %s "
        "AND pid <> pg_backend_pid() AND application_name NOT LIKE 'replicarouter-%%'",
        (dbname,),
    )
    return count


def _port(alias: str = "default") -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT inet_server_port()")
        port: int = cursor.fetchone()[0]
        return port


def _scalar(wrapper: Any, sql: str) -> Any:
    with wrapper.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def _run_threads(target: Any, count: int, name: str, timeout: float) -> None:
    """Run ``target`` in ``count`` threads at once and wait for them all."""
    threads = [threading.Thread(target=target, name=f"{name}-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = False


class _Sampler(threading.Thread):
    """Record the most app connections each node had while it ran."""

    def __init__(self, cluster: Any, dbname: str) -> None:
        super().__init__(name="connection-sampler", daemon=True)
        self.cluster, self.dbname = cluster, dbname
        self.most = dict.fromkeys((node.name for node in cluster.nodes), 0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for node in self.cluster.nodes:
                self.most[node.name] = max(self.most[node.name], _app_connections(node, self.dbname))
            self.stop.wait(0.02)


@pytest.mark.parametrize("release", ["transaction", "request"])
def test_32_threads_with_test_clients_share_a_pool_of_2_plus_2(replica_cluster, release):
    """32 threads, each with its own test Client that never closes its connections, 25 reads each.

    With ``RELEASE = "transaction"`` no request fails and no node sees more than 6 app connections; with
    ``"request"`` the first threads keep theirs and the others run out of connections (the old bug).
    """
    dbname = connections["default"].settings_dict["NAME"]
    failures: list[str] = []
    done: list[int] = []
    local = threading.local()

    def note(sender: Any, **kwargs: Any) -> None:  # sent in the thread that handled the request
        local.error = repr(sys.exc_info()[1])

    got_request_exception.connect(note, dispatch_uid="test_unit_of_work")
    # Django's mail_admins handler renders each 500 with the frames' locals, and a QuerySet's repr
    # queries the database: with RELEASE=request every one would wait out the exhausted pool, holding
    # the handler's lock that all other threads need to log theirs
    requests = 25 if release == "transaction" else 2
    with (
        _quiet("django.request"),
        routed(replica_cluster, **FAST),
        pooled(SIZE=2, MAX_OVERFLOW=2, TIMEOUT=1.0, RELEASE=release),
    ):
        start = threading.Barrier(32)

        def work() -> None:
            client = Client(raise_request_exception=False)
            start.wait()
            for _ in range(requests):
                response = client.get("/load/read/")
                if response.status_code == 200:
                    done.append(response.json()["port"])
                else:
                    failures.append(getattr(local, "error", f"HTTP {response.status_code}"))

        sampler = _Sampler(replica_cluster, dbname)
        sampler.start()
        _run_threads(work, 32, "client", timeout=120)
        sampler.stop.set()
        sampler.join(5)
        held = [alias for alias in connections.settings if pools.registry.stats(alias).get("checked_out")]
    got_request_exception.disconnect(dispatch_uid="test_unit_of_work")
    if release == "request":
        assert failures and all("PoolExhausted" in f for f in failures), failures[:3]
        assert held, "with RELEASE=request the threads keep their connections"
        return
    assert not failures, failures[:3]
    assert len(done) == 800
    replica_ports = {replica_cluster.node(name).port for name in ("replica1", "replica2")}
    assert set(done) == replica_ports  # reads spread over both replicas, none on the primary
    assert max(sampler.most.values()) <= 6, sampler.most
    assert not held  # every connection is back in its pool, although no thread closed anything


def test_a_long_lived_thread_returns_to_a_recovered_replica(replica_cluster):
    """Fault: replica1 stopped, then started. A thread that never closes reads replica1's alias throughout.

    While it is down its reads are lent by replica2; once it is back and healthy, they return to it.
    """
    port1, port2 = (replica_cluster.node(name).port for name in ("replica1", "replica2"))
    with routed(replica_cluster, **FAST), pooled():
        assert _port("replica1") == port1
        replica_cluster.stop("replica1", "immediate")
        wait_for("replica1 out", lambda: "replica1" not in health.usable_replicas("default"), timeout=10)
        served = {_port("replica1") for _ in range(5)}
        assert served == {port2}
        replica_cluster.start("replica1")
        replica_cluster.wait_streaming("replica1")
        wait_for("replica1 usable", lambda: "replica1" in health.usable_replicas("default"), timeout=15)
        # the next borrow goes through the lending decision again: replica1's own node
        wait_for("reads back on replica1", lambda: _port("replica1") == port1, timeout=5)
        assert connections["replica1"].borrowed is None  # parked between reads, never closed


def test_a_long_lived_thread_gets_primary_unavailable_then_writes_again(replica_cluster, caplog):
    """Fault: primary stopped, then started. A thread that never closes writes throughout.

    While it is down every write is refused with PrimaryUnavailable (an OperationalError), never
    InterfaceError; once it is back, the same thread's writes succeed without closing anything.
    """
    with routed(replica_cluster, **FAST), pooled():
        with request_context():
            Item.objects.create(name="before")
        replica_cluster.stop(replica_cluster.primary, "fast")
        wait_for("primary down", lambda: health.writer("default", "default") is None, timeout=10)
        errors = []
        for _ in range(3):
            with pytest.raises(OperationalError) as raised, request_context():
                Item.objects.create(name="refused")
            errors.append(raised.value)
        assert all(isinstance(error, PrimaryUnavailable) for error in errors), errors
        assert not any(isinstance(error, psycopg2.InterfaceError) for error in errors)
        replica_cluster.start(replica_cluster.primary)
        wait_for("primary back", lambda: health.writer("default", "default") == "default", timeout=15)
        with request_context():
            assert Item.objects.create(name="after").pk
        assert connections["default"].borrowed is None


def test_a_long_lived_thread_writes_to_the_promoted_replica(replica_cluster_factory):
    """Fault: primary stopped and replica1 promoted; a thread that never closes keeps writing to it."""
    from tests.integration.test_promotion import django_on

    cluster = replica_cluster_factory(replicas=2)
    with django_on(cluster), pooled():
        with request_context():
            Item.objects.create(name="before")
        cluster.stop(cluster.primary, "fast")
        cluster.promote("replica1")
        wait_for("writes on replica1", lambda: health.writer("default", "default") == "replica1", timeout=20)
        with request_context():
            item = Item.objects.create(name="after promotion")
        assert _port("default") == cluster.node("replica1").port
        assert cluster.node("replica1").scalar("SELECT count(*) FROM testapp_item WHERE id = %s", (item.pk,))


def _wrapper(pool: dict[str, Any] | None = None, **options: Any) -> DatabaseWrapper:
    """Return a new wrapper on the test database with an alias (and a pool of 1) of its own."""
    alias = f"uow_{uuid.uuid4().hex[:8]}"
    settings = dict(connections["default"].settings_dict)
    settings["POOL"] = {"SIZE": 1, "MAX_OVERFLOW": 0, **(pool or {})}
    settings["OPTIONS"] = {**settings.get("OPTIONS", {}), "application_name": alias, **options}
    return DatabaseWrapper(settings, alias=alias)


def _twin(wrapper: DatabaseWrapper) -> DatabaseWrapper:
    """Return another wrapper of the same alias and settings (another thread's, sharing its pool)."""
    return DatabaseWrapper(wrapper.settings_dict, alias=wrapper.alias)


def test_a_wrapper_gives_its_connection_back_after_each_statement(replica_cluster):
    wrapper = _wrapper()
    pid = _scalar(wrapper, "SELECT pg_backend_pid()")
    assert wrapper.borrowed is None and wrapper.parked
    assert pools.registry.stats(wrapper.alias)["checked_out"] == 0
    other = _twin(wrapper)  # the same pool of one: it gets the very same server connection
    assert _scalar(other, "SELECT pg_backend_pid()") == pid
    assert _scalar(wrapper, "SELECT pg_backend_pid()") == pid
    wrapper.close()
    other.close()


def test_held_inside_atomic_and_open_cursors_only(replica_cluster):
    """In atomic(), a savepoint, select_for_update and while a cursor is open the connection stays."""
    wrapper = connections["default"]
    with pooled():
        ran = []
        with transaction.atomic():
            pid = _scalar(wrapper, "SELECT pg_backend_pid()")
            item = Item.objects.create(name="in atomic")
            with transaction.atomic():  # a savepoint
                Item.objects.select_for_update().get(pk=item.pk)
                assert _scalar(wrapper, "SELECT pg_backend_pid()") == pid
            transaction.on_commit(lambda: ran.append(Item.objects.filter(pk=item.pk).exists()))
            assert wrapper.borrowed is not None
        assert ran == [True]
        assert wrapper.borrowed is None
        cursor = wrapper.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        cursor.execute("SELECT 1")  # the same session while the cursor is open (lastval() etc.)
        assert wrapper.borrowed is not None
        cursor.close()
        assert wrapper.borrowed is None


def test_server_side_cursor_iterates_outside_a_transaction_while_other_threads_borrow(replica_cluster):
    """``.iterator()`` keeps its connection (a WITH HOLD cursor) while 4 threads share the rest."""
    with pooled(SIZE=2, MAX_OVERFLOW=0, TIMEOUT=5.0):
        Item.objects.using("default").bulk_create(Item(name=f"it{i}") for i in range(30))
        wrapper = connections["default"]
        errors: list[BaseException] = []
        pids: set[int] = set()
        seen = 0

        def borrow() -> None:
            try:
                for _ in range(10):
                    _port("default")
            except BaseException as exc:
                errors.append(exc)
            finally:
                connections.close_all()

        for _ in Item.objects.using("default").iterator(chunk_size=5):
            seen += 1
            pids.add(wrapper.borrowed.connection.info.backend_pid)
            if seen % 10 == 1:
                _run_threads(borrow, 4, "borrower", timeout=30)
        assert not errors, errors
        assert seen >= 30 and len(pids) == 1
        assert wrapper.borrowed is None  # given back once the iterator was exhausted


@pytest.mark.parametrize("release", ["transaction", "request"])
def test_assert_num_queries_counts_the_same(replica_cluster, release):
    with pooled(RELEASE=release):
        wrapper = connections["default"]
        with CaptureQueriesContext(wrapper) as captured:
            Item.objects.using("default").create(name="counted")
            Item.objects.using("default").count()
            with transaction.atomic(using="default"):
                Item.objects.using("default").filter(name="counted").update(n=1)
        # nothing added by borrowing or giving back (Django also logs its BEGIN/COMMIT as queries)
        words = [query["sql"].split()[0] for query in captured.captured_queries]
        assert words == ["INSERT", "SELECT", "BEGIN", "UPDATE", "COMMIT"], captured.captured_queries


def test_connection_created_fires_once_per_connect_not_per_borrow(replica_cluster):
    fired: list[str] = []

    def note(sender: Any, connection: Any, **kwargs: Any) -> None:
        fired.append(connection.alias)

    wrapper = _wrapper()
    connection_created.connect(note)
    try:
        for _ in range(5):
            _scalar(wrapper, "SELECT 1")
        assert fired == [wrapper.alias]  # the wrapper stayed connected for Django while parked
        wrapper.close()
        _scalar(wrapper, "SELECT 1")
        assert fired == [wrapper.alias] * 2  # close() ends it: the next use connects again
    finally:
        connection_created.disconnect(note)
        wrapper.close()


def test_raw_connection_of_a_parked_wrapper_is_pinned_until_close(replica_cluster):
    """``connection.connection`` outside a unit of work returns a usable connection, kept until close()."""
    wrapper = _wrapper()
    _scalar(wrapper, "SELECT 1")
    assert wrapper.parked
    raw = wrapper.connection
    assert raw is not None and not raw.closed
    with raw.cursor() as cursor:  # a raw cursor we cannot see: the connection must stay ours
        cursor.execute("LISTEN rr_raw")
    _scalar(wrapper, "SELECT 1")
    assert wrapper.connection is raw and "connection.connection" in wrapper.pinned
    wrapper.close()
    assert wrapper.borrowed is None and not wrapper.parked


def test_listen_pins_and_notifications_arrive(replica_cluster):
    wrapper = _wrapper()
    with wrapper.cursor() as cursor:
        cursor.execute("LISTEN rr_channel")
    assert wrapper.borrowed is not None and wrapper.pinned
    with connections["default"].cursor() as cursor:
        cursor.execute("NOTIFY rr_channel, 'hello'")
    raw = wrapper.connection

    def arrived() -> bool:
        raw.poll()
        return bool(raw.notifies)

    wait_for("the notification", arrived, timeout=5)
    assert raw.notifies[0].payload == "hello"
    wrapper.close()


def test_copy_runs_through_the_wrapper(replica_cluster):
    import io

    wrapper = _wrapper()
    with wrapper.cursor() as cursor:
        out = io.StringIO()
        cursor.copy_expert("COPY (SELECT 1 AS a UNION ALL SELECT 2) TO STDOUT", out)
    assert out.getvalue() == "1\n2\n"
    assert wrapper.borrowed is None
    wrapper.close()


_OWN_LOCKS = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
#: (statement, what shows the state on the session, its value on a fresh connection)
SESSION_STATE = [
    ("SET search_path = rr_x", "SHOW search_path", '"$user", public'),
    ("/* c */ SET work_mem = '1234kB'", "SHOW work_mem", None),
    ("-- c\nSET work_mem = '1234kB'", "SHOW work_mem", None),
    ("SELECT 1; SET work_mem = '1234kB'", "SHOW work_mem", None),
    ("BEGIN; SET statement_timeout = '4321ms'; COMMIT", "SHOW statement_timeout", "0"),
    ("SELECT 1 AS a INTO TEMP rr_t", "SELECT count(*) FROM pg_tables WHERE tablename = 'rr_t'", 0),
    ("CREATE TABLE pg_temp.rr_t2 (a int)", "SELECT count(*) FROM pg_tables WHERE tablename = 'rr_t2'", 0),
    ("SELECT pg_try_advisory_lock(4242)", _OWN_LOCKS, 0),
    ("SELECT pg_advisory_lock_shared(4343)", _OWN_LOCKS, 0),
    ("LISTEN rr_ch", "SELECT count(*) FROM pg_listening_channels()", 0),
    ("PREPARE rr_p AS SELECT 1", "SELECT count(*) FROM pg_prepared_statements", 0),
    ("DECLARE rr_c CURSOR WITH HOLD FOR SELECT 1", "SELECT count(*) FROM pg_cursors", 0),
]


@pytest.mark.parametrize(("statement", "probe", "fresh"), SESSION_STATE, ids=[s[0] for s in SESSION_STATE])
def test_session_state_pins_then_the_next_borrower_sees_a_fresh_session(
    replica_cluster, statement, probe, fresh
):
    wrapper = _wrapper()
    if fresh is None:
        fresh = _scalar(wrapper, probe)
    pid = _scalar(wrapper, "SELECT pg_backend_pid()")
    with wrapper.cursor() as cursor:
        cursor.execute(statement)
    assert wrapper.borrowed is not None and wrapper.pinned  # the session's own next statement sees it
    assert pools.registry.stats(wrapper.alias)["pins"] == 1
    changed = _scalar(wrapper, probe)
    assert changed != fresh
    wrapper.close()
    discards = pools.registry.stats(wrapper.alias)["discards"]
    assert discards == 1
    nxt = _twin(wrapper)
    assert _scalar(nxt, "SELECT pg_backend_pid()") == pid  # the same server connection...
    assert _scalar(nxt, probe) == fresh  # ...as clean as a new one
    nxt.close()


def test_driver_session_characteristics_are_reset_for_the_next_borrower(replica_cluster):
    """psycopg2 ``set_session(readonly=True, isolation_level=SERIALIZABLE)`` on the raw connection."""
    wrapper = _wrapper()
    with wrapper.cursor():
        raw = wrapper.connection
        raw.set_session(readonly=True, isolation_level="SERIALIZABLE")
    pid = raw.info.backend_pid
    wrapper.close()
    nxt = _twin(wrapper)
    with nxt.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('default_transaction_read_only')")
        assert cursor.fetchone() == (pid, "off")
        raw = nxt.connection
        assert (raw.readonly, raw.isolation_level) == (None, None)
    nxt.set_autocommit(False)
    assert _scalar(nxt, "SHOW transaction_isolation") == "read committed"
    nxt.rollback()
    nxt.set_autocommit(True)
    nxt.close()


def test_assume_role_holds_on_every_borrow_and_after_a_reset(replica_cluster):
    """Django's ``OPTIONS["assume_role"]`` (SET ROLE through a raw cursor) on every connection lent."""
    if not hasattr(DatabaseWrapper, "_configure_role"):
        pytest.skip("OPTIONS['assume_role'] is Django 5.2's")
    role = f"rr_role_{uuid.uuid4().hex[:6]}"
    with connections["default"].cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role}")
    try:
        wrapper = _wrapper(assume_role=role)
        assert _scalar(wrapper, "SELECT current_user") == role
        with wrapper.cursor() as cursor:
            cursor.execute("SET work_mem = '2MB'")  # dirty: DISCARD ALL on return resets the role too
        wrapper.close()
        assert _scalar(wrapper, "SELECT current_user") == role  # prepared again after the reset
        assert _scalar(wrapper, "SELECT current_user") == role  # and on a plain re-borrow
        wrapper.close()
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute(f"DROP ROLE {role}")


def test_close_pool_lets_django_clone_the_test_database(replica_cluster):
    """``manage.py test --parallel 2`` clones the test database with CREATE DATABASE … TEMPLATE."""
    connections.close_all()
    pools.registry.dispose()
    wrapper = connections["default"]
    _scalar(wrapper, "SELECT 1")  # an idle pooled connection to the test database
    assert pools.registry.stats("default")["idle"] == 1
    creation = wrapper.creation
    source = wrapper.settings_dict["NAME"]
    suffix = f"rr{uuid.uuid4().hex[:4]}"
    clone = creation.get_test_db_clone_settings(suffix)["NAME"]
    started = time.monotonic()
    try:
        creation.clone_test_db(suffix=suffix, verbosity=0, keepdb=False)
        names = replica_cluster.node("primary").scalar(
            "SELECT array_agg(datname) FROM pg_database WHERE datname IN (%s, %s)", (source, clone)
        )
        assert sorted(names) == sorted([source, clone])
    finally:
        connections["default"].close()
        pools.registry.dispose("default")
        replica_cluster.node("primary").query(f'DROP DATABASE IF EXISTS "{clone}"')
    assert time.monotonic() - started < 60


def test_router_reads_from_a_thread_that_never_closes_leave_replicas_parked(replica_cluster):
    """A read through the router from a thread that never closes: one read per request, parked between."""
    with routed(replica_cluster, **FAST), pooled():
        with request_context():
            ports = [
                Item.objects.annotate(port=RawSQL("inet_server_port()", ())).values_list("port", flat=True)[0]
                for _ in range(4)
            ]
        assert len(set(ports)) == 2
        assert all(connections[alias].borrowed is None for alias in ("replica1", "replica2"))


def test_an_unclosed_cursor_dropped_by_its_thread_gives_the_connection_back(replica_cluster):
    wrapper = _wrapper()
    cursor = wrapper.cursor()
    cursor.execute("SELECT 1")
    assert cursor.fetchall() == [(1,)] and wrapper.borrowed is not None
    del cursor  # reference counting finalizes it here, in its own thread: the unit of work ends
    assert wrapper.borrowed is None and wrapper.parked
    assert pools.registry.stats(wrapper.alias)["checked_out"] == 0
    wrapper.close()


def test_a_cursor_kept_past_close_runs_on_the_wrapper_s_new_connection(replica_cluster):
    """After close() the old server connection may be another thread's: the cursor never touches it."""
    wrapper = _wrapper({"SIZE": 2})
    cursor = wrapper.cursor()
    cursor.execute("SELECT pg_backend_pid()")
    first = cursor.fetchone()[0]
    wrapper.close()
    other = _twin(wrapper)
    with other.cursor() as held:  # the pool lends the idle connection to another wrapper
        held.execute("SELECT pg_backend_pid()")
        assert held.fetchone()[0] == first
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != first
    cursor.close()
    assert wrapper.borrowed is None
    wrapper.close()
    other.close()


def test_a_set_in_a_connection_created_receiver_pins_that_connection(replica_cluster):
    """Session settings made when Django connects last for that Django connection (until close())."""

    def configure(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == wrapper.alias:
            with connection.cursor() as cursor:
                cursor.execute("SET application_name = 'configured'")

    wrapper = _wrapper()
    connection_created.connect(configure)
    try:
        assert _scalar(wrapper, "SHOW application_name") == "configured"
        assert _scalar(wrapper, "SHOW application_name") == "configured"
        assert wrapper.pinned
    finally:
        connection_created.disconnect(configure)
        wrapper.close()


def test_a_new_server_connection_lent_to_a_parked_wrapper_is_prepared_by_django(replica_cluster):
    """Isolation level, jsonb loads and time zone, as Django's connect() prepares a new connection."""
    wrapper = _wrapper(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE)
    wrapper.settings_dict["TIME_ZONE"] = "Asia/Tokyo"  # not the server's: Django sets it on the session
    first = _scalar(wrapper, "SELECT pg_backend_pid()")  # connect(): Django prepares this one itself
    pools.registry.dispose(wrapper.alias)  # the next borrow opens a new server connection
    assert wrapper.parked
    assert _scalar(wrapper, """SELECT '{"a": 1}'::jsonb""") == '{"a": 1}'  # Django's jsonb loads
    assert _scalar(wrapper, "SELECT pg_backend_pid()") != first
    assert _scalar(wrapper, "SHOW TimeZone") == wrapper.timezone_name == "Asia/Tokyo"
    wrapper.set_autocommit(False)
    assert _scalar(wrapper, "SHOW transaction_isolation") == "serializable"
    wrapper.rollback()
    wrapper.set_autocommit(True)
    wrapper.close()


def test_close_with_a_server_side_cursor_open_discards_it_for_the_next_borrower(replica_cluster):
    """A WITH HOLD cursor left open at close() (an iterator abandoned mid-way) must not reach the next one."""
    wrapper = _wrapper()
    cursor = wrapper.chunked_cursor()
    cursor.execute("SELECT generate_series(1, 100)")
    assert cursor.fetchmany(5) == [(i,) for i in range(1, 6)]
    pid = wrapper.connection.info.backend_pid
    wrapper.close()  # the cursor is still open on the session
    nxt = _twin(wrapper)
    assert _scalar(nxt, "SELECT pg_backend_pid()") == pid
    assert _scalar(nxt, "SELECT count(*) FROM pg_cursors") == 0
    nxt.close()


def test_threads_borrowing_in_a_tight_loop_are_all_served_in_turn(replica_cluster):
    """24 threads that never close, each running 40 statements back to back, over a pool of 4.

    A thread that gives its connection back and asks again at once must not take it before the threads
    already waiting (SQLAlchemy's queue alone lets it: most threads then starve until TIMEOUT).
    """
    alias = f"uow_{uuid.uuid4().hex[:8]}"
    settings = dict(connections["default"].settings_dict)
    settings["POOL"] = {"SIZE": 4, "MAX_OVERFLOW": 0, "TIMEOUT": 3.0}
    settings["OPTIONS"] = {**settings.get("OPTIONS", {}), "application_name": alias}
    errors: list[str] = []
    served: dict[str, int] = {}
    start = threading.Barrier(24)

    def work() -> None:
        wrapper = DatabaseWrapper(settings, alias=alias)
        name = threading.current_thread().name
        start.wait()
        try:
            for _ in range(40):
                _scalar(wrapper, "SELECT 1")
                served[name] = served.get(name, 0) + 1
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            wrapper.close()

    _run_threads(work, 24, "loop", timeout=120)
    assert not errors, errors[:3]
    assert len(served) == 24 and set(served.values()) == {40}
    stats = pools.registry.stats(alias)
    assert stats["checked_out"] == 0 and stats["connects"] <= 4
    assert stats["waits"] > 0  # they did queue for the four connections


def test_overflow_connections_are_closed_when_they_come_back(replica_cluster):
    """SIZE 1 + MAX_OVERFLOW 2: three held at once, then one stays open (idle) and two are closed."""
    first = _wrapper({"SIZE": 1, "MAX_OVERFLOW": 2})
    others = [_twin(first), _twin(first)]
    wrappers = [first, *others]
    for wrapper in wrappers:  # each holds its connection inside an open transaction
        wrapper.set_autocommit(False)
        _scalar(wrapper, "SELECT 1")
    assert pools.registry.stats(first.alias)["checked_out"] == 3
    for wrapper in wrappers:
        wrapper.rollback()
        wrapper.set_autocommit(True)  # the unit of work ends: given back
    stats = pools.registry.stats(first.alias)
    assert stats["checked_out"] == 0 and stats["idle"] == 1 and stats["invalidations"] == 0
    assert stats["connects"] == 3
    for wrapper in wrappers:
        wrapper.close()


def test_a_wrapper_takes_back_the_connection_it_parked(replica_cluster):
    """Given back at the end of a statement, parked for this wrapper: the next statement takes it again."""
    wrapper = _wrapper({"SIZE": 2})
    pid = _scalar(wrapper, "SELECT pg_backend_pid()")
    for _ in range(5):
        assert _scalar(wrapper, "SELECT pg_backend_pid()") == pid
    stats = pools.registry.stats(wrapper.alias)
    assert stats["connects"] == 1 and stats["checkouts"] == 6 and stats["checked_out"] == 0
    assert stats["idle"] == 1 and stats["reuses"] == 5
    wrapper.close()


def _wait_session_gone(cluster: Any, pid: int, what: str) -> None:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
    wait_for(what, lambda: not cluster.node("primary").scalar(sql, (pid,)), timeout=5)


def test_a_parked_connection_the_server_terminated_is_replaced_without_an_error(replica_cluster):
    """Fault: pg_terminate_backend() on the parked connection's session; the next statement just works."""
    wrapper = _wrapper({"SIZE": 2})
    pid = _scalar(wrapper, "SELECT pg_backend_pid()")
    replica_cluster.node("primary").query("SELECT pg_terminate_backend(%s)", (pid,))
    _wait_session_gone(replica_cluster, pid, "the session to end")
    assert _scalar(wrapper, "SELECT pg_backend_pid()") != pid
    assert pools.registry.stats(wrapper.alias)["stale_on_checkout"] == 1
    wrapper.close()


def test_close_pool_closes_a_parked_connection(replica_cluster):
    wrapper = _wrapper({"SIZE": 2})
    pid = _scalar(wrapper, "SELECT pg_backend_pid()")
    wrapper.close_pool()
    _wait_session_gone(replica_cluster, pid, "the parked connection to close")
    assert _scalar(wrapper, "SELECT pg_backend_pid()") != pid  # a new pool, a new connection
    wrapper.close()
