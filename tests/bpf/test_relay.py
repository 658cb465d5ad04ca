"""The relay's programs (bpf/relay.c) through BPF_PROG_TEST_RUN.

The relay forwards, so its verdicts depend on the kernel's fib: bpf_fib_lookup
answers from the routes and neighbours of the network namespace the test run
happens in (the caller's, i.e. the calling *thread's*). So every run happens in a
thread that setns()'d into a throwaway namespace "R" holding a relay's devices:

    up0    192.0.2.20/28, 2001:db8:3::1/64   the IPv4 side; gateway 192.0.2.30 (MAC GW4_MAC)
    lan0   2001:db8:1::1/64                  native IPv6; host 2001:db8:1::2 (MAC HOST_MAC),
                                             2001:db8:1::3 has no neighbour entry
    small0 mtu 1280, 2001:db8:5::/64         a narrow link (Packet Too Big)
    unreachable 2001:db8:dead::/48           a route the stack refuses

(each a veth whose other end is up in a second namespace). Devmap updates resolve
ifindexes in the updating thread's namespace too, so they happen in R as well.

Fixture tables, each case through XDP (xdp_teredo_relay) and tc (tc_teredo_relay):
a reason, the action, and the output packet checked field by field. tc test runs
return TC_ACT_REDIRECT without sending anything; XDP ones XDP_REDIRECT.
"""

import ctypes
import ipaddress
import os
import struct
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xdp_teredo.datapath import Config, PeerEntry, PeerFlag, Reason, now_ns, testrun
from xdp_teredo.datapath.layout import Kind
from xdp_teredo.datapath.maps import delta

from . import packets as P

pytestmark = [pytest.mark.root, pytest.mark.bpf]

R = Reason
XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
SECOND = 1_000_000_000

RELAY_IPV4, RELAY_PORT = "192.0.2.20", 3544
GW4, GW4_MAC = "192.0.2.30", "02:00:00:00:00:1e"
UP0_MAC, LAN0_MAC, SMALL0_MAC = "02:00:00:00:00:14", "02:00:00:00:01:01", "02:00:00:00:05:01"
HOST, HOST_MAC = "2001:db8:1::2", "02:00:00:00:01:02"
HOST_NO_NEIGH = "2001:db8:1::3"
NARROW_HOST = "2001:db8:5::2"
UNREACHABLE = "2001:db8:dead::1"
SERVER = "192.0.2.1"
# Teredo clients: behind a NAT whose mapping is 198.51.100.1:40000 (reached
# through the gateway), and one whose mapping is on up0's own link without a
# neighbour entry (the fib answers NO_NEIGH).
CLIENT_IPV4, CLIENT_PORT = "198.51.100.1", 40000
CLIENT = P.teredo_address(SERVER, CLIENT_IPV4, CLIENT_PORT)
NEAR_IPV4, NEAR_PORT = "192.0.2.25", 50000
NEAR_CLIENT = P.teredo_address(SERVER, NEAR_IPV4, NEAR_PORT)

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def in_netns(netns: str, fn: Callable):
    """fn() in a thread that entered `netns`: network namespaces are per thread."""
    result = {}

    def body():
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {netns}")
        finally:
            os.close(fd)
        try:
            result["value"] = fn()
        except BaseException as err:  # re-raised in the caller
            result["error"] = err

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def sh(*cmd, ns=None):
    full = (["ip", "netns", "exec", ns] if ns else []) + [str(c) for c in cmd]
    return subprocess.run(full, check=True, capture_output=True, text=True)


def ifindex(ns: str, name: str) -> int:
    return int(sh("cat", f"/sys/class/net/{name}/ifindex", ns=ns).stdout)


@pytest.fixture(scope="module")
def relay_program(require_bcc):
    from xdp_teredo.datapath.relay import RelayDatapath

    prog = RelayDatapath.compile(peer_max=1024)
    yield prog
    prog.close()


@pytest.fixture(scope="module")
def relay_ns(require_root):
    tag = uuid.uuid4().hex[:6]
    r, p = f"xt-rbpf-{tag}", f"xt-rbpf-{tag}-p"
    sh("ip", "netns", "add", r)
    sh("ip", "netns", "add", p)
    try:
        for key, value in (("net.ipv6.conf.all.accept_dad", 0), ("net.ipv6.conf.default.accept_dad", 0),
                           ("net.ipv6.conf.all.forwarding", 1)):
            sh("sysctl", "-q", "-w", f"{key}={value}", ns=r)
        for name, mac in (("up0", UP0_MAC), ("lan0", LAN0_MAC), ("small0", SMALL0_MAC)):
            sh("ip", "link", "add", name, "address", mac, "type", "veth", "peer", "name", name + "p",
               "netns", p, ns=r)
            sh("ip", "link", "set", name + "p", "up", ns=p)
            sh("ip", "link", "set", name, "up", ns=r)
        sh("ip", "link", "set", "small0", "mtu", "1280", ns=r)
        sh("sysctl", "-q", "-w", "net.ipv4.conf.up0.forwarding=1", ns=r)
        for cmd in (
            ["ip", "addr", "add", "192.0.2.20/28", "dev", "up0"],
            ["ip", "addr", "add", "2001:db8:3::1/64", "dev", "up0", "nodad"],
            ["ip", "addr", "add", "2001:db8:1::1/64", "dev", "lan0", "nodad"],
            ["ip", "addr", "add", "2001:db8:5::1/64", "dev", "small0", "nodad"],
            ["ip", "route", "add", "default", "via", GW4],
            ["ip", "-6", "route", "add", "default", "via", "2001:db8:3::ff"],
            ["ip", "-6", "route", "add", "unreachable", "2001:db8:dead::/48"],
            ["ip", "neigh", "add", GW4, "lladdr", GW4_MAC, "dev", "up0", "nud", "permanent"],
            ["ip", "neigh", "add", HOST, "lladdr", HOST_MAC, "dev", "lan0", "nud", "permanent"],
            ["ip", "neigh", "add", NARROW_HOST, "lladdr", HOST_MAC, "dev", "small0", "nud", "permanent"],
        ):
            sh(*cmd, ns=r)
        yield {"ns": r, "up0": ifindex(r, "up0"), "lan0": ifindex(r, "lan0"),
               "small0": ifindex(r, "small0")}
    finally:
        subprocess.run(["ip", "netns", "del", r])
        subprocess.run(["ip", "netns", "del", p])


