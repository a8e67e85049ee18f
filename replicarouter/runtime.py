"""Process-level services: the one owner of what lives per process (fork handling, threads, shutdown, reset).

Design:

- **Fork.** Pools, the Redis client, the monitor and the watchdog belong to the process that made them. A
  forked child must forget them without closing the parent's sockets. Each service registers what to
  forget with ``on_fork``; the callbacks run once per child, from ``os.register_at_fork`` and, for forks
  that bypass Python's hooks (a C extension calling ``fork()``), from ``check_fork()`` on the services'
  entry points. ``generation()`` changes in every child, so a handle made before the fork (a Django
  wrapper holding a borrowed connection) can tell, without a system call, that it is the parent's.
- **Threads.** Background threads (monitor, watchdog, promotion) are started by ``start_thread``: named
  daemons, tracked, so ``threads()`` lists what still runs. Services that own a thread register a stop
  function with ``on_stop``; ``stop()`` runs them all (at interpreter exit, and for tests).
- **Reset.** ``reset()`` stops every service and runs every ``on_reset`` callback (close pools, forget
  snapshots and clients): what a test suite calls between clusters to start from nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable

logger = logging.getLogger("replicarouter.runtime")

_pid = os.getpid()
_generation = 0
_fork_callbacks: list[Callable[[], None]] = []
_stop_callbacks: list[Callable[[float], None]] = []
_reset_callbacks: list[Callable[[], None]] = []
_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_lock = threading.Lock()


def on_fork(callback: Callable[[], None]) -> Callable[[], None]:
    """Register ``callback`` to run once in each forked child; return it (usable as a decorator)."""
    _fork_callbacks.append(callback)
    return callback


def on_stop(callback: Callable[[float], None]) -> Callable[[float], None]:
    """Register ``callback(timeout)`` to stop a service's thread on ``stop()``; return it."""
    _stop_callbacks.append(callback)
    return callback


def on_reset(callback: Callable[[], None]) -> Callable[[], None]:
    """Register ``callback`` to forget a service's state in this process on ``reset()``; return it."""
    _reset_callbacks.append(callback)
    return callback


def generation() -> int:
    """Return this process's fork generation: it changes in every forked child."""
    return _generation


def check_fork() -> None:
    """Forget the parent's services if this process is a child whose fork bypassed Python's hooks."""
    if _pid != os.getpid():
        _after_fork()


def _after_fork() -> None:
    global _pid, _generation, _lock
    if _pid == os.getpid():
        return  # ran already for this child (the fork hook, then check_fork)
    _pid = os.getpid()
    _generation += 1
    _lock = threading.Lock()
    _threads.clear()
    _run(_fork_callbacks)


def _run(callbacks: list[Callable[[], None]]) -> None:
    for callback in list(callbacks):
        try:
            callback()
        except Exception:  # one service must not keep the others from resetting
            logger.exception("replicarouter: resetting %r failed", callback)


def start_thread(
    name: str, target: Callable[..., object], *args: object, **kwargs: object
) -> threading.Thread:
    """Start ``target`` in a named daemon thread owned by this process, and return the thread."""
    thread = threading.Thread(target=target, args=args, kwargs=kwargs, name=name, daemon=True)
    with _lock:
        _threads.add(thread)
    thread.start()
    return thread


def threads() -> list[threading.Thread]:
    """Return the background threads replicarouter started in this process that still run."""
    return sorted((t for t in list(_threads) if t.is_alive()), key=lambda t: t.name)


def stop(timeout: float = 5.0) -> None:
    """Stop every service's background thread (each joined with ``timeout``)."""
    for callback in reversed(_stop_callbacks):
        try:
            callback(timeout)
        except Exception:
            logger.exception("replicarouter: stopping %r failed", callback)


def reset(timeout: float = 5.0) -> None:
    """Stop every service and forget all per-process state, as a fresh process would start (for tests)."""
    stop(timeout)
    _run(_reset_callbacks)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
atexit.register(stop)
