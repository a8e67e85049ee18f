"""Lending policy: which node lends a Django wrapper its connection, and whether a broken read runs again.

Pure decisions (no driver, no Django, no I/O): the wrapper (``base.DatabaseWrapper``) gathers the inputs
(topology, the process's health snapshot, what the connection attempt or the read did), asks, and
carries the answer out. Failover happens at the connection level, so that ``atomic()``, ``using()`` and
raw cursors all follow it:

- A cluster's **primary alias** connects to the node the monitor elected as writer: the configured
  primary, or a replica promoted on a newer timeline. With no writer (primary down, nothing promoted)
  it raises ``PrimaryUnavailable`` at once, and a failed connection attempt becomes one too.
- A **replica alias** connects to its own node, unless that node failed its last probe (it may be frozen:
  a new connection to it would wait for ``CONNECT_TIMEOUT``) or this process found it broken. Then, or
  when its connection attempt fails, another usable replica lends the connection
  (``selection.fallback_replica`` decides which), then the primary, in a read-only session.
- A **read** (outside any transaction, on a client-side cursor, not a write) whose connection breaks or
  is cut by the read-timeout watchdog is run again once on such a fallback connection, and then on the
  primary, before the caller saw any row: psycopg2's client-side cursors fetch the whole result in
  ``execute()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from replicarouter.routing.topology import Cluster

#: how many times one read runs again after its connection broke (on a fallback replica, then the primary)
MAX_RETRIES = 2


class Role(StrEnum):
    """How a wrapper of an alias borrows its connections."""

    #: from its own pool, nothing else (not in a cluster, or a replica with ``RETRY_READS`` off)
    PLAIN = "plain"
    #: from the node that takes the cluster's writes now
    PRIMARY = "primary"
    #: from its own node, else a fallback; its reads may run again elsewhere
    REPLICA = "replica"


def role(cluster: Cluster | None, alias: str, retry_reads: bool) -> Role:
    """Return how the wrapper of ``alias`` (in ``cluster``, or in none) borrows its connections."""
    if cluster is None:
        return Role.PLAIN
    if cluster.primary == alias:
        return Role.PRIMARY
    return Role.REPLICA if retry_reads else Role.PLAIN


# decisions are slotted dataclasses, not frozen ones: a frozen one takes about 0.45 µs longer to build
# (measured on writer()), and a Writer is built on every borrow of a primary alias
@dataclass(slots=True)
class Writer:
    """Where a connection that must reach the cluster's writer comes from."""

    #: the alias whose server takes the writes now; None: no node does
    node: str | None
    #: whether ``node`` is the borrowing alias itself (its own connection parameters apply)
    own: bool = False
    #: why no node takes the writes (the reason of the ``PrimaryUnavailable`` to raise)
    reason: str = ""


def writer(alias: str, elected: str | None, known_reason: str | None) -> Writer:
    """Return where ``alias`` borrows a connection to the writer the health store elected.

    ``known_reason`` is the health snapshot's reason for its election (None: no snapshot yet).
    """
    if elected is None:
        return Writer(None, reason="unknown" if known_reason is None else known_reason)
    return Writer(elected, own=elected == alias)


def tries_itself(failures: int | None, suspect: bool) -> bool:
    """Return whether a replica alias connects to its own node.

    ``failures``: the node's consecutive failed probes (None: no health known for it); ``suspect``:
    whether a request of this process found it broken since it was last probed healthy.
    """
    unanswered = failures is not None and failures > 0
    return not unanswered and not suspect


def retryable(
    *, write: bool, session_state: bool, autocommit: bool, in_atomic_block: bool, server_side: bool
) -> bool:
    """Return whether a statement on a connection lent for reads may run again elsewhere if it breaks.

    Only a read that leaves nothing behind on its session, outside any transaction, on a client-side
    cursor (which has fetched every row before ``execute()`` returns) can run twice unnoticed.
    """
    return not write and not session_state and autocommit and not in_atomic_block and not server_side


def retry(attempts: int, *, closed: bool, cut: bool) -> bool:
    """Return whether a retryable read that failed runs again, after ``attempts`` retries already.

    Only a broken connection (``closed``, or ``cut`` by the read-timeout watchdog) counts: a cancelled or
    failed statement on a live connection is the caller's business.
    """
    return attempts < MAX_RETRIES and (closed or cut)


def suspects(
    cluster: Cluster, alias: str, server: str, databases: Mapping[str, Mapping[str, Any]]
) -> tuple[str, ...]:
    """Return the aliases to take out of this process's reads after a read of ``alias`` broke on ``server``.

    ``alias`` itself, and every replica alias of the cluster configured on ``server`` (``host:port``):
    the broken connection may have been lent by another replica alias.
    """
    entries = {other: databases.get(other, {}) for other in cluster.replicas}
    on_server = [
        other for other, entry in entries.items() if f"{entry.get('HOST')}:{entry.get('PORT')}" == server
    ]
    return (alias, *on_server)
