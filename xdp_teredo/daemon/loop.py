"""The event loop every role runs on: one thread, one selector, named deadlines.

    loop = EventLoop(clock)
    loop.add_reader(sock, on_readable)            # called with no argument
    loop.add_writer(conn, on_writable)            # idem, while conn can be written
    loop.every(5.0, sync)                         # periodic, first run after 5 s
    loop.deadline(lambda: qual.timer_at, on_due)  # whatever the provider says next
    loop.run()                                    # until loop.stop(reason)

Readers are served as the selector reports them; after each wake-up every due
deadline runs, in the order they were registered (the client relies on it: the
qualification's timer before the peers'). A deadline provider returns an absolute
time on `clock.monotonic()`, or None for "nothing scheduled".

stop() is safe from a signal handler and from another thread: it sets a flag and
writes one byte to the wake-up socket, which the selector watches; the signal
module's wakeup fd (`wakeup_fd`) points there too, so a signal interrupts a
select() in progress even before its Python handler runs.
"""

from __future__ import annotations

import os
import selectors
import socket
from typing import Callable, List, Optional

from ..errors import TeredoError
from ..teredo.clock import Clock, SystemClock

Deadline = Callable[[], Optional[float]]


class Stopped(TeredoError):
    """Raised by EventLoop.checkpoint() once stop() was asked: a long set-up gives
    up between two steps instead of finishing first (the teardown follows)."""

    exit_code = 0


class _Timer:
    __slots__ = ("provider", "callback")

    def __init__(self, provider: Deadline, callback: Callable[[float], None]):
        self.provider = provider
        self.callback = callback


class _Periodic:
    """A deadline of its own: due every `interval` seconds."""

    def __init__(self, clock: Clock, interval: float, callback: Callable[[], None],
                 first: Optional[float]):
        self.interval = interval
        self.callback = callback
        self.at = clock.monotonic() + (interval if first is None else first)

    def next(self) -> Optional[float]:
        return self.at

    def fire(self, now: float) -> None:
        self.at = now + self.interval
        self.callback()


class EventLoop:
    def __init__(self, clock: Optional[Clock] = None):
        self.clock = clock or SystemClock()
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
            os.set_inheritable(end.fileno(), False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
        self._timers: List[_Timer] = []
        self.stopping = False
        self.stopped_by: Optional[str] = None
        self._closed = False

    # -- readers --

    def add_reader(self, fileobj, callback: Callable[[], None]) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def add_writer(self, fileobj, callback: Callable[[], None]) -> None:
        """Call callback() while fileobj can be written to (a reply being sent)."""
        self.selector.register(fileobj, selectors.EVENT_WRITE, callback)

    def remove_reader(self, fileobj) -> None:
        """Stop watching fileobj (a reader or a writer)."""
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass  # never registered, or its fd is closed already

    # -- deadlines --

    def deadline(self, provider: Deadline, callback: Callable[[float], None]) -> None:
        """Call callback(now) whenever now >= provider()."""
        self._timers.append(_Timer(provider, callback))

    def every(self, interval: float, callback: Callable[[], None], *,
              first: Optional[float] = None) -> _Periodic:
        """Call callback() every `interval` seconds (the first time after `first`
        seconds, default `interval`)."""
        periodic = _Periodic(self.clock, interval, callback, first)
        self.deadline(periodic.next, periodic.fire)
        return periodic

    def timeout(self) -> Optional[float]:
        """Seconds until the soonest deadline (None: none)."""
        soonest = None
        for timer in self._timers:
            at = timer.provider()
            if at is not None and (soonest is None or at < soonest):
                soonest = at
        if soonest is None:
            return None
        return max(0.0, soonest - self.clock.monotonic())

    def tick(self) -> None:
        """Run every deadline that is due, in registration order."""
        for timer in self._timers:
            now = self.clock.monotonic()
            at = timer.provider()
            if at is not None and now >= at:
                timer.callback(now)

    # -- running --

    def run(self) -> None:
        """Serve readers and deadlines until stop()."""
        while not self.stopping:
            for key, _ in self.selector.select(self.timeout()):
                key.data()
                if self.stopping:
                    return
            self.tick()

    def stop(self, reason: Optional[str] = None) -> None:
        """Ask run() to return; safe from a signal handler or another thread."""
        self.stopping = True
        if reason and self.stopped_by is None:
            self.stopped_by = reason
        self.wake()

    def wake(self) -> None:
        """Make a select() in progress return (from another thread)."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full or closed: the loop is waking up or gone

    def checkpoint(self) -> None:
        """Between two set-up steps: Stopped if stop() was asked meanwhile."""
        if self.stopping:
            raise Stopped(f"stopped during set-up ({self.stopped_by or 'asked'})")

    @property
    def wakeup_fd(self) -> int:
        return self._wake_w.fileno()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.selector.close()
        for end in (self._wake_r, self._wake_w):
            end.close()


def release(loop: Optional[EventLoop], sock) -> None:
    """Stop watching `sock` (if a loop serves it) and close it: the end of a
    listener or a connection of the control socket or the metrics server."""
    if loop is not None:
        loop.remove_reader(sock)
    sock.close()
