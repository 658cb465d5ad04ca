"""systemd's notify protocol with a real role: the test binds the unix datagram
socket a service manager would, starts `xdp-teredo server` with NOTIFY_SOCKET
(and WATCHDOG_USEC) pointing at it, and reads what arrives (daemon/notify.py).
"""

import os
import signal
import socket
import sys
import time

import pytest

pytestmark = pytest.mark.e2e

PRIMARY = "192.0.2.1"


class Manager:
    """The service manager's side: a path socket (abstract names are per network
    namespace; a path reaches into the lab's namespace)."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.got = []

    def wait_for(self, assignment: str, timeout: float = 10.0) -> str:
        """The first datagram (from now) holding `assignment` as one of its lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            self.got.append(message)
            if assignment in message.split("\n"):
                return message
        raise AssertionError(f"no {assignment} within {timeout} s; got {self.got}")

    def close(self):
        self.sock.close()


@pytest.fixture
def manager(tmp_path):
    m = Manager(tmp_path / "notify")
    yield m
    m.close()


def _server(lab, manager, *extra_env):
    env = ["env", f"NOTIFY_SOCKET={manager.path}", *extra_env]
    return lab.spawn("server", *env, sys.executable, "-m", "xdp_teredo.cli",
                     "--log-format", "json", "server", "--bind", PRIMARY,
                     log="server-notify.log")


def test_server_ready_status_watchdog_stopping(make_lab, manager):
    lab = make_lab("server")
    proc = _server(lab, manager, "WATCHDOG_USEC=400000")   # a ping every 0.2 s
    ready = manager.wait_for("READY=1")
    assert f"STATUS=serving: {PRIMARY} and 192.0.2.2, UDP port 3544, " \
           "prefix 2001:0:c000:201::/64" in ready.split("\n"), ready
    # It served before it said so: the control socket answers by now.
    assert '"event": "server_started"' in proc.output()
    started = time.monotonic()
    manager.wait_for("WATCHDOG=1", timeout=2)
    manager.wait_for("WATCHDOG=1", timeout=2)
    assert time.monotonic() - started < 2.0
    os.kill(proc.pid, signal.SIGTERM)        # `ip netns exec` exec'd the daemon itself
    stopping = manager.wait_for("STOPPING=1")
    assert "STATUS=stopping" in stopping.split("\n")
    assert proc.wait(timeout=10) == 0
    assert all("READY=1" not in m for m in manager.got[1:]), "READY=1 is sent once"


def test_no_watchdog_unless_asked(make_lab, manager):
    lab = make_lab("server")
    proc = _server(lab, manager)
    manager.wait_for("READY=1")
    os.kill(proc.pid, signal.SIGTERM)
    manager.wait_for("STOPPING=1")
    assert proc.wait(timeout=10) == 0
    assert not any("WATCHDOG=1" in m for m in manager.got), manager.got


def test_a_failed_start_never_says_ready(make_lab, manager):
    """A second server on the same address cannot bind: STOPPING=1, exit 1, no READY."""
    lab = make_lab("server")
    first = lab.spawn("server", sys.executable, "-m", "xdp_teredo.cli", "--log-format", "json",
                      "server", "--bind", PRIMARY, log="server-first.log")
    first.wait_for_output(r'"event": "server_started"', timeout=10)
    second = _server(lab, manager)
    stopping = manager.wait_for("STOPPING=1")
    assert "cannot bind UDP" in stopping, stopping
    assert second.wait(timeout=10) != 0
    assert not any("READY=1" in m for m in manager.got), manager.got
