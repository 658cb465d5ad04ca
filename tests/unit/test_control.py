"""daemon/control.py: the control socket every role serves, driven by the event loop.

No root needed: an abstract socket with a name of its own ("@xdp-teredo-tunnel-ut…")
in the test's network namespace; nothing else listens there.
"""

import secrets
import socket

import pytest

from xdp_teredo.daemon import control
from xdp_teredo.errors import RuntimeFailure
from xdp_teredo.teredo.clock import FakeClock

from .control_support import Served


def ask(srv, request):
    return control.query(srv.name, request, what=f"xdp-teredo client with tunnel {srv.tunnel}")


@pytest.fixture
def loop():
    made = []

    def make(handlers, **kwargs):
        made.append(Served(handlers, **kwargs))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_a_request_gets_its_handlers_answer(loop):
    srv = loop({"status": lambda: {"state": "qualified"}, "peers": lambda: [1, 2]})
    assert ask(srv, "status") == {"state": "qualified"}
    assert ask(srv, "peers") == [1, 2]
    assert srv.server.served == 2


def test_unknown_requests_and_failing_handlers_are_errors_not_crashes(loop):
    def boom():
        raise ValueError("no data path")

    srv = loop({"status": boom, "peers": lambda: []})
    with pytest.raises(RuntimeFailure, match="unknown request 'nope'; known: peers, status"):
        ask(srv, "nope")
    with pytest.raises(RuntimeFailure, match="status failed: no data path"):
        ask(srv, "status")
    assert ask(srv, "peers") == []   # still serving


def test_a_big_answer_arrives_whole(loop):
    table = [{"address": f"2001:0:c000:201::{i:x}", "mapped": "198.51.100.1:1"} for i in range(4000)]
    srv = loop({"peers": lambda: table})
    assert ask(srv, "peers") == table


def test_the_name_is_a_lock_per_tunnel(loop):
    srv = loop({})
    with pytest.raises(RuntimeFailure, match=f"tunnel {srv.tunnel} is already running"):
        control.ControlServer(srv.name, {}, owner=f"a Teredo client with tunnel {srv.tunnel}").open()


def test_nobody_listening_is_not_running():
    tunnel = "ut" + secrets.token_hex(4)
    with pytest.raises(control.NotRunning, match=f"no xdp-teredo client with tunnel {tunnel}"):
        control.query(control.tunnel_socket(tunnel), "status",
                      what=f"xdp-teredo client with tunnel {tunnel}")
    assert control.running(control.tunnel_socket(tunnel)) is None


def test_a_silent_connection_is_dropped_without_blocking_others(loop):
    clock = FakeClock(0.0)
    srv = loop({"status": lambda: "ok"}, clock=clock)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(srv.name)
    # The loop is not stuck on the silent one: another asker is served meanwhile.
    assert ask(srv, "status") == "ok"
    clock.advance(control.REQUEST_TIMEOUT + 0.1)
    silent.settimeout(2)
    assert silent.recv(10) == b""       # closed by the server
    silent.close()
    assert srv.server.refused == 1


def test_names_are_per_tunnel_and_the_server_has_its_own():
    assert control.tunnel_socket("teredo") == "\0xdp-teredo-tunnel-teredo"
    assert control.display_name(control.tunnel_socket("teredo")) == "@xdp-teredo-tunnel-teredo"
    assert control.display_name(control.SERVER_SOCKET) == "@xdp-teredo-server"
