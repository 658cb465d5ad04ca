"""Receive path: a fixture table, run through XDP (xdp_teredo_rx) and through the
tc-only variant (tc_teredo_rx). Every case names the one reason its packet must be
counted under; the action and the output packet follow from it.
"""

import errno
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from xdp_teredo.datapath import PeerFlag, Reason, now_ns
from xdp_teredo.datapath.layout import XDP_META_MAGIC, Kind
from xdp_teredo.datapath.maps import delta

from . import model
from . import packets as P
from .conftest import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, stamp_floor_ns

pytestmark = [pytest.mark.root, pytest.mark.bpf]

R = Reason
OTHER_TEREDO = P.teredo_address(P.SERVER_IPV4, "203.0.113.99", 1234)
RELAYED_DESTINATION = ipaddress.IPv6Address("2001:db8:ffff::99")


def data_from_peer(**kw) -> bytes:
    """Plain Teredo: an echo request from PEER_ADDRESS to us, from the peer's mapping."""
    return P.teredo_frame(P.inner_ipv6(P.PEER_ADDRESS, P.OUR_ADDRESS), **kw)


def with_bytes(frame: bytes, offset: int, value: bytes, fix_checksum: bool = True) -> bytes:
    out = bytearray(frame)
    out[offset:offset + len(value)] = value
    if fix_checksum:
        P.fix_ipv4_checksum(out)
    return bytes(out)


def trusted_peer(h):
    h.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT)


def trusted_native(h, port=P.RELAY_PORT):
    h.add_peer(P.NATIVE_ADDRESS, P.RELAY_IPV4, port, flags=PeerFlag.TRUSTED | PeerFlag.RELAY)


def from_relay(src=P.NATIVE_ADDRESS, dst=P.OUR_ADDRESS, **kw) -> bytes:
    return P.teredo_frame(P.inner_ipv6(src, dst), src=P.RELAY_IPV4, sport=P.RELAY_PORT, **kw)


# IPv4/UDP offsets in an Ethernet frame.
IP_TOTLEN, IP_FRAG, IP_CSUM, UDP_LEN, PAYLOAD = 14 + 2, 14 + 6, 14 + 10, 34 + 4, 42


@dataclass
class Case:
    id: str
    frame: Callable[[], bytes]
    reason: Reason
    setup: Optional[Callable] = None
    config: Dict = field(default_factory=dict)
    # A SCHED_CLS test run refuses (EINVAL) an EtherType-IPv4 frame too short for an
    # IPv4 header, before the program runs: test_tc_only asserts that refusal.
    skb_ok: bool = True


