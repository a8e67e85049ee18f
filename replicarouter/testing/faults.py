"""Fault bookkeeping and the SQL-level fault controls every backend shares.

Everything here is plain SQL against a running node (pausing replay, delaying it, terminating backends,
waiting for catch-up), so it is written once, over the topology alone; a backend adds the process-level
faults (stop, start, freeze, thaw, Redis) in ``ClusterBase``'s abstract methods. Every fault control waits
until its effect is observable, and every fault is recorded in ``Faults`` so that ``heal()`` (called by the
context manager and the pytest fixtures) can undo it: a paused or frozen node never leaks past the test
that made it so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .node import Node, wait_for
from .topology import Topology

logger = logging.getLogger("replicarouter.testing")

StopMode = Literal["smart", "fast", "immediate", "kill"]
STOP_MODES: tuple[str, ...] = ("smart", "fast", "immediate", "kill")


def check_stop_mode(mode: str) -> None:
    """Raise ValueError unless ``mode`` is one of ``STOP_MODES``."""
    if mode not in STOP_MODES:
        raise ValueError(f"mode must be one of {', '.join(STOP_MODES)}, not {mode!r}")


@dataclass
class Faults:
    """Faults currently applied to a cluster, by node name, so that they can be undone."""

    paused: set[str] = field(default_factory=set)
    delayed: set[str] = field(default_factory=set)
    frozen: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)
    redis_stopped: bool = False
    redis_frozen: bool = False

    def any(self) -> bool:
        """Return whether any fault is still applied."""
        redis = self.redis_stopped or self.redis_frozen
        return bool(self.paused or self.delayed or self.frozen or self.stopped or redis)


class FaultControls(Topology):
    """WAL positions, catch-up waits and the SQL-level faults (replay paused or delayed, backends killed)."""

    #: how long a fault control waits for its effect before raising ClusterError
    timeout: float = 30.0
    faults: Faults

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


def _setting_millis(value: str) -> int:
    """Return a PostgreSQL time setting (``'1500ms'``, ``'2s'``, ``'0'``) in milliseconds."""
    units = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            return int(float(value[: -len(unit)]) * units[unit])
    return int(float(value or 0))
