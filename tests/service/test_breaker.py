"""The circuit breaker on a fake clock: it opens on a failure rate or on consecutive refusals, never on one
slow read, and a half-open probe closes it."""

from __future__ import annotations

from service.breaker import UNREACHABLE, BreakerPolicy, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(**policy: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerPolicy(**policy), clock), clock  # type: ignore[arg-type]


def test_one_timeout_among_successes_keeps_the_circuit_closed() -> None:
    b, clock = make()
    for _ in range(30):
        b.success()
        clock.now += 0.01
    assert b.failure("redis_timeout") is False
    assert b.up and b.allow()


def test_timeouts_below_the_minimum_call_count_do_not_open_it() -> None:
    b, _ = make(min_calls=20)
    for _ in range(19):
        assert b.failure("redis_timeout") is False
    assert b.up


def test_half_the_calls_failing_in_the_window_opens_it() -> None:
    b, clock = make(min_calls=20, failure_rate=0.5)
    for _ in range(10):
        b.success()
        clock.now += 0.01
    opened = [b.failure("redis_timeout") for _ in range(10)]
    assert opened == [False] * 9 + [True]
    assert not b.up and not b.allow()


def test_failures_older_than_the_window_are_forgotten() -> None:
    b, clock = make(window_s=2.0, min_calls=20)
    for _ in range(15):
        b.failure("redis_timeout")
    clock.now += 2.5
    for _ in range(10):
        b.success()
    for _ in range(9):
        assert b.failure("redis_timeout") is False  # 9 of 19 in the window
    assert b.up


def test_consecutive_refused_connections_open_it_without_waiting_for_the_rate() -> None:
    b, _ = make(refusals=5)
    assert [b.failure(UNREACHABLE) for _ in range(5)] == [False] * 4 + [True]
    assert not b.up


def test_a_success_between_refusals_resets_their_count() -> None:
    b, _ = make(refusals=3, min_calls=100)
    for _ in range(10):
        b.failure(UNREACHABLE)
        b.failure(UNREACHABLE)
        b.success()
    assert b.up


def test_after_open_s_exactly_one_probe_goes_through_and_its_success_closes_it() -> None:
    b, clock = make(refusals=1, open_s=1.0)
    b.failure(UNREACHABLE)
    clock.now += 0.5
    assert not b.allow()
    clock.now += 0.6
    assert b.allow() and b.state == "half_open"
    assert not b.allow()  # the others keep skipping while the probe runs
    b.success()
    assert b.up and b.allow()


def test_a_failed_probe_opens_it_for_another_open_s() -> None:
    b, clock = make(refusals=1, open_s=1.0)
    b.failure(UNREACHABLE)
    clock.now += 1.1
    assert b.allow()
    b.failure("redis_timeout")
    assert b.state == "open" and not b.allow()
    clock.now += 1.1
    assert b.allow()


def test_a_probe_that_never_reports_is_replaced_after_open_s() -> None:
    b, clock = make(refusals=1, open_s=1.0)
    b.failure(UNREACHABLE)
    clock.now += 1.1
    assert b.allow()
    clock.now += 0.5
    assert not b.allow()
    clock.now += 0.6
    assert b.allow()
