"""The client's offload probe (client/csum_detour.py): the request it writes, the
replies it accepts, and whom it asks when. Pure: no socket, no map."""

import ipaddress
import struct
from dataclasses import dataclass

from xdp_teredo.client import csum_detour as cd
from xdp_teredo.datapath.layout import PeerFlag
from xdp_teredo.teredo import constants
from xdp_teredo.teredo.packet import internet_checksum, parse_ipv6, pseudo_header

OURS = ipaddress.IPv6Address("2001:0:c000:201:34d5:6bb3:39cc:9bee")
PEER = ipaddress.IPv6Address("2001:0:c000:201:2421:3aea:34ff:8ef5")
OTHER = ipaddress.IPv6Address("2001:db8::40")


@dataclass
class Entry:
    address: ipaddress.IPv6Address
    mapped_ipv4: ipaddress.IPv4Address = ipaddress.IPv4Address("203.0.113.10")
    mapped_port: int = 50453
    flags: PeerFlag = PeerFlag.TRUSTED

    @property
    def trusted(self):
        return bool(self.flags & PeerFlag.TRUSTED)


def _finish(frame: bytes) -> bytes:
    """What the kernel does with NEEDS_CSUM: sum from csum_start to the end (the
    field included), complement, store at csum_start + csum_offset."""
    flags, gso, _, _, start, offset = cd._VNET_HDR.unpack_from(frame)
    assert (flags, gso) == (cd.VIRTIO_NET_HDR_F_NEEDS_CSUM, cd.VIRTIO_NET_HDR_GSO_NONE)
    packet = bytearray(frame[cd._VNET_HDR.size:])
    value = internet_checksum(bytes(packet[start:]))
    packet[start + offset:start + offset + 2] = struct.pack("!H", value)
    return bytes(packet)


def test_the_request_leaves_its_checksum_to_offload_and_finishing_it_makes_it_valid():
    frame = cd.build_probe(OURS, PEER, 7, b"noncenon")
    packet = parse_ipv6(frame[cd._VNET_HDR.size:])
    assert (packet.src, packet.dst, packet.next_header) == (OURS, PEER, constants.IPPROTO_ICMPV6)
    icmp = packet.payload
    assert icmp[0] == constants.ICMPV6_ECHO_REQUEST and icmp[1] == 0
    assert struct.unpack("!HH", icmp[4:8]) == (cd.PROBE_IDENTIFIER, 7) and icmp[8:] == b"noncenon"
    # As sent: not a valid checksum (a userspace decapsulator's kernel drops it) ...
    assert internet_checksum(pseudo_header(OURS, PEER, 58, len(icmp)) + icmp) != 0
    # ... the pseudo-header sum, where the stack seeds CHECKSUM_PARTIAL ...
    assert struct.unpack("!H", icmp[2:4])[0] == cd.pending_checksum(OURS, PEER, len(icmp))
    # ... which the device, or the kernel on its behalf, turns into a valid one.
    done = parse_ipv6(_finish(frame)).payload
    assert internet_checksum(pseudo_header(OURS, PEER, 58, len(done)) + done) == 0


def test_only_replies_with_our_identifier_are_read():
    reply = struct.pack("!BBHHH", constants.ICMPV6_ECHO_REPLY, 0, 0, cd.PROBE_IDENTIFIER, 9) + b"abc"
    assert cd.parse_reply(reply) == (9, b"abc")
    assert cd.parse_reply(reply[:7]) is None
    other_id = struct.pack("!BBHHH", constants.ICMPV6_ECHO_REPLY, 0, 0, 0x7E3E, 9)
    request = struct.pack("!BBHHH", constants.ICMPV6_ECHO_REQUEST, 0, 0, cd.PROBE_IDENTIFIER, 9)
    assert cd.parse_reply(other_id) is None and cd.parse_reply(request) is None


def _nonces():
    n = iter(range(1, 1000))
    return lambda size: next(n).to_bytes(size, "big")


def test_a_trusted_peer_is_asked_three_times_with_growing_gaps_then_left_on_the_detour():
    probes = cd.OffloadProbes(nonce=_nonces())
    entries = [Entry(PEER)]
    sent = [t for t in (0.0, 0.5, 1.0, 1.5, 2.9, 3.0, 5.0, 20.0) if probes.due(entries, t)]
    assert sent == [0.0, 1.0, 3.0]
    assert probes.gave_up() == 1


def test_untrusted_and_already_known_peers_are_not_asked():
    probes = cd.OffloadProbes(nonce=_nonces())
    entries = [Entry(PEER, flags=PeerFlag.LEARNED),
               Entry(OTHER, flags=PeerFlag.TRUSTED | PeerFlag.TAKES_OFFLOADS)]
    assert probes.due(entries, 0.0) == []


def test_the_answer_must_match_the_latest_request_and_counts_once():
    probes = cd.OffloadProbes(nonce=_nonces())
    [(address, seq1, nonce1)] = probes.due([Entry(PEER)], 0.0)
    [(_, seq2, nonce2)] = probes.due([Entry(PEER)], 1.0)
    assert address == PEER and seq2 != seq1
    assert probes.answered(PEER, seq1, nonce1) is None        # stale
    assert probes.answered(OTHER, seq2, nonce2) is None       # someone else
    assert probes.answered(PEER, seq2, b"forged!!") is None
    mapping = probes.answered(PEER, seq2, nonce2)
    assert mapping == (ipaddress.IPv4Address("203.0.113.10"), 50453)
    assert probes.answered(PEER, seq2, nonce2) is None        # a repeat
    assert probes.due([Entry(PEER)], 10.0) == [] and probes.gave_up() == 0


def test_a_new_mapping_is_asked_anew_and_a_peer_gone_is_forgotten():
    probes = cd.OffloadProbes(nonce=_nonces())
    for t in (0.0, 1.0, 3.0):
        probes.due([Entry(PEER)], t)
    assert probes.due([Entry(PEER)], 10.0) == []
    assert len(probes.due([Entry(PEER, mapped_port=4000)], 10.0)) == 1
    probes.due([], 11.0)
    assert probes.gave_up() == 0 and len(probes.due([Entry(PEER)], 12.0)) == 1


def test_at_most_a_few_requests_per_turn():
    probes = cd.OffloadProbes(nonce=_nonces())
    many = [Entry(ipaddress.IPv6Address(int(OTHER) + i)) for i in range(40)]
    assert len(probes.due(many, 0.0)) == cd.PROBES_PER_TURN
    assert len(probes.due(many, 0.1)) == cd.PROBES_PER_TURN


def test_status_says_what_goes_round_the_checksum_veth():
    from xdp_teredo.daemon.render import status_lines

    lines = status_lines({"state": "qualified", "decap": "tc", "checksum_detour": "udp gso only"})
    assert "detour     udp gso only" in lines
    assert not any(line.startswith("detour") for line in status_lines({"state": "qualified",
                                                                        "decap": "tc"}))
