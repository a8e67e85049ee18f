"""Node health state machine and the judgement of a round. Pure: probe results in, transitions out.

Nothing here does I/O or reads settings (no Django, Redis or psycopg2): ``judge()`` takes one round of
probe results and returns every node's next health, the writer election (``election.py``) and the
transitions (``NodeChange``, ``WriterChange``) as data; the monitor logs them, a one-off probe
(``status()``) does not. The only state it changes is the ``PrimaryHistory`` it is given (``lag.py``
does the lag arithmetic).

States: ``unknown`` (no good probe yet) → ``up`` on the first healthy probe; ``up``/``lagging`` → ``down``
after ``FALL`` consecutive failed probes; ``down``/``lagging`` → ``up`` after ``RISE`` consecutive healthy
answers at least ``CHECK_INTERVAL`` apart; any good probe of a replica whose lag exceeds
``MAX_LAG_SECONDS`` or ``MAX_LAG_BYTES``, or whose lag cannot be measured, makes it ``lagging`` at once.
Only ``up`` replicas are read from.

The healthy streak counts answers spaced in time, not rounds, because rounds are not evenly spaced: a
round against a frozen node lasts ``CHECK_TIMEOUT`` and the next one starts at once, so a node thawed
late in a round would answer twice within milliseconds and RISE would mean nothing. A healthy answer
counts only if it was judged at least ``interval * (1 - RISE_SLACK)`` after the last counted one
(``streak_at``; the slack absorbs scheduling jitter); one that comes sooner leaves the streak as it is,
and any failed or unhealthy probe starts it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from replicarouter.routing.topology import Cluster
from replicarouter.settings_schema import REPLICAROUTER_OPTIONS as _OPTIONS

from .election import Election, elect
from .lag import PrimaryHistory, measure_lag

if TYPE_CHECKING:  # the probe's I/O is none of this module's business, only its results' type
    from .probe import ProbeResult

STATES = ("up", "lagging", "down", "unknown")
#: how much sooner than ``interval`` after the last counted healthy answer the next one may come and count
RISE_SLACK = 0.1


class RuleSettings(Protocol):
    """The settings the rules come from (``conf.settings``, or any object with these attributes)."""

    @property
    def FALL(self) -> int: ...

    @property
    def RISE(self) -> int: ...

    @property
    def MAX_LAG_SECONDS(self) -> float: ...

    @property
    def MAX_LAG_BYTES(self) -> int: ...

    @property
    def CHECK_INTERVAL(self) -> float: ...


@dataclass(frozen=True)
class Rules:
    """When a node changes state: ``FALL`` / ``RISE`` probes in a row, lag limits (defaults: the schema's).

    ``interval`` is how far apart (less ``RISE_SLACK``) the ``RISE`` healthy answers must be.
    """

    fall: int = _OPTIONS["FALL"].default
    rise: int = _OPTIONS["RISE"].default
    max_lag_seconds: float = _OPTIONS["MAX_LAG_SECONDS"].default
    max_lag_bytes: int = _OPTIONS["MAX_LAG_BYTES"].default
    interval: float = _OPTIONS["CHECK_INTERVAL"].default

    @classmethod
    def from_settings(cls, settings: RuleSettings) -> Rules:
        """Return the rules that ``FALL``, ``RISE``, ``MAX_LAG_*`` and ``CHECK_INTERVAL`` give."""
        return cls(
            fall=settings.FALL,
            rise=settings.RISE,
            max_lag_seconds=settings.MAX_LAG_SECONDS,
            max_lag_bytes=settings.MAX_LAG_BYTES,
            interval=settings.CHECK_INTERVAL,
        )

    @property
    def rise_gap(self) -> float:
        """Return how long after the last counted healthy answer the next one counts toward ``RISE``."""
        return self.interval * (1 - RISE_SLACK)


@dataclass(frozen=True)
class NodeHealth:
    """What is known about one node (the JSON of ``replicastatus`` plus the counters behind it)."""

    alias: str
    configured_role: str
    host: str = ""
    port: str = ""
    role: str = "unknown"
    state: str = "unknown"
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    checked_at: float | None = None
    error: str | None = None
    promoted: bool = False
    failures: int = 0
    healthy_streak: int = 0
    position: int | None = None
    #: the WAL position a standby has received (replayed or not): who is most caught up for promotion
    received: int | None = None
    #: the timeline a node that acts as primary writes on
    timeline: int | None = None
    #: a second primary on an older timeline: it gets no traffic at all
    fenced: bool = False
    #: wall-clock start of the round of its last successful probe (``position`` is at least what the
    #: node had then: monotonic reads compare it with the time of a session's reads)
    probed_at: float | None = None
    #: when its server started (epoch seconds): a restart of a standby can take its position back
    started_at: float | None = None
    #: when the last healthy answer that counted toward ``healthy_streak`` was judged (the ``now`` of
    #: ``next_health``, not ``probed_at``: a round against a frozen node starts ``CHECK_TIMEOUT`` before
    #: its answers arrive); None while the streak is 0
    streak_at: float | None = None
    #: the server's ``pg_control_system().system_identifier`` (shared by a primary and its standbys;
    #: None when not permitted): a snapshot whose primary has another one is for other databases
    system_identifier: str | None = None

    def public(self) -> dict[str, Any]:
        """Return the fields ``replicastatus --json`` shows for a node (pool stats are added later)."""
        data = asdict(self)
        internal_fields = (
            "configured_role", "failures", "healthy_streak", "position", "received",
            "probed_at", "started_at", "streak_at", "system_identifier",
        )  # fmt: skip
        for internal in internal_fields:
            data.pop(internal)
        return data


def initial_nodes(cluster: Cluster, databases: Mapping[str, Any]) -> dict[str, NodeHealth]:
    """Return ``unknown`` health for every node of ``cluster``, with host and port from DATABASES."""
    nodes = {}
    for alias in (cluster.primary, *cluster.replicas):
        entry = databases.get(alias, {})
        role = "primary" if alias == cluster.primary else "replica"
        nodes[alias] = NodeHealth(
            alias, role, host=str(entry.get("HOST") or ""), port=str(entry.get("PORT") or "")
        )
    return nodes


def next_health(
    node: NodeHealth,
    result: ProbeResult,
    *,
    primary_position: int | None,
    history: PrimaryHistory | None,
    rules: Rules,
    now: float,
) -> tuple[NodeHealth, str]:
    """Return the node's health after ``result``, and the reason for its state (for logs)."""
    if not result.ok:
        failures = node.failures + 1
        state = node.state
        if failures >= rules.fall:
            state = "down"
        reason = f"probe failed ({failures}/{rules.fall}): {result.error}"
        return (
            replace(
                node,
                state=state,
                failures=failures,
                healthy_streak=0,
                streak_at=None,
                error=result.error,
                checked_at=now,
            ),
            reason,
        )
    role = "replica" if result.in_recovery else "primary"
    promoted = node.configured_role == "replica" and not result.in_recovery
    lag_bytes: int | None = 0
    lag_seconds: float | None = 0.0
    healthy = True
    reason = "probe ok"
    if node.configured_role == "replica" and result.in_recovery:
        lag_bytes, lag_seconds = measure_lag(result, primary_position, history, now)
        if lag_bytes is None or lag_seconds is None:
            healthy, reason = False, "lag cannot be measured (primary position unknown)"
        elif lag_bytes > rules.max_lag_bytes:
            healthy, reason = False, f"lag {lag_bytes} bytes > MAX_LAG_BYTES {rules.max_lag_bytes}"
        elif lag_seconds > rules.max_lag_seconds:
            healthy, reason = False, f"lag {lag_seconds:.1f} s > MAX_LAG_SECONDS {rules.max_lag_seconds:g}"
    elif promoted:
        reason = "promoted: no longer in recovery"
    streak, wait = 0, 0.0
    streak_at: float | None = None
    if healthy:
        streak, streak_at = node.healthy_streak + 1, now
        if node.streak_at is not None and now - node.streak_at < rules.rise_gap:
            # too soon after the last counted answer (a round right after one a frozen node stretched):
            # the streak stays as it is
            streak, streak_at = node.healthy_streak, node.streak_at
            wait = node.streak_at + rules.rise_gap - now
    if not healthy:
        state = "lagging"
    elif node.state in ("up", "unknown") or streak >= rules.rise:
        state = "up"
    else:
        state = node.state
        reason = f"healthy {streak}/{rules.rise}"
        if wait:
            reason += f", next count after {wait:.2f} s"
    updated = replace(
        node,
        role=role,
        state=state,
        lag_bytes=lag_bytes,
        lag_seconds=None if lag_seconds is None else round(lag_seconds, 3),
        checked_at=now,
        error=None,
        promoted=promoted,
        failures=0,
        healthy_streak=streak,
        streak_at=streak_at,
        position=result.position,
        received=result.receive_position,
        timeline=result.timeline,
        probed_at=result.probed_at,
        started_at=result.server_started,
        system_identifier=result.system_identifier,
    )
    return updated, reason


def usable(nodes: dict[str, NodeHealth]) -> frozenset[str]:
    """Return the replicas reads may go to: ``up``, still standbys of the configured primary."""
    return frozenset(
        alias
        for alias, n in nodes.items()
        if n.configured_role == "replica" and n.state == "up" and not n.promoted and not n.fenced
    )


@dataclass(frozen=True, slots=True)
class NodeChange:
    """A node's state, promotion or fencing changed in a round (the monitor logs it)."""

    old: NodeHealth
    new: NodeHealth
    reason: str


@dataclass(frozen=True, slots=True)
class WriterChange:
    """The cluster's writes go to another node, or to none, after a round (the monitor logs it)."""

    writer: str | None
    previous: str | None
    reason: str


Transition = NodeChange | WriterChange


@dataclass(frozen=True, slots=True)
class Verdict:
    """One round judged: each node's next health, the writer election and the transitions.

    ``transitions`` holds the nodes' changes in the nodes' order, then the writer's.
    """

    nodes: dict[str, NodeHealth]
    election: Election
    transitions: tuple[Transition, ...]


def judge(
    cluster: Cluster,
    nodes: Mapping[str, NodeHealth],
    results: Mapping[str, ProbeResult],
    *,
    rules: Rules,
    history: PrimaryHistory | None,
    previous: Election | None,
    now: float,
) -> Verdict:
    """Return the nodes' next health, the elected writer and the transitions, given one round of results.

    ``previous`` is the last round's election; None on a first round, which reports no change of writer.
    Any other change of writer is one, from or to None included (a failover from "no primary" to a
    promoted replica is a change too).

    Lag is measured against the elected primary's position; while no primary answers, against the last
    position a primary was seen at (replicas that replayed it are as current as any readable node).
    """
    writer = previous.writer if previous is not None else None
    claims = {a: r.timeline for a, r in results.items() if r.ok and not r.in_recovery}
    unreachable = frozenset(
        a for a, r in results.items() if not r.ok and a in nodes and nodes[a].failures + 1 >= rules.fall
    )
    election = elect(
        cluster.primary,
        claims,
        previous=writer,
        known_timeline=previous.timeline if previous is not None else 0,
        unreachable=unreachable,
    )
    primary_position = None
    if election.writer in claims:
        primary_position = results[election.writer].position
        if primary_position is not None and history is not None:
            history.add(now, primary_position)
    elif history is not None and history.samples:
        primary_position = history.samples[-1][1]
    updated = {}
    transitions: list[Transition] = []
    for alias, node in nodes.items():
        new, reason = next_health(
            node, results[alias], primary_position=primary_position, history=history, rules=rules, now=now
        )
        fenced = alias in election.fenced
        if fenced != new.fenced:
            new = replace(new, fenced=fenced)
            reason = "fenced: " + election.reason if fenced else "no longer fenced"
        if new.state != node.state or new.promoted != node.promoted or new.fenced != node.fenced:
            transitions.append(NodeChange(node, new, reason))
        updated[alias] = new
    if previous is not None and election.writer != writer:
        transitions.append(WriterChange(election.writer, writer, election.reason))
    return Verdict(updated, election, tuple(transitions))
