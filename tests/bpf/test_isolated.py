"""The data path compiled in a child process (datapath/isolated.py,
ClientDatapath.compile_isolated, RelayDatapath.compile_isolated), as the daemons build it.

- The programs received as descriptors do what the in-process build does, through
  BPF_PROG_TEST_RUN: a decapsulation and an encapsulation (the client's), a
  forwarded decapsulation through XDP and tc (the relay's), output and counters
  equal to the in-process build's.
- The process that asked never imports bcc (checked in a fresh interpreter: this
  test process has bcc loaded for the other tests), not even when attach checks
  the kernel's features.
- Adoption: compiled against running maps (maps=), the new programs see what was
  written in them before, and write where the old ones read.
- Failures (no source, C that does not compile, a program the verifier refuses)
  are the in-process build's RuntimeFailure, word for word, on one line; and they
  leave no descriptor open and no child behind.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from xdp_teredo.datapath import ClientDatapath, client, source
from xdp_teredo.datapath.libbpf import MapFd
from xdp_teredo.datapath.relay import RelayDatapath
from xdp_teredo.errors import RuntimeFailure

from tests.procfs import children, open_fds

from . import packets as P
from .conftest import TC_ACT_REDIRECT, XDP_PASS, Harness
from .test_relay import (CLIENT, CLIENT_IPV4, CLIENT_PORT, DECAP, HOST_MAC, LAN0_MAC, XDP_REDIRECT,
                         Relay, assert_forwarded_native, in_netns, relay_ns)  # noqa: F401 (fixture)
from .test_rx import assert_decapsulated, data_from_peer
from .test_tx import assert_encapsulated, to_peer

pytestmark = [pytest.mark.root, pytest.mark.bpf]

PEER_MAX = 1024






@pytest.fixture(scope="module")
def isolated_program(require_bcc):
    prog = ClientDatapath.compile_isolated(peer_max=PEER_MAX)
    yield prog
    prog.close()


@pytest.fixture
def iso(isolated_program):
    isolated_program.reset()
    yield Harness(isolated_program)
    isolated_program.reset()


def test_what_the_child_sends_is_a_whole_data_path(isolated_program):
    prog = isolated_program
    assert prog.bpf is None, "no bcc object in this process"
    assert {k: f.name for k, f in prog.functions.items()} == \
        {k: func for k, (func, _) in client.PROGRAMS.items()}
    assert set(prog.maps) == set(client.MAPS)
    assert all(m.owned for m in prog.maps.values())
    assert prog.maps["peers"].max_entries == PEER_MAX
    assert f"-DTEREDO_PEER_MAX={PEER_MAX}" in prog.cflags
    # The child probed the kernel for attach (probe.py): every feature, by name.
    from xdp_teredo.datapath import probe

    names = {f.name for f in prog.features}
    assert names == set(probe.TX_FEATURES) | {f for fs in probe.RX_FEATURES.values() for f in fs}


def test_decapsulation_as_in_process(iso, dp):
    """Plain Teredo from a trusted peer through xdp_teredo_rx and tc_teredo_rx."""
    frame = data_from_peer()
    outcomes = {}
    for name, h in (("isolated", iso), ("in-process", dp)):
        h.configure()
        h.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT)
        outcomes[name] = (h.xdp(frame), h.tc_rx(frame))
    (xdp, tc), (xdp_ref, tc_ref) = outcomes["isolated"], outcomes["in-process"]
    assert xdp.retval == XDP_PASS and xdp.counted == {"decapsulated": 1}
    assert_decapsulated(frame, xdp.frame)
    assert tc.retval == TC_ACT_REDIRECT and tc.counted == {"decapsulated": 1}
    assert (xdp.data, tc.data) == (xdp_ref.data, tc_ref.data), "the in-process build's output"
    assert iso.prog.peers.get(P.PEER_ADDRESS).rx_packets == 2


def test_encapsulation_as_in_process(iso, dp):
    """IPv6 to a trusted peer through tc_teredo_tx."""
    frame = to_peer()
    outs = []
    for h in (iso, dp):
        h.configure()
        h.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT)
        outs.append(h.tc_tx(frame))
    out, ref = outs
    assert out.retval == TC_ACT_REDIRECT and out.counted == {"encapsulated": 1}
    assert_encapsulated(frame, out.frame, P.PEER_IPV4, P.PEER_PORT, ip_id=0)
    assert out.data == ref.data


def test_the_relay_compiled_in_a_child_forwards(require_bcc, relay_ns):
    """A client's packet to a native host, through XDP (devmap) and tc."""
    prog = RelayDatapath.compile_isolated(peer_max=PEER_MAX)
    try:
        assert prog.bpf is None and prog.maps["peers"].max_entries == PEER_MAX
        relay = Relay(prog, relay_ns)
        relay.configure()
        relay.xdp_targets("up0", "lan0", "small0")
        case = DECAP[0]
        for hook, action in (("xdp", XDP_REDIRECT), ("tc", TC_ACT_REDIRECT)):
            frame = case.frame()
            out = relay.xdp(frame) if hook == "xdp" else relay.tc(frame)
            assert out.retval == action and out.counted == {"decapsulated": 1}, hook
            assert_forwarded_native(frame, out.frame, hook, LAN0_MAC, HOST_MAC)
        peer = prog.peers.get(CLIENT)
        assert (str(peer.mapped_ipv4), peer.mapped_port, peer.rx_packets) == \
            (CLIENT_IPV4, CLIENT_PORT, 2), "learned by the relay program"
    finally:
        in_netns(relay_ns["ns"], prog.egress.clear)
        prog.close()


