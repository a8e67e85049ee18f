"""replicarouter.backends.postgresql against the real primary: reuse, limits, resets, faults, fork."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import re
import threading
import time
import uuid

import psycopg2
import psycopg2.errors
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished, request_started
from django.db import DataError, OperationalError, connections

from replicarouter import pool as pools
from replicarouter.backends.postgresql.base import DatabaseWrapper
from replicarouter.exceptions import PoolExhausted
from replicarouter.testing.base import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _wrapper(alias: str, pool: dict | None = None, app: str | None = None) -> DatabaseWrapper:
    """Return a new Django wrapper on the test database with its own alias (and so its own pool)."""
    settings = dict(connections["default"].settings_dict)
    settings["POOL"] = pool or {}
    settings["OPTIONS"] = {**settings.get("OPTIONS", {}), "application_name": app or alias}
    return DatabaseWrapper(settings, alias=alias)


def _scalar(wrapper: DatabaseWrapper, sql: str):
    with wrapper.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def _alias() -> str:
    return f"pool_{uuid.uuid4().hex[:8]}"


def _server_connections(cluster, application_name: str) -> int:
    return int(
        cluster.primary.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        )
    )


def test_connections_are_reused_across_requests(replica_cluster):
    """Twenty request cycles through Django's signals use one server connection (same backend pid)."""
    connection = connections["default"]
    connection.close()
    before = pools.registry.stats("default").get("connects", 0)
    pids = set()
    for _ in range(20):
        request_started.send(sender=None)
        pids.add(_scalar(connection, "SELECT pg_backend_pid()"))
        request_finished.send(sender=None)  # Django's close_old_connections: CONN_MAX_AGE=0 closes
        assert connection.borrowed is None  # the wrapper let go of it...
    stats = pools.registry.stats("default")
    assert len(pids) == 1  # ...but the server connection lived on in the pool
    assert stats["connects"] - before <= 1
    assert stats["checked_out"] == 0 and stats["idle"] >= 1


def test_threads_never_exceed_size_plus_overflow(replica_cluster):
    """16 threads over a pool of 2 + overflow 2 never hold more than 4 server connections."""
    alias = _alias()
    errors: list[BaseException] = []
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _server_connections(replica_cluster, alias))
            time.sleep(0.005)

    def work() -> None:
        wrapper = _wrapper(alias, {"SIZE": 2, "MAX_OVERFLOW": 2, "TIMEOUT": 30})
        try:
            for _ in range(10):
                _scalar(wrapper, "SELECT pg_sleep(0.005)")
                wrapper.close()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=work) for _ in range(16)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    sampler.join()
    assert errors == []
    stats = pools.registry.stats(alias)
    assert stats["checkouts"] == 160
    assert 2 <= peak <= 4
    assert stats["connects"] <= 4
    assert stats["waits"] > 0  # 16 threads over 4 connections had to queue


def test_set_and_temp_table_of_one_borrower_are_invisible_to_the_next(replica_cluster):
    alias = _alias()
    first = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0})
    pid = _scalar(first, "SELECT pg_backend_pid()")
    with first.cursor() as cursor:
        cursor.execute("SET statement_timeout = '4321ms'")
        cursor.execute("CREATE TEMP TABLE scratch (id int)")
    first.close()

    second = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0})
    assert _scalar(second, "SELECT pg_backend_pid()") == pid  # the same server connection...
    assert _scalar(second, "SHOW statement_timeout") == "0"  # ...without the first borrower's state
    assert _scalar(second, "SELECT to_regclass('pg_temp.scratch')") is None
    second.close()
    assert pools.registry.stats(alias)["discards"] == 1


def test_clean_borrowers_cost_no_discard(replica_cluster):
    alias = _alias()
    wrapper = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0})
    for _ in range(5):
        _scalar(wrapper, "SELECT 1")
        wrapper.close()
    assert pools.registry.stats(alias)["discards"] == 0


def test_reset_rollback_mode_keeps_session_state_as_documented(replica_cluster):
    alias = _alias()
    wrapper = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0, "RESET": "rollback"})
    with wrapper.cursor() as cursor:
        cursor.execute("SET statement_timeout = '4321ms'")
    wrapper.close()
    assert _scalar(wrapper, "SHOW statement_timeout") == "4321ms"
    wrapper.close()


