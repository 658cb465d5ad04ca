"""Transmit path (tc egress on the tun): a fixture table through tc_teredo_tx.

A SCHED_CLS test run always has an Ethernet header in front, so the config says
l2_len=14 here (0 on the real tun); the program then keeps the Ethernet header,
sets its type to IPv4 and skips bpf_skb_change_head, which only the real tun needs.
"""

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import pytest

from xdp_teredo.datapath import PeerFlag, Reason, now_ns
from xdp_teredo.datapath.layout import Kind

from . import model
from . import packets as P
from .conftest import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, stamp_floor_ns

pytestmark = [pytest.mark.root, pytest.mark.bpf]

R = Reason
SECOND = 1_000_000_000


def to_peer(size: Optional[int] = None, dst=P.PEER_ADDRESS) -> bytes:
    """Ethernet + an IPv6 echo request from us to `dst`; `size` = IPv6 bytes."""
    payload = b"ping" * 8
    if size is not None:
        payload = b"x" * (size - 40 - 8)
    return P.ipv6_frame(P.inner_ipv6(P.OUR_ADDRESS, dst, payload))


def trusted_peer(h, **kw):
    h.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT, **kw)


@dataclass
class Case:
    id: str
    frame: Callable[[], bytes]
    reason: Reason
    setup: Optional[Callable] = None
    config: Dict = field(default_factory=dict)
    mapped: tuple = (P.PEER_IPV4, P.PEER_PORT)


CASES = [
    Case("trusted, fresh Teredo peer", to_peer, R.ENCAPSULATED, trusted_peer),
    Case("native destination through its relay", lambda: to_peer(dst=P.NATIVE_ADDRESS), R.ENCAPSULATED,
         lambda h: h.add_peer(P.NATIVE_ADDRESS, P.RELAY_IPV4, P.RELAY_PORT,
                              flags=PeerFlag.TRUSTED | PeerFlag.RELAY),
         mapped=(P.RELAY_IPV4, P.RELAY_PORT)),
    Case("exactly the tunnel MTU (1280)", lambda: to_peer(1280), R.ENCAPSULATED, trusted_peer),
    Case("above 1280 with a larger MTU from the RA", lambda: to_peer(1281), R.ENCAPSULATED, trusted_peer,
         {"mtu": 1400}),
    Case("last receive long ago, but no timeout (0)", to_peer, R.ENCAPSULATED,
         lambda h: trusted_peer(h, last_rx_ns=1), {"peer_timeout": 0}),
    Case("not enabled", to_peer, R.TX_DISABLED, trusted_peer, {"enabled": False}),
    Case("no NIC configured", to_peer, R.TX_DISABLED, trusted_peer, {"nic_ifindex": 0}),
    Case("IPv4 packet", lambda: P.teredo_frame(b"x" * 40), R.TX_NOT_IPV6, trusted_peer),
    Case("EtherType IPv6, version 4", lambda: P.ipv6_frame(b"\x45" + P.inner_ipv6(P.OUR_ADDRESS,
                                                                                 P.PEER_ADDRESS)[1:]),
         R.TX_MALFORMED, trusted_peer),
    Case("one byte above the tunnel MTU (§5.1.2)", lambda: to_peer(1281), R.TX_TOO_BIG, trusted_peer),
    Case("no peer entry", to_peer, R.TX_NO_PEER),
    Case("peer not trusted yet (§5.2.4)", to_peer, R.TX_UNTRUSTED_PEER,
         lambda h: trusted_peer(h, flags=0)),
    Case("trusted, last receive 31 s ago (§5.2.4)", to_peer, R.TX_STALE_PEER,
         lambda h: trusted_peer(h, last_rx_ns=now_ns() - 31 * SECOND)),
]

