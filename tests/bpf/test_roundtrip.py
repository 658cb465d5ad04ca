"""Encapsulate as one Teredo client, decapsulate as its peer: the IPv6 packet that
comes out is the one that went in, byte for byte.

Between the two, a NAT rewrites our local address/port to our mapped ones (what
our Teredo address embeds), as on the Internet; the peer then accepts us by the
§5.2.3 rule (the source address embeds the UDP source), without any entry.
"""

import struct

import pytest

from . import packets as P
from .conftest import TC_ACT_REDIRECT, XDP_PASS

pytestmark = [pytest.mark.root, pytest.mark.bpf]


def as_us(dp):
    dp.prog.reset()
    dp.configure()
    dp.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT)


def as_the_peer(dp, know_us: bool = False):
    dp.prog.reset()
    dp.configure(local_ipv4=P.PEER_IPV4, local_port=P.PEER_PORT, teredo_address=P.PEER_ADDRESS)
    if know_us:
        dp.add_peer(P.OUR_ADDRESS, P.OUR_MAPPED_IPV4, P.OUR_MAPPED_PORT)


def through_nat(frame: bytes) -> bytes:
    """Source NAT: LOCAL_IPV4:LOCAL_PORT -> OUR_MAPPED_IPV4:OUR_MAPPED_PORT."""
    out = bytearray(frame)
    assert out[26:30] == bytes(map(int, P.LOCAL_IPV4.split("."))), "sent from our local address"
    assert struct.unpack("!H", out[34:36])[0] == P.LOCAL_PORT
    out[26:30] = bytes(map(int, P.OUR_MAPPED_IPV4.split(".")))
    out[34:36] = struct.pack("!H", P.OUR_MAPPED_PORT)
    P.fix_ipv4_checksum(out)  # the UDP checksum is 0: nothing else to fix
    return bytes(out)


@pytest.mark.parametrize("receiver", ["xdp", "tc_rx"])
@pytest.mark.parametrize("know_us", [False, True], ids=["embedded", "trusted-entry"])
def test_round_trip(dp, receiver, know_us):
    inner = P.inner_ipv6(P.OUR_ADDRESS, P.PEER_ADDRESS, b"round trip " * 20)
    as_us(dp)
    sent = dp.tc_tx(P.ipv6_frame(inner))
    assert (sent.retval, sent.counted) == (TC_ACT_REDIRECT, {"encapsulated": 1})

    as_the_peer(dp, know_us)
    wire = through_nat(sent.frame)
    got = dp.xdp(wire) if receiver == "xdp" else dp.tc_rx(wire)
    assert got.counted == {"decapsulated": 1}
    if receiver == "xdp":
        assert got.retval == XDP_PASS
    else:
        assert got.retval == TC_ACT_REDIRECT
    assert got.frame[12:14] == b"\x86\xdd"
    assert got.frame[14:] == inner
    peer = dp.prog.peers.get(P.OUR_ADDRESS)
    assert peer is not None and peer.trusted, "learned or refreshed"
    assert (str(peer.mapped_ipv4), peer.mapped_port) == (P.OUR_MAPPED_IPV4, P.OUR_MAPPED_PORT)
    assert peer.rx_packets >= 1


def test_without_the_nat_the_peer_does_not_believe_us(dp):
    """Our address embeds the mapped address, but the packet came from the local one."""
    inner = P.inner_ipv6(P.OUR_ADDRESS, P.PEER_ADDRESS)
    as_us(dp)
    sent = dp.tc_tx(P.ipv6_frame(inner))
    as_the_peer(dp)
    got = dp.xdp(sent.frame)
    assert got.counted == {"rx_unknown_peer": 1}
    assert got.frame == sent.frame