@pytest.mark.parametrize(
    ("reset", "seen", "discards"),
    [("always", "0", 1), ("auto", "4321ms", 0)],  # auto resets only what the classifier sees (documented)
)
def test_reset_always_discards_state_the_classifier_cannot_see(replica_cluster, reset, seen, discards):
    """Bug guarded: ``POOL RESET = "always"`` treated as ``"auto"``.

    A database function changes a session setting: ``SELECT f()`` does not look like it leaves session
    state behind, so only ``"always"`` resets the connection before the next borrower gets it.
    """
    alias = _alias()
    function = f"rr_set_timeout_{uuid.uuid4().hex[:8]}"
    with connections["default"].cursor() as cursor:
        cursor.execute(
            f"CREATE FUNCTION {function}() RETURNS text LANGUAGE sql "
            "AS $$ SELECT set_config('statement_timeout', '4321ms', false) $$"
        )
    connections["default"].close()
    try:
        first = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0, "RESET": reset, "RELEASE": "request"})
        _scalar(first, f"SELECT {function}()")
        assert _scalar(first, "SHOW statement_timeout") == "4321ms"
        pid = _scalar(first, "SELECT pg_backend_pid()")
        first.close()
        assert pools.registry.stats(alias)["discards"] == discards

        second = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0, "RESET": reset, "RELEASE": "request"})
        assert _scalar(second, "SELECT pg_backend_pid()") == pid  # the same server connection...
        assert _scalar(second, "SHOW statement_timeout") == seen  # ...with or without the function's SET
        second.close()
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute(f"DROP FUNCTION {function}()")
        connections["default"].close()


def test_aborted_transaction_is_rolled_back_before_reuse(replica_cluster):
    alias = _alias()
    table = f"t_{uuid.uuid4().hex[:8]}"
    first = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0})
    with first.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (id int)")
    first.set_autocommit(False)
    with first.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} VALUES (1)")
        with pytest.raises(DataError, match="division by zero") as excinfo:
            cursor.execute("SELECT 1/0")
        assert isinstance(excinfo.value.__cause__, psycopg2.errors.DivisionByZero)
    first.close()  # returned with an aborted, uncommitted transaction

    second = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0})
    assert _scalar(second, f"SELECT count(*) FROM {table}") == 0  # the insert was rolled back
    assert second.connection.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    second.close()


def test_backend_terminated_while_idle_is_replaced_on_checkout(replica_cluster):
    """Fault: backend terminated (pg_terminate_backend) while idle in the pool: no error reaches anyone."""
    alias = _alias()
    wrapper = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0})
    old_pid = _scalar(wrapper, "SELECT pg_backend_pid()")
    wrapper.close()
    assert replica_cluster.terminate_backends("primary", application_name=alias) == 1

    new_pid = _scalar(wrapper, "SELECT pg_backend_pid()")  # no OperationalError
    wrapper.close()
    assert new_pid != old_pid
    assert pools.registry.stats(alias)["stale_on_checkout"] == 1


def test_backend_terminated_mid_request_fails_that_request_only(replica_cluster, caplog):
    """Fault: backend terminated mid-transaction: that request gets the error, the next a fresh connection."""
    alias = _alias()
    wrapper = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0})
    old_pid = _scalar(wrapper, "SELECT pg_backend_pid()")
    wrapper.set_autocommit(False)
    replica_cluster.terminate_backends("primary", application_name=alias)
    with pytest.raises(OperationalError), wrapper.cursor() as cursor:
        cursor.execute("SELECT 1")
    wrapper.close()  # Django closes at request end: the broken connection is invalidated, not pooled

    stats = pools.registry.stats(alias)
    assert stats["invalidations"] == 1 and stats["idle"] == 0
    assert _scalar(wrapper, "SELECT pg_backend_pid()") != old_pid
    wrapper.close()


def test_exhausted_pool_names_alias_sizes_and_wait(replica_cluster):
    """Fault: pool exhausted: the error names the alias, size, overflow and time waited."""
    alias = _alias()
    timeout = 0.2
    holder = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0, "TIMEOUT": timeout})
    holder.ensure_connection()
    waiter = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0, "TIMEOUT": timeout})
    with pytest.raises(PoolExhausted) as excinfo:
        waiter.ensure_connection()
    assert isinstance(excinfo.value, OperationalError)
    message = str(excinfo.value)
    # the wait is measured: load makes it longer, never shorter than TIMEOUT
    found = re.search(
        rf"pool '{alias}' exhausted: size 1 \+ overflow 0 all checked out, waited (\d+\.\d) s", message
    )
    assert found, message
    assert float(found[1]) >= timeout
    assert "MAX_OVERFLOW" in message
    assert pools.registry.stats(alias)["timeouts"] == 1
    holder.close()
    waiter.ensure_connection()  # free again
    waiter.close()


