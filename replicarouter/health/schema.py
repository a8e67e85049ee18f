"""What a health snapshot read from Redis must look like to be used. Pure: a payload in, a verdict out.

Redis is shared and its contents are untrusted: another release, a buggy tool or a person with
``redis-cli`` can write anything under a snapshot key. A value that fails here is not used at all (the
process probes for itself, as when nothing is published) and the next leader's publish overwrites it.

- **Size first.** ``size_limit`` bounds the raw value before anything parses it (``shared.fetch`` asks
  Redis for the length and only then for the value): ``BYTES_PER_NODE`` per node of the cluster, far
  above what a real snapshot needs (a node is about 600 bytes; every string in it is bounded below).
- **Every field typed.** ``check`` takes the parsed JSON and raises ``BadSnapshot`` naming the first field
  that is wrong: integers are integers (never booleans) and non-negative where they are positions, byte
  counts, counters or timelines; floats are finite; strings are bounded; ``state`` is one of ``STATES``,
  roles are known roles; the nodes are exactly the cluster's aliases, each under its own name.
- **Times are sane.** ``published_at`` and every node's timestamps are finite, not in the future beyond
  ``CLOCK_ALLOWANCE`` (clocks of a site's hosts differ a little), and ``published_at`` is no older than a
  snapshot can live in Redis (``max_age``): a value from 1e12 or -1 is not merely stale, it is wrong.
  (A node's ``started_at`` comes from the server's clock, which may run ahead: finite is enough.)

Unknown fields are ignored, as before: processes of another release read the same key during a rolling
deploy.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from .rules import STATES

#: a published snapshot expires in Redis after this many intervals unless its leader publishes again
SNAPSHOT_TTL_INTERVALS = 10
#: the raw snapshot may be this many bytes per node of the cluster, at most
BYTES_PER_NODE = 64 * 1024
#: how far in the future (seconds) a timestamp from another host may be
CLOCK_ALLOWANCE = 5.0
#: bounds on strings: names (aliases, hosts, ports, roles, the leader's identity) and free text
MAX_NAME = 1024
MAX_TEXT = 4096
#: the largest position, byte count or counter (a PostgreSQL LSN is 64 bits)
MAX_INT = 2**64 - 1
ROLES = ("primary", "replica", "unknown")
CONFIGURED_ROLES = ("primary", "replica")

# (field, kind): "name"/"text" strings, "int" non-negative integers, "number" finite non-negative,
# "float" finite, "time" a timestamp of the leader's clock (also not in the future), "bool"; "?" allows
# None (null)
_NODE_FIELDS: tuple[tuple[str, str], ...] = (
    ("alias", "name"),
    ("configured_role", "name"),
    ("host", "name"),
    ("port", "name"),
    ("role", "name"),
    ("state", "name"),
    ("lag_bytes", "int?"),
    ("lag_seconds", "float?"),
    ("checked_at", "time?"),
    ("error", "text?"),
    ("promoted", "bool"),
    ("failures", "int"),
    ("healthy_streak", "int"),
    ("position", "int?"),
    ("received", "int?"),
    ("timeline", "int?"),
    ("fenced", "bool"),
    ("probed_at", "time?"),
    # the server's clock, not the leader's: a server whose clock runs ahead may report a start "in the
    # future", which only makes monotonic reads more careful (it looks restarted after every read)
    ("started_at", "number?"),
    ("streak_at", "time?"),
    ("system_identifier", "name?"),
)
#: fields a node must have (the others have defaults: a snapshot of 0.1 lacks the newer ones)
_REQUIRED = ("alias", "configured_role")


class BadSnapshot(ValueError):
    """A snapshot read from Redis that must not be used; ``kind`` says how it is wrong (for counters)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def size_limit(node_count: int) -> int:
    """Return how many bytes a snapshot of a cluster with ``node_count`` nodes may have."""
    return BYTES_PER_NODE * max(1, node_count)


def max_age(interval: float) -> float:
    """Return the age past which a snapshot cannot be one a leader published (it expires in Redis first)."""
    return SNAPSHOT_TTL_INTERVALS * interval + CLOCK_ALLOWANCE


