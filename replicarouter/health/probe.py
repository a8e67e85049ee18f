"""Probe every node of a cluster at once, with one hard deadline: psycopg2 async connections and select().

A frozen server (SIGSTOP) accepts nothing and answers nothing; a blocking driver would hang on it for
libpq's connect_timeout (2 s minimum) or forever on an open connection. Here connection set-up and the
probe query of all nodes are driven together by ``poll()`` and one ``select()`` loop, so a round never
lasts longer than ``timeout``, however many nodes are stuck. Probe connections are our own (never
Django's), kept between rounds and dropped on any failure.

``ClusterProbe`` is one cluster's prober from round to round, with the primary's position history: each
round it probes, judges the results (``rules.judge``, pure) and logs the transitions (``events``).
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from replicarouter.routing.topology import Cluster

from .election import Election
from .events import log_transition
from .lag import PrimaryHistory
from .rules import NodeHealth, Rules, judge

logger = logging.getLogger("replicarouter.health")

PROBE_SQL = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, "
    "pg_last_wal_receive_lsn(), "
    "extract(epoch FROM now() - pg_last_xact_replay_timestamp()), "
    # a primary's timeline: the first 8 hex digits of its current WAL file name (pg_control's
    # checkpoint timeline only changes at the first checkpoint after a promotion)
    "CASE WHEN pg_is_in_recovery() THEN NULL "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, "
    # when the server started: a restarted standby may come back behind what it had replayed
    "extract(epoch FROM pg_postmaster_start_time())"
)
#: asked once per probe connection, apart from PROBE_SQL: a role without EXECUTE on pg_control_system()
#: (PUBLIC has it by default) gets an error here, and its probes go on without the identifier
IDENTIFIER_SQL = "SELECT system_identifier::text FROM pg_control_system()"


@dataclass(frozen=True)
class ProbeResult:
    """What one node said (or why it said nothing) in one round."""

    alias: str
    ok: bool
    in_recovery: bool | None = None
    #: the replay position of a standby, the current write position of a primary, as bytes
    position: int | None = None
    receive_position: int | None = None
    #: seconds since the last replayed transaction committed on the primary (standbys only)
    replay_age: float | None = None
    error: str | None = None
    seconds: float = 0.0
    #: the timeline a primary writes on (None for standbys)
    timeline: int | None = None
    #: wall-clock time the round started: the position is at least what the node had at that moment
    probed_at: float | None = None
    #: when the node's server started (``pg_postmaster_start_time()``, epoch seconds)
    server_started: float | None = None
    #: ``pg_control_system().system_identifier`` (None when the role may not read it)
    system_identifier: str | None = None


def lsn_to_int(lsn: str | None) -> int | None:
    """Return a WAL position ``'16/B374D848'`` as a byte offset."""
    if lsn is None:
        return None
    high, _, low = str(lsn).partition("/")
    return (int(high, 16) << 32) + int(low, 16)


class _Target:
    """One node's probe connection, driven through connect → query → result."""

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        self.alias = alias
        self.params = params
        self.conn: Any = None
        self.cursor: Any = None
        self.phase = "idle"
        self.result: ProbeResult | None = None
        #: the server's system identifier, asked once per connection (None: not yet, or not permitted)
        self.system_identifier: str | None = None
        self.identified = False

    def start(self, started: float, wall: float | None = None) -> None:
        import psycopg2

        self.started = started
        self.wall = time.time() if wall is None else wall
        self.result = None
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg2.connect(**self.params, async_=1)
                self.phase = "connect"
            else:
                self._send()
        except Exception as exc:
            self.fail(str(exc))

    def _send(self) -> None:
        self.cursor = self.conn.cursor()
        if self.identified:
            self.cursor.execute(PROBE_SQL)
            self.phase = "query"
        else:
            self.cursor.execute(IDENTIFIER_SQL)
            self.phase = "identify"

    def _identified(self, identifier: str | None) -> tuple[str, int] | None:
        self.system_identifier, self.identified = identifier, True
        self._send()
        return self.step()

    def step(self) -> tuple[str, int] | None:
        """Advance; return ``("r"|"w", fd)`` to wait on, or None when finished."""
        import psycopg2
        import psycopg2.extensions as ext

        try:
            try:
                state = self.conn.poll()
            except psycopg2.DatabaseError as exc:
                if self.phase != "identify" or self.conn.closed:
                    raise
                # refused (no EXECUTE on pg_control_system()) or not PostgreSQL's: probe without it
                logger.debug("no system identifier for %s: %s", self.alias, exc)
                return self._identified(None)
            if state == ext.POLL_OK:
                if self.phase == "connect":
                    self._send()
                    return self.step()
                if self.phase == "identify":
                    row = self.cursor.fetchone()
                    return self._identified(None if row is None or row[0] is None else str(row[0]))
                row = self.cursor.fetchone()
                self.cursor.close()
                self.finish(row)
                return None
            if state == ext.POLL_READ:
                return "r", self.conn.fileno()
            if state == ext.POLL_WRITE:
                return "w", self.conn.fileno()
            self.fail(f"unexpected poll state {state}")
        except Exception as exc:
            self.fail(str(exc).strip() or type(exc).__name__)
        return None

    def finish(self, row: Any) -> None:
        in_recovery, position, receive, replay_age, timeline, server_started = row
        self.phase = "done"
        self.result = ProbeResult(
            self.alias,
            True,
            in_recovery=bool(in_recovery),
            position=lsn_to_int(position),
            receive_position=lsn_to_int(receive),
            replay_age=None if replay_age is None else float(replay_age),
            seconds=time.monotonic() - self.started,
            timeline=timeline,
            probed_at=self.wall,
            server_started=None if server_started is None else float(server_started),
            system_identifier=self.system_identifier,
        )

    def fail(self, error: str) -> None:
        self.phase = "done"
        error = " ".join(error.split())  # libpq's messages span lines; log lines and status cells must not
        self.result = ProbeResult(self.alias, False, error=error, seconds=time.monotonic() - self.started)
        self.drop()

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        self.system_identifier, self.identified = None, False  # the next connection may reach another server
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may raise; it is gone either way
                conn.close()


