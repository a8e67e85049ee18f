"""Clusters of aliases, built from ``REPLICAROUTER["CLUSTERS"]`` and ``DATABASES``. Pure: no Django.

``build(databases, clusters_setting)`` returns a ``Topology`` and the problems it found; the system checks
report those problems, and the router refuses to run with them (ConfigurationError with the same text).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from replicarouter.settings_schema import Problem

__all__ = [
    "ENGINE",
    "Cluster",
    "Problem",
    "Topology",
    "build",
    "fingerprint",
    "is_local_host",
    "smooth_rotation",
]

ENGINE = "replicarouter.backends.postgresql"


@dataclass(frozen=True)
class Cluster:
    """A primary alias, its replica aliases with weights, and the app labels routed to it."""

    name: str
    primary: str
    replicas: tuple[str, ...] = ()
    weights: tuple[int, ...] = ()
    apps: tuple[str, ...] = ()
    #: the replicas in smooth weighted round-robin order (each appears ``weight`` times per cycle)
    rotation: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topology:
    """Every cluster, with the lookups the router needs on its hot path."""

    clusters: tuple[Cluster, ...]
    default: Cluster | None
    by_app: Mapping[str, Cluster] = field(default_factory=dict)
    by_alias: Mapping[str, Cluster] = field(default_factory=dict)

    def cluster_for_app(self, app_label: str) -> Cluster | None:
        """Return the cluster that serves ``app_label`` (the default cluster unless mapped)."""
        return self.by_app.get(app_label, self.default)

    def role(self, alias: str) -> str | None:
        """Return ``"primary"``, ``"replica"`` or None (an alias no cluster uses)."""
        cluster = self.by_alias.get(alias)
        if cluster is None:
            return None
        return "primary" if cluster.primary == alias else "replica"


def smooth_rotation(replicas: tuple[str, ...], weights: tuple[int, ...]) -> tuple[str, ...]:
    """Return one cycle of smooth weighted round robin (nginx's): weights respected, picks interleaved."""
    total = sum(weights)
    current = [0] * len(replicas)
    order: list[str] = []
    for _ in range(total):
        for i, weight in enumerate(weights):
            current[i] += weight
        best = max(range(len(replicas)), key=lambda i: current[i])
        current[best] -= total
        order.append(replicas[best])
    return tuple(order)


def is_local_host(host: str) -> bool:
    """Return whether a DATABASES ``HOST`` names this machine: empty, a unix socket path, or loopback."""
    host = host.strip().lower()
    if (
        not host
        or host.startswith("/")
        or host.startswith("@")
        or host in ("localhost", "localhost.localdomain")
    ):
        return True
    if host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def fingerprint(cluster: Cluster, databases: Mapping[str, Any], hostname: str) -> str:
    """Return ``cluster``'s identity in Redis keys: a hash of its nodes' ``host:port/dbname``.

    Alias names are left out (two sites may use the same ones) and the order of the nodes does not
    matter. ``hostname`` (this machine's) is part of it when a node is on this machine: two machines'
    ``127.0.0.1:5432`` are two databases.
    """
    nodes = []
    local = False
    for alias in (cluster.primary, *cluster.replicas):
        entry = databases.get(alias)
        entry = entry if isinstance(entry, Mapping) else {}
        host = str(entry.get("HOST") or "")
        local = local or any(is_local_host(part) for part in host.split(","))
        nodes.append(f"{host}:{entry.get('PORT') or ''}/{entry.get('NAME') or ''}")
    material = "\n".join(sorted(nodes))
    if local:
        material += "\n@" + hostname
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _is_pooled(databases: Mapping[str, Any], alias: str) -> bool:
    entry = databases.get(alias)
    return isinstance(entry, Mapping) and entry.get("ENGINE") == ENGINE


def build(databases: Mapping[str, Any], clusters_setting: Any) -> tuple[Topology, list[Problem]]:
    """Return the topology described by the settings, and every problem found in them."""
    problems: list[Problem] = []
    if clusters_setting is None:
        replicas = tuple(a for a in databases if a != "default" and _is_pooled(databases, a))
        implicit = {"PRIMARY": "default", "REPLICAS": list(replicas)}
        clusters_setting = {"default": implicit} if "default" in databases else {}
    if not isinstance(clusters_setting, Mapping):
        problems.append(
            Problem(
                "replicarouter.E010",
                f"REPLICAROUTER['CLUSTERS'] must be a dict of cluster name -> {{'PRIMARY': alias, "
                f"'REPLICAS': [...]}}, not {type(clusters_setting).__name__}.",
                "See docs/configuration.md#clusters.",
            )
        )
        clusters_setting = {}
    clusters: list[Cluster] = []
    seen_role: dict[str, str] = {}
    app_owner: dict[str, str] = {}
    for name, spec in clusters_setting.items():
        cluster = _build_cluster(name, spec, databases, problems)
        if cluster is None:
            continue
        for alias, role in [(cluster.primary, "primary"), *((r, "replica") for r in cluster.replicas)]:
            where = f"{role} of cluster {name!r}"
            if alias in seen_role:
                problems.append(
                    Problem(
                        "replicarouter.E012",
                        f"Alias {alias!r} is both {seen_role[alias]} and {where}.",
                        "Give each alias one role in one cluster; define a second alias (same server) if "
                        "you really need it twice.",
                    )
                )
            else:
                seen_role[alias] = where
        for app in cluster.apps:
            if app in app_owner:
                problems.append(
                    Problem(
                        "replicarouter.E016",
                        f"App label {app!r} is routed to clusters {app_owner[app]!r} and {name!r}.",
                        "List each app label in the APPS of one cluster only.",
                    )
                )
            app_owner.setdefault(app, name)
        clusters.append(cluster)
    default = next((c for c in clusters if c.name == "default"), clusters[0] if clusters else None)
    topology = Topology(
        clusters=tuple(clusters),
        default=default,
        by_app={app: c for c in clusters for app in c.apps},
        by_alias={alias: c for c in clusters for alias in (c.primary, *c.replicas)},
    )
    return topology, problems


def _build_cluster(
    name: str, spec: Any, databases: Mapping[str, Any], problems: list[Problem]
) -> Cluster | None:
    where = f"REPLICAROUTER['CLUSTERS'][{name!r}]"
    if not isinstance(spec, Mapping) or not isinstance(spec.get("PRIMARY"), str):
        problems.append(
            Problem(
                "replicarouter.E019",
                f"{where} must be a dict with a 'PRIMARY' alias (and 'REPLICAS').",
                "For example {'PRIMARY': 'default', 'REPLICAS': ['replica1', 'replica2']}.",
            )
        )
        return None
    unknown_keys = sorted(set(spec) - {"PRIMARY", "REPLICAS", "APPS"})
    if unknown_keys:
        problems.append(
            Problem(
                "replicarouter.E020",
                f"{where} has unknown keys {unknown_keys}.",
                "Valid keys: PRIMARY, REPLICAS, APPS.",
            )
        )
    primary = spec["PRIMARY"]
    raw_replicas = spec.get("REPLICAS", [])
    if isinstance(raw_replicas, Mapping):
        pairs = list(raw_replicas.items())
    elif isinstance(raw_replicas, list | tuple):
        pairs = [(alias, 1) for alias in raw_replicas]
    else:
        problems.append(
            Problem(
                "replicarouter.E021",
                f"{where}['REPLICAS'] must be a list of aliases or a dict alias -> weight.",
                "For example ['replica1', 'replica2'] or {'replica1': 2, 'replica2': 1}.",
            )
        )
        pairs = []
    valid: list[tuple[str, int]] = []
    for alias, weight in pairs:
        if alias == primary:
            problems.append(
                Problem(
                    "replicarouter.E015",
                    f"{where} lists its primary {alias!r} as one of its replicas.",
                    "Remove it from REPLICAS: reads fall back to the primary when no replica is usable.",
                )
            )
            continue
        if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
            problems.append(
                Problem(
                    "replicarouter.E014",
                    f"{where}['REPLICAS'][{alias!r}] has weight {weight!r}: weights are positive integers.",
                    "Use 1 for an ordinary replica, 2 for one that should take twice the reads; remove a "
                    "replica instead of giving it weight 0.",
                )
            )
            continue
        valid.append((alias, weight))
    for alias in [primary, *(a for a, _ in valid)]:
        if alias not in databases:
            problems.append(
                Problem(
                    "replicarouter.E011",
                    f"{where} names alias {alias!r}, which is not in DATABASES.",
                    f"Add DATABASES[{alias!r}] or fix the name (known: {', '.join(databases) or 'none'}).",
                )
            )
        elif not _is_pooled(databases, alias):
            problems.append(
                Problem(
                    "replicarouter.E013",
                    f"DATABASES[{alias!r}] is in cluster {name!r} but its ENGINE is "
                    f"{databases[alias].get('ENGINE')!r}.",
                    f"Use ENGINE = {ENGINE!r}: the router relies on it to detect writes and to pool.",
                )
            )
    apps = spec.get("APPS", ())
    if not isinstance(apps, list | tuple) or not all(isinstance(a, str) for a in apps):
        problems.append(
            Problem(
                "replicarouter.E022",
                f"{where}['APPS'] must be a list of app labels.",
                "For example ['billing'].",
            )
        )
        apps = ()
    replicas = tuple(a for a, _ in valid)
    weights = tuple(w for _, w in valid)
    return Cluster(name, primary, replicas, weights, tuple(apps), smooth_rotation(replicas, weights))
