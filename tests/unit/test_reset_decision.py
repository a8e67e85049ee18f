"""The pool's reset decision without servers: what a returned connection needs before it is lent again."""

from __future__ import annotations

import psycopg2.extensions as ext
import pytest

from replicarouter.pool import reset as pools
from replicarouter.pool.options import RESET_MODES
from replicarouter.pool.reset import ResetPlan, reset_plan

IDLE = pools.TRANSACTION_IDLE
OPEN = [pools.TRANSACTION_ACTIVE, pools.TRANSACTION_INTRANS, pools.TRANSACTION_INERROR]


def test_transaction_states_are_libpqs():
    assert (
        pools.TRANSACTION_IDLE,
        pools.TRANSACTION_ACTIVE,
        pools.TRANSACTION_INTRANS,
        pools.TRANSACTION_INERROR,
        pools.TRANSACTION_UNKNOWN,
    ) == (
        ext.TRANSACTION_STATUS_IDLE,
        ext.TRANSACTION_STATUS_ACTIVE,
        ext.TRANSACTION_STATUS_INTRANS,
        ext.TRANSACTION_STATUS_INERROR,
        ext.TRANSACTION_STATUS_UNKNOWN,
    )


@pytest.mark.parametrize("reset", RESET_MODES)
@pytest.mark.parametrize("dirty", [False, True])
def test_a_lost_connection_is_invalidated_whatever_the_mode(reset, dirty):
    assert reset_plan(pools.TRANSACTION_UNKNOWN, reset, dirty) == ResetPlan(invalidate=True)


@pytest.mark.parametrize(
    ("reset", "dirty", "discard"),
    [
        ("auto", False, False),  # a clean borrower: rolling back is enough
        ("auto", True, True),  # SET, temp tables, LISTEN...: DISCARD ALL
        ("always", False, True),  # discards even after a clean borrower
        ("always", True, True),
        ("rollback", False, False),  # never discards
        ("rollback", True, False),
    ],
)
@pytest.mark.parametrize("status", [IDLE, *OPEN])
def test_reset_plan(status, reset, dirty, discard):
    expected = ResetPlan(invalidate=False, rollback=status != IDLE, discard=discard)
    assert reset_plan(status, reset, dirty) == expected


def test_an_idle_clean_connection_under_auto_needs_nothing():
    assert reset_plan(IDLE, "auto", False) == ResetPlan(False, False, False)


def test_always_discards_an_idle_clean_connection():
    assert reset_plan(IDLE, "always", False) == ResetPlan(invalidate=False, rollback=False, discard=True)


@pytest.mark.parametrize("reset", RESET_MODES)
@pytest.mark.parametrize("dirty", [False, True])
@pytest.mark.parametrize("status", [IDLE, *OPEN])
def test_state_replicarouter_left_is_discarded_whatever_the_mode(status, reset, dirty):
    """A primary connection lent read-only for replica reads must not go back read-only (RESET=rollback)."""
    expected = ResetPlan(invalidate=False, rollback=status != IDLE, discard=True)
    assert reset_plan(status, reset, dirty, tainted=True) == expected


@pytest.mark.parametrize("reset", ["auto", "always", "rollback"])
@pytest.mark.parametrize("status", [IDLE, *OPEN])
def test_changed_driver_characteristics_are_restored_and_discarded_whatever_the_mode(status, reset):
    """``set_session()`` on the raw connection: put back and the session discarded, even under "rollback"."""
    plan = reset_plan(status, reset, dirty=False, characteristics_changed=True)
    assert plan.restore_characteristics and plan.discard
    assert plan.rollback == (status != IDLE)
    assert not reset_plan(status, reset, dirty=True).restore_characteristics
