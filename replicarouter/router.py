"""The documented import path of the router: ``DATABASE_ROUTERS = ["replicarouter.router.ReplicaRouter"]``.

The router lives in ``replicarouter.routing.router``; this module only re-exports it (see
docs/architecture.md, "Import paths of the public contract").
"""

from __future__ import annotations

from .routing.router import ReplicaRouter

__all__ = ["ReplicaRouter"]
