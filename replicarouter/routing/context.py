"""Per-request/per-task routing state in contextvars: forced modes, writes seen, atomic blocks open.

Why contextvars: Django runs a sync request in one thread and an async one in one asyncio task (its sync
parts in a thread that asgiref gives the task's context); contextvars follow both, so state never crosses
threads, tasks or requests. Values stored are immutable (tuples, frozensets) or, for the request state,
an object created per request, so a task spawned inside a request sees that request's writes and nothing
else.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

PRIMARY = "primary"
REPLICA = "replica"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class RequestState:
    """What one request (or task) has done so far."""

    #: names of the clusters this request wrote to
    wrote: set[str] = field(default_factory=set)
    #: the session's read-your-writes positions (replicarouter.sticky.StickyState), set by the middleware
    sticky: Any = None
    #: the response, once the view and the middleware inside ours returned (writes after that, such as
    #: a session save by an outer SessionMiddleware, are recorded on it)
    response: Any = None


_forced: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("replicarouter_forced", default=())
_state: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar(
    "replicarouter_state", default=None
)
_atomic: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "replicarouter_atomic", default=frozenset()
)


# -- forced modes ------------------------------------------------------------------------------------------


def forced_mode() -> str | None:
    """Return the innermost ``use_primary``/``use_replica`` mode in effect, or None."""
    stack = _forced.get()
    return stack[-1] if stack else None


class _Force:
    """Context manager and decorator (sync and async) that pushes a routing mode."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    # no tokens kept on self: one instance may be entered from several threads or tasks at once, and
    # blocks nest properly, so leaving one block is popping the top of this context's stack
    def __enter__(self) -> None:
        _forced.set((*_forced.get(), self.mode))

    def __exit__(self, *exc: object) -> None:
        _forced.set(_forced.get()[:-1])

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()

    def __call__(self, func: F) -> F:
        mode = self.mode
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with _Force(mode):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _Force(mode):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def use_primary() -> _Force:
    """Return a context manager / decorator under which every read and write uses the primary."""
    return _Force(PRIMARY)


def use_replica() -> _Force:
    """Return a context manager / decorator under which reads may use replicas even after a write.

    For reports that accept staleness. Reads inside a transaction that wrote still use the primary: a
    replica cannot see uncommitted writes.
    """
    return _Force(REPLICA)


# -- request state -------------------------------------------------------------------------------------


def current_state() -> RequestState | None:
    """Return this request's (or task's) state, or None outside any."""
    return _state.get()


def wrote(cluster: str) -> bool:
    """Return whether this request/task wrote to ``cluster``."""
    state = _state.get()
    return state is not None and cluster in state.wrote


def mark_written(using: str | None = None) -> None:
    """Tell the router that the current request or task wrote, where no statement shows it.

    For writes no parser can see: a ``SELECT`` of a function with side effects, a write through another
    connection. ``using`` names the alias written through (its cluster counts); None counts every
    cluster. Like any write, the rest of the request reads from the primary and the session's later
    reads see it (its position is recorded at the end of the request).
    """
    from replicarouter.conf import topology

    clusters = topology().clusters
    if using is None:
        names = [c.name for c in clusters]
    else:
        from django.conf import settings

        if using not in settings.DATABASES:
            raise ValueError(f"mark_written(using={using!r}): no such alias in DATABASES")
        cluster = topology().by_alias.get(using)
        names = [cluster.name if cluster is not None else using]
    for name in names:
        mark_write(name)


def mark_write(cluster: str) -> None:
    """Record that this request/task wrote to ``cluster`` (outside any request: for this context on)."""
    state = _state.get()
    if state is None:
        state = RequestState()
        _state.set(state)
    state.wrote.add(cluster)


Tokens = tuple[
    contextvars.Token[RequestState | None],
    contextvars.Token[tuple[str, ...]],
    contextvars.Token[frozenset[str]],
]


def begin() -> Tokens:
    """Start a fresh routing state in this context; pass the result to ``end()`` (see request_context)."""
    return _state.set(RequestState()), _forced.set(()), _atomic.set(frozenset())


def end(tokens: Tokens) -> None:
    """Restore the routing state that ``begin()`` replaced."""
    state_token, forced_token, atomic_token = tokens
    _atomic.reset(atomic_token)
    _forced.reset(forced_token)
    _state.reset(state_token)


@contextmanager
def resumed(state: RequestState) -> Iterator[RequestState]:
    """Run the code inside in ``state`` again (a session save after the middleware returned)."""
    tokens = _state.set(state), _forced.set(()), _atomic.set(frozenset())
    try:
        yield state
    finally:
        end(tokens)


@contextmanager
def request_context() -> Iterator[RequestState]:
    """Give the code inside a fresh routing state, and restore the previous one after (even on errors).

    The middleware wraps each request in one, and with Celery each task gets one automatically
    (``replicarouter.tasks``); wrap other units of work (jobs of your own worker, threads) yourself.
    """
    tokens = begin()
    try:
        yield _state.get()  # type: ignore[misc]
    finally:
        end(tokens)


# -- atomic blocks -----------------------------------------------------------------------------------------


def in_atomic(alias: str) -> bool:
    """Return whether an ``atomic()`` block is open on ``alias`` in this context."""
    return alias in _atomic.get()


def set_atomic(alias: str, value: bool) -> None:
    """Record that ``alias`` entered or left its outermost atomic block (called by our backend)."""
    current = _atomic.get()
    if value and alias not in current:
        _atomic.set(current | {alias})
    elif not value and alias in current:
        _atomic.set(current - {alias})
