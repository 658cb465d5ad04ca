"""control.py: the client's abstract unix socket, served from a selector loop.

No root needed: an abstract socket with a name of its own ("@xdp-teredo-client-ut…")
in the test's network namespace; nothing else listens there.
"""

import secrets
import selectors
import socket
import threading

import pytest

from xdp_teredo import control
from xdp_teredo.errors import RuntimeFailure


class Loop:
    """A ControlServer driven by a selector in a background thread, like the client."""

    def __init__(self, handlers, clock=None):
        self.tunnel = "ut" + secrets.token_hex(4)
        kwargs = {"clock": clock} if clock else {}
        self.server = control.ControlServer(self.tunnel, handlers, **kwargs).open()
        self.selector = selectors.DefaultSelector()
        self.server.register(self.selector)
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping:
            for key, _ in self.selector.select(0.05):
                if self.server.owns(key):
                    self.server.handle(key)
            self.server.expire()

    def close(self):
        self.stopping = True
        self.thread.join(2)
        self.server.close()
        self.selector.close()


@pytest.fixture
def loop():
    made = []

    def make(handlers, **kwargs):
        made.append(Loop(handlers, **kwargs))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_a_request_gets_its_handlers_answer(loop):
    srv = loop({"status": lambda: {"state": "qualified"}, "peers": lambda: [1, 2]})
    assert control.query("status", srv.tunnel) == {"state": "qualified"}
    assert control.query("peers", srv.tunnel) == [1, 2]
    assert srv.server.served == 2


def test_unknown_requests_and_failing_handlers_are_errors_not_crashes(loop):
    def boom():
        raise ValueError("no data path")

    srv = loop({"status": boom, "peers": lambda: []})
    with pytest.raises(RuntimeFailure, match="unknown request 'nope'; known: peers, status"):
        control.query("nope", srv.tunnel)
    with pytest.raises(RuntimeFailure, match="status failed: no data path"):
        control.query("status", srv.tunnel)
    assert control.query("peers", srv.tunnel) == []   # still serving


def test_a_big_answer_arrives_whole(loop):
    table = [{"address": f"2001:0:c000:201::{i:x}", "mapped": "198.51.100.1:1"} for i in range(4000)]
    srv = loop({"peers": lambda: table})
    assert control.query("peers", srv.tunnel) == table


def test_the_name_is_a_lock_per_tunnel(loop):
    srv = loop({})
    with pytest.raises(RuntimeFailure, match=f"tunnel {srv.tunnel} is already running"):
        control.ControlServer(srv.tunnel, {}).open()


def test_nobody_listening_is_not_running():
    tunnel = "ut" + secrets.token_hex(4)
    with pytest.raises(control.NotRunning, match=f"no xdp-teredo client with tunnel {tunnel}"):
        control.query("status", tunnel)
    assert control.running(tunnel) is None


def test_a_silent_connection_is_dropped_without_blocking_others(loop):
    now = [0.0]
    srv = loop({"status": lambda: "ok"}, clock=lambda: now[0])
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(control.socket_name(srv.tunnel))
    # The loop is not stuck on the silent one: another asker is served meanwhile.
    assert control.query("status", srv.tunnel) == "ok"
    now[0] += control.REQUEST_TIMEOUT + 0.1
    silent.settimeout(2)
    assert silent.recv(10) == b""       # closed by the server
    silent.close()
    assert srv.server.refused == 1


def test_names_are_per_tunnel():
    assert control.socket_name("teredo") == "\0xdp-teredo-client-teredo"
    assert control.display_name(control.socket_name("teredo")) == "@xdp-teredo-client-teredo"