def test_leak_warning_names_the_holding_thread(replica_cluster, caplog):
    alias = _alias()
    holder = _wrapper(alias, {"SIZE": 2, "MAX_OVERFLOW": 0, "LEAK_WARNING": 0.05})
    holder.ensure_connection()
    assert holder.borrowed is not None
    lease = holder.borrowed.lease
    wait_for(
        "the holder's lease to pass LEAK_WARNING", lambda: time.monotonic() - lease.since > 0.05, timeout=5
    )
    other = _wrapper(alias, {"SIZE": 2, "MAX_OVERFLOW": 0, "LEAK_WARNING": 0.05})
    with caplog.at_level(logging.WARNING, logger="replicarouter.pools"):
        other.ensure_connection()
    thread = threading.current_thread().name
    assert any(
        f"pool '{alias}': a connection has been checked out by thread {thread}" in r.getMessage()
        for r in caplog.records
    )
    other.close()
    holder.close()


def _fork_child_pid(alias: str, inherited: DatabaseWrapper, write_fd: int) -> None:
    """In a forked child: use the alias, then destroy everything inherited, and report the backend pid."""
    try:
        pid = _scalar(inherited, "SELECT pg_backend_pid()")  # must not run on the parent's session
        inherited.close()
        # what garbage collection or interpreter exit may do to inherited connections, done for sure:
        # libpq's close sends a Terminate message, which must not reach the parent's sessions
        for pool in pools.registry.inherited():
            for connection in pool.connections():
                connection.close()
        pools.registry.forget_inherited()
        gc.collect()
        os.write(write_fd, str(pid).encode())
    finally:
        os._exit(0)


def test_forked_child_gets_its_own_connections_and_the_parent_keeps_its_own(replica_cluster):
    alias = _alias()
    held = _wrapper(alias, {"SIZE": 2, "MAX_OVERFLOW": 0, "RELEASE": "request"})
    held_pid = _scalar(held, "SELECT pg_backend_pid()")  # this one is checked out at fork time
    idle = _wrapper(alias, {"SIZE": 2, "MAX_OVERFLOW": 0})
    idle_pid = _scalar(idle, "SELECT pg_backend_pid()")
    idle.close()  # and this one sits idle in the pool
    assert idle_pid != held_pid

    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        _fork_child_pid(alias, held, write_fd)
    os.close(write_fd)
    _, status = os.waitpid(child, 0)
    child_pid = int(os.read(read_fd, 64).decode() or 0)
    os.close(read_fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_pid not in (0, idle_pid, held_pid)

    # the parent's sessions survived the child, including its garbage collection of them: the idle
    # one is handed out as is (the server did not close it), the held one still answers
    again = _wrapper(alias, {"SIZE": 2, "MAX_OVERFLOW": 0})
    assert _scalar(again, "SELECT pg_backend_pid()") == idle_pid
    assert _scalar(held, "SELECT pg_backend_pid()") == held_pid
    assert pools.registry.stats(alias)["stale_on_checkout"] == 0
    again.close()
    held.close()


def _multiprocessing_child(queue) -> None:
    connection = connections["default"]
    queue.put(_scalar(connection, "SELECT pg_backend_pid()"))
    connection.close()


def test_multiprocessing_child_uses_its_own_connection(replica_cluster):
    connection = connections["default"]
    parent_pid = _scalar(connection, "SELECT pg_backend_pid()")  # held open across the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_multiprocessing_child, args=(queue,))
    process.start()
    child_pid = queue.get(timeout=30)
    process.join(timeout=30)
    queue.close()
    queue.join_thread()
    assert process.exitcode == 0
    assert child_pid != parent_pid
    assert _scalar(connection, "SELECT pg_backend_pid()") == parent_pid


def test_pool_stats_shape(replica_cluster):
    alias = _alias()
    wrapper = _wrapper(alias, {"SIZE": 3, "MAX_OVERFLOW": 1})
    wrapper.ensure_connection()
    stats = pools.registry.stats(alias)
    assert {k: stats[k] for k in ("size", "max_overflow", "checked_out", "overflow", "idle")} == {
        "size": 3, "max_overflow": 1, "checked_out": 1, "overflow": 0, "idle": 0,
    }  # fmt: skip
    wrapper.close()
    assert pools.registry.stats(alias)["idle"] == 1


def test_public_pool_stats_cover_every_pooled_alias(replica_cluster):
    import replicarouter

    _scalar(connections["default"], "SELECT 1")
    connections["default"].close()
    stats = replicarouter.pool_stats()
    assert set(stats) == {"default", "replica1", "replica2"}
    assert stats["default"]["checkouts"] >= 1 and stats["default"]["checked_out"] == 0
    assert stats["replica2"]["timeouts"] == 0
    assert replicarouter.pool_stats("replica1") == {"replica1": stats["replica1"]}


def test_connect_failure_is_django_operational_error(replica_cluster):
    settings = dict(connections["default"].settings_dict, PORT="9")
    wrapper = DatabaseWrapper(settings, alias=_alias())
    with pytest.raises(OperationalError, match="Connection refused|could not connect"):
        wrapper.ensure_connection()


def test_django_prepares_every_borrowed_connection_as_a_new_one(replica_cluster):
    """get_new_connection borrows, then Django's own code prepares the connection, new or pooled.

    OPTIONS' isolation level is applied and JSON comes back undecoded (Django's jsonb loads), on the
    first borrow (a new server connection) and on the second (the same one, from the pool); the driver
    stand-in lives only during the call.
    """
    alias = _alias()
    wrapper = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0, "RELEASE": "request"})
    wrapper.settings_dict["OPTIONS"]["isolation_level"] = psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE
    pids = set()
    for _ in range(2):
        wrapper.ensure_connection()
        assert wrapper.Database is psycopg2
        pids.add(wrapper.connection.info.backend_pid)
        assert _scalar(wrapper, """SELECT '{"a": 1}'::jsonb""") == '{"a": 1}'
        wrapper.set_autocommit(False)
        assert _scalar(wrapper, "SHOW transaction_isolation") == "serializable"
        wrapper.rollback()
        wrapper.close()
    assert len(pids) == 1 and pools.registry.stats(alias)["checkouts"] == 2


