"""Pooled primary + read replicas for Django: lag-aware routing, read-your-writes, failover.

Nothing here reads settings or touches a database at import time.
"""

from __future__ import annotations

from typing import Any

from replicarouter.routing.context import mark_written, request_context, use_primary, use_replica

from .exceptions import ConfigurationError, PoolExhausted, PrimaryUnavailable, ReplicaRouterError
from .sticky.handoff import capture_position, read_after

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "PoolExhausted",
    "PrimaryUnavailable",
    "ReplicaRouterError",
    "__version__",
    "capture_position",
    "mark_written",
    "pool_stats",
    "read_after",
    "request_context",
    "status",
    "use_primary",
    "use_replica",
]


def pool_stats(alias: str | None = None) -> dict[str, dict[str, Any]]:
    """Return this process's pool gauges and counters, by alias (one alias when given).

    Per alias: ``size``, ``max_overflow``, ``checked_out``, ``overflow``, ``idle`` (gauges) and
    ``connects``, ``checkouts``, ``waits``, ``timeouts``, ``invalidations``, ``discards``,
    ``stale_on_checkout``, ``pins``, ``reuses`` (counters since the process started).
    """
    from django.conf import settings

    from .checks import uses_pooled_backend
    from .pool import registry

    aliases = [a for a, entry in settings.DATABASES.items() if uses_pooled_backend(entry)]
    return {a: registry.stats(a) for a in aliases if alias is None or a == alias}


def status(cluster: str | None = None) -> dict[str, Any]:
    """Return what ``manage.py replicastatus --json`` prints: every node's role, state, lag and pool use."""
    from replicarouter.observability.report import status as _status

    return _status(cluster)