class Prober:
    """Probe connections to a set of nodes, reused from round to round."""

    def __init__(self, targets: dict[str, dict[str, Any]]) -> None:
        self.targets = {alias: _Target(alias, params) for alias, params in targets.items()}
        #: probe queries sent, for tests and benchmarks
        self.queries = 0

    def probe(self, timeout: float) -> dict[str, ProbeResult]:
        """Probe every node; return within ``timeout`` seconds (a node that did not answer has failed)."""
        started = time.monotonic()
        wall = time.time()  # before any query is sent: every position is at least what it was then
        deadline = started + timeout
        for target in self.targets.values():
            target.start(started, wall)
            self.queries += 1
        while True:
            readers: list[int] = []
            writers: list[int] = []
            for target in self.targets.values():
                if target.phase in ("connect", "identify", "query"):
                    wait = target.step()
                    if wait is not None:
                        (readers if wait[0] == "r" else writers).append(wait[1])
            remaining = deadline - time.monotonic()
            if not (readers or writers):
                break
            if remaining <= 0:
                break
            select.select(readers, writers, [], remaining)
        for target in self.targets.values():
            if target.phase != "done":
                target.fail(f"no answer within {timeout:.1f} s")
        return {alias: target.result for alias, target in self.targets.items() if target.result is not None}

    def close(self) -> None:
        """Close every probe connection."""
        for target in self.targets.values():
            target.drop()


def connection_params(settings_dict: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Return libpq parameters for probing the server of a DATABASES entry (never Django's connections)."""
    options = dict(settings_dict.get("OPTIONS") or {})
    for django_only in ("isolation_level", "assume_role", "server_side_binding", "pool", "cursor_factory"):
        options.pop(django_only, None)
    params: dict[str, Any] = {
        "dbname": settings_dict.get("NAME") or "postgres",
        "connect_timeout": max(2, int(timeout + 0.999)),
        **options,
        "application_name": "replicarouter-monitor",  # whatever OPTIONS say: the probes name themselves
    }
    for key, name in (("USER", "user"), ("PASSWORD", "password"), ("HOST", "host"), ("PORT", "port")):
        if settings_dict.get(key):
            params[name] = settings_dict[key]
    return params


class ClusterProbe:
    """Probing one cluster: the prober's connections, the primary's history, the nodes' states."""

    def __init__(self, cluster: Cluster, databases: dict[str, Any], timeout: float) -> None:
        self.cluster = cluster
        self.key = self.key_for(cluster, databases, timeout)
        params = {a: connection_params(databases[a], timeout) for a in (cluster.primary, *cluster.replicas)}
        self.prober = Prober(params)
        self.history = PrimaryHistory()

    @staticmethod
    def key_for(cluster: Cluster, databases: Mapping[str, Any], timeout: float) -> str:
        """Return what a prober for ``cluster`` is built from: when it changes, a new one is needed."""
        aliases = (cluster.primary, *cluster.replicas)
        return repr(
            (cluster, timeout, [sorted((k, repr(v)) for k, v in databases[a].items()) for a in aliases])
        )

    def round(
        self, nodes: dict[str, NodeHealth], timeout: float, rules: Rules, previous: Election | None
    ) -> tuple[dict[str, NodeHealth], Election]:
        """Probe every node once and return their next health and writer (transitions are logged)."""
        results = self.prober.probe(timeout)
        now = time.time()
        verdict = judge(
            self.cluster, nodes, results, rules=rules, history=self.history, previous=previous, now=now
        )
        for transition in verdict.transitions:
            log_transition(self.cluster, transition)
        return verdict.nodes, verdict.election

    def close(self) -> None:
        self.prober.close()
