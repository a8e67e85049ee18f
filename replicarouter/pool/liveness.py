"""Whether an idle pooled connection still has a live server session, without a round trip."""

from __future__ import annotations

import select
from typing import Any


def socket_readable(dbapi_connection: Any) -> bool:
    """Return whether an idle connection has pending input, i.e. the server closed it or is closing it.

    An idle session has nothing to say: input means the server terminated it (restart,
    ``pg_terminate_backend``, idle timeout) and sent its last message or closed the socket. About 2 µs.
    """
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except Exception:
        return True