NO_BCC_HERE = textwrap.dedent("""
    import json, sys
    from xdp_teredo.datapath import ClientDatapath, probe, testrun
    from xdp_teredo.datapath.relay import RelayDatapath
    from xdp_teredo.errors import RuntimeFailure

    prog = ClientDatapath.compile_isolated(peer_max=64)
    relay = RelayDatapath.compile_isolated(peer_max=64)
    probe.require(probe.TX_FEATURES, prog.features)
    # attach checks the kernel's features first (then fails: no such device).
    try:
        prog.attach(2**31 - 1, 2**31 - 2, pin=False)
        attached = "attached?"
    except RuntimeFailure as err:
        attached = str(err)
    ran = testrun.run(prog.fd("tc_tx"), b"\\0" * 60).retval
    prog.close()
    relay.close()
    with open("/proc/self/maps") as f:
        libbcc = any("libbcc" in line for line in f)
    print(json.dumps({"bcc": sorted(m for m in sys.modules if m == "bcc" or m.startswith("bcc.")),
                      "libbcc": libbcc, "attach": attached, "ran": ran}))
""")


def test_the_asking_process_never_loads_bcc(require_bcc):
    out = subprocess.run([sys.executable, "-c", NO_BCC_HERE], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["bcc"] == [] and seen["libbcc"] is False, seen
    assert "no NIC device with ifindex" in seen["attach"], seen
    assert seen["ran"] == 0, "tc_teredo_tx ran (TC_ACT_OK: not IPv6)"
    # The child's log events came out through this process's logging.
    assert "datapath_compiled" in out.stdout + out.stderr


def test_adoption_compiles_against_the_running_maps(isolated_program, dp):
    """maps=: what a running data path (here the in-process build) wrote is what the
    child's programs read, and what they count is in the running maps."""
    dp.configure()
    dp.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT)
    # By the names the kernel keeps (15 characters), as adopt.open_maps gives them.
    running = {m.name: MapFd(os.dup(m.fd), owned=True) for m in dp.prog.maps.values()}
    try:
        new = ClientDatapath.compile_isolated(peer_max=PEER_MAX, maps=running)
    finally:
        for m in running.values():
            m.close()
    try:
        assert {n[:15] for n in new.reused} == set(running)
        assert new.config.read().teredo_address == P.OUR_ADDRESS
        assert new.maps["peers"].id == dp.prog.maps["peers"].id, "the very same map"
        frame = to_peer()
        out = Harness(new).tc_tx(frame)
        assert out.retval == TC_ACT_REDIRECT and out.counted == {"encapsulated": 1}, \
            "the new program found the peer written before"
        assert_encapsulated(frame, out.frame, P.PEER_IPV4, P.PEER_PORT, ip_id=0)
        assert dp.prog.peers.get(P.PEER_ADDRESS).tx_packets == 1, "counted in the running map"
    finally:
        new.close()


def test_close_closes_each_descriptor_once(require_bcc):
    before = open_fds()
    prog = ClientDatapath.compile_isolated(peer_max=64)
    held = set(open_fds()) - set(before)
    assert len(held) == len(client.PROGRAMS) + len(client.MAPS)
    prog.close()
    assert open_fds() == before
    # A descriptor opened now may get one of those numbers: a second close leaves it.
    with open("/dev/null") as f:
        prog.close()
        os.fstat(f.fileno())


def _verifier_refuses(dest) -> str:
    """A copy of bpf/ whose xdp_teredo_rx reads the packet without a bounds check."""
    shutil.copytree(source.bpf_dir(), dest)
    unit = dest / "client.c"
    text, count = re.subn(r"(\nint xdp_teredo_rx\(struct xdp_md \*ctx\)\n\{\n)",
                          lambda m: m.group(1) + "\tif (*(volatile __u8 *)(long)ctx->data == 0xff)"
                                                 " return XDP_DROP;\n", unit.read_text())
    assert count == 1
    unit.write_text(text)
    return str(dest)


def _does_not_compile(dest) -> str:
    shutil.copytree(source.bpf_dir(), dest)
    with open(dest / "client.c", "a") as f:
        f.write("\nthis is not C;\n")
    return str(dest)


@pytest.mark.parametrize("make,message", [
    (lambda d: str(d / "nowhere"), r"cannot compile .*/nowhere/client\.c"),
    (_does_not_compile, r"cannot compile .*/client\.c: Failed to compile BPF module"),
    (_verifier_refuses, r"the verifier rejected xdp_teredo_rx"),
], ids=["no source", "compile error", "verifier"])
def test_a_failure_is_the_in_process_failure_and_leaves_nothing(require_bcc, tmp_path, make,
                                                                 message):
    source_dir = make(tmp_path / "bpf")
    with pytest.raises(RuntimeFailure) as in_process:
        ClientDatapath.compile(source_dir=source_dir)
    fds, kids = open_fds(), children()
    with pytest.raises(RuntimeFailure, match=message) as isolated:
        ClientDatapath.compile_isolated(source_dir=source_dir)
    assert open_fds() == fds, "no descriptor left open"
    assert children() == kids, "the child was reaped"
    assert str(isolated.value) == str(in_process.value)
    assert "\n" not in str(isolated.value) and "Traceback" not in str(isolated.value)


def test_a_failure_with_running_maps_leaves_them_open_and_nothing_else(dp, tmp_path):
    running = {m.name: MapFd(os.dup(m.fd), owned=True) for m in dp.prog.maps.values()}
    try:
        fds = open_fds()
        with pytest.raises(RuntimeFailure, match="cannot compile"):
            ClientDatapath.compile_isolated(source_dir=str(tmp_path / "nowhere"), maps=running)
        assert open_fds() == fds
        for m in running.values():
            os.fstat(m.fd)  # still the caller's
    finally:
        for m in running.values():
            m.close()