NOT_IN_TEST_RUN = {
    R.TX_ENCAP_UNSUPPORTED: "bpf_skb_adjust_room refuses only on old kernels or odd GSO skbs",
    R.TX_ENCAP_ERROR: "bpf_skb_store_bytes/change_head fail only on allocation failure",
    R.TX_REDIRECT_FAILED: "bpf_redirect_neigh refuses only bad flags/params, which we never pass",
}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_tx(dp, case):
    dp.configure(**case.config)
    if case.setup:
        case.setup(dp)
    frame = case.frame()
    dst = ipaddress.IPv6Address(frame[14 + 24:14 + 40])
    peer_before = dp.prog.peers.get(dst)
    assert model.tx(frame, dp.config, dp.peers(), now_ns()) == case.reason, "the model disagrees"
    out = dp.tc_tx(frame)
    assert out.counted == {case.reason.key: 1}
    if case.reason != R.ENCAPSULATED:
        assert out.retval == (TC_ACT_SHOT if case.reason.kind == Kind.DROP else TC_ACT_OK)
        assert out.frame == frame, "untouched: it goes on into the tun, to the control plane"
        return
    assert out.retval == TC_ACT_REDIRECT
    assert_encapsulated(frame, out.frame, *case.mapped, ip_id=peer_before.tx_packets & 0xFFFF)


def assert_encapsulated(frame: bytes, out: bytes, mapped_ipv4: str, mapped_port: int, ip_id: int):
    inner = frame[14:]
    assert out[:12] == frame[:12], "MACs untouched (bpf_redirect_neigh fills them in)"
    assert out[12:14] == b"\x08\x00", "EtherType IPv4"
    ip, udp = out[14:34], out[34:42]
    ver_ihl, tos, tot_len, ident, frag, ttl, proto, _, src, dst = struct.unpack("!BBHHHBBH4s4s", ip)
    assert ver_ihl == 0x45 and tos == 0
    assert tot_len == 20 + 8 + len(inner)
    assert ident == ip_id, "IPv4 ID from the peer's packet counter"
    assert frag == 0, "DF clear, not a fragment"
    assert ttl == 64 and proto == 17
    assert P.ipv4_checksum_ok(ip), "IPv4 header checksum"
    assert ipaddress.IPv4Address(src) == ipaddress.IPv4Address(P.LOCAL_IPV4)
    assert ipaddress.IPv4Address(dst) == ipaddress.IPv4Address(mapped_ipv4)
    sport, dport, ulen, ucsum = struct.unpack("!HHHH", udp)
    assert (sport, dport) == (P.LOCAL_PORT, mapped_port)
    assert ulen == 8 + len(inner)
    assert ucsum == 0, "no UDP checksum over IPv4 (docs/datapath.md)"
    assert out[42:] == inner, "inner IPv6 packet byte-identical"


def test_send_moves_the_peer_counters(dp):
    dp.configure()
    trusted_peer(dp, tx_packets=0xFFFF, tx_bytes=10)
    frame = to_peer()
    before = stamp_floor_ns()
    first = dp.tc_tx(frame)
    second = dp.tc_tx(frame)
    after = now_ns()
    assert first.counted == second.counted == {"encapsulated": 1}
    assert_encapsulated(frame, first.frame, P.PEER_IPV4, P.PEER_PORT, ip_id=0xFFFF)
    assert_encapsulated(frame, second.frame, P.PEER_IPV4, P.PEER_PORT, ip_id=0x0000)
    peer = dp.prog.peers.get(P.PEER_ADDRESS)
    assert peer.tx_packets == 0xFFFF + 2
    assert peer.tx_bytes == 10 + 2 * (len(frame) - 14)
    assert before <= peer.last_tx_ns <= after
    assert peer.rx_packets == 0


def test_stale_peer_is_fresh_again_after_a_receive(dp):
    """The data path itself refreshes last_rx (RFC 4380 §5.2.3 'recent')."""
    from .test_rx import data_from_peer

    dp.configure()
    trusted_peer(dp, last_rx_ns=now_ns() - 60 * SECOND)
    assert dp.tc_tx(to_peer()).counted == {"tx_stale_peer": 1}
    assert dp.xdp(data_from_peer()).counted == {"decapsulated": 1}
    assert dp.tc_tx(to_peer()).counted == {"encapsulated": 1}
