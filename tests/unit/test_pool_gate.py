"""The pool's gate (``pool/gate.py``): at most N lent, waiters served first come, first served."""

from __future__ import annotations

import threading
import time

from replicarouter.pool.gate import Gate


def _wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_free_slots_are_taken_without_waiting():
    gate = Gate(2)
    assert gate.acquire(1.0) is False and gate.acquire(1.0) is False
    assert gate.free == 0 and gate.waiting == 0
    gate.release()
    assert gate.free == 1


def test_a_full_gate_times_out_and_forgets_the_waiter():
    gate = Gate(1)
    gate.acquire(1.0)
    started = time.monotonic()
    assert gate.acquire(0.05) is None
    assert time.monotonic() - started >= 0.04
    assert gate.waiting == 0
    gate.release()
    assert gate.free == 1  # the timed-out waiter did not take the slot


def test_a_released_slot_goes_to_the_longest_waiter_not_to_the_releaser():
    """The releaser asks again at once (it holds the GIL): it must queue behind the waiters."""
    gate = Gate(1)
    gate.acquire(1.0)
    order: list[str] = []

    def waiter(name: str) -> None:
        assert gate.acquire(5.0) is True
        order.append(name)
        gate.release()

    first = threading.Thread(target=waiter, args=("first",))
    first.start()
    _wait_until(lambda: gate.waiting == 1)
    second = threading.Thread(target=waiter, args=("second",))
    second.start()
    _wait_until(lambda: gate.waiting == 2)
    gate.release()  # handed to "first"; free stays 0
    assert gate.free == 0
    assert gate.acquire(5.0) is True  # the releaser waits its turn, after both
    order.append("releaser")
    first.join(5)
    second.join(5)
    assert order == ["first", "second", "releaser"]
    gate.release()
    assert gate.free == 1 and gate.waiting == 0


def test_many_threads_never_exceed_the_slots():
    gate = Gate(3)
    inside = 0
    most = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(200):
            assert gate.acquire(5.0) is not None
            with lock:
                inside += 1
                most = max(most, inside)
            with lock:
                inside -= 1
            gate.release()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert most <= 3 and gate.free == 3 and gate.waiting == 0


def test_a_parked_slot_is_taken_back_by_its_holder():
    gate = Gate(1)
    gate.acquire(1.0)
    item = object()
    assert gate.park(item, limit=1) and gate.parked == 1
    assert gate.unpark(item) is True and gate.parked == 0
    assert gate.unpark(item) is False  # only once
    assert gate.free == 0  # the slot stayed with the holder throughout


def test_a_borrower_without_a_free_slot_takes_the_oldest_parked_one():
    gate = Gate(2)
    first, second = object(), object()
    gate.acquire(1.0)
    gate.acquire(1.0)
    assert gate.park(first, limit=2) and gate.park(second, limit=2)
    assert gate.acquire(1.0) is first  # with its slot: no wait, nothing freed
    assert gate.unpark(first) is False  # its holder finds it gone
    assert gate.unpark(second) is True
    assert gate.free == 0


def test_nothing_is_parked_while_anyone_waits_nor_beyond_the_limit():
    gate = Gate(1)
    gate.acquire(1.0)
    waiter = threading.Thread(target=lambda: gate.acquire(5.0))
    waiter.start()
    _wait_until(lambda: gate.waiting == 1)
    assert gate.park(object(), limit=1) is False
    gate.release()  # handed to the waiter
    waiter.join(5)
    assert gate.park(object(), limit=0) is False
    kept = object()
    assert gate.park(kept, limit=1) is True and gate.park(object(), limit=1) is False
    assert gate.take_parked() == [kept] and gate.parked == 0
