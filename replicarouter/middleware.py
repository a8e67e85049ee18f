"""``ReplicaRouterMiddleware``: one fresh routing state per request, sync or async."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from .context import request_context


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
        with request_context():
            return self.get_response(request)

    async def __acall__(self, request: Any) -> Any:
        with request_context():
            response: Awaitable[Any] = self.get_response(request)
            return await response
