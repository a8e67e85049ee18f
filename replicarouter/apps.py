"""Django app configuration: registers system checks; starts no thread and touches no database."""

from __future__ import annotations

from django.apps import AppConfig


class ReplicaRouterConfig(AppConfig):
    name = "replicarouter"
    verbose_name = "replicarouter"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)
