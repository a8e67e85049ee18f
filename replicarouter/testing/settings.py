"""Turn a test cluster into Django settings, and pick a cluster backend for this machine."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import warnings
from typing import Any, Literal

from .base import ClusterBase
from .binaries import BinariesNotFound, find_binaries
from .node import DEFAULT_ENGINE, ClusterError

logger = logging.getLogger("replicarouter.testing")

Backend = Literal["auto", "local", "docker"]


def django_settings(
    cluster: ClusterBase,
    *,
    engine: str = DEFAULT_ENGINE,
    primary_alias: str = "default",
    **replicarouter: Any,
) -> dict[str, Any]:
    """Return ``{"DATABASES": ..., "REPLICAROUTER": ...}`` for a running cluster.

    The primary becomes ``primary_alias``; each replica is an alias named after its node (``replica1``…)
    with ``TEST["MIRROR"]`` set to the primary. Keyword arguments are merged into ``REPLICAROUTER``.
    """
    return {
        "DATABASES": cluster.databases(engine=engine, primary_alias=primary_alias),
        "REPLICAROUTER": cluster.replicarouter_settings(primary_alias=primary_alias, **replicarouter),
    }


def configure_django(cluster: ClusterBase, **kwargs: Any) -> dict[str, Any]:
    """Point the configured Django project at ``cluster``: replace DATABASES and REPLICAROUTER in place.

    For test suites (for instance in pytest-django's ``django_db_modify_db_settings`` fixture): it closes
    Django's open connections and makes ``django.db.connections`` read the new aliases. Returns the
    settings it applied (see ``django_settings`` for the keyword arguments).
    """
    from django.conf import settings
    from django.db import connections

    values = django_settings(cluster, **kwargs)
    connections.close_all()
    settings.DATABASES = values["DATABASES"]
    settings.REPLICAROUTER = values["REPLICAROUTER"]
    reload_databases()
    return values


def reload_databases() -> None:
    """Make ``django.db.connections`` read ``settings.DATABASES`` again (after it was replaced)."""
    from django.db import connections

    # the wrappers made from the old DATABASES go (``del connections[alias]`` is Django's own way, as its
    # test runner does when it tears databases down); ConnectionHandler.settings is a cached_property, set
    # again from configure_settings(None), which reads settings.DATABASES
    for alias in list(connections.settings):
        with contextlib.suppress(AttributeError):  # never used in this thread
            del connections[alias]
    connections.settings = connections.configure_settings(None)


def docker_available(timeout: float = 3.0) -> bool:
    """Return whether a Docker engine answers (not merely whether the docker CLI is installed)."""
    try:
        import docker
    except ImportError:
        return False
    with warnings.catch_warnings():
        # the docker SDK leaks its socket when no engine answers; collect it here, quietly, rather than
        # let its ResourceWarning surface in whatever code the garbage collector next interrupts
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=int(timeout))
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()


def cluster(backend: Backend | None = None, **kwargs: Any) -> ClusterBase:
    """Return a cluster (not yet started) for this machine: local binaries if present, else Docker.

    ``backend`` (or the ``REPLICAROUTER_CLUSTER_BACKEND`` environment variable) forces ``local`` or
    ``docker``; keyword arguments go to the cluster class.
    """
    choice = backend or os.environ.get("REPLICAROUTER_CLUSTER_BACKEND") or "auto"
    if choice not in ("auto", "local", "docker"):
        raise ClusterError(f"unknown cluster backend {choice!r}: use auto, local or docker")
    if choice != "docker":
        try:
            binaries = find_binaries()
        except BinariesNotFound as exc:
            if choice == "local" or not docker_available():
                raise
            logger.info("PostgreSQL binaries missing (%s): using Docker", exc)
        else:
            from .local import LocalCluster

            return LocalCluster(binaries=binaries, **kwargs)
    elif not docker_available():
        raise ClusterError("REPLICAROUTER_CLUSTER_BACKEND=docker but no Docker engine answers")
    from .docker import DockerCluster

    return DockerCluster(**kwargs)


def environment(cluster: ClusterBase) -> dict[str, str]:
    """Return environment variables describing ``cluster`` (what ``up`` prints as ``export`` lines).

    ``REPLICAROUTER_PRIMARY_URL``, ``REPLICAROUTER_REPLICA_URLS`` (comma separated) and
    ``REPLICAROUTER_REDIS_URL`` for settings modules; ``PGHOST``/``PGPORT``/``PGUSER``/``PGDATABASE`` so
    that ``psql`` reaches the primary.
    """
    primary = cluster.primary
    return {
        "REPLICAROUTER_PRIMARY_URL": primary.url,
        "REPLICAROUTER_REPLICA_URLS": ",".join(replica.url for replica in cluster.replicas),
        "REPLICAROUTER_REDIS_URL": cluster.redis_url,
        "PGHOST": primary.host,
        "PGPORT": str(primary.port),
        "PGUSER": primary.user,
        "PGDATABASE": primary.dbname,
    }