@dataclass
class Outcome:
    retval: int
    frame: bytes
    counted: Dict[str, int]


class Relay:
    """The relay's programs, its maps, and runs inside namespace R."""

    def __init__(self, prog, net):
        self.prog = prog
        self.net = net
        self.config: Optional[Config] = None

    def configure(self, **changes) -> Config:
        base = dict(local_ipv4=RELAY_IPV4, local_port=RELAY_PORT, nic_ifindex=self.net["up0"],
                    tun_ifindex=1, relay=True, learn_peers=True, l2_len=14)
        base.update(changes)
        self.config = Config(**base)
        self.prog.config.write(self.config)
        return self.config

    def xdp_targets(self, *names):
        in_netns(self.net["ns"], lambda: self.prog.egress.set(self.net[n] for n in names))

    def add_peer(self, address, ipv4, port, flags=PeerFlag.TRUSTED, last_rx_ns=None, **kw) -> PeerEntry:
        entry = PeerEntry(address=address, mapped_ipv4=ipv4, mapped_port=port, flags=flags,
                          last_rx_ns=now_ns() if last_rx_ns is None else last_rx_ns, **kw)
        self.prog.peers.put(entry)
        return entry

    def _run(self, hook: str, frame: bytes, **ctx) -> Outcome:
        before = self.prog.stats()
        fd = self.prog.fd(hook)
        if hook == "xdp":
            result = in_netns(self.net["ns"], lambda: testrun.run_xdp(
                fd, frame, ingress_ifindex=ctx.get("ingress", self.net["up0"])))
        else:
            # struct __sk_buff: ingress_ifindex @36, ifindex @40, wire_len @160,
            # gso_segs @164, gso_size @176 (uapi/linux/bpf.h); 192 bytes.
            skb = bytearray(192)
            dev = ctx.get("ingress", self.net["up0"])
            struct.pack_into("=II", skb, 36, dev, dev)
            struct.pack_into("=II", skb, 160, len(frame), ctx.get("gso_segs", 0))
            struct.pack_into("=I", skb, 176, ctx.get("gso_size", 0))
            result = in_netns(self.net["ns"], lambda: testrun.run(
                fd, frame, ctx_in=bytes(skb), ctx_out_size=192))
        return Outcome(result.retval, result.frame, delta(before, self.prog.stats()))

    def xdp(self, frame: bytes, **ctx) -> Outcome:
        return self._run("xdp", frame, **ctx)

    def tc(self, frame: bytes, **ctx) -> Outcome:
        return self._run("tc", frame, **ctx)


@pytest.fixture
def relay(relay_program, relay_ns):
    relay_program.reset()
    harness = Relay(relay_program, relay_ns)
    harness.configure()
    harness.xdp_targets("up0", "lan0", "small0")
    yield harness
    in_netns(relay_ns["ns"], relay_program.reset)


# --------------------------------------------------------------------- packets


def from_client(inner: bytes, *, src=CLIENT_IPV4, sport=CLIENT_PORT, dst=RELAY_IPV4,
                dport=RELAY_PORT, trailer: bytes = b"") -> bytes:
    """What a client's NAT sends the relay: Ethernet | IPv4 | UDP | inner [| junk]."""
    frame = bytes(Ether(src=GW4_MAC, dst=UP0_MAC) / IP(src=src, dst=dst, ttl=50, id=7)
                  / UDP(sport=sport, dport=dport) / inner)
    return frame + trailer


def to_native(dst=HOST, src=CLIENT, size: Optional[int] = None, hlim: int = 64) -> bytes:
    payload = b"ping" * 8 if size is None else b"x" * (size - 48)
    return P.inner_ipv6(src, dst, payload, hlim=hlim)


def native_frame(dst=CLIENT, src=HOST, size: Optional[int] = None, hlim: int = 64,
                 eth_dst: str = LAN0_MAC) -> bytes:
    """A native IPv6 packet routed to the relay, to a Teredo client."""
    payload = b"pong" * 8 if size is None else b"x" * (size - 48)
    return bytes(Ether(src=HOST_MAC, dst=eth_dst, type=0x86DD)) + P.inner_ipv6(src, dst, payload, hlim=hlim)


def trusted_client(relay, **kw):
    relay.add_peer(CLIENT, CLIENT_IPV4, CLIENT_PORT, **kw)


def near_client(relay, **kw):
    relay.add_peer(NEAR_CLIENT, NEAR_IPV4, NEAR_PORT, **kw)


# --------------------------------------------------------------------- decapsulation


@dataclass
class Case:
    id: str
    frame: Callable[[], bytes]
    xdp: Reason
    tc: Reason
    setup: Optional[Callable] = None
    config: Dict = field(default_factory=dict)
    egress: str = "lan0"   # where a forwarded packet leaves


