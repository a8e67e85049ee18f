"""The health log lines: one per transition a round found (``rules.judge`` returns them as data).

The text, levels and ``extra`` fields are what operators' alerts and log pipelines match on
(docs/logging.md): logger ``replicarouter.health``, events ``node_state`` and ``writer_change``.
"""

from __future__ import annotations

import logging

from replicarouter.routing.topology import Cluster

from .rules import NodeChange, NodeHealth, Transition

logger = logging.getLogger("replicarouter.health")


def log_transition(cluster: Cluster, transition: Transition) -> None:
    """Log one transition of a round of ``cluster`` as a structured line."""
    if isinstance(transition, NodeChange):
        log_change(transition.old, transition.new, transition.reason)
        return
    level = logging.WARNING if transition.writer != cluster.primary else logging.INFO
    logger.log(
        level,
        "cluster %s: writes now go to %s (were %s): %s",
        cluster.name,
        transition.writer,
        transition.previous,
        transition.reason,
        extra={
            "replicarouter_event": "writer_change",
            "replicarouter_cluster": cluster.name,
            "replicarouter_writer": transition.writer,
            "replicarouter_previous_writer": transition.previous,
            "replicarouter_reason": transition.reason,
        },
    )


def log_change(old: NodeHealth, new: NodeHealth, reason: str) -> None:
    """Log one state change as a structured line."""
    level = logging.INFO if new.state == "up" and not new.promoted else logging.WARNING
    logger.log(
        level,
        "node %s: %s -> %s (%s) lag_bytes=%s lag_seconds=%s%s",
        new.alias,
        old.state,
        new.state,
        reason,
        new.lag_bytes,
        new.lag_seconds,
        (" PROMOTED" if new.promoted else "") + (" FENCED" if new.fenced else ""),
        extra={
            "replicarouter_event": "node_state",
            "replicarouter_node": new.alias,
            "replicarouter_old_state": old.state,
            "replicarouter_new_state": new.state,
            "replicarouter_reason": reason,
            "replicarouter_lag_bytes": new.lag_bytes,
            "replicarouter_lag_seconds": new.lag_seconds,
        },
    )