CASES = [
    # -- decapsulated
    Case("trusted peer, mapping matches", data_from_peer, R.DECAPSULATED, trusted_peer),
    Case("no entry, source embeds the UDP source (§5.2.3)", data_from_peer, R.DECAPSULATED),
    Case("native IPv6 from its trusted relay", from_relay, R.DECAPSULATED, trusted_native),
    Case("relay mode: embedded source to a native destination",
         lambda: P.teredo_frame(P.inner_ipv6(P.PEER_ADDRESS, RELAYED_DESTINATION)),
         R.DECAPSULATED, config={"relay": True}),
    Case("trusted entry with another mapping, but the source embeds this one", data_from_peer,
         R.DECAPSULATED, lambda h: h.add_peer(P.PEER_ADDRESS, "198.51.100.8", P.PEER_PORT)),
    # -- not ours: host traffic, untouched
    Case("IPv6 frame on the NIC", lambda: P.ipv6_frame(P.inner_ipv6("2001:db8::2", "2001:db8::3")),
         R.RX_NOT_TEREDO),
    Case("ARP", lambda: bytes(Ether(src=P.MAC_GW, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=P.LOCAL_IPV4)),
         R.RX_NOT_TEREDO),
    Case("TCP to our address and port",
         lambda: bytes(Ether(src=P.MAC_GW, dst=P.MAC_NIC) / IP(src=P.PEER_IPV4, dst=P.LOCAL_IPV4)
                       / TCP(sport=P.PEER_PORT, dport=P.LOCAL_PORT)), R.RX_NOT_TEREDO),
    Case("UDP to another port", lambda: data_from_peer(dport=P.LOCAL_PORT + 1), R.RX_NOT_TEREDO),
    Case("UDP to another address", lambda: data_from_peer(dst="192.0.2.11"), R.RX_NOT_TEREDO),
    Case("a later IPv4 fragment (no UDP header)",
         lambda: data_from_peer(ip_kwargs={"frag": 10}), R.RX_NOT_TEREDO),
    Case("VLAN-tagged", lambda: bytes(Ether(src=P.MAC_GW, dst=P.MAC_NIC) / Dot1Q(vlan=5))
         + data_from_peer()[14:], R.RX_NOT_TEREDO),
    Case("truncated IPv4 header", lambda: data_from_peer()[:14 + 12], R.RX_NOT_TEREDO, skb_ok=False),
    # -- ours, for the slow path
    Case("not enabled (not qualified yet)", data_from_peer, R.RX_DISABLED, trusted_peer,
         {"enabled": False}),
    Case("no tun configured", data_from_peer, R.RX_DISABLED, trusted_peer, {"tun_ifindex": 0}),
    Case("first IPv4 fragment", lambda: data_from_peer(ip_kwargs={"flags": "MF"}), R.RX_FRAGMENT,
         trusted_peer),
    Case("IPv4 options", lambda: data_from_peer(ip_kwargs={"options": [b"\x01\x01\x01\x00"]}),
         R.RX_IPV4_OPTIONS, trusted_peer),
    Case("authentication header (§5.1.1)",
         lambda: P.teredo_frame(b"\x00\x01\x00\x00" + b"\x11" * 8 + b"\x00"
                                + P.inner_ipv6("fe80::8000:ffff:ffff:fffe", "fe80::ffff:ffff:ffff"),
                                src=P.SERVER_IPV4, sport=3544), R.RX_AUTH),
    Case("origin indication (§5.1.1)",
         lambda: P.teredo_frame(P.origin_indication(P.OUR_MAPPED_IPV4, P.OUR_MAPPED_PORT)
                                + P.bubble(P.PEER_ADDRESS, P.OUR_ADDRESS),
                                src=P.SERVER_IPV4, sport=3544), R.RX_ORIGIN),
    Case("bubble (§2.8)", lambda: P.teredo_frame(P.bubble(P.PEER_ADDRESS, P.OUR_ADDRESS)), R.RX_BUBBLE,
         trusted_peer),
    Case("link-local source", lambda: P.teredo_frame(P.inner_ipv6("fe80::1", P.OUR_ADDRESS)),
         R.RX_LINK_LOCAL_SOURCE, trusted_peer),
    Case("multicast destination", lambda: P.teredo_frame(P.inner_ipv6(P.PEER_ADDRESS, "ff02::1")),
         R.RX_MULTICAST_DESTINATION, trusted_peer),
    Case("another Teredo address as destination",
         lambda: P.teredo_frame(P.inner_ipv6(P.PEER_ADDRESS, OTHER_TEREDO)), R.RX_NOT_OUR_ADDRESS,
         trusted_peer),
    Case("native source, no entry", from_relay, R.RX_UNKNOWN_PEER),
    Case("relay mode: a client proven at another mapping, from there",
         lambda: P.teredo_frame(P.inner_ipv6(P.PEER_ADDRESS, RELAYED_DESTINATION),
                                sport=P.PEER_PORT + 7),
         R.DECAPSULATED, lambda h: h.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT + 7),
         {"relay": True}),
    Case("relay mode: a client proven at another mapping, from a third one",
         lambda: P.teredo_frame(P.inner_ipv6(P.PEER_ADDRESS, RELAYED_DESTINATION),
                                sport=P.PEER_PORT + 8),
         R.RX_MAPPING_MISMATCH, lambda h: h.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT + 7),
         {"relay": True}),
    Case("relay mode: trusted native source is not enough (§5.4.2)",
         lambda: from_relay(dst=RELAYED_DESTINATION), R.RX_UNKNOWN_PEER, trusted_native, {"relay": True}),
    Case("Teredo source embedding another mapping, no entry",
         lambda: data_from_peer(sport=P.PEER_PORT + 1), R.RX_UNKNOWN_PEER),
    Case("untrusted entry: the control plane waits for this peer", data_from_peer,
         R.RX_UNTRUSTED_PEER, lambda h: h.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT, flags=0)),
    Case("trusted native source from another port", from_relay, R.RX_MAPPING_MISMATCH,
         lambda h: trusted_native(h, port=P.RELAY_PORT + 1)),
    # -- malformed: dropped
    Case("bad IPv4 header checksum", lambda: with_bytes(data_from_peer(), IP_CSUM, b"\xde\xad", False),
         R.RX_IPV4_CHECKSUM, trusted_peer),
    Case("IPv4 total length beyond the frame",
         lambda: with_bytes(data_from_peer(), IP_TOTLEN, struct.pack("!H", len(data_from_peer()) - 13)),
         R.RX_IPV4_LENGTH, trusted_peer),
    Case("IPv4 total length shorter than IPv4 + UDP",
         lambda: with_bytes(data_from_peer(), IP_TOTLEN, struct.pack("!H", 27)), R.RX_IPV4_LENGTH,
         trusted_peer),
    Case("UDP length != IPv4 payload",
         lambda: with_bytes(data_from_peer(), UDP_LEN, struct.pack("!H", len(data_from_peer()) - 34 - 1)),
         R.RX_UDP_LENGTH, trusted_peer),
    Case("payload is IPv4, not IPv6", lambda: P.teredo_frame(bytes(IP(dst="192.0.2.99") / Raw(b"x" * 40))),
         R.RX_NOT_IPV6, trusted_peer),
    Case("unknown indicator 0x0002", lambda: P.teredo_frame(b"\x00\x02" + b"\x00" * 46), R.RX_NOT_IPV6),
    Case("one byte of payload", lambda: P.teredo_frame(b"\x60"), R.RX_NOT_IPV6),
    Case("IPv6 header cut short", lambda: P.teredo_frame(P.inner_ipv6(P.PEER_ADDRESS, P.OUR_ADDRESS)[:39]),
         R.RX_IPV6_TRUNCATED, trusted_peer),
    Case("IPv6 payload length disagrees with UDP",
         lambda: with_bytes(data_from_peer(), PAYLOAD + 4, struct.pack("!H", 100)), R.RX_IPV6_LENGTH,
         trusted_peer),
    Case("trailing bytes after the IPv6 packet",
         lambda: P.teredo_frame(P.inner_ipv6(P.PEER_ADDRESS, P.OUR_ADDRESS) + b"\0\0"), R.RX_IPV6_LENGTH,
         trusted_peer),
]

