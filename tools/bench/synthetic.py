"""Synthetic Teredo peers, to fill a peer table (the relay's 10 versus 100,000).

Each peer is a distinct client of documentation-range mappings (203.0.113.0/24,
ports 1024..61023), trusted and fresh, written straight into a BPF peer map as
the control plane would (maps.PeerTable's layout, built with ctypes directly:
100,000 entries in well under a second). The peers never send anything: they
only make the table big, which is what the hash lookup's cost could depend on.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, List, Tuple

from xdp_teredo.datapath import layout
from xdp_teredo.datapath.libbpf import MapFd
from xdp_teredo.datapath.maps import now_ns

SERVER = ipaddress.IPv4Address("192.0.2.1")
_BASE = int(ipaddress.IPv4Address("203.0.113.0"))
_PORTS = 60000
_PREFIX = 0x20010000


def address(index: int) -> Tuple[bytes, int, int]:
    """(16-byte Teredo address, mapped IPv4 as int, mapped port) of peer `index`
    (RFC 4380 §4: prefix | server | flags 0 | ~port | ~IPv4)."""
    ip = _BASE + (index // _PORTS) % 256
    port = 1024 + index % _PORTS
    value = (_PREFIX << 96) | (int(SERVER) << 64) | ((port ^ 0xFFFF) << 32) | (ip ^ 0xFFFFFFFF)
    return value.to_bytes(16, "big"), ip, port


class SyntheticPeers:
    """Keeps a peer map at a wanted number of entries with synthetic peers."""

    def __init__(self, peers_map: MapFd, keep: Iterable = ()):
        self.map = peers_map
        self.keep = {ipaddress.IPv6Address(a).packed for a in keep}
        self.present: List[bytes] = []
        self._next = 0

    def resize(self, total: int) -> int:
        """Add or remove synthetic peers until the map holds `total` entries, the
        real ones included. Returns the number of entries counted afterwards."""
        real = self.entries() - len(self.present)
        want = max(0, total - real)
        while len(self.present) > want:
            self.map.delete(self.present.pop())
        fresh = now_ns()
        while len(self.present) < want:
            key, ip, port = address(self._next)
            self._next += 1
            if key in self.keep:
                continue
            value = layout.PeerValue(mapped_ipv4=int.from_bytes(ip.to_bytes(4, "big"), "little"),
                                     mapped_port=int.from_bytes(port.to_bytes(2, "big"), "little"),
                                     flags=int(layout.PeerFlag.TRUSTED), last_rx_ns=fresh)
            self.map.update(key, bytes(value))
            self.present.append(key)
        return self.entries()

    def entries(self) -> int:
        return sum(1 for _ in self.map.keys())

    def clear(self) -> None:
        while self.present:
            self.map.delete(self.present.pop())
