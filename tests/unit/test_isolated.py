"""isolated.load's side of the hand-over, against stand-in children (no root, no bcc).

The real child (compiling with bcc) is tests/bpf/test_isolated.py's; here the child
is a small script in its place (isolated._child_argv patched) that dies, hangs,
answers nonsense or sends descriptors that are not what they claim: each becomes
one RuntimeFailure, and the asking process keeps no descriptor and no child.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
import types

import pytest

from xdp_teredo.datapath import isolated
from xdp_teredo.errors import RuntimeFailure

from tests.procfs import children, open_fds

# The child's preamble: the request from argv, the socket it names.
_CHILD = textwrap.dedent("""
    import json, os, socket, sys
    request = json.loads(sys.argv[1])
    sock = socket.socket(fileno=request["socket"])
""")






@pytest.fixture
def child(monkeypatch):
    """child(code): the next load() runs `code` (after _CHILD) as its child."""
    def use(code: str):
        script = _CHILD + textwrap.dedent(code)
        monkeypatch.setattr(isolated, "_child_argv",
                            lambda request: [sys.executable, "-c", script, json.dumps(request)])
    return use


@pytest.fixture
def clean():
    """Asserts that the test left no descriptor and no child behind."""
    fds, kids = open_fds(), children()
    yield
    assert open_fds() == fds, "descriptors left open"
    assert children() == kids, "a child left unreaped"


def test_a_child_that_dies_without_answering(child, clean):
    child("os._exit(3)")
    with pytest.raises(RuntimeFailure, match=r"exited with status 3 without an answer"):
        isolated.load("client", {})


def test_a_child_killed_by_a_signal(child, clean):
    child("import signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(RuntimeFailure, match=r"was killed by signal 9 without an answer"):
        isolated.load("client", {})


def test_a_child_that_hangs_is_stopped(child, clean):
    child("import time; time.sleep(60)")
    started = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"took more than 0.5 s"):
        isolated.load("client", {}, timeout=0.5)
    assert time.monotonic() - started < 5, "killed, not waited for"


def test_its_error_is_the_failure_and_its_log_is_ours(child, clean, monkeypatch):
    child("""
        reply = {"ok": False, "error": "cannot compile /x/client.c: Failed",
                 "log": [{"logger": "xdp_teredo.datapath", "level": "warning",
                          "event": "map_not_reused", "map": "peers"}]}
        socket.send_fds(sock, [json.dumps(reply).encode()], [])
    """)
    logged = []
    monkeypatch.setattr(isolated, "log", types.SimpleNamespace(
        get=lambda name: types.SimpleNamespace(
            warning=lambda event, **kw: logged.append((name, event, kw)))))
    with pytest.raises(RuntimeFailure) as err:
        isolated.load("client", {})
    assert str(err.value) == "cannot compile /x/client.c: Failed"
    assert len(logged) == 1
    name, event, kw = logged[0]
    assert (name, event, kw["map"]) == ("xdp_teredo.datapath", "map_not_reused", "peers")
    assert kw["compiled_by"] > 0


def test_descriptors_sent_with_a_bad_answer_are_closed(child, clean):
    child("""
        r, w = os.pipe()
        socket.send_fds(sock, [b"this is not json"], [r, w])
    """)
    with pytest.raises(RuntimeFailure, match="sent a bad answer"):
        isolated.load("client", {})


def test_descriptors_that_are_not_maps_are_closed(child, clean):
    """A program and a "map" that is a pipe: the map check fails, both are closed."""
    child("""
        r, w = os.pipe()
        reply = {"ok": True, "programs": [["xdp_rx", "xdp_teredo_rx"]], "maps": ["peers"]}
        socket.send_fds(sock, [json.dumps(reply).encode()], [r, w])
    """)
    with pytest.raises(RuntimeFailure):
        isolated.load("client", {})


def test_too_few_descriptors(child, clean):
    child("""
        reply = {"ok": True, "programs": [["xdp_rx", "xdp_teredo_rx"]], "maps": ["peers"]}
        socket.send_fds(sock, [json.dumps(reply).encode()], [os.open("/dev/null", os.O_RDONLY)])
    """)
    with pytest.raises(RuntimeFailure, match="sent 1 descriptors for 1 programs and 1 maps"):
        isolated.load("client", {})


def test_running_maps_reach_the_child_and_stay_the_callers(child, clean):
    """maps=: the child sees each descriptor under the number the request names,
    open on the same file; the caller's own stay open."""
    child("""
        seen = {name: os.readlink(f"/proc/self/fd/{fd}") for name, fd in request["maps"].items()}
        reply = {"ok": False, "error": json.dumps(seen)}
        socket.send_fds(sock, [json.dumps(reply).encode()], [])
    """)
    r, w = os.pipe()
    try:
        maps = {"peers": types.SimpleNamespace(fd=r), "config": types.SimpleNamespace(fd=w)}
        with pytest.raises(RuntimeFailure) as err:
            isolated.load("client", {}, maps=maps)
        seen = json.loads(str(err.value))
        assert seen == {"peers": os.readlink(f"/proc/self/fd/{r}"),
                        "config": os.readlink(f"/proc/self/fd/{w}")}
        os.fstat(r), os.fstat(w)
    finally:
        os.close(r)
        os.close(w)


def test_the_child_inherits_nothing_else(child, clean):
    """Only its socket (and the maps): not the asking process's other descriptors."""
    child("""
        fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
        socket.send_fds(sock, [json.dumps({"ok": False, "error": json.dumps(fds)}).encode()], [])
    """)
    r, w = os.pipe()
    os.set_inheritable(r, True)  # even one that would survive an exec
    try:
        with pytest.raises(RuntimeFailure) as err:
            isolated.load("client", {})
    finally:
        os.close(r)
        os.close(w)
    fds = set(json.loads(str(err.value)))
    assert r not in fds and w not in fds
    assert len(fds - {0, 1, 2}) <= 2, fds  # the socket, and the listing's own descriptor


def test_the_child_module_refuses_a_bad_request():
    out = subprocess.run([sys.executable, "-c",
                          "import sys; from xdp_teredo.datapath.isolated import main; "
                          "sys.exit(main())", "not json"], capture_output=True, text=True)
    assert out.returncode == 2 and "bad request" in out.stderr


def test_unknown_kind():
    with pytest.raises(ValueError):
        isolated.load("gateway", {})


def test_started_answers_on_a_socket_an_event_loop_can_watch(child, clean):
    import selectors

    child("""
        socket.send_fds(sock, [json.dumps({"ok": False, "error": "no", "log": []}).encode()], [])
    """)
    compiling = isolated.start("client", {})
    with selectors.DefaultSelector() as sel:
        sel.register(compiling, selectors.EVENT_READ)
        assert sel.select(timeout=30), "the answer makes it readable"
        sel.unregister(compiling)
    with pytest.raises(RuntimeFailure, match=r"^no$"):
        compiling.result()
    compiling.cancel()                  # after the answer: nothing left to do


def test_a_started_compile_is_cancelled_without_waiting_for_it(child, clean):
    child("import time; time.sleep(60)")
    compiling = isolated.start("client", {})
    started = time.monotonic()
    compiling.cancel()
    compiling.cancel()                  # idempotent (the teardown may run it twice)
    assert time.monotonic() - started < 5, "killed, not waited for"
    assert compiling.proc.returncode is not None
    with pytest.raises(RuntimeFailure, match="cancelled"):
        compiling.result()
