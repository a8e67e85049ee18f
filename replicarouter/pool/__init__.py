"""Connection pools: one SQLAlchemy ``QueuePool`` per database alias per process.

Design:

- **Lifecycle.** Django's wrapper borrows a raw psycopg2 connection for a unit of work and gives it
  back after it (``RELEASE = "transaction"``, see ``backends/postgresql/units.py``), or when Django
  closes it (``"request"``), so a thread holds a server connection only while it works. A returned
  connection is rolled back if a transaction is open and, when the borrower may have changed session
  state (``SET``, temporary tables, prepared statements, advisory locks, ``LISTEN``…), reset with
  ``DISCARD ALL``; a connection that is broken or fails its reset is invalidated (closed), never
  returned. ``RESET = "always"`` discards on every return, ``"rollback"`` never does; driver session
  characteristics changed with ``set_session()`` are put back whatever the mode. The pool entry's
  ``info`` remembers what a Django wrapper prepared the connection for (``PREPARED_KEY``), forgotten
  when a reset clears the session. ``reset_plan`` decides which of these a returned connection needs
  (pure, unit-tested); ``ConnectionPool._reset`` carries it out.
- **Fairness.** Beyond ``SIZE + MAX_OVERFLOW`` lent, borrowers wait in a first-come, first-served
  queue (``gate.Gate``), so threads that give a connection back and ask again at once cannot starve
  the others; connections that would be idle beyond ``SIZE`` are closed when they come back.
- **Liveness.** On checkout, the idle connection's socket is polled without waiting: a server that
  terminated the backend (``pg_terminate_backend``, restart, idle timeout) has left it readable, and such
  a connection is replaced before Django sees it (about 2 µs; ``PRE_PING`` adds a real ``SELECT 1``).
- **Fork safety.** Pools remember their pid. In a forked child the registry starts empty, and every
  inherited connection's socket descriptor is pointed at ``/dev/null`` so that nothing the child does
  (including garbage collection at exit, when libpq sends its Terminate message) can reach the parent's
  sessions; the parent's connections keep working.
- **Stats** per pool (size, checked out, overflow, idle, connects, waits, timeouts, invalidations) feed
  ``replicarouter.status()`` and ``replicastatus``.
"""

from __future__ import annotations

from .options import POOL_DEFAULTS, RESET_MODES, PoolOptions, pool_problems, pool_settings_problems
from .pool import PREPARED_KEY, SESSION_KEY, Borrowed, ConnectionPool, PoolCounters
from .registry import PoolRegistry, registry
from .reset import ResetPlan, reset_plan

__all__ = [
    "POOL_DEFAULTS",
    "PREPARED_KEY",
    "RESET_MODES",
    "SESSION_KEY",
    "Borrowed",
    "ConnectionPool",
    "PoolCounters",
    "PoolOptions",
    "PoolRegistry",
    "ResetPlan",
    "pool_problems",
    "pool_settings_problems",
    "registry",
    "reset_plan",
]
