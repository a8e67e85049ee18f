"""``ReplicaRouterMiddleware``: one fresh routing state per request, and read-your-writes across requests.

At the start of a request it installs the session's sticky state (positions, pins and what the session
last read from the signed cookie at once; from Redis lazily, on the first read that needs them). At the
end, if the request wrote, it records the primary's WAL position (or, with ``STICKY="time"``, a pin
deadline) in Redis and in the cookie; if a read found every replica caught up, it releases the stored
position; if the session read elsewhere than before (monotonic reads), the cookie says so.

Writes anywhere in the request/response cycle count, whatever the middleware order. Placed before
``SessionMiddleware`` (recommended: first, after ``SecurityMiddleware``), everything the inner
middleware do, session saves included, happens inside its routing state. Placed after it, the session
is saved once this middleware has returned: the session object's ``save`` is then wrapped at the start
of the request, so that the save runs in the request's routing state and its write is recorded on the
response before ``SessionMiddleware`` sends it. Writes that other middleware outside this one make
after it returned are not seen (check W013 says which middleware come first).

Once the view has returned nothing here raises: when the primary's position cannot be read after a
write (its connection died after the commit), the session is pinned to the primary for
``STICKY_SECONDS`` instead (counted in ``sticky_pins``, logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from replicarouter.conf import settings, topology
from replicarouter.health import store as health
from replicarouter.observability import stats
from replicarouter.sticky import policy as sticky
from replicarouter.sticky import store as stickystore
from replicarouter.sticky.incarnation import Incarnation, merge_recorded

from . import context
from .context import RequestState, request_context

logger = logging.getLogger("replicarouter.sticky")
#: problems already logged by this process (each kind is logged once, counted always)
_logged: set[str] = set()


def _identity(request: Any) -> str | None:
    """Return the hashed session key (or user id), or None for a client without one."""
    from django.conf import settings as django_settings

    if settings.STICKY_SCOPE == "user":
        user = getattr(request, "user", None)
        if user is not None and getattr(user, "is_authenticated", False):
            return sticky.identity("user", str(user.pk), django_settings.SECRET_KEY)
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    return sticky.identity("session", key, django_settings.SECRET_KEY) if key else None


def _bad_cookie(problem: str) -> None:
    stats.incr("sticky_bad_cookies", problem)
    if problem not in _logged:
        _logged.add(problem)
        logger.warning(
            "ignoring a position cookie (%s); further ones are only counted (sticky_bad_cookies)",
            problem,
            extra={"replicarouter_event": "bad_cookie"},
        )


def _now(cluster: str) -> tuple[Incarnation, int | None] | None:
    """Return the cluster's incarnation and its primary's position, as a fresh snapshot knows them."""
    known = health.incarnation(cluster)
    return None if known is None else (Incarnation(known[0], known[1]), known[2])


def _foreign(cluster: str, reason: str, source: str) -> None:
    """Count, and log once per process and reason, a position of another incarnation that is dropped."""
    stats.incr("sticky_foreign_positions", cluster, reason)
    if f"foreign:{reason}" in _logged:
        return
    _logged.add(f"foreign:{reason}")
    why = {
        "system": "another system identifier: the cluster was rebuilt",
        "timeline": "an older timeline, beyond the current primary's position: a lost future",
        "unknown": "no incarnation (previous format), beyond the current primary's position",
    }.get(reason, reason)
    logger.warning(
        "dropping a session's position on %s from the %s (%s); further ones are only counted "
        "(sticky_foreign_positions)", cluster, source, why,
        extra={"replicarouter_event": "sticky_foreign_position", "replicarouter_cluster": cluster},
    )  # fmt: skip


def begin(request: Any, state: RequestState) -> None:
    """Install the request's sticky state (no I/O)."""
    mode = settings.STICKY
    if mode == "off":
        return
    cookie = sticky.read_cookie(request.COOKIES.get(sticky.COOKIE_NAME), mode, settings.STICKY_SECONDS)
    if cookie.problem is not None:
        _bad_cookie(cookie.problem)
    seen = cookie.seen if settings.MONOTONIC_READS else {}
    current = sticky.StickyState(mode, known=cookie.positions, pins=cookie.pins, seen=seen)
    current.incarnations, current.seen_incarnations = cookie.incarnations, cookie.seen_incarnations
    current.now, current.on_foreign = _now, _foreign
    current.had_cookie = sticky.COOKIE_NAME in request.COOKIES
    current.screen()

    def loader() -> tuple[dict[str, int], dict[str, int], dict[str, Incarnation]]:
        current.identity = _identity(request)
        if current.identity is None:
            return {}, {}, {}
        return stickystore.load_marks(current.identity, [c.name for c in topology().clusters])

    current.loader = loader
    state.sticky = current
    session = getattr(request, "session", None)  # set here only by a SessionMiddleware outside this one
    if session is not None and hasattr(session, "save"):
        _follow_saves(request, session, state)


