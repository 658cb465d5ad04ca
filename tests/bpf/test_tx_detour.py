"""The client's checksum detour on a veth NIC (bpf/client.c, tx_csum_detour and
tc_teredo_tx_back; docs/client.md "Checksums over a veth").

tc_teredo_tx sends a packet whose checksum or segmentation the stack left to the
device out of the checksum veth (csum_out_ifindex), unchanged; tc_teredo_tx_back,
on the veth's far end, encapsulates what comes back finished. Without a checksum
veth configured (a NIC that is not a veth) nothing changes. A test run cannot
give an skb CHECKSUM_PARTIAL, only what such a packet looks like (the folded
pseudo-header sum in the field) and gso_size/gso_segs in the context.
"""

import struct

import pytest

from xdp_teredo.datapath import Reason, now_ns
from xdp_teredo.datapath.layout import PeerFlag

from . import packets as P
from .conftest import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT
from .test_tx import assert_encapsulated, trusted_peer

pytestmark = [pytest.mark.root, pytest.mark.bpf]

R = Reason
COVERED = {R.TX_CSUM_DETOUR}  # test_rx.py: every reason has a fixture
CK0, CK1 = 41, 42  # any non-zero: test runs redirect nowhere


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def segment(proto: int, *, pending: bool, size: int = 600) -> bytes:
    """Ethernet + IPv6 + TCP (6) or UDP (17) from us to the peer; its checksum left
    to offload (the folded pseudo-header sum) or complete."""
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", 80, 5000, 1, 1, 5 << 4, 0x18, 65535, 0, 0)
        at = 16
    else:
        l4 = struct.pack("!HHHH", 53, 5000, 8 + size, 0)
        at = 6
    l4 = bytearray(l4 + bytes((i * 7) & 0xFF for i in range(size)))
    packet = bytearray(struct.pack("!IHBB", 6 << 28, len(l4), proto, 64)
                       + P.OUR_ADDRESS.packed + P.PEER_ADDRESS.packed + bytes(l4))
    pseudo = _sum16(bytes(packet[8:40]) + struct.pack("!IxxxB", len(l4), proto))
    if pending:
        value = pseudo
    else:
        value = (~_sum16(struct.pack("!H", pseudo) + bytes(l4))) & 0xFFFF
    packet[40 + at:42 + at] = struct.pack("!H", value)
    return P.ipv6_frame(bytes(packet))


@pytest.mark.parametrize("proto", [6, 17], ids=["tcp", "udp"])
def test_a_pending_checksum_goes_round_the_checksum_veth_unchanged(dp, proto):
    dp.configure(csum_out_ifindex=CK0, csum_in_ifindex=CK1)
    trusted_peer(dp)
    frame = segment(proto, pending=True)
    out = dp.tc_tx(frame)
    assert out.counted == {"tx_csum_detour": 1}
    assert out.retval == TC_ACT_REDIRECT
    assert out.frame == frame, "still IPv6: encapsulated when it comes back finished"
    assert dp.prog.peers.get(P.PEER_ADDRESS).tx_packets == 0, "counted once, on the way back"


def test_a_gso_packet_goes_round_even_with_a_complete_looking_checksum(dp):
    dp.configure(csum_out_ifindex=CK0, csum_in_ifindex=CK1)
    trusted_peer(dp)
    frame = segment(6, pending=False, size=2400)
    out = dp.tc_tx(frame, gso_size=1208, gso_segs=2)
    assert out.counted == {"tx_csum_detour": 1} and out.retval == TC_ACT_REDIRECT


@pytest.mark.parametrize("proto", [6, 17], ids=["tcp", "udp"])
def test_a_complete_checksum_goes_straight_out(dp, proto):
    dp.configure(csum_out_ifindex=CK0, csum_in_ifindex=CK1)
    trusted_peer(dp)
    frame = segment(proto, pending=False)
    out = dp.tc_tx(frame)
    assert out.counted == {"encapsulated": 1} and out.retval == TC_ACT_REDIRECT
    assert_encapsulated(frame, out.frame, P.PEER_IPV4, P.PEER_PORT, ip_id=0)


def test_without_a_checksum_veth_pending_packets_are_encapsulated_as_before(dp):
    """A NIC that is not a veth finishes offloads itself, after us: GSO stays."""
    dp.configure()
    trusted_peer(dp)
    frame = segment(6, pending=True)
    out = dp.tc_tx(frame)
    assert out.counted == {"encapsulated": 1} and out.retval == TC_ACT_REDIRECT
    assert_encapsulated(frame, out.frame, P.PEER_IPV4, P.PEER_PORT, ip_id=0)
    # A test run's GSO skb has gso_size but no gso_type, which bpf_skb_adjust_room
    # refuses (the e2e tests send real TCP GSO); what matters here: not sent round.
    gso = dp.tc_tx(segment(6, pending=True, size=2400), gso_size=1208, gso_segs=2)
    assert "tx_csum_detour" not in gso.counted


