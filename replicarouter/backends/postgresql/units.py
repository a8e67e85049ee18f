"""A wrapper that holds a pooled connection per unit of work, not per thread (``POOL["RELEASE"]``).

Django keeps a wrapper's connection from ``connect()`` to ``close()``, and a thread that never closes
(Django's test ``Client``, thread pools, long-running commands) would keep its pooled connection forever.
With ``RELEASE = "transaction"`` (the default) the wrapper stays *connected* for Django (``connect()``
ran, ``connection_created`` fired) while the pooled connection under it comes and goes:

- after every cursor close and every return to autocommit, ``holding.hold`` says what still needs the
  connection (a transaction, an open cursor, session state); when nothing does, it goes back to the pool
  and the wrapper is *parked*;
- the next ``ensure_connection()`` of a parked wrapper (every cursor, transaction start and
  ``connection.connection`` access goes through it) borrows again through the lending decision of that
  moment (``base.DatabaseWrapper._borrow``: elected writer, own node or fallback), so a long-lived
  thread follows failover and returns to a recovered replica;
- a borrowed connection is *prepared* for this alias once (Django's ``get_new_connection`` and
  ``init_connection_state``: isolation level, jsonb loads, time zone, ``assume_role``) and remembers it
  in its pool entry's ``info``; a reset that clears session state forgets it, so it is prepared again.

Django's methods that read ``self.connection`` while nothing is borrowed are overridden so that they do
not borrow for nothing (``commit``, ``is_usable``, health checks, ``get_autocommit``, ``close``). Code
outside Django that reads ``connection.connection`` on a parked wrapper gets a connection pinned to the
wrapper until ``close()``: it may keep using the raw connection, which no other thread can then get.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from django.db.backends.postgresql import base as django_base

from replicarouter import pool as pools
from replicarouter import runtime

from .holding import Hold, hold

logger = logging.getLogger("replicarouter.pools")

PREPARED = pools.PREPARED_KEY
SESSION = pools.SESSION_KEY


class UnitOfWorkWrapper(django_base.DatabaseWrapper):
    """Django's postgresql wrapper whose pooled connection is held only while a unit of work needs it."""

    #: the driver connection borrowed now (None: none; then ``_parked`` says whether Django thinks
    #: the wrapper is connected)
    _raw: Any = None
    #: connected for Django, with no pooled connection under it right now
    _parked = False
    #: cursors handed out on the borrowed connection and not closed yet
    _open_cursors = 0
    #: why the borrowed connection stays with this wrapper until ``close()`` ("": it does not)
    _pinned = ""
    #: inside ``connect()``: nothing is returned before Django has prepared the connection
    _connecting = False
    _release_mode = "transaction"
    _release_setting: Any = None
    _conn_params: dict[str, Any] | None = None
    #: set while the borrowed connection is lent for reads of a replica alias (retries allowed)
    _read_cluster: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._borrowed: pools.Borrowed | None = None
        self._borrowed_generation = -1
        #: the connection this wrapper gave back last, parked in its pool for it to take again at once
        #: (unless another borrower took it meanwhile): see ``pool.gate``
        self._parked_with: pools.Borrowed | None = None

    # -- what the subclass provides -----------------------------------------------------------------

    def _borrow(self, **conn_params: Any) -> Any:  # pragma: no cover - base.DatabaseWrapper's
        raise NotImplementedError

    def _prepared_by_django(self, conn_params: dict[str, Any], connect: Callable[..., Any]) -> Any:
        raise NotImplementedError  # pragma: no cover - base.DatabaseWrapper's

    # -- the driver connection ------------------------------------------------------------------------

    @property
    def connection(self) -> Any:
        """Return the driver connection; on a parked wrapper borrow one and pin it until ``close()``."""
        raw = self._raw
        if raw is None and self._parked:
            self.ensure_connection()
            self.pin("connection.connection was used outside a unit of work")
            raw = self._raw
        return raw

    @connection.setter
    def connection(self, value: Any) -> None:
        # Django sets it on connect() and to None on close(): a closed wrapper is not parked
        self._raw = value
        if value is None:
            self._parked = False
            self._open_cursors = 0
            self._pinned = ""

    @property
    def borrowed(self) -> pools.Borrowed | None:
        """Return the pooled connection this wrapper holds now (None: it holds none)."""
        return self._borrowed

    @property
    def parked(self) -> bool:
        """Return whether the wrapper is connected for Django with no pooled connection under it."""
        return self._raw is None and self._parked

    @property
    def pinned(self) -> str:
        """Return why the held connection stays with this wrapper until ``close()`` ("": it does not)."""
        return self._pinned

    def pin(self, reason: str) -> None:
        """Keep the held connection until ``close()`` (its session has state only this wrapper knows)."""
        borrowed = self._borrowed
        if self._raw is not None and not self._pinned and borrowed is not None:
            self._pinned = reason
            borrowed.pool.counters.pins += 1
            logger.debug("%s: connection pinned until close(): %s", self.alias, reason)

    def mark_dirty(self) -> None:
        """Note that the session state of the held connection changed: pinned, ``DISCARD ALL`` on return."""
        if self._borrowed is not None:
            self._borrowed.dirty = True
            self.pin("a statement changed session state")

    # -- borrowing and returning ----------------------------------------------------------------------

    def connect(self) -> None:
        self._connecting = True
        try:
            setting = self.settings_dict.get("POOL")
            if setting is not self._release_setting or self._release_setting is None:
                self._release_mode = self.pool_options.release
                self._release_setting = setting
            super().connect()
        finally:
            self._connecting = False

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        self._conn_params = conn_params
        return self._prepared_by_django(conn_params, self._borrow)

    def init_connection_state(self) -> None:
        super().init_connection_state()
        if self._borrowed is not None:
            self._remember_prepared(self._borrowed)

    def _prepared_for(self) -> tuple[str, str | None]:
        return (self.alias, self.timezone_name)

    def _remember_prepared(self, borrowed: pools.Borrowed) -> None:
        raw = borrowed.connection
        borrowed.info[PREPARED] = self._prepared_for()
        borrowed.info[SESSION] = (raw.isolation_level, raw.readonly, raw.deferrable)

    def ensure_connection(self) -> None:
        if self._raw is None and self._parked:
            with self.wrap_database_errors:
                self._attach()
            return
        super().ensure_connection()

    def _attach(self) -> None:
        """Borrow a connection for a parked wrapper, prepared for this alias like a new one."""
        params = self._conn_params if self._conn_params is not None else self.get_connection_params()
        raw = self._borrow(**params)
        borrowed = self._borrowed
        assert borrowed is not None
        self._raw = raw
        try:
            if raw.autocommit is not True:
                raw.autocommit = True  # what Django set at connect(); the pool keeps it as it was left
            if borrowed.info.get(PREPARED) != self._prepared_for():
                self._prepared_by_django(params, lambda **_: raw)
                self.init_connection_state()
        except BaseException:
            self._raw = None
            self._borrowed = None
            borrowed.pool.checkin(borrowed, reusable=False)
            raise

    def maybe_release(self) -> None:
        """Give the connection back to the pool when no unit of work needs it (see ``holding``)."""
        raw = self._raw
        if raw is None or self._borrowed is None or self._connecting:
            return
        reason = hold(
            self._release_mode,
            autocommit=self.autocommit,
            in_atomic_block=self.in_atomic_block,
            open_cursors=self._open_cursors,
            pinned=bool(self._pinned),
            transaction_status=raw.get_transaction_status(),
        )
        if reason is Hold.NOTHING:
            self._release()

    def _release(self) -> None:
        borrowed, self._borrowed = self._borrowed, None
        self._raw = None
        self._parked = True
        self._read_cluster = None
        # whatever went wrong went with the connection: the next one is checked on checkout
        self.errors_occurred = False
        assert borrowed is not None
        if borrowed.pool.park(borrowed):
            self._parked_with = borrowed
        else:
            borrowed.pool.checkin(borrowed)

    def checkout_from(self, pool: pools.ConnectionPool) -> pools.Borrowed:
        """Borrow from ``pool``, taking back the connection this wrapper parked there if it still can."""
        parked, self._parked_with = self._parked_with, None
        if parked is not None and parked.pool.generation != runtime.generation():
            parked = None  # parked before a fork: the parent's, never touched here
        if parked is not None and parked.pool is not pool:
            # the lending decision moved elsewhere (failover, a replica back): give the old one back
            if parked.pool.take_back(parked):
                parked.pool.checkin(parked)
            parked = None
        return pool.checkout(parked)

    def _drop_parked(self) -> None:
        parked, self._parked_with = self._parked_with, None
        if parked is not None and parked.pool.take_back(parked):
            parked.pool.checkin(parked)

    def cursor_opened(self) -> None:
        """Count a cursor handed out on the borrowed connection."""
        self._open_cursors += 1

    def cursor_closed(self) -> None:
        """Count a cursor closed, and give the connection back if nothing else needs it."""
        if self._open_cursors > 0:
            self._open_cursors -= 1
        self.maybe_release()

    def cursor_forgotten(self) -> None:
        """Count a cursor dropped unclosed in another thread (the owner gives the connection back)."""
        if self._open_cursors > 0:
            self._open_cursors -= 1

    def owned_by_current_thread(self) -> bool:
        """Return whether the running thread is the one this wrapper belongs to."""
        return bool(self._thread_ident == threading.get_ident())

    def set_autocommit(
        self, autocommit: bool, force_begin_transaction_with_broken_autocommit: bool = False
    ) -> None:
        super().set_autocommit(autocommit, force_begin_transaction_with_broken_autocommit)
        if autocommit:
            self.maybe_release()

    # -- Django's methods that would borrow for nothing on a parked wrapper ------------------------

    def get_autocommit(self) -> bool:
        if self._raw is None and self._parked:
            return bool(self.autocommit)
        return bool(super().get_autocommit())

    def _commit(self) -> None:
        if self._raw is not None:
            super()._commit()

    def _rollback(self) -> None:
        if self._raw is not None:
            super()._rollback()

    def is_usable(self) -> bool:
        # a parked wrapper's next connection is checked on checkout (stale socket test, PRE_PING); a
        # closed one has none
        if self._raw is None:
            return self._parked
        return bool(super().is_usable())

    def close_if_health_check_failed(self) -> None:
        if self._raw is not None:
            super().close_if_health_check_failed()

    def close_if_unusable_or_obsolete(self) -> None:
        # a parked wrapper holds nothing that could be unusable or old: it stays connected
        if self._raw is not None:
            super().close_if_unusable_or_obsolete()

    def ensure_timezone(self) -> bool:
        # pooled connections are prepared for the time zone they were borrowed with (``PREPARED``)
        return False if self._raw is None else bool(super().ensure_timezone())

    @contextlib.contextmanager
    def temporary_connection(self) -> Iterator[Any]:
        if not self.parked:
            with super().temporary_connection() as cursor:
                yield cursor
            return
        with self.cursor() as cursor:  # borrowed for the block only, like any cursor
            yield cursor

    def close(self) -> None:
        if self._raw is None and self._parked:
            self.validate_thread_sharing()
            self.run_on_commit: list[Any] = []
            self._parked = False
            self._drop_parked()
            return
        super().close()
