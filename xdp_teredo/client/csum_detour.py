"""The client's checksum detour on a veth NIC, and the offload probe that tells
which peers can do without it (docs/client.md, "Checksums over a veth").

On a veth NIC, a packet whose checksum (or segmentation) the stack left to the
device goes round the checksum veth before it is encapsulated (bpf/client.c,
tx_csum_detour), because a Teredo peer on this host that decapsulates in
userspace (Miredo in a namespace next to ours) would read it unfinished. The
detour costs TCP its GSO: every segment is encapsulated and sent alone. Most
peers do not need it: an xdp-teredo peer decapsulates in its kernel, which takes
the packet as the offload left it, and a peer beyond a real NIC gets it finished
by that NIC. Which kind a peer is cannot be told from its address, so each peer
is asked with the thing itself:

- an ICMPv6 Echo Request from our Teredo address whose checksum is left to
  offload (the field holds the pseudo-header sum, as CHECKSUM_PARTIAL leaves it),
  written to the tun through a packet socket with a virtio-net header that says
  NEEDS_CSUM: the kernel makes it exactly what a TCP packet is on its way out.
  The tc program sends it without the detour (it never detours ICMPv6,
  bpf/lib/csum.h l4_csum_offset), so it arrives as unfinished as TCP would.
- The reply came back: the peer's path took an unfinished checksum. Its BPF
  entry gets PeerFlag.TAKES_OFFLOADS, and tc_teredo_tx stops detouring packets to
  it (GSO leaves whole, as UDP-tunnel GSO).
- No reply after PROBE_TRIES (Miredo on this host drops the request for its bad
  checksum; a firewall may drop echo requests): the peer keeps the detour, which
  is right for every peer, only slower. A new mapping is asked again.

Only on a veth NIC under --veth-offloads finish: on any other NIC, and with
`pass`, only UDP GSO is detoured (for every peer), and nothing is asked.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import struct
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from ..datapath.layout import PeerFlag
from ..teredo import constants
from ..teredo.packet import Ipv6Packet, internet_checksum, pseudo_header

IPv6Address = ipaddress.IPv6Address

PROBE_TRIES = 3            # requests per peer mapping before it keeps the detour
PROBE_RETRY = 1.0          # seconds before the second try, doubled after each
PROBE_EVERY = 0.5          # how often the peer table is looked at
PROBES_PER_TURN = 16       # requests sent per look at most (a busy client's table)
PROBE_IDENTIFIER = 0x7E3F  # the echo identifier (the §5.2.9 test uses 0x7E3E)
_NONCE_LEN = 8

ETH_P_IPV6 = 0x86DD
SOL_PACKET = 263
PACKET_VNET_HDR = 15
ICMP6_FILTER = 1
# struct virtio_net_hdr (little-endian, as the kernel reads it on this host):
# flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
_VNET_HDR = struct.Struct("<BBHHHH")
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
_ECHO = struct.Struct("!BBHHH")   # type, code, checksum, identifier, sequence
_ICMPV6_CHECKSUM_AT = 2


def pending_checksum(src: IPv6Address, dst: IPv6Address, length: int) -> int:
    """What a checksum field left to offload holds: the folded pseudo-header sum,
    not complemented (the device adds the message to it and complements)."""
    return ~internet_checksum(pseudo_header(src, dst, constants.IPPROTO_ICMPV6, length)) & 0xFFFF


def build_probe(src: IPv6Address, dst: IPv6Address, sequence: int, nonce: bytes) -> bytes:
    """The whole frame for the packet socket: virtio-net header (NEEDS_CSUM at the
    ICMPv6 checksum), then the IPv6 echo request with its checksum left pending."""
    message_len = _ECHO.size + len(nonce)
    message = _ECHO.pack(constants.ICMPV6_ECHO_REQUEST, 0,
                         pending_checksum(src, dst, message_len),
                         PROBE_IDENTIFIER, sequence) + nonce
    packet = Ipv6Packet(src=src, dst=dst, next_header=constants.IPPROTO_ICMPV6,
                        hop_limit=constants.DEFAULT_HOP_LIMIT, payload=message).to_bytes()
    vnet = _VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0,
                          constants.IPV6_HDR_LEN, _ICMPV6_CHECKSUM_AT)
    return vnet + packet


def parse_reply(message: bytes) -> Optional[Tuple[int, bytes]]:
    """(sequence, data) of one of our probes' echo replies, as a raw ICMPv6 socket
    reads it (no IPv6 header; the kernel verified the checksum); None otherwise."""
    if len(message) < _ECHO.size:
        return None
    icmp_type, code, _, identifier, sequence = _ECHO.unpack_from(message)
    if icmp_type != constants.ICMPV6_ECHO_REPLY or code != 0 or identifier != PROBE_IDENTIFIER:
        return None
    return sequence, bytes(message[_ECHO.size:])


@dataclasses.dataclass
class _Asking:
    mapping: Tuple[object, int]
    tries: int = 0
    next_at: float = 0.0
    sequence: int = 0
    nonce: bytes = b""
    answered: bool = False


class OffloadProbes:
    """Who to ask, when, and whether an answer is the one asked for. Pure: the
    daemon feeds it the peer table's entries and the replies."""

    def __init__(self, nonce: Callable[[int], bytes] = os.urandom):
        self._nonce = nonce
        self._asking: Dict[IPv6Address, _Asking] = {}
        self._sequence = 0

    def due(self, entries: Iterable, now: float) -> List[Tuple[IPv6Address, int, bytes]]:
        """(address, sequence, nonce) of the requests to send now. An entry that
        is trusted and not yet known to take offloads is asked PROBE_TRIES times,
        PROBE_RETRY apart, doubling; a peer gone from the table is forgotten."""
        present = set()
        out: List[Tuple[IPv6Address, int, bytes]] = []
        for entry in entries:
            present.add(entry.address)
            if not entry.trusted or entry.flags & PeerFlag.TAKES_OFFLOADS:
                continue
            mapping = (entry.mapped_ipv4, entry.mapped_port)
            asking = self._asking.get(entry.address)
            if asking is None or asking.mapping != mapping:
                asking = self._asking[entry.address] = _Asking(mapping, next_at=now)
            if asking.answered or asking.tries >= PROBE_TRIES or now < asking.next_at:
                continue
            if len(out) >= PROBES_PER_TURN:
                continue
            self._sequence = (self._sequence + 1) & 0xFFFF
            asking.tries += 1
            asking.next_at = now + PROBE_RETRY * 2 ** (asking.tries - 1)
            asking.sequence, asking.nonce = self._sequence, self._nonce(_NONCE_LEN)
            out.append((entry.address, asking.sequence, asking.nonce))
        for gone in set(self._asking) - present:
            del self._asking[gone]
        return out

    def answered(self, address: IPv6Address, sequence: int, data: bytes):
        """The mapping whose request this reply answers (the peer takes offloads
        there), or None: not ours, stale, or a repeat."""
        asking = self._asking.get(address)
        if asking is None or asking.answered or not asking.nonce \
                or (asking.sequence, asking.nonce) != (sequence, data):
            return None
        asking.answered = True
        return asking.mapping

    def gave_up(self) -> int:
        """Peers asked PROBE_TRIES times without an answer (they keep the detour)."""
        return sum(1 for a in self._asking.values() if not a.answered and a.tries >= PROBE_TRIES)


