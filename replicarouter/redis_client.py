"""The Redis that processes of a site share: one client per process and one key scheme.

Every Redis key replicarouter uses is made by ``key()``: ``{KEY_PREFIX}:{kind}:{cluster}:{parts...}``
(``kind`` is ``health`` or ``sticky``). The client is built from ``REDIS_URL`` with ``CHECK_TIMEOUT`` as
its socket timeouts, once per process and settings, and forgotten in a forked child (redis-py never shuts
down a socket of another process, so the parent's connections keep working).

The request path (session positions, ``replicarouter.sticky.store``) has a client of its own,
``request_client()``: same URL, ``REQUEST_TIMEOUT`` as its socket timeouts and no retries, so that a
hung Redis costs a request at most that long (and, behind the circuit breaker of
``replicarouter.sticky.guard``, only the first request of each breaker interval). The health monitor's
thread keeps ``client()`` and its ``CHECK_TIMEOUT`` deadline.
"""

from __future__ import annotations

import threading
from typing import Any

from . import runtime
from .conf import settings

#: socket (connect and read) timeout of the request path's client, in seconds: a Redis GET takes ~0.1 ms
#: here, so 50 ms is far above a healthy answer and far below a request's budget
REQUEST_TIMEOUT = 0.05

_client: Any = None
_client_key: tuple[str, float] | None = None
_request_client: Any = None
_request_url: str | None = None
_lock = threading.Lock()


def client() -> Any:
    """Return this process's Redis client (None without ``REDIS_URL``)."""
    global _client, _client_key
    url = settings.REDIS_URL
    if not url:
        return None
    runtime.check_fork()
    wanted = (url, settings.CHECK_TIMEOUT)
    current = _client
    if current is not None and _client_key == wanted:
        return current
    with _lock:
        if _client is None or _client_key != wanted:
            import redis

            timeout = wanted[1]
            _client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            _client_key = wanted
        return _client


def request_client() -> Any:
    """Return this process's Redis client for the request path (None without ``REDIS_URL``).

    Socket timeouts of ``REQUEST_TIMEOUT``, no retry: one attempt per call, whatever redis-py's default.
    """
    global _request_client, _request_url
    url = settings.REDIS_URL
    if not url:
        return None
    runtime.check_fork()
    current = _request_client
    if current is not None and _request_url == url:
        return current
    with _lock:
        if _request_client is None or _request_url != url:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            _request_client = redis.Redis.from_url(
                url,
                socket_timeout=REQUEST_TIMEOUT,
                socket_connect_timeout=REQUEST_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
            _request_url = url
        return _request_client


def key(kind: str, cluster: str, *parts: str) -> str:
    """Return the Redis key of ``kind`` (``health``, ``sticky``) for ``cluster`` and ``parts``."""
    return ":".join((settings.KEY_PREFIX, kind, cluster, *parts))


@runtime.on_fork
@runtime.on_reset
def forget() -> None:
    """Drop this process's clients (new ones are built on next use)."""
    global _client, _client_key, _request_client, _request_url, _lock
    _client, _client_key = None, None
    _request_client, _request_url = None, None
    _lock = threading.Lock()
