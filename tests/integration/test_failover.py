"""Faults under concurrent load on the real cluster: each test names its fault and checks what users saw.

A load of reader and writer threads runs through Django (tests/load.py) while the fault happens
mid-run. Every test then checks the outcome for users (failed requests, stale reads, how long requests
took), what was logged, and that nothing leaked: no server connection outside the pools, no thread.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import uuid

import pytest
from django.conf import settings
from django.db import OperationalError, connections
from django.test import override_settings

from replicarouter import PoolExhausted, PrimaryUnavailable, request_context, status
from replicarouter import pool as pools
from replicarouter.conf import settings as rr_settings
from replicarouter.health import monitor
from replicarouter.health import store as health
from replicarouter.observability import stats
from replicarouter.observability.report import exit_code
from replicarouter.testing.base import wait_for
from tests.helpers import routed, stray_threads
from tests.load import Load, call, client
from tests.testapp.models import Item

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases="__all__")]

READ_TIMEOUT = 1.0
FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.4, "READ_TIMEOUT": READ_TIMEOUT}
#: a request may wait for one new connection to a frozen node (libpq's connect_timeout floor, 2 s)
MARGIN = 2.5
LOAD_SECONDS = 6.0


def _app_connections(node, dbname):
    return node.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = %s "
        "AND pid <> pg_backend_pid() AND application_name NOT LIKE 'replicarouter-%%'",
        (dbname,),
    )


@pytest.fixture
def routing(replica_cluster, caplog):
    """Fast health settings, a private key prefix, both replicas usable; afterwards check for leaks."""
    caplog.set_level(logging.INFO, logger="replicarouter")
    threads_before = set(threading.enumerate())
    with routed(replica_cluster, **FAST) as values:
        yield values
        replica_cluster.heal()
    # nothing leaked: every thread gone, every server connection back in a pool
    stray = stray_threads(threads_before)
    assert not stray, f"threads left behind: {stray}"
    connections.close_all()
    pools.registry.dispose()
    dbname = connections["default"].settings_dict["NAME"]
    for node in replica_cluster.nodes:
        wait_for(
            f"no app connection left on {node.name}",
            lambda node=node: _app_connections(node, dbname) == 0,
            timeout=10,
        )


def _ports(replica_cluster):
    return {node.name: node.port for node in replica_cluster.nodes}


def test_replica_killed_no_read_fails(replica_cluster, routing, caplog):
    """Fault: replica1 killed (SIGKILL) under load → 0 failed reads, reads move to replica2, logged."""
    counted = {}

    def replica1_reads():
        return stats.total("reads_routed", alias="replica1"), stats.total("read_fallbacks", alias="replica1")

    def after_fault():
        wait_for("replica1 excluded", lambda: "replica1" not in health.usable_replicas("default"), timeout=5)
        excluded = health.snapshot("default")
        # one more round: a read routed on the snapshot before has long been counted
        wait_for("the next round", lambda: health.snapshot("default") is not excluded, timeout=5)
        counted["excluded"] = replica1_reads()

    report = Load().run(
        LOAD_SECONDS, fault=lambda: replica_cluster.stop("replica1", "kill"), after_fault=after_fault
    )
    counted["end"] = replica1_reads()
    ports = _ports(replica_cluster)
    assert not report.hung_threads
    assert [r for r in report.of("read") if r.port == ports["replica1"] and r.started < report.fault_started]
    assert not report.failed("read", "own-read"), report.describe()
    assert not report.failed("write"), report.describe()
    assert not report.stale()
    later = [r for r in report.of("read") if r.started > report.fault_ended + 1.0]
    assert later and {r.port for r in later} == {ports["replica2"]}
    # a dead replica answers nothing, so the ports above cannot tell whether the router still sent reads
    # there (each then lent elsewhere, a fallback): the router's own counts can
    assert counted["end"] == counted["excluded"], counted
    assert "replica1" not in health.usable_replicas("default")
    assert any("node replica1: up -> down" in m for m in caplog.messages), caplog.messages[-20:]


def test_replica_frozen_no_hung_request(replica_cluster, routing, caplog):
    """Fault: replica1 frozen (SIGSTOP) under load → requests end within READ_TIMEOUT + margin, 0 fail."""
    report = Load().run(LOAD_SECONDS, fault=lambda: replica_cluster.freeze("replica1"))
    assert not report.hung_threads
    slowest = max(r.seconds for r in report.requests)
    assert slowest < READ_TIMEOUT + MARGIN, f"a request took {slowest:.2f} s"
    assert not report.failed("read", "own-read"), report.describe()
    assert not report.failed("write"), report.describe()
    assert not report.stale()
    assert any("node replica1: up -> down" in m for m in caplog.messages)
    cut = [m for m in caplog.messages if "READ_TIMEOUT" in m or "retrying it elsewhere" in m]
    in_flight = [
        r
        for r in report.of("read")
        if r.started < report.fault_started < r.started + r.seconds and r.seconds > READ_TIMEOUT
    ]
    # a read caught on the frozen node was cut and retried, and said so
    assert not in_flight or cut


def test_read_in_flight_on_a_frozen_replica_is_cut_and_run_again_elsewhere(replica_cluster, routing, caplog):
    """Fault: replica1 frozen (SIGSTOP) while a read runs on it → the watchdog cuts it (READ_TIMEOUT) and
    it runs again on another node: the caller gets its row, the retry is counted and logged.

    The load test above can only check this when one of its reads happens to be on replica1 at the
    freeze; this read is there for certain (seen in pg_stat_activity before the freeze).
    """
    node = replica_cluster.node("replica1")
    retries = stats.total("read_retries", alias="replica1")
    outcome = {}

    def read():
        try:
            with request_context(), connections["replica1"].cursor() as cursor:
                cursor.execute("SELECT inet_server_port() FROM pg_sleep(0.4217)")
                outcome["port"] = cursor.fetchone()[0]
        except Exception as exc:  # surfaced below
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=read, name="load-frozen-read")
    thread.start()
    wait_for(
        "the read to run on replica1",
        lambda: node.scalar("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%0.4217%%' "
                            "AND pid <> pg_backend_pid()") == 1,
        timeout=5,
    )  # fmt: skip
    replica_cluster.freeze("replica1")
    thread.join(30)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["port"] in (replica_cluster.node("replica2").port, replica_cluster.primary.port)
    assert stats.total("read_retries", alias="replica1") == retries + 1
    assert any("no answer within READ_TIMEOUT; retrying it elsewhere" in m for m in caplog.messages)


def test_replay_paused_no_stale_read_for_sticky_sessions(replica_cluster, routing):
    """Fault: replay paused on replica1 under load → sessions never miss their own writes, 0 failures."""
    report = Load(readers=3, writers=3).run(
        LOAD_SECONDS, fault=lambda: replica_cluster.pause_replay("replica1")
    )
    assert not report.hung_threads
    own = report.of("own-read")
    assert len(own) > 20
    assert not report.stale(), f"{len(report.stale())} stale reads"
    assert not report.failed("read", "own-read", "write"), report.describe()
    # replica1 kept serving plain reads (it is behind, within MAX_LAG): the pause was real
    paused_reads = [r for r in report.of("read") if r.started > report.fault_ended]
    assert any(r.port == replica_cluster.node("replica1").port for r in paused_reads)


def test_primary_stopped_reads_go_on_writes_fail_fast(replica_cluster, routing, caplog):
    """Fault: primary stopped → reads keep succeeding; writes fail fast with PrimaryUnavailable; critical."""
    seen = {}
    refused = stats.total("primary_unavailable", cluster="default")

    def after_fault():
        wait_for("primary down", lambda: health.writer("default", "default") is None, timeout=5)
        data = status()
        seen["status"] = data["clusters"]["default"]
        seen["exit"] = exit_code(data)

    report = Load(readers=4, writers=2).run(
        LOAD_SECONDS,
        fault=lambda: replica_cluster.stop(replica_cluster.primary, "fast"),
        after_fault=after_fault,
    )
    assert not report.hung_threads
    assert not report.failed("read"), report.describe(report.of("read"))
    after = [r for r in report.of("write") if r.started > report.fault_ended + 0.05]
    assert after and all(r.error == "PrimaryUnavailable" for r in after), report.describe(after)
    # refused, not timed out: a write that waited out a connection attempt would take CONNECT_TIMEOUT
    slowest = max(r.seconds for r in after)
    assert slowest < rr_settings.CONNECT_TIMEOUT, f"a failing write took {slowest:.2f} s"
    # a session whose write no replica has replayed gets the error, never a stale read
    assert not report.stale()
    own = [r for r in report.failed("own-read") if r.started > report.fault_ended + 0.05]
    assert all(r.error == "PrimaryUnavailable" for r in own), report.describe(own)
    assert seen["status"]["writes_to"] is None and seen["exit"] == 2
    assert "default is down" in seen["status"]["writer_reason"]
    assert any("writes now go to None" in m for m in caplog.messages)
    # every refused write and own-read is counted for the metrics
    counted = stats.total("primary_unavailable", cluster="default") - refused
    assert counted >= len(after) + len(own)
    connections.close_all()  # a new request: no connection held from before the fault
    with (
        pytest.raises(PrimaryUnavailable, match="cluster 'default' has no primary available"),
        request_context(),
    ):
        Item.objects.create(name="refused")
    replica_cluster.heal()
    wait_for("primary back", lambda: health.writer("default", "default") == "default", timeout=10)
    with request_context():
        assert Item.objects.create(name="after").pk


def test_redis_stopped_and_started_no_failed_request(replica_cluster, routing, caplog):
    """Fault: Redis stopped, then started again under load → no failed request, no stale read."""

    def restart_once_noticed():
        wait_for("the monitor to notice", lambda: monitor.running().redis_state() == "down", timeout=10)
        replica_cluster.start_redis()

    report = Load(readers=3, writers=3).run(
        LOAD_SECONDS, fault=replica_cluster.stop_redis, after_fault=restart_once_noticed
    )
    assert not report.hung_threads
    assert not report.failed("read", "own-read", "write"), report.describe()
    assert not report.stale()
    assert any("redis unreachable" in m for m in caplog.messages)
    assert any("redis is back" in m for m in caplog.messages)


def test_backend_terminated_mid_transaction(replica_cluster, routing):
    """Fault: the backend of a request is terminated inside its transaction → that request fails, nothing of
    its transaction is applied, the next one succeeds, and the rest of the load never notices."""
    primary = replica_cluster.primary
    outcome = {}
    tag = f"t{uuid.uuid4().hex[:6]}"

    def victim():
        outcome["request"], _ = call(
            client(), "transaction", "/load/transaction/", {"tag": tag, "sleep": "3.217"}
        )

    def fault():
        thread = threading.Thread(target=victim, name="load-victim")
        thread.start()
        wait_for(
            "the transaction to sleep",
            lambda: primary.scalar("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%3.217%%' "
                                   "AND pid <> pg_backend_pid()") == 1,
            timeout=5,
        )  # fmt: skip
        primary.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%%3.217%%' "
            "AND pid <> pg_backend_pid()"
        )
        thread.join(10)
        assert not thread.is_alive()

    report = Load(readers=3, writers=2).run(LOAD_SECONDS, fault=fault)
    victim_request = outcome["request"]
    assert victim_request.error in ("OperationalError", "InterfaceError"), victim_request
    assert "terminat" in victim_request.message or "closed" in victim_request.message
    assert not Item.objects.using("default").filter(name__startswith=tag).exists()
    next_one, _ = call(client(), "transaction", "/load/transaction/", {"tag": tag + "b", "sleep": "0"})
    assert next_one.ok, next_one.message
    assert Item.objects.using("default").filter(name__startswith=tag + "b").count() == 2
    assert not report.failed(), report.describe()


TIMEOUT = 0.5  # the exhausted pool's POOL['TIMEOUT']


@contextlib.contextmanager
def _primary_pool(**pool):
    """Give DATABASES['default'] these POOL options inside, and its own (or none) again after."""
    entry = settings.DATABASES["default"]
    saved = entry.get("POOL")
    entry["POOL"] = pool
    try:
        yield
    finally:
        if saved is None:
            entry.pop("POOL")
        else:
            entry["POOL"] = saved


def test_pool_exhausted_timely_error_then_recovery(replica_cluster, routing):
    """Fault: the primary's pool exhausted (size 2, no overflow) → the extra requests fail after TIMEOUT
    with PoolExhausted naming alias and sizes; reads on replicas go on; requests succeed again after."""
    outcomes = []
    raised = []

    def hold():
        request, _ = call(client(), "hold", "/load/hold/", {"seconds": "1.5"})
        outcomes.append((request.error or "ok", request.seconds, request.message))
        raised.append(request.exception)

    def fault():
        holders = [threading.Thread(target=hold, name=f"load-holder-{i}") for i in range(4)]
        for thread in holders:
            thread.start()
        for thread in holders:
            thread.join(10)

    with _primary_pool(SIZE=2, MAX_OVERFLOW=0, TIMEOUT=TIMEOUT):
        report = Load(readers=3, writers=0).run(4.0, fault=fault, fault_at=1.0)
        assert sorted(o[0] for o in outcomes) == ["PoolExhausted", "PoolExhausted", "ok", "ok"], outcomes
        for kind, _seconds, message in outcomes:
            if kind == "PoolExhausted":
                # it gave up after TIMEOUT (measured: load makes the wait longer, never shorter)
                found = re.search(
                    r"pool 'default' exhausted: size 2 \+ overflow 0 all checked out, waited (\d+\.\d) s",
                    message,
                )
                assert found, message
                assert float(found[1]) >= TIMEOUT
        assert pools.registry.stats("default")["timeouts"] >= 2
        assert not report.failed(), report.describe()
        for i in range(5):  # recovered
            request, _ = call(client(), "write", "/sticky/write/", {"name": f"after-{i}"})
            assert request.ok, request.message
    # the contract: a django.db OperationalError (what 503 middleware and retry decorators catch) that
    # names the alias and the sizes
    exhausted = [e for e in raised if isinstance(e, PoolExhausted)]
    assert len(exhausted) == 2 and all(isinstance(e, OperationalError) for e in exhausted), raised
    assert {(e.alias, e.size, e.max_overflow) for e in exhausted} == {("default", 2, 0)}


def test_connection_handed_back_to_an_excluded_replica_is_closed(replica_cluster, routing):
    """Fault: replica1 excluded (lagging) while a thread holds one of its connections → when the thread
    hands it back, it is closed, not pooled."""
    node = replica_cluster.node("replica1")
    dbname = connections["replica1"].settings_dict["NAME"]
    holding, release = threading.Event(), threading.Event()

    def holder():
        try:
            with request_context():
                list(Item.objects.using("replica1").all()[:1])
                holding.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=holder, name="load-holder")
    thread.start()
    try:
        holding.wait(5)
        assert _app_connections(node, dbname) >= 1
        with override_settings(REPLICAROUTER={**routing, "MAX_LAG_BYTES": 1}):
            replica_cluster.pause_replay("replica1")
            with request_context():
                Item.objects.create(name="ahead")
            wait_for(
                "replica1 excluded", lambda: "replica1" not in health.usable_replicas("default"), timeout=5
            )
            release.set()
            thread.join(5)
            wait_for("its connection closed", lambda: _app_connections(node, dbname) == 0, timeout=5)
    finally:
        release.set()
        thread.join(5)


def test_primary_lent_for_replica_reads_goes_back_writable_under_reset_rollback(
    replica_cluster, routing, caplog
):
    """Fault: both replicas stopped, the primary's POOL has RESET = "rollback" → a read of replica1 is lent
    a primary connection (made read-only for it); back in the primary's pool it takes writes again.

    Bug guarded: the read-only setting was undone only by the DISCARD ALL that RESET = "auto" runs for a
    dirty borrower, so under "rollback" the next write on that connection failed (read-only transaction).
    """
    primary = connections["default"]
    assert primary.settings_dict is settings.DATABASES["default"]  # what _primary_pool changes
    primary.close()
    pools.registry.dispose()
    try:
        with _primary_pool(SIZE=1, MAX_OVERFLOW=0, RESET="rollback"):
            replica_cluster.stop("replica1", "fast")
            replica_cluster.stop("replica2", "fast")
            with request_context():
                Item.objects.create(name="before")
            primary.close()  # its one connection back in the pool, for the replica read to be lent
            with request_context():
                names = list(Item.objects.using("replica1").values_list("name", flat=True))
                with connections["replica1"].cursor() as cursor:
                    cursor.execute("SELECT inet_server_port()")
                    served_by = cursor.fetchone()[0]
            connections["replica1"].close()
            assert "before" in names
            assert served_by == replica_cluster.primary.port
            lent = [m for m in caplog.messages if "reads of replica1 go to the primary" in m]
            assert lent, caplog.messages[-10:]
            with request_context():  # the same server connection (SIZE 1): writable again
                Item.objects.create(name="after")
                with primary.cursor() as cursor:
                    cursor.execute("SHOW default_transaction_read_only")
                    assert cursor.fetchone()[0] == "off"
            assert Item.objects.using("default").filter(name="after").count() == 1
    finally:
        primary.close()
        pools.registry.dispose()
