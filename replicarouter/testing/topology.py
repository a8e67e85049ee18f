"""Who is who in a test cluster: its nodes by role, its Redis, and the Django settings that reach them.

``Topology`` holds no I/O: it reads the nodes a backend started (``nodes``, ``redis_host``,
``redis_port``, set by ``ClusterBase``) and derives the primary, the replicas and the settings from their
roles, so that after a promotion everything follows the new primary.
"""

from __future__ import annotations

from typing import Any

from .node import DEFAULT_ENGINE, ClusterError, Node


class Topology:
    """The nodes of a cluster and their roles, its Redis address, and settings derived from them."""

    nodes: list[Node]
    redis_host: str
    redis_port: int

    @property
    def primary(self) -> Node:
        """Return the node that currently acts as primary (changes after ``promote``)."""
        for node in self.nodes:
            if node.role == "primary":
                return node
        raise ClusterError("cluster has no primary")

    @property
    def replicas(self) -> list[Node]:
        """Return the nodes that stream from the current primary."""
        return [node for node in self.nodes if node.role == "replica"]

    def node(self, name: str | Node) -> Node:
        """Return the node called ``name`` (a Node is returned as is, after checking it belongs here)."""
        for node in self.nodes:
            if node is name or node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise ClusterError(f"no node {name!r} in this cluster (nodes: {known})")

    @property
    def redis_url(self) -> str:
        """Return the ``redis://`` URL of the cluster's Redis (database 0)."""
        return f"redis://{self.redis_host}:{self.redis_port}/0"

    # -- Django helpers ---------------------------------------------------------------------------

    def databases(self, engine: str = DEFAULT_ENGINE, primary_alias: str = "default") -> dict[str, Any]:
        """Return Django ``DATABASES``: the primary as ``primary_alias``, replicas under their node names.

        Replicas get ``TEST = {"MIRROR": primary_alias, "MIRROR_CONNECTION": False}``: Django's test runner
        does not create test databases on read-only servers, and the replicas keep reading from their own
        server, which receives the test database by replication.
        """
        databases: dict[str, Any] = {primary_alias: self.primary.settings(engine)}
        for replica in self.replicas:
            test = {"MIRROR": primary_alias, "MIRROR_CONNECTION": False}
            databases[replica.name] = replica.settings(engine, TEST=test)
        return databases

    def replicarouter_settings(self, primary_alias: str = "default", **extra: Any) -> dict[str, Any]:
        """Return a ``REPLICAROUTER`` settings dict for this cluster (extra keys are merged in)."""
        settings: dict[str, Any] = {
            "CLUSTERS": {
                "default": {
                    "PRIMARY": primary_alias,
                    "REPLICAS": [replica.name for replica in self.replicas],
                }
            },
            "REDIS_URL": self.redis_url,
        }
        settings.update(extra)
        return settings

    def describe(self) -> dict[str, Any]:
        """Return the cluster's connection settings as JSON-ready data (what the CLI prints)."""
        return {
            "nodes": [
                {
                    "name": n.name,
                    "role": n.role,
                    "host": n.host,
                    "port": n.port,
                    "dbname": n.dbname,
                    "user": n.user,
                    "dsn": n.dsn,
                    "url": n.url,
                }
                for n in self.nodes
            ],
            "redis_url": self.redis_url,
            "DATABASES": self.databases(),
            "REPLICAROUTER": self.replicarouter_settings(),
        }
