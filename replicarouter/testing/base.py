"""What every test cluster backend shares: the abstract ``ClusterBase``.

A backend (local processes, Docker containers) implements the abstract methods: how to start and tear
down its servers (``up``; ``down`` runs the ``weakref.finalize`` teardown that ``up`` registers), and the
process-level faults (``stop``, ``start``, ``freeze``, ``thaw``, ``stop_redis``, ``start_redis``,
``freeze_redis``, ``thaw_redis``), plus
what only it knows about addresses and logs (``_upstream_conninfo``, ``_is_sender``, ``_log_tail``).
Everything else lives here once: the server settings both write, the waits for streaming and for Redis,
promotion and re-pointing, and ``heal()``; the topology (``topology``), the SQL-level fault controls and
their bookkeeping (``faults``) and node handles (``node``) come from the modules named.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self, TypedDict

from .faults import STOP_MODES, FaultControls, Faults, StopMode
from .node import DEFAULT_ENGINE, ClusterError, Node, wait_for
from .procs import port_open, redis_ping

__all__ = [
    "BASE_CONF",
    "DEFAULT_ENGINE",
    "STOP_MODES",
    "ClusterBase",
    "ClusterError",
    "ClusterOptions",
    "Faults",
    "Node",
    "StopMode",
    "wait_for",
]

logger = logging.getLogger("replicarouter.testing")

#: server settings for speed and for fast, observable replication; see docs/testing.md
BASE_CONF: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",  # never synchronous_commit=off: it adds ~200 ms of replica lag
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "'512MB'",  # replicas re-pointed after a promotion still find their WAL
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_log_hints": "on",  # lets pg_rewind turn an old primary into a replica
    "wal_retrieve_retry_interval": "'200ms'",  # replicas re-follow quickly after a restart
    "wal_receiver_status_interval": "'1s'",
    "wal_sender_timeout": "'10s'",
    "wal_receiver_timeout": "'10s'",
    "max_connections": "200",
    "shared_buffers": "'32MB'",
    "log_line_prefix": "'%m [%p] %q%a '",
}


class ClusterOptions(TypedDict, total=False):
    """The keyword arguments every backend takes and passes on to ``ClusterBase`` (defaults there)."""

    dbname: str
    user: str
    password: str | None
    conf: dict[str, str] | None
    redis: bool
    timeout: float


class ClusterBase(FaultControls, ABC):
    """A primary, its streaming replicas and a Redis server, with fault controls.

    Subclasses implement the abstract methods (see the module docstring).
    """

    def __init__(
        self,
        replicas: int = 2,
        *,
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
        #: how long the last ``up()`` took
        self.startup_seconds: float | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @abstractmethod
    def up(self) -> Self:
        """Start every server, register its teardown in ``_finalizer``, and wait until all stream."""

    def down(self) -> None:
        """Stop every server and remove what the cluster created (safe to call more than once)."""
        if self._finalizer is not None:
            self._finalizer()

    @property
    def is_up(self) -> bool:
        """Return whether ``up()`` ran and ``down()`` has not."""
        return self._finalizer is not None and self._finalizer.alive

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

    # -- process-level faults (backend specific) --------------------------------------------------

    @abstractmethod
    def stop(self, node: str | Node, mode: StopMode = "fast") -> None:
        """Stop ``node`` in ``mode`` (one of ``STOP_MODES``); return once its port refuses connections."""

    @abstractmethod
    def start(self, node: str | Node) -> None:
        """Start a stopped ``node``; return once it accepts connections (and streams, for a replica)."""

    @abstractmethod
    def freeze(self, node: str | Node) -> None:
        """Suspend every process of ``node``; return once they are all suspended."""

    @abstractmethod
    def thaw(self, node: str | Node) -> None:
        """Resume a frozen ``node``; return once it accepts connections again."""

    @abstractmethod
    def stop_redis(self) -> None:
        """Stop the cluster's Redis (nothing is saved); return once its port refuses connections."""

    @abstractmethod
    def start_redis(self) -> None:
        """Start the cluster's Redis again on the same port (empty); return once it answers PING."""

    @abstractmethod
    def freeze_redis(self) -> None:
        """Suspend the cluster's Redis (clients' calls hang until their timeout); return once it is."""

    @abstractmethod
    def thaw_redis(self) -> None:
        """Resume a frozen Redis (its data intact); return once it answers PING."""

    @abstractmethod
    def _upstream_conninfo(self, upstream: Node, follower: Node) -> str:
        """Return the ``primary_conninfo`` with which ``follower`` streams from ``upstream``."""

    @abstractmethod
    def _is_sender(self, primary: Node, sender_host: str | None, sender_port: int | None) -> bool:
        """Return whether a WAL receiver's ``sender_host``/``sender_port`` designate ``primary``."""

    @abstractmethod
    def _log_tail(self, node: Node, lines: int = 20) -> str:
        """Return the last ``lines`` lines of ``node``'s server log, for error messages."""

    # -- what every backend's servers share -------------------------------------------------------

    def _server_conf(self, title: str, overrides: dict[str, str]) -> str:
        """Return postgresql.conf lines: ``BASE_CONF``, then the cluster's ``conf``, then ``overrides``."""
        conf = {**BASE_CONF, **self.extra_conf, **overrides}
        body = "".join(f"{key} = {value}\n" for key, value in conf.items())
        return f"\n# replicarouter.testing ({title})\n{body}"

    def _all_streaming(self) -> bool:
        """Return whether the primary reports every replica streaming (``pg_stat_replication``)."""
        wanted = {r.name for r in self.replicas}
        if not wanted:
            return True
        rows = self.primary.query(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
        )
        return wanted <= {row[0] for row in rows}

    def wait_streaming(self, node: str | Node, timeout: float | None = None) -> None:
        """Wait until a replica streams from the current primary, as both ends see it.

        The replica's WAL receiver says "streaming" as soon as it connected, while the primary's sender may
        still be in "catchup": a caller that looks at ``pg_stat_replication`` next must find it streaming.
        """
        replica = self.node(node)
        primary = self.primary

        def streaming() -> bool:
            rows = replica.query("SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver")
            if not rows:
                return False
            status, sender_host, sender_port = rows[0]
            if not (status == "streaming" and self._is_sender(primary, sender_host, sender_port)):
                return False
            senders = primary.query(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
                (replica.name,),
            )
            return bool(senders)

        wait_for(
            f"{replica.name} to stream from {primary.name}",
            streaming,
            timeout=timeout or self.timeout,
        )

    def _wait_refused(self, target: Node) -> None:
        """Wait until nothing accepts connections on ``target``'s port any more."""
        wait_for(
            f"{target.name} to refuse connections", lambda: not port_open(target.port), timeout=self.timeout
        )

    def _wait_redis(self, *, up: bool) -> None:
        """Wait until the cluster's Redis answers PING (``up``) or no longer does."""

        def state_reached() -> bool:
            return redis_ping(self.redis_host, self.redis_port) is up

        wait_for(
            f"redis on :{self.redis_port} to be {'up' if up else 'down'}",
            state_reached,
            timeout=self.timeout,
        )

    # -- promotion and re-pointing ----------------------------------------------------------------

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
        """Undo every fault still applied: thaw, start, resume, remove delays, thaw or start Redis.

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
        if self.faults.redis_frozen:
            steps.append(("thaw redis", self.thaw_redis))
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
