"""The Redis that processes of a site share: one client per process and one key scheme.

Every Redis key replicarouter uses is made by ``key()``: ``{KEY_PREFIX}:{kind}:{cluster}:{parts...}``
(``kind`` is ``health`` or ``sticky``). The client is built from ``REDIS_URL`` with ``CHECK_TIMEOUT`` as
its socket timeouts, once per process and settings, and forgotten in a forked child (redis-py never shuts
down a socket of another process, so the parent's connections keep working).
"""

from __future__ import annotations

import threading
from typing import Any

from . import runtime
from .conf import settings

_client: Any = None
_client_key: tuple[str, float] | None = None
_lock = threading.Lock()
#: a new monitor's one GET per cluster (``Monitor.warm``) waits at most this long
WARM_TIMEOUT = 0.05
_warm: Any = None
_warm_url: str | None = None


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


def warm_client() -> Any:
    """Return a client whose calls give up after ``WARM_TIMEOUT`` (None without ``REDIS_URL``).

    For the one call a request may wait on before routing (a new process's warm start): short, so a
    slow or hung Redis delays that request by at most ``WARM_TIMEOUT`` per call.
    """
    global _warm, _warm_url
    url = settings.REDIS_URL
    if not url:
        return None
    runtime.check_fork()
    with _lock:
        if _warm is None or _warm_url != url:
            import redis

            _warm = redis.Redis.from_url(
                url, socket_timeout=WARM_TIMEOUT, socket_connect_timeout=WARM_TIMEOUT
            )
            _warm_url = url
        return _warm


def key(kind: str, cluster: str, *parts: str) -> str:
    """Return the Redis key of ``kind`` (``health``, ``sticky``) for ``cluster`` and ``parts``."""
    return ":".join((settings.KEY_PREFIX, kind, cluster, *parts))


@runtime.on_fork
@runtime.on_reset
def forget() -> None:
    """Drop this process's client (a new one is built on next use)."""
    global _client, _client_key, _lock, _warm, _warm_url
    _client, _client_key = None, None
    _warm, _warm_url = None, None
    _lock = threading.Lock()
