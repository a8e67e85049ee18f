"""What one process reports to the others through Redis (its pools and counters), and their sums. Pure.

A process's record is a small JSON object, one per cluster, rewritten by its monitor each round::

    {"v": 1, "identity": "host:pid:abcd1234", "published_at": 1700000000.0,
     "pools": {"replica1": {"size": 10, "checked_out": 2, "overflow": 0, "idle": 3}, ...},
     "counters": {"reads_routed": [[["default", "replica1"], 41], ...], ...}}

``pools`` holds the cluster's aliases; ``counters`` the series of ``stats.COUNTERS`` whose ``cluster``
label names this cluster (the ones without a cluster label go with the first cluster: ``split_counters``).

Bounded both ways. ``encode`` keeps at most ``MAX_SERIES`` counter series with labels of at most
``MAX_LABEL`` characters, and drops the counters altogether if the record would exceed ``MAX_BYTES`` (the
pools always fit). ``decode`` treats what it reads as untrusted, in the style of ``health.schema``: the
size first (``MAX_BYTES``), then JSON, then every field typed and bounded (gauges non-negative integers up
to ``MAX_GAUGE``, counters up to ``MAX_INT``, known counter names with their number of labels, pools only
of the cluster's aliases, ``published_at`` neither in the future beyond ``CLOCK_ALLOWANCE`` nor older
than a record lives in Redis). A record that fails raises ``BadRecord`` naming how (its ``kind`` is the
``redis_bad_values`` label); the caller ignores it. Counter names this release does not know are skipped,
not refused: another release runs beside this one during a rolling deploy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any, NamedTuple, TypeGuard

from replicarouter.health.schema import CLOCK_ALLOWANCE, MAX_INT, MAX_NAME

VERSION = 1
#: the pool figures a record carries (``registry.stats`` has more: counters since start, not summed here)
GAUGES = ("size", "checked_out", "overflow", "idle")
#: a record expires in Redis after this many rounds (a round: CHECK_INTERVAL, up to CHECK_TIMEOUT late)
TTL_ROUNDS = 3
#: at most this many processes are read per cluster (the index is read in its order, the rest ignored)
MAX_PROCESSES = 256
#: bounds on a record: bytes, counter series, characters of a label value, a pool gauge
MAX_BYTES = 64 * 1024
MAX_SERIES = 512
MAX_LABEL = 200
MAX_GAUGE = 1_000_000

Pools = dict[str, dict[str, int]]
Counters = dict[str, dict[tuple[str, ...], int]]


class BadRecord(ValueError):
    """A process record read from Redis that must not be used; ``kind`` says how it is wrong."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Record(NamedTuple):
    """One live process's report for one cluster."""

    identity: str
    published_at: float
    pools: Pools
    counters: Counters


def ttl(interval: float, timeout: float) -> float:
    """Return how long (seconds) a record lives in Redis unless its process publishes again."""
    return TTL_ROUNDS * (interval + timeout)


def max_age(interval: float, timeout: float) -> float:
    """Return the age past which a record cannot be a live process's (it expires in Redis first)."""
    return ttl(interval, timeout) + CLOCK_ALLOWANCE


def split_counters(
    counters: Mapping[str, Mapping[tuple[str, ...], int]],
    labels: Mapping[str, tuple[str, ...]],
    clusters: list[str],
) -> dict[str, Counters]:
    """Return ``counters`` by the cluster whose record carries them (cluster-less ones: the first)."""
    out: dict[str, Counters] = {name: {} for name in clusters}
    for name, series in counters.items():
        names = labels.get(name, ())
        where = names.index("cluster") if "cluster" in names else None
        for values, count in series.items():
            cluster = values[where] if where is not None and where < len(values) else clusters[0]
            out.get(cluster, out[clusters[0]]).setdefault(name, {})[values] = count
    return out


def encode(identity: str, published_at: float, pools: Pools, counters: Counters) -> str:
    """Return the JSON of a record, within ``MAX_SERIES`` and ``MAX_BYTES`` (see the module docstring)."""
    kept: dict[str, list[Any]] = {}
    budget = MAX_SERIES
    for name in sorted(counters):
        for values, count in sorted(counters[name].items()):
            if budget and all(len(v) <= MAX_LABEL for v in values):
                kept.setdefault(name, []).append([list(values), count])
                budget -= 1
    payload = {
        "v": VERSION,
        "identity": identity[:MAX_NAME],
        "published_at": published_at,
        "pools": {
            alias: {key: int(figures.get(key, 0)) for key in GAUGES} for alias, figures in pools.items()
        },
        "counters": kept,
    }
    raw = json.dumps(payload, separators=(",", ":"))
    if len(raw.encode()) > MAX_BYTES:
        payload["counters"] = {}
        raw = json.dumps(payload, separators=(",", ":"))
    return raw


