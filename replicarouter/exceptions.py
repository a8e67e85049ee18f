"""The exceptions replicarouter raises: all under ReplicaRouterError.

Connection-level ones also subclass ``django.db.utils.OperationalError``, so code that already handles
Django's database errors (retry decorators, 503 middleware) treats them like any lost connection.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.db.utils import OperationalError


class ReplicaRouterError(Exception):
    """Base class of every replicarouter exception."""


class ConfigurationError(ReplicaRouterError, ImproperlyConfigured):
    """A replicarouter setting (``REPLICAROUTER`` or an alias's ``POOL``) is invalid."""


class PoolExhausted(ReplicaRouterError, OperationalError):
    """Every connection of an alias's pool stayed checked out for the whole ``POOL["TIMEOUT"]``."""

    def __init__(self, alias: str, size: int, max_overflow: int, waited: float) -> None:
        self.alias = alias
        self.size = size
        self.max_overflow = max_overflow
        self.waited = waited
        overflow = "unlimited overflow" if max_overflow < 0 else f"overflow {max_overflow}"
        super().__init__(
            f"pool {alias!r} exhausted: size {size} + {overflow} all checked out, waited {waited:.1f} s "
            f"(raise DATABASES[{alias!r}]['POOL']['SIZE'] or ['MAX_OVERFLOW'], or hold connections "
            "for less time)"
        )


class PrimaryUnavailable(ReplicaRouterError, OperationalError):
    """No primary can take this cluster's writes (or the reads that must see this session's writes)."""

    def __init__(self, cluster: str, alias: str, reason: str) -> None:
        self.cluster = cluster
        self.alias = alias
        self.reason = reason
        super().__init__(
            f"cluster {cluster!r} has no primary available for {alias!r}: {reason} "
            "(reads that need no primary keep going to replicas; see docs/operations.md)"
        )