@pytest.mark.parametrize("proto", [6, 17], ids=["tcp", "udp"])
def test_a_peer_that_takes_offloads_gets_a_pending_checksum_as_it_is(dp, proto):
    """client/csum_detour.py's probe came back: no detour to that peer."""
    dp.configure(csum_out_ifindex=CK0, csum_in_ifindex=CK1)
    trusted_peer(dp, flags=PeerFlag.TRUSTED | PeerFlag.TAKES_OFFLOADS)
    frame = segment(proto, pending=True)
    out = dp.tc_tx(frame)
    assert out.counted == {"encapsulated": 1} and out.retval == TC_ACT_REDIRECT
    assert_encapsulated(frame, out.frame, P.PEER_IPV4, P.PEER_PORT, ip_id=0)
    # TCP GSO is not sent round either (a test run's GSO skb cannot be
    # encapsulated, see above: what matters is where it went).
    if proto == 6:
        gso = dp.tc_tx(segment(6, pending=True, size=2400), gso_size=1208, gso_segs=2)
        assert "tx_csum_detour" not in gso.counted


def test_udp_gso_goes_round_even_to_a_peer_that_takes_offloads(dp):
    """The kernel cannot cut an encapsulated UDP GSO packet the tun handed over
    (bpf/client.c tx_needs_detour): the checksum veth cuts it first."""
    dp.configure(csum_out_ifindex=CK0, csum_in_ifindex=CK1)
    trusted_peer(dp, flags=PeerFlag.TRUSTED | PeerFlag.TAKES_OFFLOADS)
    frame = segment(17, pending=False, size=2400)
    out = dp.tc_tx(frame, gso_size=1208, gso_segs=2)
    assert out.counted == {"tx_csum_detour": 1} and out.retval == TC_ACT_REDIRECT
    assert out.frame == frame


@pytest.mark.parametrize("proto", [6, 17], ids=["tcp", "udp"])
def test_a_nic_that_finishes_offloads_sends_only_udp_gso_round(dp, proto):
    """Not a veth, or --veth-offloads pass (Config.offloads_pass): every peer gets
    what is left to offload as it is, except UDP GSO."""
    dp.configure(csum_out_ifindex=CK0, csum_in_ifindex=CK1, offloads_pass=True)
    trusted_peer(dp)
    frame = segment(proto, pending=True)
    out = dp.tc_tx(frame)
    assert out.counted == {"encapsulated": 1} and out.retval == TC_ACT_REDIRECT
    gso = dp.tc_tx(segment(proto, pending=False, size=2400), gso_size=1208, gso_segs=2)
    assert ("tx_csum_detour" in gso.counted) == (proto == 17), gso.counted


def test_an_icmpv6_checksum_left_to_offload_is_never_sent_round(dp):
    """The offload probe's echo request leaves unfinished on purpose: if it were
    finished on the way, every peer would seem to take offloads."""
    from xdp_teredo.client.csum_detour import build_probe, _VNET_HDR

    dp.configure(csum_out_ifindex=CK0, csum_in_ifindex=CK1)
    trusted_peer(dp)
    frame = P.ipv6_frame(build_probe(P.OUR_ADDRESS, P.PEER_ADDRESS, 1, b"12345678")[_VNET_HDR.size:])
    out = dp.tc_tx(frame)
    assert out.counted == {"encapsulated": 1} and out.retval == TC_ACT_REDIRECT
    assert_encapsulated(frame, out.frame, P.PEER_IPV4, P.PEER_PORT, ip_id=0)


def test_only_what_the_fast_path_sends_goes_round(dp):
    dp.configure(csum_out_ifindex=CK0, csum_in_ifindex=CK1)
    trusted_peer(dp, flags=0)
    frame = segment(6, pending=True)
    out = dp.tc_tx(frame)
    assert out.counted == {"tx_untrusted_peer": 1} and out.retval == TC_ACT_OK
    assert out.frame == frame, "the tun's reader gets it (the tun finishes it before)"


@pytest.mark.parametrize("pending", [True, False], ids=["looks-pending", "complete"])
def test_what_comes_back_is_encapsulated_and_never_sent_round_again(dp, pending):
    dp.configure(csum_out_ifindex=CK0, csum_in_ifindex=CK1)
    trusted_peer(dp, tx_packets=7)
    frame = segment(6, pending=pending)
    out = dp.tc_tx_back(frame)
    assert out.counted == {"encapsulated": 1} and out.retval == TC_ACT_REDIRECT
    assert_encapsulated(frame, out.frame, P.PEER_IPV4, P.PEER_PORT, ip_id=7)
    assert dp.prog.peers.get(P.PEER_ADDRESS).tx_packets == 8


def test_back_for_a_peer_gone_stale_meanwhile_goes_to_the_tun(dp):
    dp.configure(csum_out_ifindex=CK0, csum_in_ifindex=CK1)
    trusted_peer(dp, last_rx_ns=now_ns() - 31 * 1_000_000_000)
    out = dp.tc_tx_back(segment(6, pending=False))
    assert out.counted == {"tx_stale_peer": 1}
    assert out.retval == TC_ACT_REDIRECT, "into the tun's transmit path: its reader gets it"


def test_back_what_is_not_ipv6_is_not_ours(dp):
    dp.configure(csum_out_ifindex=CK0, csum_in_ifindex=CK1)
    out = dp.tc_tx_back(P.teredo_frame(b"x" * 40))
    assert out.counted == {} and out.retval == TC_ACT_SHOT
