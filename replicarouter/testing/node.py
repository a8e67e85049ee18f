"""One server of a test cluster as a client reaches it (``Node``), and the waiting every fault control uses.

``wait_for`` is how the harness never sleeps and guesses: each operation polls for the effect it caused and
raises ``ClusterError``, naming what it waited for, when that effect does not show in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

DEFAULT_ENGINE = "replicarouter.backends.postgresql"

T = TypeVar("T")


class ClusterError(RuntimeError):
    """A test cluster could not be started, or a fault control did not take effect in time."""


def wait_for(
    what: str,
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.02,
) -> T:
    """Poll ``predicate`` until it returns a truthy value; raise ClusterError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except Exception as exc:  # a server that is still starting raises; keep polling
            result = None
            last_error = exc
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise ClusterError(f"timed out after {timeout:.1f} s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass(eq=False)
class Node:
    """One PostgreSQL server of a test cluster, as a client on this machine reaches it."""

    name: str
    host: str
    port: int
    dbname: str
    user: str
    password: str | None = field(default=None, repr=False)
    role: Literal["primary", "replica", "detached"] = "replica"

    @property
    def dsn(self) -> str:
        """Return a libpq keyword/value connection string for this node."""
        parts = [
            f"host={self.host}",
            f"port={self.port}",
            f"dbname={self.dbname}",
            f"user={self.user}",
        ]
        if self.password:
            parts.append(f"password={self.password}")
        return " ".join(parts)

    @property
    def url(self) -> str:
        """Return a ``postgresql://`` URL for this node."""
        auth = self.user if not self.password else f"{self.user}:{self.password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.dbname}"

    def settings(self, engine: str = DEFAULT_ENGINE, **extra: Any) -> dict[str, Any]:
        """Return a Django ``DATABASES`` entry for this node (extra keys are merged in)."""
        entry: dict[str, Any] = {
            "ENGINE": engine,
            "NAME": self.dbname,
            "USER": self.user,
            "PASSWORD": self.password or "",
            "HOST": self.host,
            "PORT": str(self.port),
        }
        entry.update(extra)
        return entry

    def connect(self, timeout: float = 5.0, dbname: str | None = None, **kwargs: Any) -> PgConnection:
        """Open a new autocommit psycopg2 connection to this node (the caller closes it)."""
        import psycopg2

        conn: PgConnection = psycopg2.connect(
            host=self.host,
            port=self.port,
            dbname=dbname or self.dbname,
            user=self.user,
            password=self.password or None,
            connect_timeout=max(2, int(timeout + 0.999)),
            application_name="replicarouter-testing",
            **kwargs,
        )
        conn.autocommit = True
        return conn

    def query(
        self, sql: str, params: Sequence[Any] | None = None, timeout: float = 5.0
    ) -> list[tuple[Any, ...]]:
        """Run one statement on a fresh connection and return its rows (empty for statements without any)."""
        conn = self.connect(timeout=timeout)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET statement_timeout = {int(timeout * 1000)}")
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def scalar(self, sql: str, params: Sequence[Any] | None = None, timeout: float = 5.0) -> Any:
        """Run one statement and return the first column of its first row."""
        rows = self.query(sql, params, timeout=timeout)
        return rows[0][0] if rows else None

    def is_in_recovery(self) -> bool:
        """Return whether the server says it is a standby (``pg_is_in_recovery()``)."""
        return bool(self.scalar("SELECT pg_is_in_recovery()"))

    def accepts_connections(self, timeout: float = 2.0) -> bool:
        """Return whether a new connection plus ``SELECT 1`` succeeds within ``timeout``."""
        try:
            return bool(self.scalar("SELECT 1", timeout=timeout) == 1)
        except Exception:
            return False