# Reasons no receive test run can produce, and where they are covered instead.
NOT_IN_TEST_RUN = {
    R.RX_REDIRECTED: "needs skb->data_meta, which SCHED_CLS test runs do not carry (test_attach)",
    R.RX_NO_TUN: "a reconfiguration between XDP and tc ingress on the same frame",
    R.RX_DECAP_UNSUPPORTED: "needs a driver without XDP metadata, or a kernel older than 6.3",
}


def _prepare(dp, case: Case):
    dp.configure(**case.config)
    if case.setup:
        case.setup(dp)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_xdp(dp, case):
    _prepare(dp, case)
    frame = case.frame()
    assert model.rx(frame, dp.config, dp.peers()).reason == case.reason, "the model disagrees"
    out = dp.xdp(frame)
    assert out.counted == {case.reason.key: 1}
    if case.reason == R.DECAPSULATED:
        assert out.retval == XDP_PASS
        assert out.meta == struct.pack("=I", XDP_META_MAGIC)
        assert_decapsulated(frame, out.frame)
    else:
        assert out.retval == (XDP_DROP if case.reason.kind == Kind.DROP else XDP_PASS)
        assert out.meta == b"" and out.frame == frame, "untouched"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_tc_only(dp, case):
    _prepare(dp, case)
    frame = case.frame()
    if not case.skb_ok:
        # bpf_prog_test_run_skb refuses an EtherType-IPv4 frame shorter than
        # Ethernet + a 20-byte IPv4 header (seen: EINVAL for 14..33 bytes, the
        # program runs from 34 on), so the program never sees it and counts
        # nothing. Its verdict for such a frame is rx_decide's, shared with XDP,
        # which test_xdp checks on the same case.
        before = dp.prog.stats()
        with pytest.raises(OSError) as refused:
            dp.tc_rx(frame)
        assert refused.value.errno == errno.EINVAL
        assert delta(before, dp.prog.stats()) == {}, "the program did not run"
        return
    out = dp.tc_rx(frame)
    assert out.counted == {case.reason.key: 1}
    if case.reason == R.DECAPSULATED:
        assert out.retval == TC_ACT_REDIRECT
        assert_decapsulated(frame, out.frame)
    else:
        assert out.retval == (TC_ACT_SHOT if case.reason.kind == Kind.DROP else TC_ACT_OK)
        assert out.frame == frame, "untouched"


