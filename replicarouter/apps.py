"""Django app configuration: registers checks and task signals; starts no thread, opens no connection."""

from __future__ import annotations

from django.apps import AppConfig


class ReplicaRouterConfig(AppConfig):
    name = "replicarouter"
    verbose_name = "replicarouter"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)
        from .routing.tasks import connect_celery

        connect_celery()
