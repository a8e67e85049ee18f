"""Django's postgresql backend (psycopg2) with connections borrowed from a per-alias pool.

Only the connection lifecycle changes: ``connect`` borrows from ``replicarouter.pools`` (through the
driver object Django calls ``Database.connect`` on, so Django's own ``get_new_connection`` still runs),
``close`` gives the connection back, and a connection inherited from a parent process is dropped without
any I/O. Pool options come from the alias's top-level ``POOL`` key, which never reaches libpq.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg2
from django.db.backends.postgresql import base as django_base

from ... import pools
from .creation import DatabaseCreation


class PooledDriver:
    """psycopg2 as one Django wrapper sees it, except that ``connect()`` borrows from the alias's pool."""

    def __init__(self, wrapper: DatabaseWrapper) -> None:
        self._wrapper = wrapper

    def connect(self, **conn_params: Any) -> Any:
        return self._wrapper._borrow(conn_params)

    def __getattr__(self, name: str) -> Any:
        return getattr(psycopg2, name)


class DatabaseWrapper(django_base.DatabaseWrapper):
    """A postgresql ``DatabaseWrapper`` whose connections come from a SQLAlchemy QueuePool."""

    creation_class = DatabaseCreation

    connection: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.Database = PooledDriver(self)
        self._borrowed: pools.Borrowed | None = None
        self._borrowed_pid = 0

    @property
    def pool_options(self) -> pools.PoolOptions:
        """Return this alias's validated ``POOL`` options."""
        return pools.PoolOptions.from_settings(self.alias, self.settings_dict.get("POOL"))

    def connection_pool(self, conn_params: dict[str, Any] | None = None) -> pools.ConnectionPool:
        """Return this process's pool for this alias (created on first use)."""
        params = self.get_connection_params() if conn_params is None else conn_params
        return pools.registry.get(self.alias, self.pool_options, params, lambda: psycopg2.connect(**params))

    def _borrow(self, conn_params: dict[str, Any]) -> Any:
        borrowed = self.connection_pool(conn_params).checkout()
        self._borrowed = borrowed
        self._borrowed_pid = os.getpid()
        return borrowed.connection

    def _forget_inherited(self) -> None:
        """Drop, without I/O, a connection this wrapper holds from before a fork."""
        if self.connection is not None and self._borrowed_pid != os.getpid():
            self.connection = None
            self._borrowed = None
            self.closed_in_transaction = False
            self.needs_rollback = False
            self.in_atomic_block = False
            self.savepoint_ids: list[str] = []
            self.atomic_blocks: list[Any] = []

    def ensure_connection(self) -> None:
        self._forget_inherited()
        super().ensure_connection()

    def _close(self) -> None:
        self._forget_inherited()
        borrowed, self._borrowed = self._borrowed, None
        if borrowed is None:
            super()._close()
            return None
        # closed inside atomic(), Django keeps referring to this connection until the block ends: it
        # must not go back to the pool where another thread could get it, so it is closed for good
        borrowed.pool.checkin(borrowed, reusable=not self.in_atomic_block)
        return None

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = super().create_cursor(name)
        if self._borrowed is not None and self._borrowed.pool.options.reset == "auto":
            return SessionStateCursor(cursor, self._borrowed)
        return cursor


class SessionStateCursor:
    """A cursor that notes statements leaving session state behind, so that the pool discards it."""

    __slots__ = ("_cursor", "_borrowed")

    def __init__(self, cursor: Any, borrowed: pools.Borrowed) -> None:
        self._cursor = cursor
        self._borrowed = borrowed

    def execute(self, sql: Any, params: Any = None) -> Any:
        if not self._borrowed.dirty and isinstance(sql, str) and pools.changes_session_state(sql):
            self._borrowed.dirty = True
        return self._cursor.execute(sql, params)

    def executemany(self, sql: Any, param_list: Any) -> Any:
        if not self._borrowed.dirty and isinstance(sql, str) and pools.changes_session_state(sql):
            self._borrowed.dirty = True
        return self._cursor.executemany(sql, param_list)

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        self._borrowed.dirty = True  # a procedure may do anything to the session
        return self._cursor.callproc(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SessionStateCursor.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self._cursor, name, value)

    def __iter__(self) -> Any:
        return iter(self._cursor)

    def __enter__(self) -> SessionStateCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cursor.close()
