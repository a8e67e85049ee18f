"""The request path's Redis circuit breaker: closed → open → half-open → closed/open (injected clock)."""

from __future__ import annotations

import threading

import pytest

from replicarouter.sticky.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_closed_lets_every_call_through_and_success_changes_nothing():
    breaker = Breaker(1.0, Clock())
    assert all(breaker.allow() for _ in range(5))
    assert breaker.success() is None
    assert breaker.state == CLOSED


def test_a_failure_opens_it_and_calls_are_skipped_for_the_interval():
    clock = Clock()
    breaker = Breaker(1.0, clock)
    assert breaker.failure() is True  # opened from closed: the caller logs once
    assert breaker.state == OPEN
    clock.now += 0.999
    assert not breaker.allow()
    assert not breaker.allow()


def test_after_the_interval_exactly_one_trial_goes_through():
    clock = Clock()
    breaker = Breaker(1.0, clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()  # the trial
    assert breaker.state == HALF_OPEN
    assert not breaker.allow()  # others are still skipped while the trial is in flight
    assert not breaker.allow()


def test_a_successful_trial_closes_it_and_reports_the_outage_length():
    clock = Clock()
    breaker = Breaker(1.0, clock)
    breaker.failure()
    clock.now += 1.5
    assert breaker.allow()
    clock.now += 0.01
    assert breaker.success() == pytest.approx(1.51)
    assert breaker.state == CLOSED
    assert breaker.allow() and breaker.allow()


def test_a_failed_trial_reopens_it_for_another_interval_without_a_new_outage():
    clock = Clock()
    breaker = Breaker(1.0, clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    clock.now += 0.05
    assert breaker.failure() is False  # same outage: not logged again
    assert breaker.state == OPEN
    clock.now += 0.99
    assert not breaker.allow()
    clock.now += 0.01
    assert breaker.allow()
    clock.now += 2.0
    assert breaker.success() == pytest.approx(4.05)  # measured from the first opening


def test_a_trial_that_never_reports_is_given_up_after_another_interval():
    clock = Clock()
    breaker = Breaker(1.0, clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()  # this trial's thread dies without reporting
    clock.now += 0.5
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()


def test_concurrent_callers_get_one_trial():
    clock = Clock()
    breaker = Breaker(1.0, clock)
    breaker.failure()
    clock.now += 1.0
    allowed: list[bool] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 1
