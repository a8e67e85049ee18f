"""Concurrent load through Django for fault tests and the chaos benchmark.

Threads issue real requests through the full middleware stack (``django.test.Client``, signed-cookie
sessions, ReplicaRouterMiddleware) and give their connections back after each one, as Django's
``request_finished`` does in a server. *Readers* read without a session (replica traffic); *writers*
write a row, then read it back in the same session (a read-your-writes check: not finding it is a stale
read). Every request is recorded with its start, duration and outcome; a scripted fault runs in the
calling thread meanwhile.

Clients do not re-raise view exceptions: Django's test client listens to the process-wide
``got_request_exception`` signal and would re-raise another thread's exception. Each thread keeps the
exception of its own request instead (the signal is sent in the thread that handled the request).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_local = threading.local()


def _store_exception(sender: Any, **kwargs: Any) -> None:
    _local.exc = sys.exc_info()[1]


@dataclass
class Request:
    kind: str  # "read", "write" or "own-read" (a writer reading its own write back)
    started: float  # seconds since the load started
    seconds: float
    error: str | None = None  # exception class name
    message: str = ""
    stale: bool = False
    port: int | None = None
    item: int | None = None
    traceback: str = ""
    exception: BaseException | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Report:
    requests: list[Request] = field(default_factory=list)
    fault_started: float = 0.0
    fault_ended: float = 0.0
    duration: float = 0.0
    hung_threads: list[str] = field(default_factory=list)

    def of(self, *kinds: str) -> list[Request]:
        """Return the requests of these kinds (all of them when none is given)."""
        return [r for r in self.requests if not kinds or r.kind in kinds]

    def failed(self, *kinds: str) -> list[Request]:
        return [r for r in self.of(*kinds) if not r.ok]

    def stale(self) -> list[Request]:
        return [r for r in self.requests if r.stale]

    def acknowledged_writes(self) -> list[int]:
        return [r.item for r in self.of("write") if r.ok and r.item is not None]

    def during_fault(self, *kinds: str) -> list[Request]:
        return [r for r in self.of(*kinds) if r.started + r.seconds >= self.fault_started]

    def p99(self, requests: list[Request]) -> float:
        if not requests:
            return 0.0
        durations = sorted(r.seconds for r in requests)
        return durations[min(len(durations) - 1, int(len(durations) * 0.99))]

    def describe(self, requests: list[Request] | None = None) -> str:
        """Return a short account of the failures (for assertion messages)."""
        failed = [r for r in (requests if requests is not None else self.requests) if not r.ok]
        kinds: dict[str, int] = {}
        for r in failed:
            kinds[f"{r.kind} {r.error}: {r.message[:120]}"] = (
                kinds.get(f"{r.kind} {r.error}: {r.message[:120]}", 0) + 1
            )
        return "; ".join(f"{n}x {what}" for what, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:5])


class Load:
    """``readers`` + ``writers`` threads for ``seconds``; ``fault`` runs ``fault_at`` seconds in."""

    def __init__(
        self, readers: int = 4, writers: int = 2, pause: float = 0.005, join_timeout: float = 30.0
    ) -> None:
        self.join_timeout = join_timeout
        self.readers = readers
        self.writers = writers
        self.pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def run(
        self,
        seconds: float,
        fault: Callable[[], Any] | None = None,
        fault_at: float = 1.5,
        after_fault: Callable[[], Any] | None = None,
    ) -> Report:
        report = Report()
        self._t0 = time.monotonic()
        self._report = report
        threads = [
            threading.Thread(target=self._reader, name=f"load-reader-{i}", daemon=True)
            for i in range(self.readers)
        ] + [
            threading.Thread(target=self._writer, name=f"load-writer-{i}", daemon=True)
            for i in range(self.writers)
        ]
        for thread in threads:
            thread.start()
        try:
            if fault is not None:
                self._stop.wait(max(0.0, fault_at - (time.monotonic() - self._t0)))
                report.fault_started = time.monotonic() - self._t0
                fault()
                report.fault_ended = time.monotonic() - self._t0
                if after_fault is not None:
                    after_fault()
            self._stop.wait(max(0.0, seconds - (time.monotonic() - self._t0)))
        finally:
            self._stop.set()
            deadline = time.monotonic() + self.join_timeout
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            report.hung_threads = [t.name for t in threads if t.is_alive()]
            report.duration = time.monotonic() - self._t0
        return report

    def _record(self, request: Request) -> None:
        with self._lock:
            self._report.requests.append(request)

    def _call(
        self, client: Any, kind: str, path: str, params: dict[str, Any] | None = None
    ) -> tuple[Request, Any]:
        return call(client, kind, path, params, self._t0)

    def _reader(self) -> None:
        client = _client()
        while not self._stop.is_set():
            request, data = self._call(client, "read", "/load/read/")
            if data is not None:
                request.port = data["port"]
            self._record(request)
            self._stop.wait(self.pause)

    def _writer(self) -> None:
        client = _client()
        n = 0
        while not self._stop.is_set():
            n += 1
            request, data = self._call(
                client, "write", "/sticky/write/", {"name": f"{threading.current_thread().name}-{n}"}
            )
            if data is not None:
                request.item = data["id"]
            self._record(request)
            if data is not None:
                read, found = self._call(client, "own-read", "/sticky/read/", {"id": data["id"]})
                if found is not None:
                    read.port = found["port"]
                    read.stale = not found["found"]
                self._record(read)
            self._stop.wait(self.pause)


def client() -> Any:
    """Return a test client that records its own requests' exceptions (see the module docstring)."""
    return _client()


def _client() -> Any:
    from django.core.signals import got_request_exception
    from django.test import Client

    got_request_exception.connect(_store_exception, dispatch_uid="tests.load")
    return Client(raise_request_exception=False)


def call(
    client: Any, kind: str, path: str, params: dict[str, Any] | None = None, t0: float = 0.0
) -> tuple[Request, Any]:
    """Make one request as a server would (connections given back after it); return what happened."""
    from django.db import connections

    started = time.monotonic()
    request = Request(kind, started - t0, 0.0)
    data = None
    _local.exc = None
    try:
        response = client.get(path, params or {})
        exc = _local.exc
        if exc is not None:
            request.exception = exc
            request.error, request.message = type(exc).__name__, str(exc).strip()
            request.traceback = "".join(traceback.format_exception(exc))
        elif response.status_code != 200:
            request.error = f"HTTP{response.status_code}"
            request.message = response.content[:200].decode()
        else:
            data = response.json()
    except Exception as exc:
        request.exception = exc
        request.error, request.message = type(exc).__name__, str(exc).strip()
        request.traceback = traceback.format_exc()
    finally:
        try:
            connections.close_all()  # what request_finished does in a real server
        except Exception as exc:
            request.error = request.error or type(exc).__name__
            request.message = request.message or f"closing connections: {exc}"
        request.seconds = time.monotonic() - started
    return request, data
