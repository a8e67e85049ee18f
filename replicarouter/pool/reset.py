"""What a connection returned to its pool needs before its next borrower (pure: no I/O, no driver)."""

from __future__ import annotations

from dataclasses import dataclass

#: libpq's transaction states (PQTransactionStatus, psycopg2.extensions.TRANSACTION_STATUS_*), named here
#: so that this module imports psycopg2 only when a connection is made
TRANSACTION_IDLE = 0
TRANSACTION_ACTIVE = 1
TRANSACTION_INTRANS = 2
TRANSACTION_INERROR = 3
TRANSACTION_UNKNOWN = 4


@dataclass(frozen=True)
class ResetPlan:
    """What a returned connection needs before its next borrower (see ``reset_plan``)."""

    #: it cannot be made clean (the server connection is lost): close it instead of pooling it
    invalidate: bool = False
    #: a transaction is open (or failed): roll it back
    rollback: bool = False
    #: clear session state with ``DISCARD ALL``
    discard: bool = False
    #: put the driver's session characteristics (isolation level, readonly, deferrable) back first
    restore_characteristics: bool = False


def reset_plan(
    transaction_status: int,
    reset: str,
    dirty: bool,
    tainted: bool = False,
    *,
    characteristics_changed: bool = False,
) -> ResetPlan:
    """Return what a returned connection needs, given its libpq transaction status and ``RESET`` mode.

    ``dirty``: the borrower ran a statement that may leave session state behind (``SET``, temporary
    tables, ``LISTEN``…). ``"auto"`` discards only then, ``"always"`` every time, ``"rollback"`` never.
    ``tainted``: replicarouter left session state itself (see ``Borrowed.tainted``): discarded always.
    ``characteristics_changed``: the borrower changed the driver's isolation level, readonly or
    deferrable (``set_session()`` on the raw connection): put back and discarded whatever ``RESET`` says.
    """
    if transaction_status == TRANSACTION_UNKNOWN:
        return ResetPlan(invalidate=True)
    return ResetPlan(
        rollback=transaction_status != TRANSACTION_IDLE,
        discard=tainted or characteristics_changed or reset == "always" or (reset == "auto" and dirty),
        restore_characteristics=characteristics_changed,
    )
