"""The documented import path of the metrics view and collector (``replicarouter.metrics.metrics_view``).

They live in ``replicarouter.observability.metrics``; this module only re-exports them (see
docs/architecture.md, "Import paths of the public contract").
"""

from __future__ import annotations

from .observability.metrics import METRIC_NAMES, metrics_view, register

__all__ = ["METRIC_NAMES", "metrics_view", "register"]
