"""The health store's memory of each node's recent probes (monotonic reads) and bad position cookies."""

from __future__ import annotations

import logging
import time

import pytest
from django.test import RequestFactory, override_settings

from replicarouter.health import store as health
from replicarouter.health.rules import NodeHealth
from replicarouter.observability import stats
from replicarouter.routing import middleware
from replicarouter.routing.context import request_context
from replicarouter.sticky import policy as sticky


@pytest.fixture(autouse=True)
def clean():
    health.clear()
    yield
    health.clear()


def install(probes: dict[str, tuple[float | None, int | None, float | None]], failures: int = 0) -> None:
    nodes = {
        a: NodeHealth(a, "replica", state="up", probed_at=p, position=pos, started_at=s, failures=failures)
        for a, (p, pos, s) in probes.items()
    }
    health.set_snapshot(
        "c",
        health.Snapshot(
            nodes=nodes, usable=frozenset(nodes), lag_seconds={}, positions={}, received=time.monotonic(),
            published_at=time.time(), source="local",
        ),
    )  # fmt: skip


def test_the_earliest_probe_after_a_moment_is_returned():
    for round_start, position in ((10.0, 100), (11.0, 150), (12.0, 210)):
        install({"r1": (round_start, position, 1.0)})
    assert health.probe_after("c", "r1", 10.5) == (11.0, 150, 1.0)
    assert health.probe_after("c", "r1", 9.0) == (10.0, 100, 1.0)
    assert health.probe_after("c", "r1", 12.0) is None  # strictly after
    assert health.probe_after("c", "r2", 0.0) is None


def test_a_repeated_snapshot_failed_probes_and_unknown_positions_add_nothing():
    install({"r1": (10.0, 100, 1.0)})
    install({"r1": (10.0, 100, 1.0)})  # the same round again (a follower re-reading the snapshot)
    install({"r1": (11.0, 200, 1.0)}, failures=1)
    install({"r1": (12.0, None, 1.0)})
    install({"r1": (None, 300, 1.0)})
    assert list(health._history[("c", "r1")]) == [(10.0, 100, 1.0)]


def test_a_restart_forgets_the_earlier_probes_and_history_is_bounded():
    install({"r1": (10.0, 500, 1.0)})
    install({"r1": (11.0, 400, 5.0)})  # came back behind, on a new server
    assert health.probe_after("c", "r1", 0.0) == (11.0, 400, 5.0)
    for n in range(health.HISTORY + 5):
        install({"r1": (20.0 + n, 400 + n, 5.0)})
    assert len(health._history[("c", "r1")]) == health.HISTORY
    assert health.probe_after("c", "r1", 0.0) == (25.0, 405, 5.0)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: "forged", "bad signature"),
        (lambda: sticky.signing.dumps([1], salt=sticky.COOKIE_SALT), "malformed"),
    ],
    ids=["forged", "malformed"],
)
def test_a_bad_cookie_is_ignored_counted_and_logged_once(make, reason, caplog):
    value = make()  # signed now: one signed at collection expires in a suite longer than STICKY_SECONDS
    middleware._logged.discard(reason)
    before = stats.total("sticky_bad_cookies", reason=reason)
    request = RequestFactory().get("/")
    request.COOKIES[sticky.COOKIE_NAME] = value
    with override_settings(REPLICAROUTER={}), caplog.at_level(logging.WARNING, logger="replicarouter.sticky"):
        for _ in range(3):
            with request_context() as state:
                middleware.begin(request, state)
                assert state.sticky.known == {} and state.sticky.seen == {}
    assert stats.total("sticky_bad_cookies", reason=reason) == before + 3
    assert [r.replicarouter_event for r in caplog.records] == ["bad_cookie"]