def check_size(size: int, node_count: int) -> None:
    """Raise ``BadSnapshot`` (kind ``snapshot_size``) if ``size`` bytes is too much for the cluster."""
    limit = size_limit(node_count)
    if size > limit:
        raise BadSnapshot("snapshot_size", f"{size} bytes, more than the {limit} allowed")


def check(payload: Any, aliases: Collection[str], *, now: float, interval: float) -> None:
    """Raise ``BadSnapshot`` unless ``payload`` (parsed JSON) is a usable snapshot of these ``aliases``."""
    if not isinstance(payload, dict):
        raise BadSnapshot("snapshot_schema", f"not an object but {type(payload).__name__}")
    published_at = _value(payload, "published_at", "time", "published_at")
    if published_at is None:
        raise BadSnapshot("snapshot_schema", "published_at missing")
    _check_time(published_at, "published_at", now)
    if now - published_at > max_age(interval):
        raise BadSnapshot(
            "snapshot_time", f"published_at {published_at!r} is older than a snapshot lives in Redis"
        )
    _value(payload, "leader", "name?", "leader")
    _value(payload, "interval", "number?", "interval")
    _value(payload, "active", "name?", "active")
    _value(payload, "timeline", "int?", "timeline")
    _value(payload, "reason", "text?", "reason")
    nodes = payload.get("nodes")
    if not isinstance(nodes, dict):
        raise BadSnapshot("snapshot_schema", "nodes is not an object")
    if set(nodes) != set(aliases):
        raise BadSnapshot(
            "snapshot_schema", f"nodes {sorted(map(str, nodes))[:8]} are not the cluster's {sorted(aliases)}"
        )
    for alias, node in nodes.items():
        _check_node(alias, node, now)


def _check_node(alias: str, node: Any, now: float) -> None:
    where = f"nodes.{alias}"
    if not isinstance(node, dict):
        raise BadSnapshot("snapshot_schema", f"{where} is not an object")
    for name in _REQUIRED:
        if name not in node:
            raise BadSnapshot("snapshot_schema", f"{where}.{name} missing")
    for name, kind in _NODE_FIELDS:
        value = _value(node, name, kind, f"{where}.{name}")
        if kind == "time?" and value is not None:
            _check_time(value, f"{where}.{name}", now)
    if node["alias"] != alias:
        raise BadSnapshot("snapshot_schema", f"{where}.alias is {node['alias']!r}")
    _member(node, "configured_role", CONFIGURED_ROLES, where)
    _member(node, "role", ROLES, where)
    _member(node, "state", STATES, where)


def _member(node: Mapping[str, Any], name: str, allowed: tuple[str, ...], where: str) -> None:
    if name in node and node[name] not in allowed:
        raise BadSnapshot("snapshot_schema", f"{where}.{name} {node[name]!r} is not one of {allowed}")


def _check_time(value: float, where: str, now: float) -> None:
    if value > now + CLOCK_ALLOWANCE:
        raise BadSnapshot("snapshot_time", f"{where} {value!r} is in the future (now {now:.3f})")


def _value(data: Mapping[str, Any], name: str, kind: str, where: str) -> Any:
    """Return ``data[name]`` (None if absent) after checking it is of ``kind``; raise ``BadSnapshot``."""
    value = data.get(name)
    base = kind.rstrip("?")
    if name not in data or (value is None and kind.endswith("?")):
        return None
    if not _is(value, base):
        raise BadSnapshot("snapshot_time" if base == "time" else "snapshot_schema", f"{where} {value!r:.80}")
    return value


def _is(value: Any, base: str) -> bool:
    if base in ("name", "text"):
        return isinstance(value, str) and len(value) <= (MAX_NAME if base == "name" else MAX_TEXT)
    if base == "bool":
        return isinstance(value, bool)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == "int":
        return number and isinstance(value, int) and 0 <= value <= MAX_INT
    if base in ("number", "time", "float"):  # non-negative but "float" (0 is the epoch: never the future)
        return number and math.isfinite(value) and (base == "float" or value >= 0)
    raise AssertionError(f"unknown kind {base!r}")
