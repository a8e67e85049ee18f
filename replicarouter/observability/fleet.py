"""One view of a site's processes: each publishes its pools and counters to Redis; readers sum them.

Design:

- **Published by the monitor, once per round.** ``publish`` runs at the end of the health monitor's
  round (its thread, its client: ``redis_client.client()`` with ``CHECK_TIMEOUT``), never on the request
  path. Per cluster, one pipelined round trip: the process's record (``fleet_records.encode``) under
  ``key("procs", cluster, identity)`` with a TTL of ``fleet_records.TTL_ROUNDS`` rounds, its identity in
  the cluster's index (a sorted set ``key("procs", cluster)``, scored by when the record expires), and
  the index pruned of records expired long ago. A process that dies stops renewing: its record expires
  and it drops out within the TTL. A monitor that stops (``withdraw``) removes its record at once.
  Errors are swallowed: with Redis down nothing is published and readers fall back to their own figures.
- **Read in one script, bounded.** ``read`` asks Redis (one ``EVAL``) for the records of at most
  ``MAX_PROCESSES`` index members whose records have not expired; a record longer than ``MAX_BYTES`` is
  not sent, only its length. Each one is validated (``fleet_records.decode``); an invalid one is
  ignored, counted (``redis_bad_values{kind="procs_*"}``) and logged once per process and kind.
- **This process counts once.** ``view`` sums the records read; this process's own figures are added
  when its record is not among them (its monitor has not published yet) and it takes part (runs a
  monitor or has pools of the cluster). A reader that does neither (``manage.py replicastatus``) only
  reads. Without Redis, or when reading fails: this process's own figures, as one process.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, NamedTuple

from replicarouter import pool as pools
from replicarouter import redis_client as shared_redis
from replicarouter import runtime
from replicarouter.conf import topology
from replicarouter.health.schema import CLOCK_ALLOWANCE
from replicarouter.routing.topology import Cluster

from . import fleet_records as records
from . import stats
from .fleet_records import Record

logger = logging.getLogger("replicarouter.fleet")

#: the index's live members' records (at most ARGV[1]; expiring after ARGV[4] ms); a record longer than
#: ARGV[3] bytes as its length, one that is not a string as -1; the index not a sorted set: -1
_READ = """
local kind = redis.call('type', KEYS[1])['ok']
if kind == 'none' then
    return {}
end
if kind ~= 'zset' then
    return -1
