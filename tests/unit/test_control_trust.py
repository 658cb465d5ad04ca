"""daemon/control.py's trust, both ways (SO_PEERCRED): who the daemon answers, whom
the asker believes, and a name squatted before the daemon starts.

Another uid is played by a forked child that calls os.setuid (so these tests need
root to change uid, and skip without it, saying so); the sockets are abstract, with
names of their own, in the test's network namespace.
"""

import json
import os
import secrets
import signal
import socket

import pytest

from xdp_teredo.daemon import control
from xdp_teredo.errors import RuntimeFailure

from tests.conftest import skip_or_fail

from .control_support import Served

NOBODY = 65534


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        skip_or_fail("needs root to play another uid (os.setuid in a child)")


def _child(uid, body):
    """Fork; the child becomes `uid` and runs body(write_fd); returns (pid, read_fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            body(w)
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def _wait_ready(r):
    assert os.read(r, 1) == b"1"


def _reap(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


@pytest.fixture
def squatter(as_root):
    """squatter(name, listen=True, answer=...) -> pid of a `nobody` holding `name`."""
    made = []

    def make(name, *, listen=True, answer=None):
        def body(w):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(name)
            if listen:
                sock.listen(4)
            os.write(w, b"1")
            while True:
                if not listen:
                    signal.pause()
                conn, _ = sock.accept()
                conn.recv(4096)
                conn.sendall(json.dumps(answer or {"state": "qualified",
                                                   "address": "2001:0:dead::beef"}).encode())
                conn.close()

        pid, r = _child(NOBODY, body)
        made.append(pid)
        _wait_ready(r)
        os.close(r)
        return pid

    yield make
    for pid in made:
        _reap(pid)


def _name():
    return control.tunnel_socket("ut" + secrets.token_hex(4))


def test_the_asker_believes_root_and_itself_only(squatter):
    name = _name()
    pid = squatter(name)
    with pytest.raises(control.Squatted) as caught:
        control.query(name, "status", trust={0})
    message = str(caught.value)
    assert message == (f"{control.display_name(name)} is held by uid {NOBODY} (pid {pid}), "
                       "not by an xdp-teredo daemon (a daemon listens as root): stop that process")
    assert "dead" not in message  # its answer is never read, let alone shown


def test_a_squatter_is_believed_only_when_its_user_is_trusted(squatter, monkeypatch):
    name = _name()
    squatter(name)
    monkeypatch.setenv(control.TRUST_ENV, "nobody")
    assert control.query(name, "status")["address"] == "2001:0:dead::beef"
    monkeypatch.setenv(control.TRUST_ENV, "no-such-user-here")
    with pytest.raises(RuntimeFailure, match="no such user 'no-such-user-here'"):
        control.query(name, "status")


def test_a_name_bound_but_not_listening_is_named_with_its_holder(squatter):
    name = _name()
    pid = squatter(name, listen=False)
    assert control.holder(name) == (pid, NOBODY)
    with pytest.raises(control.Squatted, match=rf"uid {NOBODY} \(pid {pid}\), bound but not "
                                               "listening, not by an xdp-teredo daemon"):
        control.query(name, "status", trust={0})
    assert control.holder(_name()) is None


def test_a_daemon_finding_its_name_squatted_says_so_not_already_running(squatter):
    name = _name()
    pid = squatter(name)
    server = control.ControlServer(name, {}, owner="a Teredo client with tunnel x")
    with pytest.raises(control.Squatted, match=rf"is held by uid {NOBODY} \(pid {pid}\), "
                                               "not by an xdp-teredo daemon"):
        server.open()


def test_a_daemon_finding_one_of_ours_says_already_running_with_its_pid():
    srv = Served({"status": lambda: {}})
    try:
        again = control.ControlServer(srv.name, {}, owner="a Teredo client with tunnel x",
                                      hint="stop it")
        with pytest.raises(RuntimeFailure, match=rf"^a Teredo client with tunnel x is already "
                                                 rf"running in this network namespace \(pid "
                                                 rf"{os.getpid()}, .* is taken\): stop it$") as e:
            again.open()
        assert not isinstance(e.value, control.Squatted)
    finally:
        srv.close()


def _ask_as(uid, name, request):
    """What a process of `uid` is answered (the raw reply, no trust check)."""
    def body(w):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(name)
        sock.sendall(json.dumps({"request": request}).encode() + b"\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        os.write(w, data)

    pid, r = _child(uid, body)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def test_the_daemon_answers_each_request_to_whom_it_should(as_root):
    srv = Served({"status": lambda: {"state": "qualified"}, "peers": lambda: [1],
                  "stats": lambda: {}, "counters": lambda: {}, "flush": lambda: "done"})
    srv.server.access["flush"] = control.Access.ROOT
    try:
        assert _ask_as(NOBODY, srv.name, "status") == {"state": "qualified"}
        for request in ("peers", "stats", "counters", "flush"):
            reply = _ask_as(NOBODY, srv.name, request)
            assert reply == {"error": f"permission denied: {request} is answered to root "
                                      f"{'' if request == 'flush' else 'and uid 0 '}only "
                                      f"(you are uid {NOBODY}; docs/security.md)"}
        # root gets everything
        assert control.query(srv.name, "peers") == [1]
        assert control.query(srv.name, "flush") == "done"
    finally:
        srv.close()


def test_the_daemons_own_uid_gets_its_private_answers_but_not_root_only_ones():
    server = control.ControlServer(_name(), {}, owner="x",
                                   access={"flush": control.Access.ROOT})
    me = os.geteuid()
    assert server.allowed("status", 4242)
    assert not server.allowed("peers", 4242 if me != 4242 else 4243)
    assert server.allowed("peers", me)
    assert server.allowed("flush", 0)
    assert server.allowed("flush", me) == (me == 0)
    assert server.allowed("new-request", 0)


def test_peer_credentials_of_a_socketpair_are_ours():
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        assert control.peer_credentials(a) == (os.getpid(), os.geteuid(), os.getegid())
    finally:
        a.close()
        b.close()


def test_a_name_bound_but_not_listening_by_a_trusted_uid_is_not_running():
    name = _name()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(name)  # ours, between bind() and listen(): nothing answers yet
    try:
        with pytest.raises(control.NotRunning, match="is not listening"):
            control.query(name, "status")
        assert control.holder(name) == (os.getpid(), os.geteuid())
    finally:
        sock.close()
