"""Attach and detach on real devices, in throwaway network namespaces.

- attach puts XDP, the tc filters and the pins in place; detach removes all of it;
- a failure half-way leaves nothing of ours behind;
- and one real round trip: a UDP datagram carrying an ICMPv6 echo request enters
  the NIC, is decapsulated (XDP + tc, or tc only) into the tun, the kernel answers,
  the answer leaves the tun, is encapsulated and comes back to the sender's UDP
  socket. This covers what BPF_PROG_TEST_RUN cannot: skb->data_meta
  (rx_redirected), bpf_skb_change_head and bpf_redirect_neigh on a real tun.

Namespaces: A holds the NIC (veth nic0, 192.0.2.10) and the tun (teredo0, held
open by a helper process); B holds the other end (peer0, 192.0.2.20).
"""

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from xdp_teredo.datapath import Config, PeerEntry, client, stats
from xdp_teredo.errors import RuntimeFailure

from tests.conftest import skip_or_fail

from . import packets as P

pytestmark = [pytest.mark.root, pytest.mark.bpf]

NIC_IP, PEER_IP, PEER_UDP_PORT = "192.0.2.10", "192.0.2.20", 50000
LOCAL_PORT = 40001
PEER_ADDRESS = P.teredo_address("192.0.2.1", PEER_IP, PEER_UDP_PORT)

TUN_HOLDER = textwrap.dedent("""
    import fcntl, os, struct, sys
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"teredo0", 0x0001 | 0x1000))  # TUNSETIFF, TUN|NO_PI
    print("ready", flush=True)
    sys.stdin.read()
""")

PEER_ROUND_TRIP = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.settimeout(3)
    s.sendto(bytes.fromhex(sys.argv[5]), (sys.argv[3], int(sys.argv[4])))
    data, addr = s.recvfrom(4096)
    print(addr[0], addr[1], data.hex())
""")


def sh(*cmd, ns=None, check=True):
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(full, check=check, capture_output=True, text=True)


@pytest.fixture
def lab(datapath_program):
    """Two namespaces, a veth pair, a tun held open in A. Everything deleted after."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"xdpt-a-{tag}", f"xdpt-b-{tag}"
    holder = None
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh("ip", "link", "add", "nic0", "type", "veth", "peer", "name", "peer0", "netns", b, ns=a)
        sh("ip", "addr", "add", f"{NIC_IP}/24", "dev", "nic0", ns=a)
        sh("ip", "link", "set", "nic0", "up", ns=a)
        sh("ip", "link", "set", "lo", "up", ns=a)
        sh("ip", "addr", "add", f"{PEER_IP}/24", "dev", "peer0", ns=b)
        sh("ip", "link", "set", "peer0", "up", ns=b)
        holder = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", TUN_HOLDER],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "ready"
        sh("ip", "link", "set", "teredo0", "mtu", "1280", "up", ns=a)
        sh("ip", "-6", "addr", "add", f"{P.OUR_ADDRESS}/128", "dev", "teredo0", "nodad", ns=a)
        sh("ip", "-6", "route", "add", "2001::/32", "dev", "teredo0", ns=a)
        from pyroute2 import IPRoute

        with IPRoute(netns=a) as ipr:
            nic = ipr.link_lookup(ifname="nic0")[0]
            tun = ipr.link_lookup(ifname="teredo0")[0]
        datapath_program.reset()
        yield {"a": a, "b": b, "nic": nic, "tun": tun, "prog": datapath_program}
    finally:
        datapath_program.reset()
        if holder is not None:
            holder.stdin.close()
            holder.wait(timeout=5)
        sh("ip", "netns", "del", a, check=False)
        sh("ip", "netns", "del", b, check=False)


@pytest.fixture
def pin_root():
    if not stats.is_bpffs("/sys/fs/bpf"):
        skip_or_fail("no bpffs on /sys/fs/bpf (make setup mounts it)")
    root = f"/sys/fs/bpf/xdp-teredo-test-{uuid.uuid4().hex[:8]}"
    yield root
    if os.path.isdir(root):
        leftovers = os.listdir(root)
        for d in leftovers:
            os.rmdir(os.path.join(root, d))  # fails (and so the test) if pins were left
        os.rmdir(root)
        assert not leftovers, f"detach left {leftovers} under {root}"


def ours_attached(lab):
    """What of ours is on the devices: XDP mode, tc filter names, clsact present."""
    from pyroute2 import IPRoute

    with IPRoute(netns=lab["a"]) as ipr:
        xdp = ipr.get_links(lab["nic"])[0].get_attr("IFLA_XDP")
        mode = xdp.get_attr("IFLA_XDP_ATTACHED") if xdp else None
        filters = {}
        for dev, parent, where in ((lab["nic"], "ffff:fff2", "nic ingress"),
                                   (lab["tun"], "ffff:fff3", "tun egress")):
            try:
                found = ipr.get_filters(dev, parent=parent)
            except Exception:
                found = []
            filters[where] = sorted(f.get_attr("TCA_OPTIONS").get_attr("TCA_BPF_NAME")
                                    for f in found if f.get_attr("TCA_OPTIONS"))
    qdiscs = sh("tc", "qdisc", "show", ns=lab["a"]).stdout
    return {"xdp": mode, "filters": filters, "clsact": "clsact" in qdiscs}


NOTHING = {"xdp": None, "filters": {"nic ingress": [], "tun egress": []}, "clsact": False}


@pytest.mark.parametrize("ingress,mode,expect", [
    ("xdp", "native", "xdp"), ("xdp", "generic", "xdpgeneric"), ("xdp", "auto", "xdp"), ("tc", "auto", None)])
