"""``ReplicaRouterMiddleware``: one fresh routing state per request, and read-your-writes across requests.

At the start of a request it installs the session's sticky state (positions from the signed cookie at
once; from Redis lazily, on the first read that needs them). At the end, if the request wrote, it
records the primary's WAL position (or, with ``STICKY="time"``, a pin deadline) in Redis and in the
cookie; if a read found every replica caught up, it releases the stored position. Put it after
``SessionMiddleware`` (and ``AuthenticationMiddleware`` with ``STICKY_SCOPE="user"``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from replicarouter.conf import settings, topology
from replicarouter.sticky import policy as sticky
from replicarouter.sticky import store as stickystore

from .context import RequestState, request_context


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


def begin(request: Any, state: RequestState) -> None:
    """Install the request's sticky state (no I/O)."""
    mode = settings.STICKY
    if mode == "off":
        return
    known = sticky.decode_cookie(request.COOKIES.get(sticky.COOKIE_NAME), mode, settings.STICKY_SECONDS)
    current = sticky.StickyState(mode, known=known)

    def loader() -> dict[str, int]:
        current.identity = _identity(request)
        if current.identity is None:
            return {}
        return stickystore.load(current.identity, [c.name for c in topology().clusters])

    current.loader = loader
    state.sticky = current


def finish(request: Any, response: Any, state: RequestState) -> None:
    """Record this request's writes for its session; release positions every replica has replayed."""
    current = state.sticky
    if current is None:
        return
    released = current.release - state.wrote
    if not state.wrote and not (released and current.loaded is not None):
        return  # nothing to record or release: no identity lookup (it may load the user)
    identity = current.identity or _identity(request)
    if state.wrote:
        recorded = stickystore.positions_to_record(state.wrote, current.mode)
        if identity is not None:
            for cluster, position in recorded.items():
                stickystore.advance(identity, cluster, position)
        # the cookie always carries the positions too: Redis may be down now or at the next request
        _set_cookie(response, sticky.merge(current.known, recorded), current.mode)
    if released and current.loaded is not None:
        for cluster in released:
            position = current.loaded.get(cluster)
            if identity is not None and position is not None:
                stickystore.release(identity, cluster, position)
        if current.known and not state.wrote:
            remaining = {c: p for c, p in current.known.items() if c not in released}
            if remaining:
                _set_cookie(response, remaining, current.mode)
            else:
                response.delete_cookie(sticky.COOKIE_NAME, samesite="Lax")


def _set_cookie(response: Any, positions: dict[str, int], mode: str) -> None:
    response.set_cookie(
        sticky.COOKIE_NAME,
        sticky.encode_cookie(positions, mode),
        max_age=int(settings.STICKY_SECONDS),
        httponly=True,
        samesite="Lax",
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