DECAP = [
    Case("client to native host (§5.4.2)", lambda: from_client(to_native()), R.DECAPSULATED, R.DECAPSULATED),
    Case("known client, entry refreshed", lambda: from_client(to_native()), R.DECAPSULATED, R.DECAPSULATED,
         trusted_client),
    Case("junk after the IPv4 packet is not forwarded", lambda: from_client(to_native(), trailer=b"\0" * 9),
         R.DECAPSULATED, R.DECAPSULATED),
    Case("source embeds another port (§5.4.2: discard)",
         lambda: from_client(to_native(), sport=CLIENT_PORT + 1), R.RELAY_SOURCE_MISMATCH, R.RELAY_SOURCE_MISMATCH),
    Case("native (non-Teredo) source (§5.4.2: discard)",
         lambda: from_client(to_native(src="2001:db8:7::1")), R.RELAY_SOURCE_MISMATCH, R.RELAY_SOURCE_MISMATCH),
    Case("bubble: for the control plane (§5.4.1 answer)",
         lambda: from_client(P.bubble(CLIENT, "fe80::1234")), R.RX_BUBBLE, R.RX_BUBBLE),
    Case("origin indication: server traffic", lambda: from_client(P.origin_indication("192.0.2.20", 3544)
                                                                  + to_native()), R.RX_ORIGIN, R.RX_ORIGIN),
    Case("Teredo destination: hairpin, slow path", lambda: from_client(to_native(dst=NEAR_CLIENT)),
         R.RELAY_TEREDO_DESTINATION, R.RELAY_TEREDO_DESTINATION),
    Case("hop limit 1: Time Exceeded from the stack", lambda: from_client(to_native(hlim=1)),
         R.RELAY_HOP_LIMIT, R.RELAY_HOP_LIMIT),
    Case("unreachable route: the stack answers", lambda: from_client(to_native(dst=UNREACHABLE)),
         R.RELAY_NO_ROUTE, R.RELAY_NO_ROUTE),
    Case("next hop not resolved: XDP leaves it to the stack, tc's redirect_neigh resolves",
         lambda: from_client(to_native(dst=HOST_NO_NEIGH)), R.RELAY_NO_NEIGH, R.DECAPSULATED),
    Case("above the egress MTU: Packet Too Big from the stack",
         lambda: from_client(to_native(dst=NARROW_HOST, size=1281)), R.RELAY_FRAG_NEEDED, R.RELAY_FRAG_NEEDED),
    Case("exactly the egress MTU", lambda: from_client(to_native(dst=NARROW_HOST, size=1280)),
         R.DECAPSULATED, R.DECAPSULATED, egress="small0"),
    Case("XDP: egress takes no redirected frames: stack", lambda: from_client(to_native()),
         R.RELAY_EGRESS_NOT_XDP, R.DECAPSULATED, lambda h: h.xdp_targets("up0")),
    Case("another UDP port: host traffic", lambda: from_client(to_native(), dport=53), R.RX_NOT_TEREDO,
         R.RX_NOT_TEREDO),
    Case("another IPv4 address: host traffic", lambda: from_client(to_native(), dst="192.0.2.21"),
         R.RX_NOT_TEREDO, R.RX_NOT_TEREDO),
    Case("not enabled", lambda: from_client(to_native()), R.RX_DISABLED, R.RX_DISABLED,
         config={"enabled": False}),
    Case("bad outer checksum", lambda: bad_checksum(from_client(to_native())), R.RX_IPV4_CHECKSUM,
         R.RX_IPV4_CHECKSUM),
]


def bad_checksum(frame: bytes) -> bytes:
    out = bytearray(frame)
    out[24] ^= 0xFF
    return bytes(out)


def _prepare(relay, case):
    relay.configure(**case.config)
    if case.setup:
        case.setup(relay)


def assert_forwarded_native(frame: bytes, out: bytes, hook: str, egress_mac: str, next_hop_mac: str):
    """The inner packet, byte for byte but for the hop limit, behind an Ethernet header."""
    inner = frame[14 + 28:]
    ip_len = struct.unpack("!H", frame[14 + 2:14 + 4])[0]
    inner = inner[:ip_len - 28]
    if hook == "xdp":
        assert out[:6] == bytes.fromhex(next_hop_mac.replace(":", "")), "destination MAC from the fib"
        assert out[6:12] == bytes.fromhex(egress_mac.replace(":", "")), "source MAC: the egress device's"
    assert out[12:14] == b"\x86\xdd"
    ip6 = out[14:]
    assert len(ip6) == len(inner), "nothing but the IPv6 packet"
    assert ip6[7] == inner[7] - 1, "hop limit decremented (a router hop)"
    assert ip6[:7] + ip6[8:] == inner[:7] + inner[8:]