def test_attach_then_detach_leaves_nothing(lab, pin_root, ingress, mode, expect):
    prog = lab["prog"]
    assert ours_attached(lab) == NOTHING
    with prog.attach(lab["nic"], lab["tun"], ingress=ingress, xdp_mode=mode, netns=lab["a"], pin=True,
                     pin_root=pin_root) as att:
        state = ours_attached(lab)
        assert state["xdp"] == expect
        assert att.xdp_attached == {"xdp": "native", "xdpgeneric": "generic", None: None}[expect]
        rx = "tc_teredo_ingress" if ingress == "xdp" else "tc_teredo_rx"
        assert state["filters"] == {"nic ingress": [rx], "tun egress": ["tc_teredo_tx"]}
        assert sorted(os.listdir(att.pin_dir)) == sorted(client.MAPS)  # the guard's maps too
        assert os.path.basename(att.pin_dir) == stats.instance_name(lab["nic"], lab["a"])
        with pytest.raises(RuntimeFailure, match="attached already"):
            prog.attach(lab["nic"], lab["tun"], netns=lab["a"], pin=False)
    assert ours_attached(lab) == NOTHING
    assert prog.attachment is None
    att.detach()  # idempotent


def test_failure_half_way_undoes_everything(lab, pin_root):
    """Another XDP program on the NIC: the tc filters attached before it are removed."""
    from pyroute2 import IPRoute

    prog = lab["prog"]
    foreign = prog.functions["xdp_rx"]  # stands in for someone else's program
    with IPRoute(netns=lab["a"]) as ipr:
        ipr.link("set", index=lab["nic"], xdp={"attrs": [("IFLA_XDP_FD", foreign.fd), ("IFLA_XDP_FLAGS", 2)]})
    with pytest.raises(RuntimeFailure, match="another XDP program"):
        prog.attach(lab["nic"], lab["tun"], xdp_mode="generic", netns=lab["a"], pin=True, pin_root=pin_root)
    state = ours_attached(lab)
    assert state == dict(NOTHING, xdp="xdpgeneric"), "only the foreign program is left"
    assert prog.attachment is None


def test_missing_device_is_a_clear_error(lab):
    with pytest.raises(RuntimeFailure, match="no tun device with ifindex 999"):
        lab["prog"].attach(lab["nic"], 999, netns=lab["a"], pin=False)
    assert ours_attached(lab) == NOTHING


@pytest.mark.parametrize("ingress,mode", [("xdp", "native"), ("xdp", "generic"), ("tc", "auto")])
def test_real_round_trip_through_the_kernel(lab, ingress, mode):
    prog = lab["prog"]
    with prog.attach(lab["nic"], lab["tun"], ingress=ingress, xdp_mode=mode, netns=lab["a"], pin=False) as att:
        att.configure(Config(local_ipv4=NIC_IP, local_port=LOCAL_PORT, teredo_address=P.OUR_ADDRESS))
        att.peers.put(PeerEntry(address=PEER_ADDRESS, mapped_ipv4=PEER_IP, mapped_port=PEER_UDP_PORT))
        request = P.inner_ipv6(PEER_ADDRESS, P.OUR_ADDRESS, b"teredo round trip")
        out = sh(sys.executable, "-c", PEER_ROUND_TRIP, PEER_IP, str(PEER_UDP_PORT), NIC_IP, str(LOCAL_PORT),
                 request.hex(), ns=lab["b"], check=False)
        counted = {k: v["packets"] for k, v in att.stats().items() if v["packets"]}
        assert out.returncode == 0, (out.stderr, counted)
        src, sport, payload = out.stdout.split()
        assert (src, int(sport)) == (NIC_IP, LOCAL_PORT), "from our Teredo socket's address and port"
        reply = bytes.fromhex(payload)
        from scapy.layers.inet6 import ICMPv6EchoReply, IPv6

        pkt = IPv6(reply)
        assert (pkt.src, pkt.dst) == (str(P.OUR_ADDRESS), str(PEER_ADDRESS))
        assert pkt.haslayer(ICMPv6EchoReply) and pkt[ICMPv6EchoReply].data == b"teredo round trip"
        assert counted.get("decapsulated") == 1 and counted.get("encapsulated") == 1, counted
        if ingress == "xdp":
            assert counted.get("rx_redirected") == 1, counted
        peer = att.peers.get(PEER_ADDRESS)
        assert (peer.rx_packets, peer.tx_packets) == (1, 1)


def test_detach_stale_removes_what_a_dead_instance_left(lab, pin_root):
    from xdp_teredo.datapath.client import detach_stale

    prog = lab["prog"]
    att = prog.attach(lab["nic"], lab["tun"], xdp_mode="generic", netns=lab["a"], pin=True, pin_root=pin_root)
    pin_dir = att.pin_dir
    att._undo.clear()          # the process "dies": nothing will be undone
    prog.attachment = None
    assert ours_attached(lab)["xdp"] == "xdpgeneric"
    removed = detach_stale(lab["nic"], lab["tun"], netns=lab["a"], pin_root=pin_root)
    assert len(removed) == 2 + 1 + len(client.MAPS), removed  # two filters, XDP, every pin
    assert ours_attached(lab) == dict(NOTHING, clsact=True), "clsact itself is harmless and stays"
    assert not os.path.exists(pin_dir)
    assert detach_stale(lab["nic"], lab["tun"], netns=lab["a"], pin_root=pin_root) == []
