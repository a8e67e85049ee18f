"""The holding policy (``backends/postgresql/holding.py``): what keeps a wrapper's pooled connection."""

from __future__ import annotations

import pytest

from replicarouter.backends.postgresql.holding import Hold, hold
from replicarouter.pool.reset import (
    TRANSACTION_ACTIVE,
    TRANSACTION_IDLE,
    TRANSACTION_INERROR,
    TRANSACTION_INTRANS,
    TRANSACTION_UNKNOWN,
)

FREE = {
    "autocommit": True,
    "in_atomic_block": False,
    "open_cursors": 0,
    "pinned": False,
    "transaction_status": TRANSACTION_IDLE,
}


def _hold(release: str = "transaction", **changes: object) -> Hold:
    return hold(release, **{**FREE, **changes})  # type: ignore[arg-type]


def test_nothing_holds_an_idle_autocommit_connection():
    assert _hold() is Hold.NOTHING
    assert not Hold.NOTHING  # falsy: "if hold(...)" reads as "if something holds it"


def test_request_mode_always_holds():
    assert _hold("request") is Hold.REQUEST
    assert _hold("anything else") is Hold.REQUEST


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"in_atomic_block": True}, Hold.TRANSACTION),
        ({"autocommit": False}, Hold.TRANSACTION),
        ({"pinned": True}, Hold.PINNED),
        ({"open_cursors": 1}, Hold.CURSOR),
        ({"open_cursors": 3}, Hold.CURSOR),
        ({"transaction_status": TRANSACTION_INTRANS}, Hold.SERVER_TRANSACTION),
        ({"transaction_status": TRANSACTION_INERROR}, Hold.SERVER_TRANSACTION),
        ({"transaction_status": TRANSACTION_ACTIVE}, Hold.SERVER_TRANSACTION),
        # a lost connection holds nothing: it goes back, and the pool closes it
        ({"transaction_status": TRANSACTION_UNKNOWN}, Hold.NOTHING),
        ({"open_cursors": 0}, Hold.NOTHING),
    ],
)
def test_each_unit_of_work_holds(changes, expected):
    assert _hold(**changes) is expected


def test_the_first_reason_is_named_when_several_hold():
    everything = {
        "in_atomic_block": True,
        "pinned": True,
        "open_cursors": 2,
        "transaction_status": TRANSACTION_INTRANS,
    }
    assert _hold(**everything) is Hold.TRANSACTION
    assert _hold(**{**everything, "in_atomic_block": False}) is Hold.PINNED
    assert _hold(**{**everything, "in_atomic_block": False, "pinned": False}) is Hold.CURSOR