@pytest.mark.parametrize("hook", ["xdp", "tc"])
@pytest.mark.parametrize("case", DECAP, ids=[c.id for c in DECAP])
def test_decapsulation(relay, case, hook):
    _prepare(relay, case)
    before = relay.prog.peers.get(CLIENT)
    frame = case.frame()
    out = relay.xdp(frame) if hook == "xdp" else relay.tc(frame)
    reason = case.xdp if hook == "xdp" else case.tc
    assert out.counted == {reason.key: 1}
    if reason != R.DECAPSULATED:
        if hook == "xdp":
            assert out.retval == (XDP_DROP if reason.kind == Kind.DROP else XDP_PASS)
        else:
            assert out.retval == (TC_ACT_SHOT if reason.kind == Kind.DROP else TC_ACT_OK)
        assert out.frame == frame, "untouched: the stack and the control plane get it"
        return
    assert out.retval == (XDP_REDIRECT if hook == "xdp" else TC_ACT_REDIRECT)
    egress_mac = {"lan0": LAN0_MAC, "small0": SMALL0_MAC}[case.egress]
    assert_forwarded_native(frame, out.frame, hook, egress_mac, HOST_MAC)
    # §5.4.2: the client is now trusted with the mapping its address embeds.
    peer = relay.prog.peers.get(CLIENT)
    assert (str(peer.mapped_ipv4), peer.mapped_port) == (CLIENT_IPV4, CLIENT_PORT)
    assert peer.trusted and now_ns() - peer.last_rx_ns < 5 * SECOND
    if before is None:
        assert peer.flags & PeerFlag.LEARNED and peer.rx_packets == 1
    else:
        assert peer.rx_packets == before.rx_packets + 1 and not peer.flags & PeerFlag.LEARNED


def test_learning_can_be_turned_off(relay):
    relay.configure(learn_peers=False)
    assert relay.xdp(from_client(to_native())).counted == {"decapsulated": 1}
    assert relay.prog.peers.get(CLIENT) is None


# --------------------------------------------------------------------- encapsulation


ENCAP = [
    Case("native host to a trusted, fresh client (§5.4.1)", native_frame, R.ENCAPSULATED, R.ENCAPSULATED,
         trusted_client),
    Case("exactly the tunnel MTU", lambda: native_frame(size=1280), R.ENCAPSULATED, R.ENCAPSULATED,
         trusted_client),
    Case("padded tiny frame: the padding stays out", lambda: native_frame() + b"\0" * 6, R.ENCAPSULATED,
         R.ENCAPSULATED, trusted_client),
    Case("one byte above the tunnel MTU (§5.1.2): Packet Too Big from the stack",
         lambda: native_frame(size=1281), R.TX_TOO_BIG, R.TX_TOO_BIG, trusted_client),
    Case("no entry: the control plane bubbles (§5.4.1)", native_frame, R.TX_NO_PEER, R.TX_NO_PEER),
    Case("entry not trusted yet", native_frame, R.TX_UNTRUSTED_PEER, R.TX_UNTRUSTED_PEER,
         lambda h: trusted_client(h, flags=PeerFlag(0))),
    Case("trusted, nothing received for 31 s: bubble again", native_frame, R.TX_STALE_PEER, R.TX_STALE_PEER,
         lambda h: trusted_client(h, last_rx_ns=now_ns() - 31 * SECOND)),
    Case("hop limit 1", lambda: native_frame(hlim=1), R.RELAY_HOP_LIMIT, R.RELAY_HOP_LIMIT, trusted_client),
    Case("link-local source: never forwarded", lambda: native_frame(src="fe80::2"), R.RX_LINK_LOCAL_SOURCE,
         R.RX_LINK_LOCAL_SOURCE, trusted_client),
    Case("native destination: the host routes it", lambda: native_frame(dst="2001:db8:2::1"),
         R.RX_NOT_TEREDO, R.RX_NOT_TEREDO, trusted_client),
    Case("frame to a group MAC address", lambda: native_frame(eth_dst="33:33:00:00:00:01"), R.RX_NOT_TEREDO,
         R.RX_NOT_TEREDO, trusted_client),
    Case("client's mapping on a link without neighbour entry", lambda: native_frame(dst=NEAR_CLIENT),
         R.RELAY_NO_NEIGH, R.ENCAPSULATED, near_client),
    Case("XDP: the IPv4 side takes no redirected frames", native_frame, R.RELAY_EGRESS_NOT_XDP,
         R.ENCAPSULATED, lambda h: (trusted_client(h), h.xdp_targets("lan0"))),
    Case("not enabled", native_frame, R.TX_DISABLED, R.TX_DISABLED, trusted_client, {"enabled": False}),
    Case("truncated IPv6 packet", lambda: native_frame()[:-4], R.TX_MALFORMED, R.TX_MALFORMED, trusted_client),
]


def assert_encapsulated(frame: bytes, out: bytes, hook: str, mapped_ipv4: str, mapped_port: int,
                        ip_id: int, next_hop_mac: str = GW4_MAC):
    ip6_len = 40 + struct.unpack("!H", frame[14 + 4:14 + 6])[0]
    inner = frame[14:14 + ip6_len]
    if hook == "xdp":
        assert out[:6] == bytes.fromhex(next_hop_mac.replace(":", "")), "the IPv4 next hop's MAC"
        assert out[6:12] == bytes.fromhex(UP0_MAC.replace(":", ""))
    else:
        assert out[:12] == frame[:12], "MACs: bpf_redirect_neigh writes them"
    assert out[12:14] == b"\x08\x00"
    ip, udp = out[14:34], out[34:42]
    ver_ihl, tos, tot_len, ident, frag, ttl, proto, _, src, dst = struct.unpack("!BBHHHBBH4s4s", ip)
    assert (ver_ihl, tos, frag, ttl, proto) == (0x45, 0, 0, 64, 17)
    assert tot_len == 28 + len(inner) and ident == ip_id
    assert P.ipv4_checksum_ok(ip)
    assert (str(ipaddress.IPv4Address(src)), str(ipaddress.IPv4Address(dst))) == (RELAY_IPV4, mapped_ipv4)
    sport, dport, ulen, ucsum = struct.unpack("!HHHH", udp)
    assert (sport, dport, ulen, ucsum) == (RELAY_PORT, mapped_port, 8 + len(inner), 0)
    got = out[42:]
    assert len(got) == len(inner)
    assert got[7] == inner[7] - 1, "hop limit decremented"
    assert got[:7] + got[8:] == inner[:7] + inner[8:]


