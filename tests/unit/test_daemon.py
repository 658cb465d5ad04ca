"""daemon/base.py and daemon/loop.py: the skeleton all three roles run on, with a
toy role whose set-up makes "resources" that record their removal. No root."""

import signal
import threading

import pytest

from xdp_teredo.daemon.base import Daemon, Teardown, run
from xdp_teredo.daemon.loop import EventLoop, Stopped
from xdp_teredo.errors import RuntimeFailure
from xdp_teredo.teredo.clock import FakeClock


class Toy(Daemon):
    role = "toy"

    def __init__(self, *, signal_at=None, fail_at=None, fail_teardown=None):
        super().__init__()
        self.journal = []
        self.signal_at, self.fail_at, self.fail_teardown = signal_at, fail_at, fail_teardown

    def setup(self):
        for step in ("tunnel", "socket", "data path"):
            self.journal.append(f"made {step}")
            self.teardown.push(step, lambda s=step: self._remove(s),
                               keep=lambda s=step: self.journal.append(f"kept {s}"))
            if step == self.signal_at:
                signal.raise_signal(signal.SIGTERM)   # as if `kill` came now
            if step == self.fail_at:
                raise RuntimeFailure(f"cannot make the {step}")
            self.checkpoint()
        # A loop with nothing to do: stop it from a timer, as a signal would.
        self.loop.every(0.01, lambda: self.stop("done"))

    def _remove(self, step):
        if step == self.fail_teardown:
            raise OSError("busy")
        self.journal.append(f"removed {step}")

    def status(self):
        return {"state": "toy"}


def test_a_signal_during_set_up_stops_it_and_removes_what_was_made():
    toy = Toy(signal_at="socket")
    assert run(toy) == 0
    assert toy.journal == ["made tunnel", "made socket", "removed socket", "removed tunnel"]
    assert toy.loop.stopped_by == "SIGTERM" and not toy.serving_now


def test_a_failing_set_up_removes_what_was_made_and_the_error_goes_on():
    toy = Toy(fail_at="data path")
    with pytest.raises(RuntimeFailure, match="cannot make the data path"):
        run(toy)
    assert toy.journal[-3:] == ["removed data path", "removed socket", "removed tunnel"]


def test_signal_handlers_are_back_as_they_were():
    before = signal.getsignal(signal.SIGTERM)
    run(Toy())
    assert signal.getsignal(signal.SIGTERM) is before


def test_what_the_teardown_cannot_remove_is_one_error_after_every_step_was_tried():
    toy = Toy(fail_teardown="socket")
    with pytest.raises(RuntimeFailure, match="clean-up left things behind: socket: busy"):
        run(toy)
    assert toy.journal[-2:] == ["removed data path", "removed tunnel"]


def test_keeping_the_data_path_runs_the_keep_steps_instead():
    toy = Toy()
    toy.keep_datapath = True
    run(toy)
    assert toy.journal[-3:] == ["kept data path", "kept socket", "kept tunnel"]


def test_teardown_steps_without_a_keep_step_are_skipped_when_keeping():
    journal = []
    teardown = Teardown(logger=None)
    teardown.push("address", lambda: journal.append("address removed"))
    teardown.push_always("fd", lambda: journal.append("fd closed"))
    assert teardown.run(keep=True) == []
    assert journal == ["fd closed"]
    assert teardown.run() == [], "idempotent"


def test_the_loop_runs_deadlines_in_order_and_stops_from_another_thread():
    clock = FakeClock(100.0)
    loop = EventLoop(clock)
    ran = []
    loop.deadline(lambda: 100.0, lambda now: ran.append(("first", now)))
    loop.deadline(lambda: None, lambda now: ran.append("never"))
    periodic = loop.every(5.0, lambda: ran.append("every"))
    assert loop.timeout() == 0.0
    loop.tick()
    assert ran == [("first", 100.0)] and periodic.at == 105.0
    clock.advance(5)
    loop.tick()
    assert ran[-1] == "every" and periodic.at == 110.0
    loop.deadline(lambda: None, lambda now: None)
    threading.Timer(0.05, loop.stop, args=("test",)).start()
    clock.advance(1000)      # every deadline in the past: the loop spins on them...
    loop._timers.clear()     # ...so keep only the wake-up to wait on
    loop.run()
    assert loop.stopped_by == "test"
    with pytest.raises(Stopped):
        loop.checkpoint()
    loop.close()