class ChecksumDetour:
    """Mixed into ClientDaemon (plan, config, csum_veth, tunnel, address, att,
    sync, loop, clock, log, counters and teardown live there)."""

    offloads_pass = False

    def own_csum_veth(self) -> None:
        """The checksum veth that finishes what the host left to offload (net/csum_veth.py,
        docs/client.md "Checksums over a veth"; the NIC's offloads stay as they are).
        On a veth NIC under --veth-offloads finish, for every peer not known to take
        it as it is; on any other NIC, and under `pass`, for UDP GSO only, which the
        kernel cannot cut once it is encapsulated. Made before the data path is
        attached or adopted, removed after it; left for the next instance while a
        kept fast path runs on."""
        from ..net import csum_veth

        tunnel = self.config.tunnel
        self.offloads_pass = self.plan.nic.kind != "veth" or self.plan.veth_offloads == "pass"
        self.csum_veth = csum_veth.create(tunnel, owner="client", silent=True)
        self.teardown.push("checksum veth", lambda: csum_veth.remove(tunnel), keep=lambda: None)

    def detour_status(self) -> Optional[str]:
        """`status`: what goes round the checksum veth."""
        if self.csum_veth is None:
            return None
        if self.offloads_pass:
            return "udp gso only"
        return "pending offloads, except to peers that take them (offload probe)"

    # -- the offload probe --

    offload_probes: Optional[OffloadProbes] = None
    _probe_out = None   # AF_PACKET socket on the tun, with virtio-net headers
    _probe_in = None    # raw ICMPv6 socket on the tun, echo replies only

    def start_offload_probe(self) -> None:
        """As root, in set-up: the two sockets (CAP_NET_RAW is needed to open them,
        not to use them), closed at exit. Nothing without a checksum veth. A kernel
        that refuses them leaves every peer on the detour: slower, never wrong."""
        if self.csum_veth is None or self.offloads_pass:
            return
        try:
            self._probe_out, self._probe_in = self._probe_sockets(self.tunnel.name)
        except OSError as err:
            self.log.warning("offload_probe_unavailable", error=str(err),
                             consequence="every peer's pending offloads take the checksum veth")
            return
        self.teardown.push_always("offload probe sockets", self._close_probe_sockets)
        self.offload_probes = OffloadProbes()
        self.loop.add_reader(self._probe_in, self.on_probe_reply)
        self.loop.every(PROBE_EVERY, self.probe_offloads)

    @staticmethod
    def _probe_sockets(name: str):
        # SOCK_RAW: only it takes virtio-net headers; a tun has no link header, so
        # what follows the virtio-net header is the IPv6 packet. Protocol 0: it
        # receives nothing.
        out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        replies = None
        try:
            out.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            out.bind((name, 0))
            replies = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            # ICMP6_FILTER: a set bit blocks that type (RFC 3542 §3.2); echo replies only.
            blocked = bytearray(b"\xff" * 32)
            reply = constants.ICMPV6_ECHO_REPLY
            blocked[reply // 32 * 4: reply // 32 * 4 + 4] = struct.pack(
                "=I", 0xFFFFFFFF & ~(1 << (reply % 32)))
            replies.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, bytes(blocked))
            replies.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name.encode())
            replies.setblocking(False)
        except OSError:
            out.close()
            if replies is not None:
                replies.close()
            raise
        return out, replies

    def _close_probe_sockets(self) -> None:
        for sock in (self._probe_out, self._probe_in):
            if sock is not None:
                sock.close()
        self._probe_out = self._probe_in = None

    def probe_offloads(self) -> None:
        if self.att is None or self.address is None or self.offload_probes is None:
            return
        entries = self.sync.call("iterate", lambda: list(self.att.peers)) or []
        for address, sequence, nonce in self.offload_probes.due(entries, self.clock.monotonic()):
            frame = build_probe(self.address, address, sequence, nonce)
            try:
                self._probe_out.sendto(frame, (self.tunnel.name, ETH_P_IPV6))
                self.counters["offload_probe_sent"] += 1
            except OSError as err:
                self.counters["offload_probe_failed"] += 1
                self.log.warning("offload_probe_failed", peer=str(address), error=str(err))

    def on_probe_reply(self) -> None:
        while True:
            try:
                message, source = self._probe_in.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            reply = parse_reply(message)
            if reply is None:
                continue
            peer = IPv6Address(source[0].split("%")[0])
            mapping = self.offload_probes.answered(peer, *reply)
            if mapping is not None:
                self._takes_offloads(peer, mapping)

    def _takes_offloads(self, peer: IPv6Address, mapping) -> None:
        entry = self.sync.call("get", self.att.peers.get, peer)
        if entry is None or (entry.mapped_ipv4, entry.mapped_port) != mapping:
            return   # gone or moved meanwhile: the new mapping is asked anew
        self.sync.call("update", self.att.peers.update, peer,
                       flags=entry.flags | PeerFlag.TAKES_OFFLOADS)
        self.counters["offload_probe_answered"] += 1
        self.log.info("peer_takes_offloads", peer=str(peer),
                      mapped=f"{mapping[0]}:{mapping[1]}")