def _follow_saves(request: Any, session: Any, state: RequestState) -> None:
    """Make a save of ``session`` after this middleware returned count as this request's write."""
    original = session.save

    def save(*args: Any, **kwargs: Any) -> Any:
        if context.current_state() is state or state.response is None:
            return original(*args, **kwargs)  # inside the request: recorded at its end as usual
        inner = RequestState(sticky=state.sticky)
        with context.resumed(inner):
            result = original(*args, **kwargs)
        if inner.wrote:
            _record(request, state.response, state.sticky, inner.wrote, frozenset())
        return result

    session.save = save


def finish(request: Any, response: Any, state: RequestState) -> None:
    """Record this request's writes for its session; release positions every replica has replayed."""
    state.response = response
    current = state.sticky
    if current is None:
        return
    _bound_primary_reads(current, current.primary_reads - state.wrote)
    _record(request, response, current, state.wrote, current.release - state.wrote)


def _bound_primary_reads(current: sticky.StickyState, clusters: set[str]) -> None:
    """Give clusters read from the primary the primary's position now as their monotonic floor.

    Without it, "read the primary until now" could only be bounded by a probe of the primary started
    after the read, and a session that reads more often than the monitor probes would chase that bound
    and never get back to a replica. One ``SELECT pg_current_wal_lsn()``; if it fails, the claim stays.
    """
    if not clusters or not settings.MONOTONIC_READS:
        return
    recorded, tags, _failed = stickystore.record_marks(clusters, "lsn")
    now = time.time()
    for cluster, position in recorded.items():
        seen = current.seen.get(cluster)
        same = current.seen_incarnations.get(cluster) == tags[cluster]  # another's floor: replaced
        floor = max(position, seen.floor if seen is not None and same else 0)
        current.seen[cluster] = sticky.Seen("", now, now, floor)
        current.seen_incarnations[cluster] = tags[cluster]
        current.seen_changed = True


def _record(
    request: Any,
    response: Any,
    current: sticky.StickyState,
    wrote: set[str],
    released: set[str] | frozenset[str],
) -> None:
    """Store what ``wrote`` and ``released`` change for the session, in Redis and in the cookie."""
    changed = bool(wrote) or current.seen_changed or bool(current.foreign_stored)
    can_release = bool(released) and current.loaded is not None
    if not changed and not can_release:
        return  # nothing to record or release: no identity lookup (it may load the user)
    identity = current.identity or _identity(request)
    positions = dict(current.known)
    if wrote:
        recorded, tags, failed = stickystore.record_marks(wrote, current.mode)
        now = time.time()
        for cluster, position in recorded.items():
            if identity is not None:
                stickystore.advance(identity, cluster, position, tags.get(cluster))
            if current.mode == "lsn":  # everything the request read is at or before its write's position
                current.seen[cluster] = sticky.Seen("", now, now, position)
                current.seen_incarnations[cluster] = tags[cluster]
                current.seen_changed = True
        for cluster, exc in failed:
            _pin(identity, current, cluster, exc)
        # a position of another incarnation is replaced, not kept as the maximum
        positions, current.incarnations = merge_recorded((positions, current.incarnations), (recorded, tags))
        current.known = positions
    if identity is not None:
        for cluster, (position, tag) in current.foreign_stored.items():
            if cluster not in wrote:  # a write replaced it already
                stickystore.release(identity, cluster, position, tag)
    if can_release:
        for cluster in released:
            stored = current.loaded.get(cluster) if current.loaded is not None else None
            if identity is not None and stored is not None:
                stickystore.release(identity, cluster, stored, current.loaded_incarnations.get(cluster))
            positions.pop(cluster, None)
        current.known = positions
    _set_cookie(response, current, positions)


