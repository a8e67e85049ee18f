"""Read-your-writes, the I/O side: positions in Redis and the primary's WAL position (jobs: ``handoff``).

Redis keys: ``{KEY_PREFIX}:sticky:{cluster}:{fingerprint}:{identity}`` → position, as
``{lsn}@{system identifier}/{timeline}`` (the incarnation of the primary that wrote it: see
``incarnation``; a bare integer, the previous format, is a position of unknown incarnation), and
``{KEY_PREFIX}:sticky-pin:{cluster}:{fingerprint}:{identity}`` → a pin deadline, expiring after
``STICKY_SECONDS`` (the fingerprint binds them to the cluster's databases: ``redis_client.key``).
Updates only move forward within one incarnation (a Lua script compares before it sets), so two
concurrent requests of one session can never move it back; a stored position of another incarnation (or
of none) is replaced, never kept as the maximum: a rebuilt or restored cluster starts lower. Release
deletes only the value it saw (compare and delete), so it never drops a newer write's position.

Every call here runs on the request path: through ``guard`` (a client with a short deadline behind a
circuit breaker), so a hung Redis costs a request at most ``redis_client.REQUEST_TIMEOUT`` once per
breaker interval, and nothing while the breaker is open (the signed cookie carries the state).

Values read back are untrusted: one that is not a non-negative integer is ignored by ``load_state``
(counted in ``sticky_bad_values`` and ``redis_bad_values{kind}``, logged once per process and kind) and
treated as absent by ``advance``, which overwrites it with an expiry; a primary pin further ahead than
``STICKY_SECONDS`` (plus a clock allowance) cannot be one this release wrote, and is ignored too.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, NamedTuple

from replicarouter import redis_client as shared_redis
from replicarouter.conf import settings, topology
from replicarouter.health.probe import lsn_to_int
from replicarouter.observability import stats

from . import guard, incarnation
from .incarnation import Incarnation

logger = logging.getLogger("replicarouter.sticky")
#: kinds of problems this process already logged (logged once per kind, counted always)
_warned: set[str] = set()
#: how far past ``STICKY_SECONDS`` from now a stored primary pin may end (clocks of a site's hosts differ)
PIN_CLOCK_ALLOWANCE = 5.0
_DIGITS = re.compile(rb"[0-9]{1,20}")
_MARKED = re.compile(rb"([0-9]{1,20})@([0-9]{0,20}/[0-9]{1,10})")
#: the primary's position and incarnation in one statement (the timeline as the monitor reads it: the
#: first 8 hex digits of the current WAL file name; pg_control's changes only at a checkpoint)
_TIMELINE = "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
_IDENTIFIER = "(SELECT system_identifier::text FROM pg_control_system())"
MARK_SQL = f"SELECT pg_current_wal_lsn(), {_IDENTIFIER}, {_TIMELINE}"
#: the same without the identifier, for a role refused EXECUTE on pg_control_system()
MARK_SQL_NO_IDENTIFIER = f"SELECT pg_current_wal_lsn(), '', {_TIMELINE}"
#: aliases whose role may not read pg_control_system() (learnt once per process)
_no_identifier: set[str] = set()

#: a stored value that is not a position (``{lsn}`` or ``{lsn}@{incarnation}``; or not a string at all)
#: counts as absent: it is overwritten, with an expiry, rather than making every later advance fail. One
#: of another incarnation (ARGV[3]; "" in time mode) is replaced whatever its number: it is not comparable
_ADVANCE = """
local current = -1
if redis.call('type', KEYS[1])['ok'] == 'string' then
    local stored = redis.call('get', KEYS[1])
    local digits, tag = string.match(stored, '^(%d+)@(%d*/%d+)$')
    if digits == nil and string.match(stored, '^%d+$') then
        digits, tag = stored, ''
    end
    if digits ~= nil and string.len(digits) <= 20 and tag == ARGV[3] then
        current = tonumber(digits)
        if current > 18446744073709551615 then
            current = -1
        end
    end
end
if tonumber(ARGV[1]) > current then
    local value = ARGV[1]
    if ARGV[3] ~= '' then
        value = ARGV[1] .. '@' .. ARGV[3]
    end
    redis.call('set', KEYS[1], value, 'PX', ARGV[2])
    return 1
end
redis.call('pexpire', KEYS[1], ARGV[2])
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def client(operation: str = "load") -> Any:
    """Return the request path's Redis client for ``operation`` (None: no REDIS_URL, or breaker open)."""
    return guard.client(operation)


def _key(cluster: str, identity: str) -> str:
    return shared_redis.key("sticky", cluster, identity)


