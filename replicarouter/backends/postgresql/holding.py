"""Holding policy: whether a Django wrapper keeps its pooled connection after a statement (pure).

With ``POOL["RELEASE"] = "transaction"`` a wrapper holds a pooled connection only while a unit of work
needs it, and gives it back to the pool as soon as none does, so that threads which never call
``close()`` (Django's test ``Client``, thread pools, long-running commands) share the pool. ``hold``
names what keeps the connection, or ``Hold.NOTHING``: the wrapper then returns it at once. The wrapper
(``units.py``) gathers the inputs after every statement, cursor close and autocommit change.
"""

from __future__ import annotations

from enum import StrEnum

#: libpq's PQTransactionStatus values that mean "no transaction open on the server"
_IDLE = 0
#: the connection is lost (PQTRANS_UNKNOWN): nothing to keep, the pool closes it
_UNKNOWN = 4


class Hold(StrEnum):
    """What keeps a wrapper's pooled connection checked out (``NOTHING``: it goes back now)."""

    NOTHING = ""
    #: ``POOL["RELEASE"] = "request"``: held until Django closes the connection
    REQUEST = "request"
    #: inside ``atomic()`` or with autocommit turned off
    TRANSACTION = "transaction"
    #: a transaction the server has open that Django did not start (``BEGIN`` through a cursor)
    SERVER_TRANSACTION = "server transaction"
    #: a cursor handed out is still open (``with connection.cursor()``, server-side cursors)
    CURSOR = "open cursor"
    #: session state that only this connection has (``SET``, ``LISTEN``, temporary tables, locks…)
    PINNED = "pinned"


def hold(
    release: str,
    *,
    autocommit: bool,
    in_atomic_block: bool,
    open_cursors: int,
    pinned: bool,
    transaction_status: int,
) -> Hold:
    """Return what keeps a wrapper's connection checked out, given its state after a statement."""
    if release != "transaction":
        return Hold.REQUEST
    if in_atomic_block or not autocommit:
        return Hold.TRANSACTION
    if pinned:
        return Hold.PINNED
    if open_cursors > 0:
        return Hold.CURSOR
    if transaction_status not in (_IDLE, _UNKNOWN):
        return Hold.SERVER_TRANSACTION
    return Hold.NOTHING
