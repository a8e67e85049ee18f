"""A hung Redis (SIGSTOP) under load: requests stay fast (bounded client + circuit breaker), never stale."""

from __future__ import annotations

import logging
import statistics
import time

import pytest
from django.conf import settings as django_settings
from django.test import Client

from replicarouter import redis_client
from replicarouter.observability import stats
from replicarouter.sticky import guard
from replicarouter.sticky import policy as sticky
from replicarouter.sticky import store as stickystore
from replicarouter.sticky.breaker import CLOSED
from replicarouter.testing.base import wait_for
from tests.helpers import routed
from tests.load import Load

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases="__all__")]

#: a monitor that notices the frozen Redis quickly (its own client times out after CHECK_TIMEOUT)
FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.4}
FREEZE_AT = 1.5
FREEZE_SECONDS = 3.0
LOAD_SECONDS = FREEZE_AT + FREEZE_SECONDS + 1.5


@pytest.fixture
def routing(replica_cluster, caplog):
    caplog.set_level(logging.INFO, logger="replicarouter")
    with routed(replica_cluster, **FAST) as values:
        yield values
        replica_cluster.heal()


def _events(caplog, event):
    return [r for r in caplog.records if getattr(r, "replicarouter_event", None) == event]


def _stored_position(client):
    """Return the position Redis holds for ``client``'s session (None if none), through the request path."""
    session_key = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    identity = sticky.identity("session", session_key, django_settings.SECRET_KEY)
    return stickystore.load(identity, ["default"]).get("default")


def test_hung_redis_costs_requests_one_deadline_then_nothing(replica_cluster, routing, caplog):
    """Fault: Redis frozen for 3 s under load of sessions with positions (replay paused on both replicas).

    Before the fix each request waited the socket timeout (CHECK_TIMEOUT) once or twice per Redis call.
    Now: no request fails or reads stale (the cookie carries positions), no request of the freeze takes
    more than the deadline + 300 ms over the normal slowest (p99), their median stays under 50 ms, the
    breaker's opening is logged once, and Redis stores positions again soon after the thaw.
    """
    replica_cluster.pause_replay("replica1")
    replica_cluster.pause_replay("replica2")
    skipped, opens = stats.total("redis_skipped"), stats.total("redis_breaker_opens")
    load = Load(readers=0, writers=4, pause=0.005)
    times: dict[str, float] = {}

    def thaw_later():
        time.sleep(FREEZE_SECONDS)  # the fault's length (a schedule, not the basis of an assertion)
        times["thaw"] = time.monotonic() - load._t0
        replica_cluster.thaw_redis()
        times["thawed"] = time.monotonic() - load._t0

    try:
        report = load.run(
            LOAD_SECONDS, fault=replica_cluster.freeze_redis, fault_at=FREEZE_AT, after_fault=thaw_later
        )
    finally:
        replica_cluster.heal()
        replica_cluster.resume_replay("replica1")
        replica_cluster.resume_replay("replica2")
    assert not report.hung_threads
    assert not report.failed(), report.describe()
    assert not report.stale()
    assert len(report.of("own-read")) > 20

    before = [r for r in report.requests if r.started >= 0.5 and r.started + r.seconds < report.fault_started]
    during = [
        r
        for r in report.requests
        if report.fault_ended <= r.started and r.started + r.seconds < times["thaw"]
    ]
    assert len(before) >= 10 and len(during) >= 20, (len(before), len(during))
    # before the fix a request waited CHECK_TIMEOUT (0.5 s) per Redis call; the slack is for a loaded machine
    bound = report.p99(before) + redis_client.REQUEST_TIMEOUT + 0.3
    slowest = max(r.seconds for r in during)
    assert slowest <= bound, f"a request took {slowest:.3f} s during the freeze (bound {bound:.3f} s)"
    median = statistics.median(r.seconds for r in during)
    assert median < 0.05, f"median {median * 1000:.1f} ms during the freeze"

    assert stats.total("redis_skipped") > skipped  # the breaker kept requests away from Redis
    # one outage, one opening (a loaded machine may add one: a 50 ms call that timed out before the freeze);
    # each outage logged once, however many requests it skipped
    outages = stats.total("redis_breaker_opens") - opens
    assert 1 <= outages <= 2, outages
    opened = _events(caplog, "redis_breaker_open")
    assert len(opened) == outages, [r.getMessage() for r in opened]
    assert "relying on the signed cookie" in opened[0].getMessage()

    # after the thaw Redis is used again within a few breaker intervals: a new write's position is stored
    client = Client()
    client.get("/sticky/write/", {"name": "after the thaw"})
    written = sticky.decode_cookie(client.cookies[sticky.COOKIE_NAME].value, "lsn", 60)["default"]

    def stored_again():
        if (_stored_position(client) or -1) >= written:
            return True
        client.get(
            "/sticky/write/", {"name": "after the thaw"}
        )  # a write made while still open is not stored
        return False

    wait_for(
        "a new write's position in Redis", stored_again, timeout=5 * guard.BREAKER_INTERVAL, interval=0.1
    )
    assert guard.breaker().state == CLOSED
    closed = _events(caplog, "redis_breaker_closed")
    assert len(closed) == outages, [r.getMessage() for r in closed]
