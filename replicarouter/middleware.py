"""The documented import path of the middleware: ``replicarouter.middleware.ReplicaRouterMiddleware``.

The middleware lives in ``replicarouter.routing.middleware``; this module only re-exports it (see
docs/architecture.md, "Import paths of the public contract").
"""

from __future__ import annotations

from .routing.middleware import ReplicaRouterMiddleware

__all__ = ["ReplicaRouterMiddleware"]