@pytest.mark.parametrize("hook", ["xdp", "tc"])
@pytest.mark.parametrize("case", ENCAP, ids=[c.id for c in ENCAP])
def test_encapsulation(relay, case, hook):
    _prepare(relay, case)
    frame = case.frame()
    dst = ipaddress.IPv6Address(frame[14 + 24:14 + 40])
    before = relay.prog.peers.get(dst)
    out = relay.xdp(frame, ingress=relay.net["lan0"]) if hook == "xdp" else \
        relay.tc(frame, ingress=relay.net["lan0"])
    reason = case.xdp if hook == "xdp" else case.tc
    assert out.counted == {reason.key: 1}
    if reason != R.ENCAPSULATED:
        if hook == "xdp":
            assert out.retval == (XDP_DROP if reason.kind == Kind.DROP else XDP_PASS)
        else:
            assert out.retval == (TC_ACT_SHOT if reason.kind == Kind.DROP else TC_ACT_OK)
        assert out.frame == frame, "untouched: the stack routes it into the tun"
        return
    assert out.retval == (XDP_REDIRECT if hook == "xdp" else TC_ACT_REDIRECT)
    assert_encapsulated(frame, out.frame, hook, str(before.mapped_ipv4), before.mapped_port,
                        ip_id=before.tx_packets & 0xFFFF)
    peer = relay.prog.peers.get(dst)
    assert peer.tx_packets == before.tx_packets + 1
    assert peer.tx_bytes == before.tx_bytes + 40 + struct.unpack("!H", frame[18:20])[0]
    assert now_ns() - peer.last_tx_ns < 5 * SECOND


def test_xdp_encapsulation_needs_ipv4_forwarding(relay):
    """The kernel's IPv4 fib lookup refuses without forwarding on the device
    (BPF_FIB_LKUP_RET_FWD_DISABLED): the packet goes to the stack, never lost.
    This is why the relay picks tc for that direction then (redirect.choose_hooks)."""
    trusted_client(relay)
    sysctl = "net.ipv4.conf.up0.forwarding"
    sh("sysctl", "-q", "-w", f"{sysctl}=0", ns=relay.net["ns"])
    try:
        assert relay.xdp(native_frame(), ingress=relay.net["lan0"]).counted == {"relay_no_route": 1}
        assert relay.tc(native_frame(), ingress=relay.net["lan0"]).counted == {"encapsulated": 1}
    finally:
        sh("sysctl", "-q", "-w", f"{sysctl}=1", ns=relay.net["ns"])


def test_tc_leaves_gso_packets_to_the_stack(relay):
    """A GSO packet (a local sender's TSO, or GRO) is left to the stack, which cuts
    it before the tun: encapsulated whole, it could reach a Teredo client's socket
    on this host as one huge datagram."""
    from scapy.layers.inet import TCP

    trusted_client(relay)
    packet = bytes(IPv6(src=HOST, dst=str(CLIENT), hlim=64) / TCP(sport=80, dport=5000) / (b"y" * 3000))
    frame = bytes(Ether(src=HOST_MAC, dst=LAN0_MAC, type=0x86DD)) + packet
    out = relay.tc(frame, ingress=relay.net["lan0"], gso_size=1208, gso_segs=3)
    assert out.counted == {"relay_offload_pending": 1}
    assert out.retval == TC_ACT_OK and out.frame == frame


def _tcp_from_client(dst=HOST, payload: int = 3000) -> bytes:
    from scapy.layers.inet import TCP

    return from_client(bytes(IPv6(src=str(CLIENT), dst=dst, hlim=64) / TCP(sport=5000, dport=80)
                             / (b"z" * payload)))


@pytest.mark.parametrize("dst, gso_size, reason", [
    # Not GSO: 3060 bytes of IPv6 are above any egress MTU here.
    (HOST, 0, R.RELAY_FRAG_NEEDED),
    # GSO: the MTU check sees one segment, 40 + 20 + gso_size: past it. A test
    # run's skb has gso_type 0 (neither TCP nor UDP_L4), which bpf_skb_net_shrink
    # refuses: left whole to the stack, counted. The TCP super-packet it does strip
    # (FIXED_GSO) is e2e (test_gso_rx: a test run cannot set gso_type).
    (HOST, 1208, R.RX_DECAP_UNSUPPORTED),
    (NARROW_HOST, 1220, R.RX_DECAP_UNSUPPORTED),       # 1280: exactly small0's MTU
    (NARROW_HOST, 1221, R.RELAY_FRAG_NEEDED),          # one byte over: the stack answers
])
def test_tc_checks_a_clients_gso_packet_per_segment(relay, dst, gso_size, reason):
    trusted_client(relay)
    frame = _tcp_from_client(dst)
    out = relay.tc(frame, gso_size=gso_size, gso_segs=3 if gso_size else 0)
    assert out.counted == {reason.key: 1}
    assert out.retval == TC_ACT_OK and out.frame == frame, "untouched"


def test_tc_leaves_a_batch_of_datagrams_to_the_stack(relay):
    """UDP GSO from a client (many datagrams in one skb, outer lengths over all of
    them): not one packet to forward; the stack cuts it for the socket."""
    trusted_client(relay)
    frame = from_client(to_native() * 3)
    assert relay.tc(frame).counted == {"rx_ipv6_length": 1}
    out = relay.tc(frame, gso_size=len(to_native()), gso_segs=3)
    assert out.counted == {"rx_decap_unsupported": 1}
    assert out.retval == TC_ACT_OK and out.frame == frame


