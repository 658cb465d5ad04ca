"""A SIGTERM while a role is still setting up leaves nothing behind, for each role.

The skeleton (daemon/base.py) installs its signal handlers before set-up, and
set-up gives up at its next checkpoint: the teardown then removes exactly what was
made (the client, which serves on its slow path while it compiles, in its
teardown). Each role is stopped at two moments: while its control socket is up but its
BPF programs are still compiling (seconds), and as soon as its tun device exists
(the steps after it take milliseconds: the signal lands in set-up or just after;
either way nothing may remain). The signal goes to the daemon alone, as `kill PID`
does, not to its process group: the compiling child must go away by itself.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e import client_support as cs

CLI = [sys.executable, "-m", "xdp_teredo.cli", "--log-format", "json"]


def _listening(lab, host, name):
    return name in lab.run(host, "ss", "-x", "-l", "-n").stdout


def _has_link(lab, host, name):
    return lab.run(host, "ip", "link", "show", "dev", name, check=False).returncode == 0


def _wait(what, probe, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not probe():
        assert proc.alive(), f"exited before {what}:\n{proc.output()[-2000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{proc.output()[-2000:]}"
        time.sleep(0.01)


def _terminate(proc, role):
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.output()[-2000:]
    stopped = cs.events(proc, f"{role}_stopped")
    assert stopped and stopped[-1]["signal"] == "SIGTERM", proc.output()[-2000:]
    return stopped[-1]


def _compiler_running(proc) -> bool:
    """Whether the child that compiles for this daemon runs (its request names the
    daemon's pid as "parent"; other daemons on the machine may be compiling too)."""
    pattern = f'"parent": {proc.pid}[,}}]'
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def _no_compiler_left(proc):
    cs.wait_until("the compiling child is gone", lambda: not _compiler_running(proc),
                  timeout=15)


def _moment(lab, host, moment, proc):
    if moment == "compiling":
        _wait("control socket", lambda: _listening(lab, host, "@xdp-teredo-tunnel-teredo"), proc)
        _wait("the compiling child", lambda: _compiler_running(proc), proc)
    else:
        _wait("tun device", lambda: _has_link(lab, host, "teredo"), proc)


@pytest.mark.parametrize("moment", ["compiling", "tunnel"])
def test_client(make_lab, moment):
    lab = make_lab("client1")
    proc = lab.spawn("client1", *CLI, "attach", "eth0", "--server", cs.SERVER,
                     log=f"client-{moment}.log")
    _moment(lab, "client1", moment, proc)
    _terminate(proc, "client")
    assert cs.leftovers(lab, "client1") == cs.NOTHING_LEFT
    if moment == "compiling":
        # The client does not wait for its compile (client/handover.py): it serves
        # on the slow path meanwhile, and the teardown stops the child (as nobody,
        # which cannot signal root's child: PR_SET_PDEATHSIG ends it with us).
        assert not cs.events(proc, "fast_path_ready"), "the compile should still run"
    _no_compiler_left(proc)


@pytest.mark.parametrize("moment", ["compiling", "tunnel"])
def test_relay(make_lab, moment):
    lab = make_lab("relay", "v6host")
    h = lab["relay"]
    proc = lab.spawn("relay", *CLI, "relay", "--ipv4-iface", h.uplink, "--ipv6-iface", h.lan,
                     log=f"relay-{moment}.log")
    _moment(lab, "relay", moment, proc)
    _terminate(proc, "relay")
    assert not _has_link(lab, "relay", "teredo")
    assert not _listening(lab, "relay", "@xdp-teredo-tunnel-teredo")
    for dev in (h.uplink, h.lan):
        assert "prog/xdp" not in lab.run("relay", "ip", "link", "show", "dev", dev).stdout
        for parent in ("ingress", "egress"):
            shown = lab.run("relay", "tc", "filter", "show", "dev", dev, parent, check=False)
            assert "teredo" not in shown.stdout, shown.stdout
    assert "3544" not in lab.run("relay", "ss", "-u", "-l", "-n").stdout
    _no_compiler_left(proc)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_server(make_lab, delay):
    """The server's set-up is short (two sockets; its XDP program compiles while it
    serves): stopped as soon as its control socket is up, and a little later."""
    lab = make_lab("server")
    proc = lab.spawn("server", *CLI, "server", "--bind", "192.0.2.1", log=f"server-{delay}.log")
    _wait("control socket", lambda: _listening(lab, "server", "@xdp-teredo-server"), proc)
    time.sleep(delay)
    _terminate(proc, "server")
    assert not _listening(lab, "server", "@xdp-teredo-server")
    assert "3544" not in lab.run("server", "ss", "-u", "-l", "-n").stdout
    # It serves while its XDP program compiles: the teardown stops that child.
    assert not cs.events(proc, "server_fast_path_ready")
    _no_compiler_left(proc)
