"""The documented import path of the JSON log formatter (``replicarouter.logs.JSONFormatter``).

It lives in ``replicarouter.observability.logs``; this module only re-exports it (see docs/architecture.md,
"Import paths of the public contract").
"""

from __future__ import annotations

from .observability.logs import JSONFormatter

__all__ = ["JSONFormatter"]