# --------------------------------------------------------------------- checksums left to offload


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _pseudo(packet: bytes) -> int:
    """RFC 8200 §8.1 pseudo-header sum of an IPv6 packet (no extension headers), folded."""
    l4_len = len(packet) - 40
    return _sum16(packet[8:40] + struct.pack("!IxxxB", l4_len, packet[6]))


def _l4_checksum_ok(packet: bytes) -> bool:
    return _sum16(packet[8:40] + struct.pack("!IxxxB", len(packet) - 40, packet[6]) + packet[40:]) == 0xFFFF


def _with_field(packet: bytes, value: int) -> bytes:
    at = 40 + (16 if packet[6] == 6 else 6)
    return packet[:at] + struct.pack("!H", value) + packet[at + 2:]


def partial(packet: bytes) -> bytes:
    """What a sender leaving the checksum to offload hands over: the folded
    pseudo-header sum in the field (CHECKSUM_PARTIAL as a veth passes it on)."""
    return _with_field(packet, _pseudo(packet))


def tcp_segment(size: int = 700) -> bytes:
    from scapy.layers.inet import TCP

    return bytes(IPv6(src=HOST, dst=str(CLIENT), hlim=64) / TCP(sport=80, dport=5000, flags="PA")
                 / bytes((i * 7) & 0xFF for i in range(size)))


def udp_datagram(size: int = 301) -> bytes:
    return bytes(IPv6(src=HOST, dst=str(CLIENT), hlim=64) / UDP(sport=53, dport=5000)
                 / bytes((i * 13) & 0xFF for i in range(size)))


@pytest.mark.parametrize("make,size", [(tcp_segment, 0), (tcp_segment, 1), (tcp_segment, 700),
                                       (tcp_segment, 1208), (udp_datagram, 301), (udp_datagram, 64)],
                         ids=["tcp-empty", "tcp-1", "tcp-700", "tcp-1208", "udp-301", "udp-64"])
def test_xdp_completes_a_checksum_left_to_offload(relay, make, size):
    """After XDP_REDIRECT nothing would ever complete it: the relay does, and the
    client gets a packet whose checksum verifies (RFC 8200 §8.1)."""
    trusted_client(relay)
    complete = make(size)
    assert _l4_checksum_ok(complete)
    frame = bytes(Ether(src=HOST_MAC, dst=LAN0_MAC, type=0x86DD)) + partial(complete)
    out = relay.xdp(frame, ingress=relay.net["lan0"])
    assert out.counted == {"encapsulated": 1}
    inner = out.frame[42:]
    assert _l4_checksum_ok(inner), "the client's stack accepts it"
    assert inner[:7] + inner[8:] == complete[:7] + complete[8:], "exactly the sender's packet, completed"


def test_xdp_leaves_complete_checksums_alone_even_look_alikes(relay):
    """A complete checksum that happens to equal the pseudo-header sum (1 in 65536)
    is verified first and left as it is."""
    trusted_client(relay)
    packet = tcp_segment(700)
    # Choose two payload bytes so that the valid checksum equals the folded
    # pseudo-header sum: the look-alike.
    target = _pseudo(packet)
    zeroed = _with_field(packet[:-2] + b"\0\0", 0)
    base = _sum16(packet[8:40] + struct.pack("!IxxxB", len(packet) - 40, 6) + zeroed[40:])
    # valid: base + word + target == 0xffff (one's complement): word = ~(base + target)
    word = (~((base + target) % 0xFFFF)) & 0xFFFF
    look_alike = _with_field(zeroed[:-2] + struct.pack("!H", word), target)
    assert _l4_checksum_ok(look_alike) and look_alike == partial(look_alike)
    frame = bytes(Ether(src=HOST_MAC, dst=LAN0_MAC, type=0x86DD)) + look_alike
    out = relay.xdp(frame, ingress=relay.net["lan0"])
    assert out.counted == {"encapsulated": 1}
    assert out.frame[42 + 8:] == look_alike[8:], "untouched"
    plain = bytes(Ether(src=HOST_MAC, dst=LAN0_MAC, type=0x86DD)) + packet
    assert relay.xdp(plain, ingress=relay.net["lan0"]).frame[42 + 8:] == packet[8:]


@pytest.mark.parametrize("make", [tcp_segment, udp_datagram], ids=["tcp", "udp"])
def test_tc_leaves_a_checksum_left_to_offload_to_the_stack(relay, make):
    """The skb stays CHECKSUM_PARTIAL whatever the program writes: the stack (the
    tun has no offloads) completes it, on the slow path."""
    trusted_client(relay)
    frame = bytes(Ether(src=HOST_MAC, dst=LAN0_MAC, type=0x86DD)) + partial(make())
    out = relay.tc(frame, ingress=relay.net["lan0"])
    assert out.counted == {"relay_offload_pending": 1}
    assert out.retval == TC_ACT_OK and out.frame == frame
    complete = bytes(Ether(src=HOST_MAC, dst=LAN0_MAC, type=0x86DD)) + make()
    assert relay.tc(complete, ingress=relay.net["lan0"]).counted == {"encapsulated": 1}


