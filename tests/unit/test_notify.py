"""daemon/notify.py, systemd's readiness protocol, and how the skeleton uses it: a
unix datagram socket of the test plays the service manager. No root."""

import os
import socket

import pytest

from xdp_teredo.daemon import render
from xdp_teredo.daemon.notify import Notifier

from .test_daemon import Toy


@pytest.fixture
def manager(tmp_path):
    """A service manager's notify socket: (NOTIFY_SOCKET value, receive())."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(0.5)

    def receive():
        got = []
        sock.setblocking(False)
        try:
            while True:
                got.append(sock.recv(4096).decode())
        except BlockingIOError:
            pass
        return got

    yield path, receive
    sock.close()


def test_nothing_without_notify_socket():
    env = {}
    notifier = Notifier.from_environ(env)
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.ready("x") is False and notifier.watchdog() is False


def test_a_path_socket_gets_the_assignments(manager):
    path, receive = manager
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"}
    notifier = Notifier.from_environ(env)
    assert env == {}, "the variables are not passed on to children"
    assert notifier.watchdog_interval == 1.5
    notifier.ready("serving")
    notifier.status("serving")          # unchanged: not sent again
    notifier.status("two\nlines")
    notifier.watchdog()
    notifier.stopping()
    assert receive() == ["READY=1\nSTATUS=serving", "STATUS=two lines", "WATCHDOG=1",
                         "STOPPING=1\nSTATUS=stopping"]


def test_an_abstract_socket():
    name = f"xdp-teredo-test-notify-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_the_watchdog_of_another_process_is_not_ours(manager):
    path, _ = manager
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environ(env).watchdog_interval is None
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(env).watchdog_interval == 0.5


def test_a_manager_gone_does_not_stop_the_daemon(tmp_path):
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.ready() is False and notifier.failed == 1


def test_a_manager_that_does_not_read_never_blocks_the_daemon(manager):
    path, _ = manager
    notifier = Notifier(path)
    for _ in range(5000):     # far beyond net.unix.max_dgram_qlen
        notifier.watchdog()
    assert notifier.failed > 0


def test_other_socket_kinds_are_ignored():
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


class Notified(Toy):
    def status_line(self):
        return "toy: serving"


def test_the_skeleton_sends_ready_status_watchdog_and_stopping(manager):
    path, receive = manager
    toy = Notified()
    toy.notifier = Notifier(path, watchdog_usec=20000)   # a ping every 10 ms
    toy.loop.every(0.005, toy.publish_status)
    from xdp_teredo.daemon.base import run

    assert run(toy) == 0
    got = receive()
    assert got[0] == "READY=1\nSTATUS=toy: serving"
    assert "WATCHDOG=1" in got
    assert got[-1] == "STOPPING=1\nSTATUS=stopping"
    assert got.count("STATUS=toy: serving") == 0, "an unchanged status is not sent twice"


def test_no_ready_when_set_up_fails(manager):
    path, receive = manager
    toy = Notified(fail_at="socket")
    toy.notifier = Notifier(path)
    from xdp_teredo.daemon.base import run
    from xdp_teredo.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure):
        run(toy)
    assert receive() == ["STOPPING=1\nSTATUS=stopping: cannot make the socket"]


@pytest.mark.parametrize("info, line", [
    ({"state": "qualified", "address": "2001:0:c000:201::1", "server": "192.0.2.1",
      "mapped": "198.51.100.1:4000", "interface": "eth0"},
     "qualified: 2001:0:c000:201::1 via server 192.0.2.1 on eth0 (mapped 198.51.100.1:4000)"),
    ({"state": "qualifying", "server": "192.0.2.1", "interface": "eth0"},
     "qualifying: with server 192.0.2.1 on eth0"),
    ({"state": "offline", "server": None, "interface": "eth0"},
     "offline: no Teredo server name resolved yet, retrying on eth0"),
    ({"state": "offline", "server": "192.0.2.1", "interface": "eth0"},
     "offline: no server answered, retrying (next: 192.0.2.1) on eth0"),
    ({"role": "relay", "state": "relaying", "ipv4": "192.0.2.9", "port": 3544,
      "ipv4_iface": "eth0", "ipv6_iface": "eth1", "peers": 3},
     "relaying: 192.0.2.9:3544 on eth0, 2001::/32 to eth1; 3 peers"),
    ({"role": "relay", "state": "relaying", "ipv4": "192.0.2.9", "port": 3544,
      "ipv4_iface": "eth0", "ipv6_iface": "eth1"},
     "relaying: 192.0.2.9:3544 on eth0, 2001::/32 to eth1"),
    ({"role": "server", "primary": "192.0.2.1", "secondary": "192.0.2.2", "port": 3544,
      "prefix": "2001:0:c000:201::/64"},
     "serving: 192.0.2.1 and 192.0.2.2, UDP port 3544, prefix 2001:0:c000:201::/64"),
])
def test_status_summary(info, line):
    assert render.status_summary(info) == line
