"""Routing state for task workers: each Celery task runs in a fresh routing context.

Connected from ``AppConfig.ready()`` when Celery is installed (signals only: nothing starts). A worker
thread runs many tasks one after another; without this a write in one task would keep the next tasks'
reads on the primary. Other job runners: wrap each job in ``replicarouter.request_context()``.
"""

from __future__ import annotations

from typing import Any

from . import context

_tokens: dict[str, context.Tokens] = {}


def task_started(task_id: str | None = None, **kwargs: Any) -> None:
    """Open a routing context for a task (Celery ``task_prerun``)."""
    if task_id is not None:
        _tokens[task_id] = context.begin()


def task_finished(task_id: str | None = None, **kwargs: Any) -> None:
    """Close the task's routing context (Celery ``task_postrun``)."""
    tokens = _tokens.pop(task_id, None) if task_id is not None else None
    if tokens is not None:
        context.end(tokens)


def connect_celery() -> bool:
    """Connect to Celery's task signals if Celery is installed; return whether it is."""
    try:
        from celery import signals
    except ImportError:
        return False
    signals.task_prerun.connect(task_started, weak=False, dispatch_uid="replicarouter.task_started")
    signals.task_postrun.connect(task_finished, weak=False, dispatch_uid="replicarouter.task_finished")
    return True