def test_tc_leaves_a_local_clients_partial_udp_checksum_to_the_socket(relay):
    """A Teredo client on this very host hands over its UDP checksum unfinished;
    stripping the header it points into would leave a stale offload request."""
    frame = bytearray(from_client(to_native()))
    udp_len = struct.unpack("!H", frame[38:40])[0]
    pseudo = _sum16(bytes(frame[26:34]) + struct.pack("!xBH", 17, udp_len))
    frame[40:42] = struct.pack("!H", pseudo)
    out = relay.tc(bytes(frame))
    assert out.counted == {"relay_offload_pending": 1} and out.frame == bytes(frame)
    assert relay.xdp(bytes(frame)).counted == {"decapsulated": 1}, "XDP: no offload state survives"


def test_tc_sends_a_local_clients_partial_udp_checksum_round_the_checksum_veth(relay):
    """With the relay's checksum veth configured (net/csum_veth.py): out of its
    offload-less end, unchanged, to come back finished; what comes back in at the
    other end still looking pending (a look-alike) is the stack's, never sent round
    again."""
    out_dev, in_dev = relay.net["small0"], relay.net["lan0"]
    relay.configure(csum_out_ifindex=out_dev, csum_in_ifindex=in_dev)
    frame = bytearray(from_client(to_native()))
    udp_len = struct.unpack("!H", frame[38:40])[0]
    pseudo = _sum16(bytes(frame[26:34]) + struct.pack("!xBH", 17, udp_len))
    frame[40:42] = struct.pack("!H", pseudo)
    out = relay.tc(bytes(frame))
    assert out.counted == {"relay_csum_detour": 1}
    assert out.retval == TC_ACT_REDIRECT and out.frame == bytes(frame)
    back = relay.tc(bytes(frame), ingress=in_dev)
    assert back.counted == {"relay_offload_pending": 1} and back.retval == TC_ACT_OK
    assert relay.tc(from_client(to_native())).counted == {"decapsulated": 1}


def _pending_udp(frame: bytes) -> bytes:
    """A client frame as a sender on this host hands it over: the outer UDP checksum
    left to offload (the folded IPv4 pseudo-header sum)."""
    frame = bytearray(frame)
    udp_len = struct.unpack("!H", frame[38:40])[0]
    frame[40:42] = struct.pack("!H", _sum16(bytes(frame[26:34]) + struct.pack("!xBH", 17, udp_len)))
    return bytes(frame)


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_a_client_takes_offloads_while_its_checksums_arrive_finished(relay, hook):
    """Learnt from the client's own packets: finished (another machine's, or our
    client's 0) sets TAKES_OFFLOADS, pending (a socket on this host: Miredo)
    clears it; the entry is rewritten only when that changes."""
    trusted_client(relay)
    run = getattr(relay, hook)
    assert run(from_client(to_native())).counted == {"decapsulated": 1}
    assert relay.prog.peers.get(CLIENT).flags & PeerFlag.TAKES_OFFLOADS
    assert run(_pending_udp(from_client(to_native()))).counted == \
        ({"decapsulated": 1} if hook == "xdp" else {"relay_offload_pending": 1})
    assert not relay.prog.peers.get(CLIENT).flags & PeerFlag.TAKES_OFFLOADS
    assert relay.prog.peers.get(CLIENT).trusted, "the other flags stay"


def test_what_the_checksum_veth_finished_teaches_nothing(relay):
    """A pending client packet sent round comes back finished: that is the veth's
    doing, not the client's, so it must not make the client look as if it took
    offloads (a Miredo client would then be sent packets it cannot read)."""
    trusted_client(relay)
    relay.configure(csum_out_ifindex=relay.net["small0"], csum_in_ifindex=relay.net["lan0"])
    assert relay.tc(_pending_udp(from_client(to_native()))).counted == {"relay_csum_detour": 1}
    back = relay.tc(from_client(to_native()), ingress=relay.net["lan0"])
    assert back.counted == {"decapsulated": 1}
    assert not relay.prog.peers.get(CLIENT).flags & PeerFlag.TAKES_OFFLOADS


@pytest.mark.parametrize("make", [tcp_segment, udp_datagram], ids=["tcp", "udp"])
def test_tc_sends_a_native_checksum_left_to_offload_whole_to_a_client_that_takes_it(relay, make):
    """Left pending, encapsulated as it is: the client decapsulates in the kernel
    (or a device on the way finishes it), so nothing goes round the checksum veth."""
    trusted_client(relay, flags=PeerFlag.TRUSTED | PeerFlag.TAKES_OFFLOADS)
    relay.configure(csum_out_ifindex=relay.net["small0"], csum_in_ifindex=relay.net["up0"])
    packet = partial(make())
    out = relay.tc(bytes(Ether(src=HOST_MAC, dst=LAN0_MAC, type=0x86DD)) + packet,
                   ingress=relay.net["lan0"])
    assert out.counted == {"encapsulated": 1} and out.retval == TC_ACT_REDIRECT
    inner = out.frame[42:]
    assert inner[:7] + inner[8:] == packet[:7] + packet[8:], "unchanged, checksum still pending"


@pytest.mark.parametrize("make", [tcp_segment, udp_datagram], ids=["tcp", "udp"])
def test_tc_sends_a_native_checksum_left_to_offload_round_the_checksum_veth(relay, make):
    trusted_client(relay)
    relay.configure(csum_out_ifindex=relay.net["small0"], csum_in_ifindex=relay.net["up0"])
    frame = bytes(Ether(src=HOST_MAC, dst=LAN0_MAC, type=0x86DD)) + partial(make())
    out = relay.tc(frame, ingress=relay.net["lan0"])
    assert out.counted == {"relay_csum_detour": 1}
    assert out.retval == TC_ACT_REDIRECT and out.frame == frame
    back = relay.tc(frame, ingress=relay.net["up0"])
    assert back.counted == {"relay_offload_pending": 1} and back.retval == TC_ACT_OK


