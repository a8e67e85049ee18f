"""``registry``: every pool of this process, by alias and parameters; forgotten in a forked child."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from replicarouter import runtime

from .options import PoolOptions
from .pool import ConnectionPool, PoolCounters

logger = logging.getLogger("replicarouter.pools")


class PoolRegistry:
    """Every pool of this process, by alias and connection parameters."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, tuple[tuple[str, str], ...]], ConnectionPool] = {}
        self._lock = threading.Lock()
        # pools of a parent process, kept alive so that their connections are never garbage collected
        self._inherited: list[ConnectionPool] = []

    def get(
        self, alias: str, options: PoolOptions, conn_params: Mapping[str, Any], creator: Callable[[], Any]
    ) -> ConnectionPool:
        """Return the pool for ``alias`` with these parameters, creating it on first use."""
        runtime.check_fork()
        key = (alias, tuple(sorted((k, repr(v)) for k, v in conn_params.items())))
        pool = self._pools.get(key)
        if pool is not None and pool.options == options:
            return pool
        with self._lock:
            pool = self._pools.get(key)
            if pool is None or pool.options != options:
                if pool is not None:
                    pool.dispose()
                pool = ConnectionPool(alias, options, creator)
                self._pools[key] = pool
                logger.debug("pool %r created: %s", alias, options)
            return pool

    def pools(self, alias: str | None = None) -> list[ConnectionPool]:
        """Return this process's pools (of one alias, when given)."""
        return [p for (a, _), p in list(self._pools.items()) if alias is None or a == alias]

    def stats(self, alias: str) -> dict[str, int]:
        """Return the summed stats of an alias's pools (zeros when it has none yet)."""
        total: dict[str, int] = {}
        for pool in self.pools(alias):
            for key, value in pool.stats().items():
                total[key] = total.get(key, 0) + value if key not in ("size", "max_overflow") else value
        empty = {"size": 0, "max_overflow": 0, "checked_out": 0, "overflow": 0, "idle": 0}
        return total or {**empty, **vars(PoolCounters())}

    def dispose(self, alias: str | None = None) -> None:
        """Close the idle connections of every pool (of one alias) and forget those pools."""
        with self._lock:
            for key in [k for k in self._pools if alias is None or k[0] == alias]:
                self._pools.pop(key).dispose()

    def inherited(self) -> list[ConnectionPool]:
        """Return the pools of the parent process this child still references (their sockets are inert)."""
        return list(self._inherited)

    def forget_inherited(self) -> None:
        """Drop the references to the parent's pools: garbage collection may then close them, harmlessly."""
        self._inherited.clear()

    def after_fork(self) -> None:
        """Forget the parent's pools without touching the parent's connections (runs in the child)."""
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for pool in self._pools.values():
                pool.detach_from_parent(devnull)
                self._inherited.append(pool)
        finally:
            os.close(devnull)
        self._pools = {}
        self._lock = threading.Lock()


registry = PoolRegistry()
runtime.on_fork(registry.after_fork)
runtime.on_reset(registry.dispose)
