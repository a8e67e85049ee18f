"""What every test cluster backend shares: node handles, SQL-level fault controls, fault bookkeeping.

A backend (local processes, Docker containers) knows how to start, stop, freeze and kill servers; everything
that is plain SQL against a running node (pausing replay, delaying it, terminating backends, promotion,
waiting for catch-up) lives here once. Every fault control waits until its effect is observable, and every
fault is recorded so that ``heal()`` (called by the context manager and the pytest fixtures) can undo it:
a paused or frozen node never leaks past the test that made it so.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

logger = logging.getLogger("replicarouter.testing")

DEFAULT_ENGINE = "replicarouter.backends.postgresql"

StopMode = Literal["smart", "fast", "immediate", "kill"]
STOP_MODES: tuple[str, ...] = ("smart", "fast", "immediate", "kill")

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


@dataclass
class Faults:
    """Faults currently applied to a cluster, by node name, so that they can be undone."""

    paused: set[str] = field(default_factory=set)
    delayed: set[str] = field(default_factory=set)
    frozen: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)
    redis_stopped: bool = False

    def any(self) -> bool:
        return bool(self.paused or self.delayed or self.frozen or self.stopped or self.redis_stopped)


class ClusterBase:
    """A primary, its streaming replicas and a Redis server, with fault controls.

    Subclasses implement the process-level operations (``up``, ``down``, ``stop``, ``start``, ``freeze``,
    ``thaw``, ``stop_redis``, ``start_redis``) and ``_upstream_conninfo``.
    """

    #: how long a fault control waits for its effect before raising ClusterError
    timeout: float = 30.0

    def __init__(
        self,
        *,
        replicas: int = 2,
        dbname: str = "replicarouter",
        user: str = "postgres",
        password: str | None = None,
        conf: dict[str, str] | None = None,
        redis: bool = True,
        timeout: float = 30.0,
    ) -> None:
        """Keep the settings every backend shares (a backend's own come after)."""
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.replica_count = replicas
        self.dbname = dbname
        self.user = user
        self.password = password
        self.extra_conf = dict(conf or {})
        self.with_redis = redis
        self.timeout = timeout
        self.nodes: list[Node] = []
        self.redis_host = "127.0.0.1"
        self.redis_port = 0
        self.faults = Faults()
        self.promoted = False
        #: who started the cluster; ``down`` without arguments stops the ones started by the CLI's ``up``
        self.started_by = "python"

    # -- topology ---------------------------------------------------------------------------------

    @property
    def primary(self) -> Node:
        """Return the node that currently acts as primary (changes after ``promote``)."""
        for node in self.nodes:
            if node.role == "primary":
                return node
        raise ClusterError("cluster has no primary")

    @property
    def replicas(self) -> list[Node]:
        """Return the nodes that stream from the current primary."""
        return [node for node in self.nodes if node.role == "replica"]

    def node(self, name: str | Node) -> Node:
        """Return the node called ``name`` (a Node is returned as is, after checking it belongs here)."""
        for node in self.nodes:
            if node is name or node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise ClusterError(f"no node {name!r} in this cluster (nodes: {known})")

    @property
    def redis_url(self) -> str:
        """Return the ``redis://`` URL of the cluster's Redis (database 0)."""
        return f"redis://{self.redis_host}:{self.redis_port}/0"

    # -- lifecycle (backend specific) -------------------------------------------------------------

    def up(self) -> Self:
        raise NotImplementedError

    def down(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop every server and remove what the cluster created (same as ``down``)."""
        self.down()

    def __enter__(self) -> Self:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def stop(self, node: str | Node, mode: StopMode = "fast") -> None:
        raise NotImplementedError

    def start(self, node: str | Node) -> None:
        raise NotImplementedError

    def freeze(self, node: str | Node) -> None:
        raise NotImplementedError

    def thaw(self, node: str | Node) -> None:
        raise NotImplementedError

    def stop_redis(self) -> None:
        raise NotImplementedError

    def start_redis(self) -> None:
        raise NotImplementedError

    def _upstream_conninfo(self, upstream: Node, follower: Node) -> str:
        """Return the ``primary_conninfo`` with which ``follower`` streams from ``upstream``."""
        raise NotImplementedError

    # -- WAL positions ----------------------------------------------------------------------------

    def current_lsn(self) -> str:
        """Return the primary's current WAL write position (``pg_current_wal_lsn()``)."""
        return str(self.primary.scalar("SELECT pg_current_wal_lsn()"))

    def replay_lsn(self, node: str | Node) -> str | None:
        """Return the last WAL position a replica has replayed (``pg_last_wal_replay_lsn()``)."""
        value = self.node(node).scalar("SELECT pg_last_wal_replay_lsn()")
        return None if value is None else str(value)

    def lag_bytes(self, node: str | Node, target_lsn: str | None = None) -> int:
        """Return how many bytes of WAL ``node`` must still replay to reach ``target_lsn`` (default: now)."""
        target = target_lsn or self.current_lsn()
        value = self.node(node).scalar(
            "SELECT pg_wal_lsn_diff(%s::pg_lsn, coalesce(pg_last_wal_replay_lsn(), '0/0'::pg_lsn))",
            (target,),
        )
        return max(0, int(value))

    def wait_caught_up(self, nodes: Iterable[str | Node] | None = None, timeout: float | None = None) -> str:
        """Wait until the replicas (default: all running, unpaused ones) replayed the primary's current WAL.

        Return the position waited for.
        """
        if nodes is None:
            targets = [
                n
                for n in self.replicas
                if n.name not in self.faults.paused | self.faults.stopped | self.faults.frozen
            ]
        else:
            targets = [self.node(n) for n in nodes]
        lsn = self.current_lsn()
        for node in targets:
            wait_for(
                f"{node.name} to replay up to {lsn}",
                lambda node=node: self.lag_bytes(node, lsn) == 0,  # type: ignore[misc]
                timeout=timeout or self.timeout,
            )
        return lsn

    def wait_streaming(self, node: str | Node, timeout: float | None = None) -> None:
        """Wait until a replica's WAL receiver streams from the current primary."""
        replica = self.node(node)
        primary = self.primary

        def streaming() -> bool:
            rows = replica.query("SELECT status, sender_port FROM pg_stat_wal_receiver")
            return bool(rows) and rows[0][0] == "streaming" and self._is_sender(primary, rows[0][1])

        wait_for(
            f"{replica.name} to stream from {primary.name}",
            streaming,
            timeout=timeout or self.timeout,
        )

    def _is_sender(self, primary: Node, sender_port: int | None) -> bool:
        """Return whether a WAL receiver's ``sender_port`` designates ``primary`` (backends may override)."""
        return sender_port == primary.port

    # -- SQL-level faults -----------------------------------------------------------------------------------

    def pause_replay(self, node: str | Node, timeout: float | None = None) -> str:
        """Catch ``node`` up, then pause its WAL replay; return the position at which it stays.

        Catching up first matters: pausing a replica in the middle of replaying a TRUNCATE (or any other
        record taking an AccessExclusiveLock) blocks reads of that table on the replica until resumed.
        """
        replica = self.node(node)
        self.wait_caught_up([replica], timeout=timeout)
        self.faults.paused.add(replica.name)
        replica.query("SELECT pg_wal_replay_pause()")
        wait_for(
            f"replay on {replica.name} to be paused",
            lambda: replica.scalar("SELECT pg_get_wal_replay_pause_state()") == "paused",
            timeout=timeout or self.timeout,
        )
        lsn = self.replay_lsn(replica)
        logger.info("paused WAL replay on %s at %s", replica.name, lsn)
        return lsn or ""

    def resume_replay(self, node: str | Node, timeout: float | None = None) -> None:
        """Resume WAL replay on ``node`` and wait until it has caught up with the primary."""
        replica = self.node(node)
        replica.query("SELECT pg_wal_replay_resume()")
        wait_for(
            f"replay on {replica.name} to resume",
            lambda: replica.scalar("SELECT pg_get_wal_replay_pause_state()") == "not paused",
            timeout=timeout or self.timeout,
        )
        self.faults.paused.discard(replica.name)
        if replica.role == "replica" and self.primary.name not in self.faults.stopped | self.faults.frozen:
            self.wait_caught_up([replica], timeout=timeout)
        logger.info("resumed WAL replay on %s", replica.name)

    def delay_replay(self, node: str | Node, seconds: float, timeout: float | None = None) -> None:
        """Make ``node`` apply each commit ``seconds`` after it happened (0 removes the delay)."""
        replica = self.node(node)
        millis = int(seconds * 1000)
        if millis > 0:
            self.faults.delayed.add(replica.name)
            replica.query(f"ALTER SYSTEM SET recovery_min_apply_delay = '{millis}ms'")
        else:
            replica.query("ALTER SYSTEM RESET recovery_min_apply_delay")
        replica.query("SELECT pg_reload_conf()")
        expected = f"{millis}ms" if millis else "0"

        def applied() -> bool:
            shown = str(replica.scalar("SHOW recovery_min_apply_delay"))
            return _setting_millis(shown) == _setting_millis(expected)

        wait_for(
            f"recovery_min_apply_delay={expected} on {replica.name}",
            applied,
            timeout=timeout or self.timeout,
        )
        if millis <= 0:
            self.faults.delayed.discard(replica.name)
        logger.info("replay delay on %s set to %s", replica.name, expected)

    def terminate_backends(
        self, node: str | Node, *, dbname: str | None = None, application_name: str | None = None
    ) -> int:
        """Terminate client backends on ``node`` (optionally of one database/application); return how many.

        Waits until the terminated backends are gone from ``pg_stat_activity``.
        """
        target = self.node(node)
        conditions = ["backend_type = 'client backend'", "pid <> pg_backend_pid()"]
        params: list[Any] = []
        if dbname is not None:
            conditions.append("datname = %s")
            params.append(dbname)
        if application_name is not None:
            conditions.append("application_name = %s")
            params.append(application_name)
        where = " AND ".join(conditions)
        pids = [row[0] for row in target.query(f"SELECT pid FROM pg_stat_activity WHERE {where}", params)]
        for pid in pids:
            target.query("SELECT pg_terminate_backend(%s)", (pid,))
        if pids:
            wait_for(
                f"{len(pids)} backends on {target.name} to exit",
                lambda: not target.query("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)),
                timeout=self.timeout,
            )
        logger.info("terminated %d backends on %s", len(pids), target.name)
        return len(pids)

    def promote(self, node: str | Node, timeout: float | None = None) -> None:
        """Promote replica ``node`` to primary and re-point the other replicas at it.

        The former primary is left as it is (running or not) and marked ``detached``: it no longer counts as
        the cluster's primary and nothing streams from it. Replicas that are stopped or frozen are re-pointed
        when they are next started/thawed by ``heal()``; re-pointing needs them no further ahead than the
        promoted node, which holds when the cluster was caught up (``wait_caught_up()``) before the fault.
        """
        new_primary = self.node(node)
        if new_primary.role != "replica":
            raise ClusterError(f"cannot promote {new_primary.name}: it is the {new_primary.role}")
        if new_primary.name in self.faults.paused:
            self.resume_replay(new_primary, timeout=timeout)
        old_primary = self.primary
        new_primary.query("SELECT pg_promote(true, %s)", (int(timeout or self.timeout),))
        wait_for(
            f"{new_primary.name} to leave recovery",
            lambda: not new_primary.is_in_recovery(),
            timeout=timeout or self.timeout,
        )
        old_primary.role = "detached"
        new_primary.role = "primary"
        self.promoted = True
        logger.info("promoted %s (former primary %s detached)", new_primary.name, old_primary.name)
        for replica in self.replicas:
            self._follow(replica, timeout=timeout)

    def _after_restart(self, target: Node) -> None:
        """Wait until a node started or thawed again is back in its role (streaming, re-pointed…)."""
        wait_for(f"{target.name} to accept connections", target.accepts_connections, timeout=self.timeout)
        primary_running = self.primary.name not in self.faults.stopped | self.faults.frozen
        if target.role == "replica" and primary_running:
            if self.promoted:
                self._follow(target)
            elif target.name not in self.faults.paused:
                self.wait_streaming(target)
        elif target.role == "primary":
            for replica in self.replicas:
                if replica.name not in self.faults.stopped | self.faults.frozen | self.faults.paused:
                    self.wait_streaming(replica)

    def _follow(self, replica: Node, timeout: float | None = None) -> None:
        """Point ``replica`` at the current primary and wait until it streams from it."""
        unreachable = self.faults.stopped | self.faults.frozen
        if replica.name in unreachable:
            return  # done by heal() once the node runs again
        conninfo = self._upstream_conninfo(self.primary, replica).replace("'", "''")
        replica.query(f"ALTER SYSTEM SET primary_conninfo = '{conninfo}'")
        replica.query("SELECT pg_reload_conf()")
        self.wait_streaming(replica, timeout=timeout)

    # -- undo -------------------------------------------------------------------------------------

    def heal(self) -> None:
        """Undo every fault still applied: thaw, start, resume, remove delays, start Redis.

        Promotion is not undone (the cluster keeps its new topology); tests that promote should use a
        cluster of their own (the ``replica_cluster_factory`` fixture).
        """
        if not self.faults.any():
            return
        errors: list[str] = []
        steps: list[tuple[str, Callable[[], None]]] = []
        for name in sorted(self.faults.frozen):
            steps.append((f"thaw {name}", lambda name=name: self.thaw(name)))  # type: ignore[misc]
        for name in sorted(self.faults.stopped):
            steps.append((f"start {name}", lambda name=name: self.start(name)))  # type: ignore[misc]
        for name in sorted(self.faults.paused):
            steps.append((f"resume {name}", lambda name=name: self.resume_replay(name)))  # type: ignore[misc]
        for name in sorted(self.faults.delayed):
            steps.append((f"undelay {name}", lambda name=name: self.delay_replay(name, 0)))  # type: ignore[misc]
        if self.faults.redis_stopped:
            steps.append(("start redis", self.start_redis))
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                errors.append(f"{what}: {exc}")
        if errors:
            raise ClusterError("could not undo every fault: " + "; ".join(errors))

    @contextlib.contextmanager
    def healing(self) -> Iterator[Self]:
        """Yield the cluster and undo every fault applied inside the block when it ends."""
        try:
            yield self
        finally:
            self.heal()

    # -- Django helpers ---------------------------------------------------------------------------

    def databases(self, engine: str = DEFAULT_ENGINE, primary_alias: str = "default") -> dict[str, Any]:
        """Return Django ``DATABASES``: the primary as ``primary_alias``, replicas under their node names.

        Replicas get ``TEST = {"MIRROR": primary_alias, "MIRROR_CONNECTION": False}``: Django's test runner
        does not create test databases on read-only servers, and the replicas keep reading from their own
        server, which receives the test database by replication.
        """
        databases: dict[str, Any] = {primary_alias: self.primary.settings(engine)}
        for replica in self.replicas:
            test = {"MIRROR": primary_alias, "MIRROR_CONNECTION": False}
            databases[replica.name] = replica.settings(engine, TEST=test)
        return databases

    def replicarouter_settings(self, primary_alias: str = "default", **extra: Any) -> dict[str, Any]:
        """Return a ``REPLICAROUTER`` settings dict for this cluster (extra keys are merged in)."""
        settings: dict[str, Any] = {
            "CLUSTERS": {
                "default": {
                    "PRIMARY": primary_alias,
                    "REPLICAS": [replica.name for replica in self.replicas],
                }
            },
            "REDIS_URL": self.redis_url,
        }
        settings.update(extra)
        return settings

    def describe(self) -> dict[str, Any]:
        """Return the cluster's connection settings as JSON-ready data (what the CLI prints)."""
        return {
            "nodes": [
                {
                    "name": n.name,
                    "role": n.role,
                    "host": n.host,
                    "port": n.port,
                    "dbname": n.dbname,
                    "user": n.user,
                    "dsn": n.dsn,
                    "url": n.url,
                }
                for n in self.nodes
            ],
            "redis_url": self.redis_url,
            "DATABASES": self.databases(),
            "REPLICAROUTER": self.replicarouter_settings(),
        }


def _setting_millis(value: str) -> int:
    """Return a PostgreSQL time setting (``'1500ms'``, ``'2s'``, ``'0'``) in milliseconds."""
    units = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            return int(float(value[: -len(unit)]) * units[unit])
    return int(float(value or 0))