def _pin(identity: str | None, current: sticky.StickyState, cluster: str, exc: Exception) -> None:
    """Pin the session's reads of ``cluster`` to the primary: its write's position is unknown."""
    deadline = int((time.time() + settings.STICKY_SECONDS) * 1000)
    current.pins[cluster] = deadline
    current.loaded_pins[cluster] = deadline
    primary = next((c.primary for c in topology().clusters if c.name == cluster), cluster)
    current.seen[cluster] = sticky.Seen(primary, time.time(), time.time(), 0)
    current.seen_changed = True
    if identity is not None:
        stickystore.pin(identity, cluster, deadline)
    stats.incr("sticky_pins", cluster)
    logger.warning(
        "the primary's position could not be read after a write on %s (%s): the session reads from "
        "the primary for %g s",
        cluster, " ".join(str(exc).split()) or type(exc).__name__, settings.STICKY_SECONDS,
        extra={"replicarouter_event": "sticky_pin", "replicarouter_cluster": cluster},
    )  # fmt: skip


def _cookie_scope() -> dict[str, Any]:
    """Return the domain, path and SameSite of the position cookie: those of Django's session cookie."""
    from django.conf import settings as django_settings

    return {
        "domain": django_settings.SESSION_COOKIE_DOMAIN,
        "path": django_settings.SESSION_COOKIE_PATH,
        "samesite": django_settings.SESSION_COOKIE_SAMESITE or None,
    }


def _set_cookie(response: Any, current: sticky.StickyState, positions: dict[str, int]) -> None:
    """Set (or delete) the position cookie with the flags of Django's session cookie.

    ``SESSION_COOKIE_SAMESITE = "None"`` makes it Secure whatever ``SESSION_COOKIE_SECURE`` says: browsers
    drop a ``SameSite=None`` cookie that is not (Django's ``delete_cookie`` does the same).
    """
    from django.conf import settings as django_settings

    scope = _cookie_scope()
    content = current.cookie(positions, horizon=settings.CHECK_INTERVAL)
    if not content.positions and not content.pins and not content.seen:
        if current.had_cookie:
            response.delete_cookie(sticky.COOKIE_NAME, **scope)
        return
    cross_site = str(scope["samesite"]).lower() == "none"
    response.set_cookie(
        sticky.COOKIE_NAME,
        sticky.write_cookie(content, current.mode),
        max_age=int(settings.STICKY_SECONDS),
        secure=bool(django_settings.SESSION_COOKIE_SECURE or cross_site) or None,
        httponly=bool(django_settings.SESSION_COOKIE_HTTPONLY) or None,
        **scope,
    )


class ReplicaRouterMiddleware:
    """Open a routing context for each request and close it when the response is ready."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        with request_context() as state:
            begin(request, state)
            response = self.get_response(request)
            finish(request, response, state)
            return response

    async def __acall__(self, request: Any) -> Any:
        with request_context() as state:
            begin(request, state)
            pending: Awaitable[Any] = self.get_response(request)
            response = await pending
            await sync_to_async(finish)(request, response, state)
            return response
