"""Process-level services without servers: fork callbacks, generations, owned threads, stop and reset."""

from __future__ import annotations

import os
import threading

import pytest
from django.test import override_settings

from replicarouter import redis_client, runtime


def _in_child(body) -> bytes:
    """Run ``body`` (returning bytes) in a forked child and return what it wrote."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_fd)
            os.write(write_fd, body())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(child, 0)
    with os.fdopen(read_fd, "rb") as answer:
        return answer.read()


@pytest.fixture
def callbacks(monkeypatch):
    """Isolate the registered callbacks of a test from replicarouter's own."""
    for name in ("_fork_callbacks", "_stop_callbacks", "_reset_callbacks"):
        monkeypatch.setattr(runtime, name, [])


def test_fork_callbacks_run_once_in_the_child_and_never_in_the_parent(callbacks):
    calls: list[int] = []
    runtime.on_fork(lambda: calls.append(os.getpid()))
    parent_generation = runtime.generation()

    def child() -> bytes:
        runtime.check_fork()  # the fork hook ran already: this must not run the callbacks again
        return f"{len(calls)} {calls[0] == os.getpid()} {runtime.generation() != parent_generation}".encode()

    assert _in_child(child) == b"1 True True"
    assert calls == [] and runtime.generation() == parent_generation


def test_a_fork_that_bypassed_the_hooks_is_caught_by_check_fork(callbacks, monkeypatch):
    calls: list[str] = []
    runtime.on_fork(lambda: calls.append("forgot"))
    before = runtime.generation()
    monkeypatch.setattr(runtime, "_pid", os.getpid() + 1)  # as if this process were a hook-less child
    runtime.check_fork()
    runtime.check_fork()
    assert calls == ["forgot"] and runtime.generation() == before + 1


def test_one_failing_callback_does_not_keep_the_others_from_running(callbacks, caplog):
    calls: list[str] = []
    runtime.on_reset(lambda: 1 / 0)
    runtime.on_reset(lambda: calls.append("second"))
    runtime.reset()
    assert calls == ["second"]
    assert "resetting" in caplog.text and "ZeroDivisionError" in caplog.text


def test_threads_are_named_daemons_listed_while_they_run_and_stopped_by_stop(callbacks):
    stopping = threading.Event()
    thread = runtime.start_thread("replicarouter-test", stopping.wait, 10)
    runtime.on_stop(lambda timeout: (stopping.set(), thread.join(timeout)))
    assert thread.daemon and thread in runtime.threads()
    runtime.stop(2.0)
    assert not thread.is_alive() and thread not in runtime.threads()


def test_stop_runs_services_in_reverse_order_of_registration(callbacks):
    order: list[str] = []
    runtime.on_stop(lambda timeout: order.append("first registered"))
    runtime.on_stop(lambda timeout: order.append("last registered"))
    runtime.stop(0.1)
    assert order == ["last registered", "first registered"]


def test_every_redis_key_comes_from_one_scheme():
    with override_settings(REPLICAROUTER={"KEY_PREFIX": "site-a"}):
        bound = redis_client.fingerprint("default")
        assert redis_client.key("health", "default", "leader") == f"site-a:health:default:{bound}:leader"
        assert redis_client.key("sticky", "default", "abc") == f"site-a:sticky:default:{bound}:abc"
        assert len(bound) == 16 and int(bound, 16) >= 0


def test_one_redis_client_per_process_and_settings_rebuilt_when_they_change():
    redis_client.forget()
    with override_settings(REPLICAROUTER={"REDIS_URL": "redis://127.0.0.1:1/0"}):
        first = redis_client.client()
        assert redis_client.client() is first
    with override_settings(REPLICAROUTER={"REDIS_URL": "redis://127.0.0.1:1/0", "CHECK_TIMEOUT": 0.25}):
        second = redis_client.client()
        assert second is not first
        assert second.connection_pool.connection_kwargs["socket_timeout"] == 0.25
    with override_settings(REPLICAROUTER={}):
        assert redis_client.client() is None
    redis_client.forget()


class _Scanning:
    """Redis's SCAN as far as ``foreign_health_keys`` uses it: pages of keys, a cursor, counted calls."""

    def __init__(self, pages):
        self.pages, self.calls = pages, 0

    def scan(self, cursor, match, count):
        self.calls += 1
        index = int(cursor)
        return (index + 1 if index + 1 < len(self.pages) else 0), self.pages[index]


def test_foreign_health_keys_are_other_fingerprints_and_the_scan_is_bounded():
    ours = {"default": "a" * 16}
    page = [
        b"replicarouter:health:default:" + b"a" * 16 + b":leader",  # ours
        b"replicarouter:health:default:" + b"b" * 16 + b":snapshot",  # another site's
        b"replicarouter:health:other:" + b"a" * 16 + b":leader",  # a cluster we do not have
        b"replicarouter:health:default:snapshot",  # release 0.1: maybe ours, mid-deploy
    ]
    found = redis_client.foreign_health_keys(_Scanning([page]), "replicarouter", ours)
    assert found == [
        "replicarouter:health:default:" + "b" * 16 + ":snapshot",
        "replicarouter:health:other:" + "a" * 16 + ":leader",
    ]
    endless = _Scanning([[]] * 1000)
    assert redis_client.foreign_health_keys(endless, "replicarouter", ours, calls=10) == []
    assert endless.calls == 10
