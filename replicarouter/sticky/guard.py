"""Redis on the request path, bounded: the short-deadline client behind a per-process circuit breaker.

Every Redis call of a request (the positions' ``MGET``, the advance/release scripts, a pin) asks
``client(operation)`` first. Each call is bounded by ``redis_client.REQUEST_TIMEOUT``; after a timeout or
connection error the breaker opens and, for ``BREAKER_INTERVAL`` seconds, ``client`` returns None: the
request makes no Redis call at all (counted in ``redis_skipped``) and relies on the signed cookie, which
carries the session's positions, pins and what it read. Then one call goes through as a trial
(half-open): an answer closes the breaker, a failure opens it for another interval. An outage is logged
twice, whatever its length: when the breaker opens (``redis_breaker_open``) and when Redis answers again
(``redis_breaker_closed``); the reopenings in between are only counted.

Other Redis errors (a script or type error: Redis answered) do not open the breaker. The health
monitor's thread does not go through here: it has its own client and ``CHECK_TIMEOUT``.
Per process: a forked child starts with a closed breaker of its own.
"""

from __future__ import annotations

import logging
from typing import Any

from replicarouter import redis_client as shared_redis
from replicarouter import runtime
from replicarouter.observability import stats

from .breaker import Breaker

logger = logging.getLogger("replicarouter.sticky")

#: seconds the request path skips Redis after a timeout or connection error, before one trial call
BREAKER_INTERVAL = 1.0
#: False turns the breaker off (every call tries Redis and waits up to REQUEST_TIMEOUT): benchmarks only
ENABLED = True

_breaker = Breaker(BREAKER_INTERVAL)


def breaker() -> Breaker:
    """Return this process's breaker (for status and tests)."""
    return _breaker


def client(operation: str) -> Any:
    """Return the request path's Redis client, or None: no ``REDIS_URL``, or the breaker is open."""
    redis_client = shared_redis.request_client()
    if redis_client is None:
        return None
    if ENABLED and not _breaker.allow():
        stats.incr("redis_skipped", operation)
        return None
    return redis_client


def succeeded() -> None:
    """Record that Redis answered a request-path call (closes an open breaker)."""
    outage = _breaker.success()
    if outage is not None:
        logger.warning(
            "redis answers the request path again after %.1f s: sticky positions are read and stored "
            "in Redis again", outage, extra={"replicarouter_event": "redis_breaker_closed"},
        )  # fmt: skip


def failed(exc: Exception) -> bool:
    """Record a failed request-path call; return True if it was an outage (timeout, connection error)."""
    import redis

    if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
        return False
    if ENABLED and _breaker.failure():
        stats.incr("redis_breaker_opens")
        logger.warning(
            "redis did not answer the request path within %g s (%s): skipping it for %g s at a time "
            "(counted in redis_skipped), relying on the signed cookie",
            shared_redis.REQUEST_TIMEOUT, " ".join(str(exc).split()) or type(exc).__name__,
            BREAKER_INTERVAL, extra={"replicarouter_event": "redis_breaker_open"},
        )  # fmt: skip
    return True


@runtime.on_fork
@runtime.on_reset
def forget() -> None:
    """Start again with a closed breaker (in a forked child, and on ``runtime.reset()``)."""
    global _breaker
    _breaker = Breaker(BREAKER_INTERVAL)
