"""The Redis that processes of a site share: one client per process and one key scheme.

Every Redis key replicarouter uses is made by ``key()``:
``{KEY_PREFIX}:{kind}:{cluster}:{fingerprint}:{parts...}`` (``kind`` is ``health``, ``sticky`` or
``sticky-pin``). The fingerprint binds the key to the databases the cluster's aliases point at
(``topology.fingerprint``: a hash of every node's ``host:port/dbname``, plus this machine's hostname when
a node is local), so two sites sharing one Redis never read or steer by each other's keys, whatever
their ``KEY_PREFIX`` and alias names. It needs no I/O: a new process uses a shared snapshot from its
first request. Fingerprints are computed once per process and settings (forgotten when DATABASES or
REPLICAROUTER change, on ``runtime.reset()``).

The client is built from ``REDIS_URL`` with ``CHECK_TIMEOUT`` as its socket timeouts, once per process
and settings, and forgotten in a forked child (redis-py never shuts down a socket of another process,
so the parent's connections keep working).

The request path (session positions, ``replicarouter.sticky.store``) has a client of its own,
``request_client()``: same URL, ``REQUEST_TIMEOUT`` as its socket timeouts and no retries, so that a
hung Redis costs a request at most that long (and, behind the circuit breaker of
``replicarouter.sticky.guard``, only the first request of each breaker interval). The health monitor's
thread keeps ``client()`` and its ``CHECK_TIMEOUT`` deadline.
"""

from __future__ import annotations

import re
import socket
import threading
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

from replicarouter.routing.topology import fingerprint as cluster_fingerprint

from . import runtime
from .conf import settings, topology

#: socket (connect and read) timeout of the request path's client, in seconds: a Redis GET takes ~0.1 ms
#: here, so 50 ms is far above a healthy answer and far below a request's budget
REQUEST_TIMEOUT = 0.05

_client: Any = None
_client_key: tuple[str, float] | None = None
_request_client: Any = None
_request_url: str | None = None
_lock = threading.Lock()
#: (DATABASES, REPLICAROUTER, {cluster: fingerprint}) as last computed
_fingerprints: tuple[Any, Any, dict[str, str]] | None = None
#: a health key of release 0.2 after ``{prefix}:health:``: cluster, fingerprint, leader or snapshot
_HEALTH_KEY = re.compile(r"(?P<cluster>.+):(?P<fingerprint>[0-9a-f]{16}):(?:leader|snapshot)")


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


def fingerprints() -> dict[str, str]:
    """Return every cluster's fingerprint by cluster name (computed once per settings)."""
    global _fingerprints
    databases = django_settings.DATABASES
    values = getattr(django_settings, "REPLICAROUTER", None)
    cached = _fingerprints
    if cached is not None and cached[0] is databases and cached[1] is values:
        return cached[2]
    hostname = socket.gethostname()
    computed = {c.name: cluster_fingerprint(c, databases, hostname) for c in topology().clusters}
    _fingerprints = (databases, values, computed)
    return computed


def fingerprint(cluster: str) -> str:
    """Return the fingerprint of ``cluster`` (KeyError for a cluster the settings do not name)."""
    return fingerprints()[cluster]


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
    """Return the Redis key of ``kind`` (``health``, ``sticky``, ``sticky-pin``) for ``cluster``."""
    return ":".join((settings.KEY_PREFIX, kind, cluster, fingerprint(cluster), *parts))


def foreign_health_keys(
    redis: Any, prefix: str, ours: dict[str, str], *, count: int = 10_000, calls: int = 10
) -> list[str]:
    """Return the health keys under ``prefix`` whose cluster and fingerprint are none of ``ours``.

    Bounded: at most ``calls`` SCAN calls of ``count`` keys each (a sample in a big Redis). Keys of
    release 0.1 (no fingerprint) are not counted: they may be this site's own, mid-deploy.
    """
    found: list[str] = []
    start = f"{prefix}:health:"
    cursor: Any = 0
    for _ in range(calls):
        cursor, keys = redis.scan(cursor, match=start + "*", count=count)
        for raw in keys:
            name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            match = _HEALTH_KEY.fullmatch(name[len(start) :])
            if match and ours.get(match["cluster"]) != match["fingerprint"]:
                found.append(name)
        if int(cursor) == 0:
            break
    return sorted(found)


@runtime.on_fork
@runtime.on_reset
def forget() -> None:
    """Drop this process's clients (new ones are built on next use)."""
    global _client, _client_key, _request_client, _request_url, _lock
    _client, _client_key = None, None
    _request_client, _request_url = None, None
    _lock = threading.Lock()


@runtime.on_reset
def forget_fingerprints(**kwargs: Any) -> None:
    """Forget the computed fingerprints (also connected to ``setting_changed``)."""
    global _fingerprints
    if kwargs.get("setting") in (None, "DATABASES", "REPLICAROUTER"):
        _fingerprints = None


setting_changed.connect(forget_fingerprints, dispatch_uid="replicarouter.redis_client.forget_fingerprints")