def decode(
    raw: bytes | str,
    aliases: Collection[str],
    labels: Mapping[str, tuple[str, ...]],
    *,
    now: float,
    max_age: float,
) -> Record:
    """Return the record in ``raw``; raise ``BadRecord`` unless it is one a live process could publish."""
    check_size(len(raw))
    try:
        payload = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        raise BadRecord("procs_json", f"not JSON ({exc})") from exc
    return check(payload, aliases, labels, now=now, max_age=max_age)


def check_size(size: int) -> None:
    """Raise ``BadRecord`` (kind ``procs_size``) if a record of ``size`` bytes is too large."""
    if size > MAX_BYTES:
        raise BadRecord("procs_size", f"{size} bytes, more than the {MAX_BYTES} allowed")


def check(
    payload: Any,
    aliases: Collection[str],
    labels: Mapping[str, tuple[str, ...]],
    *,
    now: float,
    max_age: float,
) -> Record:
    """Return ``payload`` (parsed JSON) as a ``Record``; raise ``BadRecord`` naming the first wrong field."""
    if not isinstance(payload, dict):
        raise BadRecord("procs_schema", f"not an object but {type(payload).__name__}")
    if payload.get("v") != VERSION:
        raise BadRecord("procs_schema", f"version {payload.get('v')!r:.40} is not {VERSION}")
    identity = payload.get("identity")
    if not (isinstance(identity, str) and 0 < len(identity) <= MAX_NAME):
        raise BadRecord("procs_schema", f"identity {identity!r:.80}")
    value = payload.get("published_at")
    if not _number(value) or value < 0:
        raise BadRecord("procs_time", f"published_at {value!r:.80}")
    published_at = float(value)
    if published_at > now + CLOCK_ALLOWANCE:
        raise BadRecord("procs_time", f"published_at {published_at!r} is in the future (now {now:.3f})")
    if now - published_at > max_age:
        raise BadRecord("procs_time", f"published_at {published_at!r} is older than a record lives in Redis")
    return Record(
        identity, float(published_at), _pools(payload.get("pools"), aliases), _counters(payload, labels)
    )


def _pools(pools: Any, aliases: Collection[str]) -> Pools:
    if not isinstance(pools, dict):
        raise BadRecord("procs_schema", "pools is not an object")
    if not set(pools) <= set(aliases):
        raise BadRecord(
            "procs_schema", f"pools {sorted(map(str, pools))[:8]} are not the cluster's {sorted(aliases)}"
        )
    out: Pools = {}
    for alias, figures in pools.items():
        if not isinstance(figures, dict):
            raise BadRecord("procs_schema", f"pools.{alias} is not an object")
        for key in GAUGES:
            value = figures.get(key)
            if not _integer(value, MAX_GAUGE):
                raise BadRecord("procs_schema", f"pools.{alias}.{key} {value!r:.80}")
        out[alias] = {key: figures[key] for key in GAUGES}
    return out


def _counters(payload: dict[str, Any], labels: Mapping[str, tuple[str, ...]]) -> Counters:
    counters = payload.get("counters", {})
    if not isinstance(counters, dict):
        raise BadRecord("procs_schema", "counters is not an object")
    out: Counters = {}
    seen = 0
    for name, series in counters.items():
        if not isinstance(series, list):
            raise BadRecord("procs_schema", f"counters.{name:.80} is not a list")
        seen += len(series)
        if seen > MAX_SERIES:
            raise BadRecord("procs_schema", f"more than {MAX_SERIES} counter series")
        if name not in labels:
            continue  # a counter of another release: skipped, not refused
        for item in series:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)):
                raise BadRecord("procs_schema", f"counters.{name} entry {item!r:.80}")
            values, count = item
            if len(values) != len(labels[name]) or not all(
                isinstance(v, str) and len(v) <= MAX_LABEL for v in values
            ):
                raise BadRecord("procs_schema", f"counters.{name} labels {values!r:.80}")
            if not _integer(count, MAX_INT):
                raise BadRecord("procs_schema", f"counters.{name} count {count!r:.80}")
            out.setdefault(name, {})[tuple(values)] = count
    return out


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def sum_pools(records: Iterable[Record], aliases: Iterable[str]) -> Pools:
    """Return every alias's pool figures summed over ``records`` (zeros for an alias nobody reports)."""
    out: Pools = {alias: dict.fromkeys(GAUGES, 0) for alias in aliases}
    for record in records:
        for alias, figures in record.pools.items():
            if alias in out:
                for key in GAUGES:
                    out[alias][key] += figures[key]
    return out


def sum_counters(records: Iterable[Record]) -> Counters:
    """Return every counter series summed over ``records``."""
    out: Counters = {}
    for record in records:
        for name, series in record.counters.items():
            summed = out.setdefault(name, {})
            for values, count in series.items():
                summed[values] = summed.get(values, 0) + count
    return out


def unique(records: Iterable[Record]) -> list[Record]:
    """Return ``records`` with one per identity (the latest published), in identity order."""
    latest: dict[str, Record] = {}
    for record in records:
        if record.identity not in latest or record.published_at > latest[record.identity].published_at:
            latest[record.identity] = record
    return [latest[identity] for identity in sorted(latest)]
