"""A reference model of the data path's decisions, in plain Python.

Written from the rules (RFC 4380 §5.2.3/§5.2.4/§5.4.2 and docs/datapath.md), not
from the C: the random tests run thousands of packets through the BPF programs and
through this model, and require the same verdict for every one. When they differ,
one of the two misreads the rules.
"""

import ipaddress
import struct
from dataclasses import dataclass
from typing import Dict, Optional

from xdp_teredo.datapath import Config, PeerEntry, PeerFlag, Reason

R = Reason


@dataclass
class RxVerdict:
    reason: Reason
    learn: Optional[PeerEntry] = None  # an entry the data path creates (LEARN_PEERS)
    refresh: bool = False              # the existing entry's rx counters move


def _csum_ok(header: bytes) -> bool:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def _embeds(src: bytes, ipv4: bytes, port: bytes) -> bool:
    """RFC 4380 §4: 2001:0000:...:~port:~ipv4."""
    return (src[:4] == b"\x20\x01\x00\x00"
            and src[10:12] == bytes(b ^ 0xFF for b in port)
            and src[12:16] == bytes(b ^ 0xFF for b in ipv4))


def rx(frame: bytes, cfg: Config, peers: Dict[ipaddress.IPv6Address, PeerEntry]) -> RxVerdict:
    """What the receive path (XDP or tc-only) must decide for an Ethernet frame."""
    if len(frame) < 14 or frame[12:14] != b"\x08\x00":
        return RxVerdict(R.RX_NOT_TEREDO)
    ip = frame[14:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[0] & 0xF < 5:
        return RxVerdict(R.RX_NOT_TEREDO)
    ihl = (ip[0] & 0xF) * 4
    if len(ip) < ihl or ip[9] != 17:
        return RxVerdict(R.RX_NOT_TEREDO)
    if ip[16:20] != cfg.local_ipv4.packed:
        return RxVerdict(R.RX_NOT_TEREDO)
    frag = struct.unpack("!H", ip[6:8])[0]
    if frag & 0x1FFF:
        return RxVerdict(R.RX_NOT_TEREDO)  # a later fragment: no UDP header
    if len(ip) < ihl + 8 or struct.unpack("!H", ip[ihl + 2:ihl + 4])[0] != cfg.local_port:
        return RxVerdict(R.RX_NOT_TEREDO)

    if not cfg.enabled or not cfg.tun_ifindex:
        return RxVerdict(R.RX_DISABLED)
    if frag & 0x2000:
        return RxVerdict(R.RX_FRAGMENT)
    if ihl != 20:
        return RxVerdict(R.RX_IPV4_OPTIONS)
    if not _csum_ok(ip[:20]):
        return RxVerdict(R.RX_IPV4_CHECKSUM)
    ip_len = struct.unpack("!H", ip[2:4])[0]
    if ip_len < 28 or ip_len > len(ip):
        return RxVerdict(R.RX_IPV4_LENGTH)
    udp_len = struct.unpack("!H", ip[24:26])[0]
    if udp_len != ip_len - 20:
        return RxVerdict(R.RX_UDP_LENGTH)
    payload = ip[28:ip_len]

    if len(payload) < 2:
        return RxVerdict(R.RX_NOT_IPV6)
    if payload[0] == 0:
        return RxVerdict({1: R.RX_AUTH, 0: R.RX_ORIGIN}.get(payload[1], R.RX_NOT_IPV6))
    if payload[0] >> 4 != 6:
        return RxVerdict(R.RX_NOT_IPV6)
    if len(payload) < 40:
        return RxVerdict(R.RX_IPV6_TRUNCATED)
    plen = struct.unpack("!H", payload[4:6])[0]
    if 40 + plen != len(payload):
        return RxVerdict(R.RX_IPV6_LENGTH)
    nh, src, dst = payload[6], payload[8:24], payload[24:40]
    if nh == 59 and plen == 0:
        return RxVerdict(R.RX_BUBBLE)
    if src[0] == 0xFE and src[1] & 0xC0 == 0x80:
        return RxVerdict(R.RX_LINK_LOCAL_SOURCE)
    if dst[0] == 0xFF:
        return RxVerdict(R.RX_MULTICAST_DESTINATION)
    if not cfg.relay and dst != cfg.teredo_address.packed:
        return RxVerdict(R.RX_NOT_OUR_ADDRESS)

    saddr, sport = ip[12:16], ip[20:22]
    peer = peers.get(ipaddress.IPv6Address(src))
    embeds = _embeds(src, saddr, sport)
    matches = (peer is not None and peer.mapped_ipv4.packed == saddr
               and peer.mapped_port == struct.unpack("!H", sport)[0])
    if peer is not None and not peer.trusted:
        return RxVerdict(R.RX_UNTRUSTED_PEER)
    foreign = cfg.relay and src[:4] != b"\x20\x01\x00\x00"
    if not embeds and (peer is None or foreign):
        return RxVerdict(R.RX_UNKNOWN_PEER)
    if not embeds and not matches:
        return RxVerdict(R.RX_MAPPING_MISMATCH)
    learn = None
    if peer is None and cfg.learn_peers:
        learn = PeerEntry(address=ipaddress.IPv6Address(src), mapped_ipv4=ipaddress.IPv4Address(saddr),
                          mapped_port=struct.unpack("!H", sport)[0],
                          flags=PeerFlag.TRUSTED | PeerFlag.LEARNED, rx_packets=1, rx_bytes=len(payload))
    return RxVerdict(R.DECAPSULATED, learn=learn, refresh=matches)


def decapsulated_xdp(frame: bytes) -> bytes:
    """The frame XDP hands up: same MACs, type IPv6, everything after the UDP header."""
    return frame[:12] + b"\x86\xdd" + frame[42:]


def tx(frame: bytes, cfg: Config, peers: Dict[ipaddress.IPv6Address, PeerEntry], now_ns: int) -> Reason:
    """What tc egress must decide for a test-run frame (Ethernet + IPv6, l2_len 14)."""
    l2 = cfg.l2_len
    if not cfg.enabled or not cfg.nic_ifindex:
        return R.TX_DISABLED
    if frame[12:14] != b"\x86\xdd":
        return R.TX_NOT_IPV6
    if len(frame) < l2 + 40 or frame[l2] >> 4 != 6:
        return R.TX_MALFORMED
    if len(frame) - l2 > cfg.mtu:
        return R.TX_TOO_BIG
    peer = peers.get(ipaddress.IPv6Address(frame[l2 + 24:l2 + 40]))
    if peer is None:
        return R.TX_NO_PEER
    if not peer.trusted:
        return R.TX_UNTRUSTED_PEER
    timeout = int(round(cfg.peer_timeout * 1e9))
    if timeout and peer.last_rx_ns < now_ns and now_ns - peer.last_rx_ns > timeout:
        return R.TX_STALE_PEER
    return R.ENCAPSULATED