def _store_error(message: str, exc: Exception) -> None:
    """Count and log a Redis failure on session positions (``message`` has one %s for the error).

    A timeout or connection error opens the breaker and is logged by it, once per outage.
    """
    stats.incr("sticky_store_errors")
    if guard.failed(exc):
        return
    logger.warning(message, exc, extra={"replicarouter_event": "sticky_store_error"})


def _pin_key(cluster: str, identity: str) -> str:
    return shared_redis.key("sticky-pin", cluster, identity)


def _integer(value: Any) -> int | None:
    """Return ``value`` (bytes from Redis) as a non-negative integer of at most 20 digits, else None."""
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes) or not _DIGITS.fullmatch(value):
        return None  # int() would take " 12", "+12" and "1_2": the advance script would not
    number = int(value)
    return number if number < 2**64 else None  # a WAL position or a deadline in ms is 64 bits


def _marked(value: Any) -> tuple[int, Incarnation | None] | None:
    """Return a stored position and its incarnation (None: the previous, bare format), else None."""
    if isinstance(value, str):
        value = value.encode()
    match = _MARKED.fullmatch(value) if isinstance(value, bytes) else None
    if match is None:
        number = _integer(value)
        return None if number is None else (number, None)
    number, tag = _integer(match.group(1)), incarnation.parse(match.group(2).decode())
    return None if number is None or tag is None else (number, tag)


class Loaded(NamedTuple):
    """What Redis holds for one identity: positions, primary pins, and each position's incarnation."""

    positions: dict[str, int]
    pins: dict[str, int]
    incarnations: dict[str, Incarnation]