def test_tc_only_leaves_a_gso_packet_it_cannot_strip_untouched(dp):
    """A GSO skb whose type is neither TCP nor UDP_L4 (a test run's skb has
    gso_type 0; a real one could be SCTP, or UDP fragmentation offload):
    bpf_skb_net_shrink refuses it (-ENOTSUPP) even with FIXED_GSO, the packet stays
    whole and goes to the stack, counted. The TCP super-packet that it does strip
    is test_gso_rx's (e2e: a test run cannot set gso_type)."""
    from scapy.layers.inet6 import IPv6

    dp.configure()
    trusted_peer(dp)
    inner = bytes(IPv6(src=str(P.PEER_ADDRESS), dst=str(P.OUR_ADDRESS)) / TCP(sport=80, dport=5000)
                  / (b"y" * 3000))
    frame = P.teredo_frame(inner)
    whole = dp.tc_rx(frame)
    assert whole.counted == {"decapsulated": 1} and whole.retval == TC_ACT_REDIRECT
    out = dp.tc_rx(frame, gso_size=1208, gso_segs=3)
    assert out.counted == {"rx_decap_unsupported": 1}
    assert out.retval == TC_ACT_OK and out.frame == frame, "untouched"


def test_tc_only_leaves_a_batch_of_datagrams_to_the_stack(dp):
    """UDP GSO (a local UDP_SEGMENT sender, or the NIC's UDP GRO): one skb, many
    Teredo datagrams, the outer lengths over all of them. Without GSO those lengths
    make it malformed (dropped); as GSO it is a batch the stack cuts for the socket:
    passed, untouched."""
    dp.configure()
    trusted_peer(dp)
    one = P.inner_ipv6(P.PEER_ADDRESS, P.OUR_ADDRESS)
    frame = P.teredo_frame(one * 3)
    assert dp.tc_rx(frame).counted == {"rx_ipv6_length": 1}
    out = dp.tc_rx(frame, gso_size=len(one), gso_segs=3)
    assert out.counted == {"rx_decap_unsupported": 1}
    assert out.retval == TC_ACT_OK and out.frame == frame, "untouched"


def assert_decapsulated(frame: bytes, out: bytes):
    """Field by field: same MACs, EtherType IPv6, then the inner packet byte for byte."""
    assert out[0:6] == frame[0:6], "destination MAC"
    assert out[6:12] == frame[6:12], "source MAC"
    assert out[12:14] == b"\x86\xdd", "EtherType IPv6"
    ip_len = struct.unpack("!H", frame[IP_TOTLEN:IP_TOTLEN + 2])[0]
    inner = frame[PAYLOAD:14 + ip_len]
    assert out[14:14 + len(inner)] == inner, "inner IPv6 packet byte-identical"
    assert out[14 + len(inner):] == frame[14 + ip_len:], "only the Ethernet padding follows"
    assert out == model.decapsulated_xdp(frame)


