"""``TrackingCursor``: the driver cursor as the pooled backend hands it to Django.

Every statement goes through it. It tells the routing context when a statement writes (raw SQL and
``using()`` included, which the router never sees), and the wrapper when a statement changed session
state (the borrowed connection is then reset with ``DISCARD ALL`` on its way back to the pool). On a
connection lent for a replica alias's reads, a read that may run again elsewhere (see ``lending``) goes
through the wrapper's ``guarded_execute``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replicarouter.routing import statements

from . import lending

if TYPE_CHECKING:
    from .base import DatabaseWrapper


class TrackingCursor:
    """A psycopg2 cursor that notes writes (for routing) and session-state changes (for the pool reset)."""

    __slots__ = ("_raw", "_wrapper")

    def __init__(self, raw: Any, wrapper: DatabaseWrapper) -> None:
        self._raw = raw
        self._wrapper = wrapper

    @property
    def raw(self) -> Any:
        """Return the driver's cursor this one wraps."""
        return self._raw

    def replace(self, raw: Any) -> None:
        """Wrap ``raw`` instead (a cursor of the connection that replaced a broken one)."""
        self._raw = raw

    def _track(self, sql: Any) -> bool:
        """Note what ``sql`` does; return whether it may be retried elsewhere if its connection breaks."""
        wrapper = self._wrapper
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
        self._wrapper.mark_write()
        self._wrapper.mark_dirty()
        return self._raw.callproc(*args, **kwargs)

    def copy_expert(self, sql: Any, file: Any, *args: Any, **kwargs: Any) -> Any:
        self._track(sql)
        return self._raw.copy_expert(sql, file, *args, **kwargs)

    def copy_from(self, *args: Any, **kwargs: Any) -> Any:
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
        self._raw.close()