def load_state(identity: str, clusters: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Return the stored positions and primary pins of ``identity`` (``load_marks`` without incarnations)."""
    loaded = load_marks(identity, clusters)
    return loaded.positions, loaded.pins


def load_marks(identity: str, clusters: list[str]) -> Loaded:
    """Return the stored positions, primary pins and incarnations of ``identity`` (one MGET); nothing on
    a Redis error. A value that is not a position (or a pin) is ignored, counted and logged.
    """
    nothing = Loaded({}, {}, {})
    if not clusters:
        return nothing
    redis_client = client("load")
    if redis_client is None:
        return nothing
    keys = [_key(c, identity) for c in clusters] + [_pin_key(c, identity) for c in clusters]
    try:
        values = redis_client.mget(keys)
    except Exception as exc:
        _store_error("sticky positions unavailable (redis: %s): relying on the signed cookie", exc)
        return nothing
    guard.succeeded()
    found = Loaded({}, {}, {})
    latest_pin = (time.time() + settings.STICKY_SECONDS + PIN_CLOCK_ALLOWANCE) * 1000
    deadlines = settings.STICKY == "time"  # positions are deadlines (ms) too
    for index, value in enumerate(values):
        if value is None:
            continue
        cluster = clusters[index % len(clusters)]
        kind = "sticky_position" if index < len(clusters) else "sticky_pin"
        mark = _marked(value) if kind == "sticky_position" and not deadlines else None
        number = mark[0] if mark is not None else _integer(value)
        if number is None or ((deadlines or kind == "sticky_pin") and number > latest_pin):
            _bad_value(kind, keys[index])
            continue
        if kind == "sticky_pin":
            found.pins[cluster] = number
            continue
        found.positions[cluster] = number
        if mark is not None and mark[1] is not None:
            found.incarnations[cluster] = mark[1]
    return found


def _bad_value(kind: str, key: str) -> None:
    """Count, and log once per process and kind, a value under a session's key that is ignored."""
    stats.incr("sticky_bad_values")
    stats.incr("redis_bad_values", kind)
    if kind in _warned:
        return
    _warned.add(kind)
    what = "position" if kind == "sticky_position" else "primary pin (a deadline within STICKY_SECONDS)"
    logger.warning(
        "ignoring a sticky value that is not a %s at %s (further ones are only counted: "
        "sticky_bad_values, redis_bad_values)", what, key,
        extra={"replicarouter_event": "bad_sticky_value", "replicarouter_kind": kind},
    )  # fmt: skip


def load(identity: str, clusters: list[str]) -> dict[str, int]:
    """Return the stored positions of ``identity`` (one MGET); {} on any Redis error."""
    return load_state(identity, clusters)[0]


def pin(identity: str, cluster: str, deadline_ms: int) -> None:
    """Store that ``identity``'s reads of ``cluster`` stay on the primary until ``deadline_ms``."""
    redis_client = client("pin")
    if redis_client is None:
        return
    try:
        redis_client.set(_pin_key(cluster, identity), deadline_ms, px=int(settings.STICKY_SECONDS * 1000))
    except Exception as exc:
        _store_error("could not store a primary pin (redis: %s): the signed cookie carries it", exc)
        return
    guard.succeeded()


def _value(position: int, tag: Incarnation | None) -> str:
    return str(position) if tag is None else f"{position}@{tag.token()}"


def advance(identity: str, cluster: str, position: int, tag: Incarnation | None = None) -> bool:
    """Store ``position`` (of incarnation ``tag``) unless a further one of the same incarnation is
    stored; return False when Redis failed."""
    redis_client = client("advance")
    if redis_client is None:
        return False
    ttl = int(settings.STICKY_SECONDS * 1000)
    try:
        redis_client.eval(_ADVANCE, 1, _key(cluster, identity), position, ttl, tag.token() if tag else "")
    except Exception as exc:
        _store_error("could not store a sticky position (redis: %s): the signed cookie carries it", exc)
        return False
    guard.succeeded()
    return True


def release(identity: str, cluster: str, position: int, tag: Incarnation | None = None) -> None:
    """Delete the stored position if it is still ``position`` of ``tag`` (every replica has replayed it,
    or it is of another incarnation)."""
    redis_client = client("release")
    if redis_client is None:
        return
    try:
        released = redis_client.eval(_RELEASE, 1, _key(cluster, identity), _value(position, tag))
    except Exception as exc:
        stats.incr("sticky_store_errors")
        guard.failed(exc)
        return
    guard.succeeded()
    if released:
        stats.incr("sticky_releases", cluster)


def primary_position(alias: str) -> int:
    """Return the primary's current WAL position (through Django's connection of ``alias``)."""
    return primary_mark(alias)[0]


def primary_mark(alias: str) -> tuple[int, Incarnation]:
    """Return the primary's current WAL position and its incarnation, read in one statement."""
    from django.db import DatabaseError, OperationalError, connections

    connection = connections[alias]
    if alias not in _no_identifier:
        try:
            with connection.cursor() as cursor:
                cursor.execute(MARK_SQL)
                row = cursor.fetchone()
        except OperationalError:
            raise  # the server is gone: the caller pins the session to the primary
        except DatabaseError as exc:
            if connection.in_atomic_block:
                raise
            _no_identifier.add(alias)  # refused EXECUTE on pg_control_system(): positions without it
            logger.warning(
                "cannot read the system identifier through %s (%s): sticky positions carry the timeline only",
                alias, " ".join(str(exc).split()),
                extra={"replicarouter_event": "sticky_no_identifier"},
            )  # fmt: skip
            return primary_mark(alias)
    else:
        with connection.cursor() as cursor:
            cursor.execute(MARK_SQL_NO_IDENTIFIER)
            row = cursor.fetchone()
    value = lsn_to_int(row[0])
    assert value is not None
    return value, Incarnation(str(row[1] or ""), int(row[2] or 0))


def positions_to_record(wrote: set[str], mode: str) -> dict[str, int]:
    """Return, for each cluster written, what to remember: the WAL position or the pin deadline (ms).

    Raises when a primary's position cannot be read (``record`` does not).
    """
    recorded, failed = record(wrote, mode)
    if failed:
        raise failed[0][1]
    return recorded


def record(wrote: set[str], mode: str) -> tuple[dict[str, int], list[tuple[str, Exception]]]:
    """Return what ``positions_to_record`` returns, and the clusters whose position could not be read."""
    recorded, _tags, failed = record_marks(wrote, mode)
    return recorded, failed


def record_marks(
    wrote: set[str], mode: str
) -> tuple[dict[str, int], dict[str, Incarnation], list[tuple[str, Exception]]]:
    """Return what ``record`` returns, and the incarnation of each position read (``lsn`` mode).

    Never raises: a primary that died after the commit must not turn a committed write into an error
    (the caller pins those clusters to the primary for ``STICKY_SECONDS`` instead).
    """
    if mode == "time":
        deadline = int((time.time() + settings.STICKY_SECONDS) * 1000)
        return dict.fromkeys(wrote, deadline), {}, []
    by_name = {c.name: c for c in topology().clusters}
    recorded: dict[str, int] = {}
    tags: dict[str, Incarnation] = {}
    failed: list[tuple[str, Exception]] = []
    for name in sorted(wrote):
        if name not in by_name:
            continue
        try:
            recorded[name], tags[name] = primary_mark(by_name[name].primary)
        except Exception as exc:
            failed.append((name, exc))
    return recorded, tags, failed
