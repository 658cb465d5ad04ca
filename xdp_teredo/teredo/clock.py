"""One injectable clock: monotonic seconds.

The protocol state machines never call time.* themselves; they are given a clock
(or a `now` read from one), so tests drive every timer of RFC 4380 with FakeClock
and never sleep (the pattern of pyroute2's DHCP client).

The time base is CLOCK_MONOTONIC in seconds: time.monotonic() on Linux, and also
what the data path stamps (in ns, as of the last timer tick: bpf/lib/clock.h), so
timestamps read from BPF maps can be compared with `Clock.monotonic()` after dividing
by 1e9; they lag it by at most a tick.
"""

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""


class SystemClock:
    """The real clock (time.monotonic)."""

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when a test says so."""

    def __init__(self, start: float = 0.0):
        self._now = float(start)

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go backwards")
        self._now += seconds
        return self._now

    def set(self, now: float) -> float:
        """Jump to the absolute time `now` (not before the current time)."""
        if now < self._now:
            raise ValueError("a monotonic clock cannot go backwards")
        self._now = float(now)
        return self._now
