"""``CircuitBreaker``: when to stop asking Redis, decided on a failure RATE, not on one failed read.

A slow or failed read degrades that request only. The circuit opens (requests skip the store and answer
degraded at once, so a dead Redis costs no request its timeout) when, within the last ``window_s`` seconds,
at least ``min_calls`` store calls were made and at least ``failure_rate`` of them failed, or when
``refusals`` calls in a row found Redis unreachable (a refused or reset connection: no need to wait for twenty
of those). After ``open_s`` one request is let through as a probe (half-open): its success closes the circuit,
its failure opens it again for ``open_s``. A readiness probe's success closes it at once.

Pure and clocked from outside (``clock``), so its unit tests run on a fake clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]

# the reason label (service.ports.StoreUnavailable.reason) of a refused/reset connection: Redis is not there
UNREACHABLE = "redis_unreachable"


@dataclass(frozen=True)
class BreakerPolicy:
    window_s: float = 2.0
    min_calls: int = 20
    failure_rate: float = 0.5
    refusals: int = 5
    open_s: float = 1.0


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._calls: deque[tuple[float, bool]] = deque()  # (when, failed) within the window
        self._failures = 0  # failed calls in _calls
        self._refusals = 0  # consecutive unreachable failures
        self.state: State = "closed"
        self._open_until = 0.0
        self._probe_at: float | None = None  # when the half-open probe was let through
        self.last_error: str | None = None

    @property
    def up(self) -> bool:
        """The circuit is closed: requests go to the store."""
        return self.state == "closed"

    def allow(self) -> bool:
        """May this request call the store? Closed: yes. Open: no, until ``open_s`` is over; then exactly one
        probe is let through (another after ``open_s`` if the first never reported)."""
        if self.state == "closed":
            return True
        now = self._clock()
        if self.state == "open" and now < self._open_until:
            return False
        if self.state == "half_open" and self._probe_at is not None and now < self._probe_at + self.policy.open_s:
            return False
        self.state = "half_open"
        self._probe_at = now
        return True

    def success(self) -> None:
        if self.state != "closed":
            self.close()
            return
        self._refusals = 0
        self._record(False)

    def failure(self, reason: str, detail: str = "") -> bool:
        """Record a failed call; True when this failure opened the circuit."""
        self.last_error = f"{reason}: {detail}" if detail else reason
        self._refusals = self._refusals + 1 if reason == UNREACHABLE else 0
        if self.state != "closed":  # a failed probe (or a late failure while open): open for another open_s
            self._open()
            return False
        self._record(True)
        p = self.policy
        n = len(self._calls)
        if self._refusals >= p.refusals or (n >= p.min_calls and self._failures >= p.failure_rate * n):
            self._open()
            return True
        return False

    def close(self) -> None:
        self.state = "closed"
        self._calls.clear()
        self._failures = 0
        self._refusals = 0
        self._probe_at = None

    def _open(self) -> None:
        self.state = "open"
        self._open_until = self._clock() + self.policy.open_s
        self._probe_at = None

    def _record(self, failed: bool) -> None:
        now = self._clock()
        self._calls.append((now, failed))
        self._failures += failed
        horizon = now - self.policy.window_s
        while self._calls and self._calls[0][0] < horizon:
            _, old = self._calls.popleft()
            self._failures -= old