def test_every_reason_has_a_receive_or_transmit_fixture():
    from .test_guard import COVERED as GUARD_COVERED
    from .test_limit import COVERED as LIMIT_COVERED
    from .test_tx import CASES as TX_CASES, NOT_IN_TEST_RUN as TX_NOT_IN_TEST_RUN
    from .test_tx_detour import COVERED as DETOUR_COVERED

    covered = {c.reason for c in CASES} | {c.reason for c in TX_CASES} | GUARD_COVERED \
        | LIMIT_COVERED | DETOUR_COVERED
    untestable = set(NOT_IN_TEST_RUN) | set(TX_NOT_IN_TEST_RUN)
    # The relay's own reasons are the relay's fixtures' (test_relay.py checks them).
    relay = {r for r in Reason if r.name.startswith("RELAY_")}
    # And the server's are the server's (test_server.py).
    server = {r for r in Reason if r.name.startswith("SERVER_")}
    assert covered | untestable | relay | server == set(Reason), \
        set(Reason) - covered - untestable - relay - server
    assert not covered & untestable


def test_refresh_moves_the_peer_counters(dp):
    dp.configure()
    dp.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT, last_rx_ns=1, rx_packets=5, rx_bytes=500)
    frame = data_from_peer()
    before = stamp_floor_ns()
    assert dp.xdp(frame).counted == {"decapsulated": 1}
    assert dp.tc_rx(frame).counted == {"decapsulated": 1}
    after = now_ns()
    peer = dp.prog.peers.get(P.PEER_ADDRESS)
    inner_len = len(frame) - PAYLOAD
    assert (peer.rx_packets, peer.rx_bytes) == (7, 500 + 2 * inner_len)
    assert before <= peer.last_rx_ns <= after, "the data path's clock and time.monotonic_ns agree"
    assert (peer.tx_packets, peer.last_tx_ns) == (0, 0)


def test_embedded_source_is_learned_once(dp):
    dp.configure()
    frame = data_from_peer()
    assert dp.xdp(frame).counted == {"decapsulated": 1}
    learned = dp.prog.peers.get(P.PEER_ADDRESS)
    assert learned is not None
    assert learned.flags == PeerFlag.TRUSTED | PeerFlag.LEARNED
    assert (str(learned.mapped_ipv4), learned.mapped_port) == (P.PEER_IPV4, P.PEER_PORT)
    assert (learned.rx_packets, learned.rx_bytes) == (1, len(frame) - PAYLOAD)
    # The second packet refreshes the learned entry instead of creating another.
    assert dp.xdp(frame).counted == {"decapsulated": 1}
    assert dp.prog.peers.get(P.PEER_ADDRESS).rx_packets == 2
    assert len(dp.prog.peers) == 1


def test_learning_off_creates_no_entry(dp):
    dp.configure(learn_peers=False)
    assert dp.xdp(data_from_peer()).counted == {"decapsulated": 1}
    assert len(dp.prog.peers) == 0


def test_mismatched_entry_is_not_refreshed(dp):
    dp.configure()
    dp.add_peer(P.PEER_ADDRESS, "198.51.100.8", P.PEER_PORT, last_rx_ns=1)
    assert dp.xdp(data_from_peer()).counted == {"decapsulated": 1}
    peer = dp.prog.peers.get(P.PEER_ADDRESS)
    assert (peer.rx_packets, peer.last_rx_ns, str(peer.mapped_ipv4)) == (0, 1, "198.51.100.8")


def test_ethernet_padding_survives_decapsulation(dp):
    """A bubble-sized packet padded to the 60-byte Ethernet minimum... and longer."""
    dp.configure()
    trusted_peer(dp)
    frame = data_from_peer() + b"\0" * 6  # padding the IPv4 total length does not cover
    out = dp.xdp(frame)
    assert out.counted == {"decapsulated": 1}
    assert_decapsulated(frame, out.frame)


def test_tc_ingress_leaves_unmarked_frames_alone(dp):
    """Without XDP metadata (always so in a SCHED_CLS test run) nothing happens and
    nothing is counted: XDP already counted the frame."""
    dp.configure()
    trusted_peer(dp)
    frame = data_from_peer()
    out = dp.tc_ingress(frame)
    assert (out.retval, out.frame, out.counted) == (TC_ACT_OK, frame, {})