def test_ip_id_counts_packets_on_the_wire(relay):
    trusted_client(relay, tx_packets=0xFFFF)
    first = relay.xdp(native_frame(), ingress=relay.net["lan0"])
    second = relay.tc(native_frame(), ingress=relay.net["lan0"])
    assert first.counted == second.counted == {"encapsulated": 1}
    assert struct.unpack("!H", first.frame[18:20])[0] == 0xFFFF
    assert struct.unpack("!H", second.frame[18:20])[0] == 0x0000


def test_other_traffic_is_left_alone(relay):
    arp = bytes.fromhex("ffffffffffff" + "020000000001" + "0806") + b"\0" * 28
    for hook in ("xdp", "tc"):
        out = relay.xdp(arp) if hook == "xdp" else relay.tc(arp)
        assert out.counted == {"rx_not_teredo": 1}
        assert out.retval == (XDP_PASS if hook == "xdp" else TC_ACT_OK) and out.frame == arp


# --------------------------------------------------------------------- both ways


def test_round_trip_with_a_teredo_client_datapath(relay, datapath_program):
    """The relay's encapsulation is what a Teredo client's data path (the client's
    own BPF, tc egress + XDP) decapsulates, and the client's encapsulation is what
    the relay decapsulates: the IPv6 packets come out as they went in, less one
    hop at the relay."""
    from . import conftest as bpfconf

    client = bpfconf.Harness(datapath_program)
    datapath_program.reset()
    try:
        # The client: socket on its own address and port, which its NAT maps to
        # CLIENT_IPV4:CLIENT_PORT (the test is the NAT here); it knows the relay as
        # the way to HOST (§5.2.9 told it).
        local_ipv4, local_port = "10.1.0.2", 40001
        client.configure(local_ipv4=local_ipv4, local_port=local_port, teredo_address=CLIENT)
        client.add_peer(HOST, RELAY_IPV4, RELAY_PORT, flags=PeerFlag.TRUSTED | PeerFlag.RELAY)
        request = to_native()
        sent = client.tc_tx(P.ipv6_frame(request))
        assert sent.counted == {"encapsulated": 1}
        natted = bytearray(sent.frame)
        natted[26:30] = ipaddress.IPv4Address(CLIENT_IPV4).packed
        natted[34:36] = struct.pack("!H", CLIENT_PORT)
        P.fix_ipv4_checksum(natted)
        forwarded = relay.xdp(bytes(natted))
        assert forwarded.counted == {"decapsulated": 1}
        assert forwarded.frame[14:] == request[:7] + bytes([request[7] - 1]) + request[8:]

        reply = native_frame()
        back = relay.xdp(reply, ingress=relay.net["lan0"])
        assert back.counted == {"encapsulated": 1}
        # The client's NAT maps it back to the client's socket.
        inbound = bytearray(back.frame)
        inbound[30:34] = ipaddress.IPv4Address(local_ipv4).packed
        inbound[36:38] = struct.pack("!H", local_port)
        P.fix_ipv4_checksum(inbound)
        got = client.xdp(bytes(inbound))
        assert got.counted == {"decapsulated": 1}
        assert got.frame[14:] == reply[14:14 + 7] + bytes([reply[14 + 7] - 1]) + reply[14 + 8:]
    finally:
        datapath_program.reset()


# --------------------------------------------------------------------- coverage

# Not produced on demand: the devmap entry would have to vanish between the lookup
# and the redirect (a race with the control plane), or bpf_redirect_neigh refuse.
NOT_IN_TEST_RUN = {R.RELAY_REDIRECT_FAILED}
# Produced by the tests below the fixture tables.
COVERED_ELSEWHERE = {R.RELAY_OFFLOAD_PENDING: "test_tc_leaves_*",
                     R.RELAY_CSUM_DETOUR: "test_tc_sends_a_local_clients_partial_udp_*",
                     R.RELAY_NO_ROUTE: "forwarding test"}


def test_every_relay_reason_has_a_fixture():
    relay = {r for r in Reason if r.name.startswith("RELAY_")}
    covered = {c.xdp for c in DECAP + ENCAP} | {c.tc for c in DECAP + ENCAP} | set(COVERED_ELSEWHERE)
    assert relay <= covered | NOT_IN_TEST_RUN, relay - covered - NOT_IN_TEST_RUN
    assert not covered & NOT_IN_TEST_RUN


# --------------------------------------------------------------------- the devmap


def test_xdp_targets_follow_the_set(relay):
    net = relay.net
    in_netns(net["ns"], lambda: relay.prog.egress.set([net["up0"], net["lan0"]]))
    first = relay.prog.egress.members()
    assert set(first) == {net["up0"], net["lan0"]} and len(set(first.values())) == 2
    in_netns(net["ns"], lambda: relay.prog.egress.set([net["lan0"], net["small0"]]))
    second = relay.prog.egress.members()
    assert set(second) == {net["lan0"], net["small0"]}
    assert second[net["lan0"]] == first[net["lan0"]], "a device that stays keeps its slot"
    in_netns(net["ns"], lambda: relay.prog.egress.set([]))
    assert relay.prog.egress.members() == {}
    # Without a target XDP forwards nothing, it punts.
    assert relay.xdp(from_client(to_native())).counted == {"relay_egress_not_xdp": 1}
