"""``TrackingCursor``: the driver cursor as the pooled backend hands it to Django.

Every statement goes through it. It tells the routing context when a statement writes (raw SQL and
``using()`` included, which the router never sees), and the wrapper when a statement changed session
state (the borrowed connection is then reset with ``DISCARD ALL`` on its way back to the pool). On a
connection lent for a replica alias's reads, a read that may run again elsewhere (see ``lending``) goes
through the wrapper's ``guarded_execute``.

It is also the wrapper's count of open cursors (``units``): closing it, or dropping it unclosed, may give
the connection back to the pool. It remembers the pooled connection (``lease``) its driver cursor was
made on; after the wrapper gave that connection back (``close()``) a new statement runs on a driver
cursor of the wrapper's connection of that moment, never on a connection another thread may hold now.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replicarouter.routing import statements

from . import lending

if TYPE_CHECKING:
    from .base import DatabaseWrapper


class TrackingCursor:
    """A psycopg2 cursor that notes writes (for routing) and session-state changes (for the pool reset)."""

    __slots__ = ("_closed", "_lease", "_raw", "_wrapper")

    def __init__(self, raw: Any, wrapper: DatabaseWrapper, lease: Any) -> None:
        self._raw = raw
        self._wrapper = wrapper
        self._lease = lease
        self._closed = False

    @property
    def raw(self) -> Any:
        """Return the driver's cursor this one wraps."""
        return self._raw

    def rebind(self) -> None:
        """Wrap a new driver cursor on the wrapper's connection of now (borrowing one if needed)."""
        wrapper = self._wrapper
        wrapper.ensure_connection()
        self._raw = wrapper.raw_cursor(self._raw.name)
        self._lease = wrapper.borrowed
        wrapper.cursor_opened()

    def close(self) -> None:
        """Close the driver cursor, and let the wrapper give its connection back if nothing needs it."""
        if self._closed:
            return
        self._closed = True
        wrapper = self._wrapper
        if self._lease is not wrapper.borrowed:
            return  # the connection went back with close(): its cursors are gone, or someone else's
        try:
            self._raw.close()
        finally:
            wrapper.cursor_closed()

    def _track(self, sql: Any) -> bool:
        """Note what ``sql`` does; return whether it may be retried elsewhere if its connection breaks."""
        wrapper = self._wrapper
        if self._lease is not wrapper.borrowed and not self._closed:
            self.rebind()
        write, session_state = statements.classify(sql)
        if write:
            wrapper.mark_write()
        if session_state:
            wrapper.mark_dirty()
        return wrapper.guards_reads and lending.retryable(
            write=write,
            session_state=session_state,
            autocommit=wrapper.autocommit,
            in_atomic_block=wrapper.in_atomic_block,
            server_side=self._raw.name is not None,
        )

    def execute(self, sql: Any, params: Any = None) -> Any:
        if self._track(sql):
            return self._wrapper.guarded_execute(self, "execute", sql, params)
        return self._raw.execute(sql, params)

    def executemany(self, sql: Any, param_list: Any) -> Any:
        self._track(sql)
        return self._raw.executemany(sql, param_list)

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        # a procedure may do anything: write, or change the session
        if self._lease is not self._wrapper.borrowed and not self._closed:
            self.rebind()
        self._wrapper.mark_write()
        self._wrapper.mark_dirty()
        return self._raw.callproc(*args, **kwargs)

    def copy_expert(self, sql: Any, file: Any, *args: Any, **kwargs: Any) -> Any:
        self._track(sql)
        return self._raw.copy_expert(sql, file, *args, **kwargs)

    def copy_from(self, *args: Any, **kwargs: Any) -> Any:
        if self._lease is not self._wrapper.borrowed and not self._closed:
            self.rebind()
        self._wrapper.mark_write()
        return self._raw.copy_from(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in TrackingCursor.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self._raw, name, value)

    def __iter__(self) -> Any:
        return iter(self._raw)

    def __enter__(self) -> TrackingCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # an unclosed cursor dropped by its own thread ends its unit of work like close(); dropped by the
        # garbage collector in another thread, it only stops counting (the owner returns it later)
        try:
            if self._closed:
                return
            wrapper = self._wrapper
            if wrapper.owned_by_current_thread():
                self.close()
            elif self._lease is wrapper.borrowed:
                self._closed = True
                wrapper.cursor_forgotten()
        except Exception:  # a finalizer must not raise; the pool checks connections on checkout
            pass