end
local members = redis.call('zrangebyscore', KEYS[1], ARGV[4], '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, member in ipairs(members) do
    local key = ARGV[2] .. member
    local found = redis.call('type', key)['ok']
    if found == 'string' then
        local size = redis.call('strlen', key)
        if size > tonumber(ARGV[3]) then
            out[#out + 1] = size
        else
            out[#out + 1] = redis.call('get', key)
        end
    elseif found ~= 'none' then
        out[#out + 1] = -1
    end
end
return out
"""
#: kinds of bad records this process already logged (logged once per kind, counted always)
_warned: set[str] = set()
runtime.on_reset(_warned.clear)


class View(NamedTuple):
    """A cluster's pools (and counters) summed over the live processes that reported."""

    pools: records.Pools
    counters: records.Counters
    processes: int
    source: str  # "redis" or "this process"


def index_key(cluster: str) -> str:
    """Return the Redis key of ``cluster``'s index of reporting processes."""
    return shared_redis.key("procs", cluster)


def record_key(cluster: str, identity: str) -> str:
    """Return the Redis key of one process's record for ``cluster``."""
    return shared_redis.key("procs", cluster, identity)


def own_pools(cluster: Cluster) -> records.Pools:
    """Return this process's pool figures for ``cluster``'s aliases."""
    out: records.Pools = {}
    for alias in (cluster.primary, *cluster.replicas):
        figures = pools.registry.stats(alias)
        out[alias] = {key: int(figures.get(key, 0)) for key in records.GAUGES}
    return out


def _own_counters(clusters: list[str]) -> dict[str, records.Counters]:
    labels = {name: spec[1] for name, spec in stats.COUNTERS.items()}
    return records.split_counters({name: stats.values(name) for name in stats.COUNTERS}, labels, clusters)


def publish(client: Any, identity: str, interval: float, timeout: float) -> bool:
    """Publish this process's record for every cluster; return whether Redis took them (errors swallowed)."""
    clusters = topology().clusters
    if not clusters:
        return False
    ttl_ms = max(1, int(records.ttl(interval, timeout) * 1000))
    now = time.time()
    counters = _own_counters([c.name for c in clusters])
    try:
        pipe = client.pipeline(transaction=False)
        for cluster in clusters:
            raw = records.encode(identity, now, own_pools(cluster), counters[cluster.name])
            index = index_key(cluster.name)
            pipe.set(record_key(cluster.name, identity), raw, px=ttl_ms)
            pipe.zadd(index, {identity: int(now * 1000) + ttl_ms})
            pipe.zremrangebyscore(index, "-inf", int((now - CLOCK_ALLOWANCE) * 1000))
            pipe.pexpire(index, ttl_ms)  # also gives a key of the wrong type an end
        pipe.execute()
    except Exception as exc:  # Redis down or a foreign value: nothing published; readers use their own
        logger.debug("pool and counter report not published: %s", exc)
        return False
    return True


def withdraw(client: Any, identity: str) -> None:
    """Remove this process's records now (a monitor that stops; errors are ignored)."""
    with contextlib.suppress(Exception):
        pipe = client.pipeline(transaction=False)
        for cluster in topology().clusters:
            pipe.delete(record_key(cluster.name, identity))
            pipe.zrem(index_key(cluster.name), identity)
        pipe.execute()


def read(client: Any, cluster: Cluster, interval: float, timeout: float) -> list[Record]:
    """Return the valid records of ``cluster``'s live processes (Redis errors propagate)."""
    now = time.time()
    index = index_key(cluster.name)
    prefix = record_key(cluster.name, "")
    answer = client.eval(
        _READ, 1, index, records.MAX_PROCESSES, prefix, records.MAX_BYTES, int((now - CLOCK_ALLOWANCE) * 1000)
    )
    if isinstance(answer, int):
        _bad("procs_schema", index, records.BadRecord("procs_schema", "the index is not a sorted set"))
        return []
    aliases = (cluster.primary, *cluster.replicas)
    labels = {name: spec[1] for name, spec in stats.COUNTERS.items()}
    max_age = records.max_age(interval, timeout)
    found = []
    for raw in answer:
        try:
            if isinstance(raw, int):
                if raw < 0:
                    raise records.BadRecord("procs_schema", "a record is not a string")
                records.check_size(raw)
            found.append(records.decode(raw, aliases, labels, now=now, max_age=max_age))
        except records.BadRecord as exc:
            _bad(exc.kind, index, exc)
    return records.unique(found)


def _bad(kind: str, key: str, exc: Exception) -> None:
    stats.incr("redis_bad_values", kind)
    if kind in _warned:
        return
    _warned.add(kind)
    logger.warning(
        "ignoring an invalid process record under %s (%s: %s): pools and counters are summed without it "
        "(further ones of this kind are only counted: redis_bad_values)",
        key, kind, exc,
        extra={"replicarouter_event": "bad_process_record", "replicarouter_kind": kind},
    )  # fmt: skip


def view(cluster: Cluster, client: Any, *, identity: str | None, interval: float, timeout: float) -> View:
    """Return ``cluster``'s pools and counters summed over its live processes (see the module docstring).

    ``identity``: this process's monitor's, if one runs here (None otherwise).
    """
    aliases = (cluster.primary, *cluster.replicas)
    own = Record(
        identity or "this process",
        time.time(),
        own_pools(cluster),
        _own_counters([c.name for c in topology().clusters]).get(cluster.name, {}),
    )
    if client is None:
        return View(own.pools, own.counters, 1, "this process")
    try:
        found = read(client, cluster, interval, timeout)
    except Exception as exc:  # Redis down: this process's own figures
        logger.debug("process records not read: %s", exc)
        return View(own.pools, own.counters, 1, "this process")
    takes_part = identity is not None or any(pools.registry.pools(alias) for alias in aliases)
    if takes_part and all(r.identity != identity for r in found):
        found.append(own)
    return View(records.sum_pools(found, aliases), records.sum_counters(found), len(found), "redis")
