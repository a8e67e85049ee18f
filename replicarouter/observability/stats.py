"""This process's event counters: routing decisions, sticky reads, retries, failovers.

Each counter is a name and a tuple of label values, declared in ``COUNTERS`` with its help text and label
names, so ``metrics.py`` exports them without knowing who counts and ``status()`` reads the same numbers.
Counters only grow (from 0 when the process starts). A lock keeps increments exact across threads; it
costs about 0.1 µs, and the request path counts at most one or two events per query. No I/O here.
"""

from __future__ import annotations

import collections
import threading

#: name -> (help text, label names); exported as ``replicarouter_<name>_total``
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "reads_routed": ("Reads the router sent to each alias (routing decisions)", ("cluster", "alias")),
    "writes_routed": ("Writes the router sent to each alias (routing decisions)", ("cluster", "alias")),
    "sticky_decisions": (
        "Reads of a session with a write not yet replayed everywhere, by where they could go "
        "(replica: some replica had replayed it; primary: none had)",
        ("cluster", "decision"),
    ),
    "sticky_releases": ("Session positions dropped because every replica had replayed them", ("cluster",)),
    "sticky_store_errors": ("Redis errors while reading or storing session positions", ()),
    "redis_skipped": (
        "Request-path Redis calls skipped because the circuit breaker was open (Redis timed out or refused)",
        ("operation",),
    ),
    "redis_breaker_opens": ("Times the request path's Redis circuit breaker opened (outages seen)", ()),
    "sticky_bad_values": ("Values in Redis under a session's keys that are not positions (ignored)", ()),
    "redis_bad_values": (
        "Values read from Redis that were ignored because they are malformed, by kind (snapshot_size, "
        "snapshot_json, snapshot_schema, snapshot_time, sticky_position, sticky_pin, procs_size, procs_json, "
        "procs_schema, procs_time)",
        ("kind",),
    ),
    "leases_repaired": ("Health leases found without an expiry and given one by this process", ("cluster",)),
    "sticky_bad_cookies": ("Position cookies ignored: forged, expired or malformed", ("reason",)),
    "sticky_pins": (
        "Sessions pinned to the primary for STICKY_SECONDS because their write's position could not be read",
        ("cluster",),
    ),
    "sticky_foreign_positions": (
        "Session positions (or monotonic floors) dropped because they belong to another incarnation of the "
        "cluster (reason: system, a rebuild; timeline or unknown, beyond the current primary's position)",
        ("cluster", "reason"),
    ),
    "read_retries": ("Reads re-run elsewhere after their replica connection broke", ("alias",)),
    "read_fallbacks": ("Connections of a replica alias lent by another node", ("alias",)),
    "reads_aborted": ("Reads cut by the watchdog (READ_TIMEOUT on an unresponsive node)", ("alias",)),
    "primary_unavailable": ("PrimaryUnavailable raised: no writer, or it cannot be reached", ("cluster",)),
    "failovers": ("Times this process saw the cluster's writes move to another node", ("cluster",)),
    "foreign_snapshots": (
        "Health snapshots ignored because they name a server this process's probes of the cluster did not "
        "reach (another site's, sharing the Redis and the keys)",
        ("cluster",),
    ),
    "warm_starts": (
        "New monitors that routed from the leader's snapshot before their first round (snapshot), or "
        "found none fresh (none)",
        ("result",),
    ),
    "promotions": ("Replicas promoted by this process's monitor (PROMOTE_AFTER)", ("cluster",)),
}

_lock = threading.Lock()
_counts: collections.Counter[tuple[str, tuple[str, ...]]] = collections.Counter()


def incr(name: str, *labels: str) -> None:
    """Add one to counter ``name`` for these label values (in ``COUNTERS`` order)."""
    key = (name, labels)
    with _lock:
        _counts[key] += 1


def values(name: str) -> dict[tuple[str, ...], int]:
    """Return counter ``name`` by label values."""
    with _lock:
        return {labels: count for (counter, labels), count in _counts.items() if counter == name}


def total(name: str, **match: str) -> int:
    """Return counter ``name`` summed over the label values that match ``match`` (all when empty)."""
    names = COUNTERS[name][1]
    return sum(
        count
        for labels, count in values(name).items()
        if all(labels[names.index(key)] == value for key, value in match.items())
    )


def reset() -> None:
    """Forget every count (tests)."""
    with _lock:
        _counts.clear()
