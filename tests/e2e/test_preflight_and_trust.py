"""The first minute of a user, in a lab namespace: each role run as a non-root user
is one line at once; a control socket name squatted by another user is named as
such by `status` and by `attach`, whose answer is never shown."""

from __future__ import annotations

import json
import sys
import time

import pytest

from . import client_support as cs

pytestmark = [pytest.mark.root, pytest.mark.e2e]

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]

# A squatter: binds the client's control socket name first and answers every asker
# with a made-up status (what the issue saw printed as `qualified`).
SQUATTER = r"""
import json, os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0xdp-teredo-tunnel-teredo")
s.listen(8)
print(json.dumps({"pid": os.getpid(), "uid": os.getuid()}), flush=True)
while True:
    c, _ = s.accept()
    try:
        c.recv(4096)
        c.sendall(json.dumps({"role": "client", "state": "qualified",
                              "address": "2001:0:dead:beef::1", "server": "6.6.6.6"}).encode())
    except OSError:
        pass  # the asker hung up without asking: ours do, once they see who we are
    c.close()
"""


def _one_line_error(res) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xdp-teredo: error:"), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


@pytest.fixture(scope="module")
def bare(make_module_lab):
    """A host on the IPv4 internet (public, 203.0.113.10), nothing running."""
    return make_module_lab("public")


def test_a_squatted_control_socket_is_named_by_status_and_refused_by_attach(bare):
    lab = bare
    squatter = lab.spawn("public", *AS_NOBODY, "/usr/bin/python3", "-c", SQUATTER,
                         log="squatter.log")
    try:
        found = json.loads(squatter.wait_for_output(r"\{.*\}", timeout=10).group(0))
        assert found["uid"] == NOBODY
        said = (f"@xdp-teredo-tunnel-teredo is held by uid {NOBODY} (pid {found['pid']}), "
                "not by an xdp-teredo daemon")
        for argv in (["status"], ["status", "--json"], ["peers"]):
            res = cs.cli(lab, "public", *argv)
            assert res.returncode == 1, (res.stdout, res.stderr)
            assert said in _one_line_error(res)
            assert res.stdout == "" and "dead:beef" not in res.stderr
        res = cs.cli(lab, "public", "attach", "eth0", "--server", cs.SERVER, timeout=60)
        assert res.returncode == 1, (res.stdout, res.stderr)
        line = _one_line_error(res)
        assert said in line and "already running" not in line
    finally:
        squatter.stop()
    left = cs.leftovers(lab, "public")
    assert left == cs.NOTHING_LEFT, left


@pytest.mark.parametrize("argv", [
    ["attach", "eth0", "--server", cs.SERVER],
    ["relay", "--ipv4-iface", "eth0", "--ipv6-iface", "eth0"],
    ["server", "--bind", "203.0.113.10"],
], ids=["attach", "relay", "server"])
def test_each_role_as_a_user_is_one_line_non_zero_under_2_s(bare, argv):
    started = time.monotonic()
    res = bare.run("public", *AS_NOBODY, sys.executable, "-m", "xdp_teredo.cli", *argv,
                   check=False, timeout=30)
    took = time.monotonic() - started
    assert res.returncode == 2, (res.stdout, res.stderr)
    line = _one_line_error(res)
    assert "needs root" in line and f"this is uid {NOBODY}" in line, line
    assert took < 2, f"{took:.2f} s"
    assert cs.leftovers(bare, "public") == cs.NOTHING_LEFT


def test_an_interface_that_is_down_is_exit_2_before_anything_is_touched(make_lab):
    lab = make_lab("public")
    lab.run("public", "ip", "link", "set", "eth0", "down")
    for argv, says in ((["attach", "eth0", "--server", cs.SERVER],
                        "interface eth0 is down: ip link set eth0 up"),
                       (["relay", "--ipv4-iface", "eth0", "--ipv6-iface", "lo"],
                        "--ipv4-iface eth0 is down")):
        started = time.monotonic()
        res = cs.cli(lab, "public", *argv, timeout=30)
        assert res.returncode == 2, (res.stdout, res.stderr)
        assert says in _one_line_error(res)
        assert time.monotonic() - started < 5
    assert cs.leftovers(lab, "public") == cs.NOTHING_LEFT


# Another tool's XDP program (a plain XDP_PASS named like nothing of ours), attached
# in generic mode; netlink attachments outlive the process that made them.
FOREIGN_XDP = r"""
import sys
from bcc import BPF
from xdp_teredo.datapath import kheaders
kheaders.export()
b = BPF(text="int other_tool(struct xdp_md *ctx) { return XDP_PASS; }")
b.attach_xdp(sys.argv[1], b.load_func("other_tool", BPF.XDP), BPF.XDP_FLAGS_SKB_MODE)
"""


def test_another_tools_xdp_program_is_exit_2_naming_it(make_lab, require_bcc):
    lab = make_lab("public")
    lab.run("public", sys.executable, "-c", FOREIGN_XDP, "eth0", timeout=60)
    try:
        for argv, way_out in ((["attach", "eth0", "--server", cs.SERVER], "--xdp-mode off"),
                              (["relay", "--ipv4-iface", "eth0", "--ipv6-iface", "eth0"],
                               "--path tc")):
            res = cs.cli(lab, "public", *argv, timeout=30)
            assert res.returncode == 2, (res.stdout, res.stderr)
            line = _one_line_error(res)
            assert "eth0 already runs another XDP program (other_tool, id " in line, line
            assert way_out in line
        # Still there, untouched.
        assert "prog/xdp id" in lab.run("public", "ip", "link", "show", "dev", "eth0").stdout
    finally:
        lab.run("public", "ip", "link", "set", "dev", "eth0", "xdpgeneric", "off", check=False)
