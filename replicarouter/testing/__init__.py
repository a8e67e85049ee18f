"""A real replicated PostgreSQL cluster plus Redis for tests: ours and our users'.

``LocalCluster`` runs local server processes (initdb + pg_basebackup, found on this machine);
``DockerCluster`` offers the same API over containers where Docker runs but PostgreSQL is not installed;
``cluster()`` picks one. The pytest plugin (``replicarouter.testing.plugin``) provides fixtures, and
``python -m replicarouter.testing`` a command line. See docs/testing.md.
"""

from .base import ClusterBase
from .binaries import Binaries, BinariesNotFound, find_binaries
from .local import LocalCluster
from .node import DEFAULT_ENGINE, ClusterError, Node
from .settings import cluster, configure_django, django_settings

__all__ = [
    "DEFAULT_ENGINE",
    "Binaries",
    "BinariesNotFound",
    "ClusterBase",
    "ClusterError",
    "LocalCluster",
    "Node",
    "cluster",
    "configure_django",
    "django_settings",
    "find_binaries",
]