def test_an_invalid_isolation_level_fails_before_borrowing(replica_cluster):
    alias = _alias()
    wrapper = _wrapper(alias, {"SIZE": 1, "MAX_OVERFLOW": 0})
    wrapper.settings_dict["OPTIONS"]["isolation_level"] = 99
    with pytest.raises(ImproperlyConfigured, match="Invalid transaction isolation level 99"):
        wrapper.ensure_connection()
    assert wrapper.borrowed is None and pools.registry.stats(alias)["checkouts"] == 0
    assert wrapper.Database is psycopg2


def test_close_pool_closes_this_alias_s_pooled_connections_only(replica_cluster):
    """Django 5.1+ calls close_pool() before cloning a test database and when TIME_ZONE or USE_TZ change.

    The idle connection closes at once, the lent one when it comes back, and the next borrow opens a new
    one; another alias's pool keeps its connection.
    """
    alias, other_alias = _alias(), _alias()
    held = _wrapper(alias, {"SIZE": 2, "MAX_OVERFLOW": 0, "RELEASE": "request"})
    held_pid = _scalar(held, "SELECT pg_backend_pid()")
    idle = _wrapper(alias, {"SIZE": 2, "MAX_OVERFLOW": 0})
    idle_pid = _scalar(idle, "SELECT pg_backend_pid()")
    idle.close()
    other = _wrapper(other_alias, {"SIZE": 1, "MAX_OVERFLOW": 0})
    _scalar(other, "SELECT 1")
    other.close()
    assert _server_connections(replica_cluster, alias) == 2

    idle.close_pool()
    assert pools.registry.pools(alias) == []
    wait_for(
        "the idle connection to close", lambda: _server_connections(replica_cluster, alias) == 1, timeout=5
    )
    held.close()  # returned to a disposed pool: closed, not kept
    wait_for(
        "the lent connection to close", lambda: _server_connections(replica_cluster, alias) == 0, timeout=5
    )
    assert _server_connections(replica_cluster, other_alias) == 1
    assert _scalar(idle, "SELECT pg_backend_pid()") not in (idle_pid, held_pid)
    idle.close()
