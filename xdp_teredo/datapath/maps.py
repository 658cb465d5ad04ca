"""Typed access to the data path's maps: domain objects <-> ctypes structs.

Works on any MapFd: the maps of a program this process compiled, or the maps a
running instance pinned (stats.py opens those). The layouts come from layout.py,
the single source of truth that bpf/lib/shared.h is generated from.

Per-packet facts (last receive/send, counters) are written by the BPF programs;
the control plane decides policy (trusted or not, mapped address). A `put` from
here overwrites the whole entry, counters included: use `update` to change the
policy fields of an existing entry and keep its activity.
"""

import ctypes
import dataclasses
import errno
import ipaddress
import time
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Union

from ..errors import RuntimeFailure
from ..teredo import constants
from . import layout
from .libbpf import BPF_ANY, BPF_EXIST, BPF_NOEXIST, MapFd

IPv4 = Union[str, ipaddress.IPv4Address]
IPv6 = Union[str, ipaddress.IPv6Address]


def now_ns() -> int:
    """The data path's clock: CLOCK_MONOTONIC (the data path reads it as of the last
    tick, up to a tick behind this: bpf/lib/clock.h)."""
    return time.monotonic_ns()


def _be32(addr: IPv4) -> int:
    """An IPv4 address as the __be32 the kernel stores (network byte order in memory)."""
    return int.from_bytes(ipaddress.IPv4Address(addr).packed, "little")


def _ipv4(be32: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(be32.to_bytes(4, "little"))


def _be16(port: int) -> int:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def _port(be16: int) -> int:
    return int.from_bytes(be16.to_bytes(2, "little"), "big")


def _key(address: IPv6) -> bytes:
    return bytes(ipaddress.IPv6Address(address).packed)


# --------------------------------------------------------------------------- peers


@dataclass
class PeerEntry:
    """A peer as the data path sees it (RFC 4380 §5.2.4)."""

    address: ipaddress.IPv6Address
    mapped_ipv4: ipaddress.IPv4Address
    mapped_port: int
    flags: layout.PeerFlag = layout.PeerFlag.TRUSTED
    last_rx_ns: int = 0
    last_tx_ns: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0

    def __post_init__(self):
        # ipaddress re-parses an address object given to its constructor as text:
        # converting only what is not one yet keeps a 100,000-peer table listing
        # in a fraction of a second.
        if not isinstance(self.address, ipaddress.IPv6Address):
            self.address = ipaddress.IPv6Address(self.address)
        if not isinstance(self.mapped_ipv4, ipaddress.IPv4Address):
            self.mapped_ipv4 = ipaddress.IPv4Address(self.mapped_ipv4)
        self.flags = layout.PeerFlag(self.flags)
        _be16(self.mapped_port)

    @property
    def trusted(self) -> bool:
        return bool(self.flags & layout.PeerFlag.TRUSTED)

    def to_c(self) -> layout.PeerValue:
        return layout.PeerValue(
            mapped_ipv4=_be32(self.mapped_ipv4), mapped_port=_be16(self.mapped_port),
            flags=int(self.flags), last_rx_ns=self.last_rx_ns, last_tx_ns=self.last_tx_ns,
            rx_packets=self.rx_packets, rx_bytes=self.rx_bytes,
            tx_packets=self.tx_packets, tx_bytes=self.tx_bytes,
        )

    @classmethod
    def from_c(cls, address: IPv6, value: layout.PeerValue) -> "PeerEntry":
        return cls(
            address=ipaddress.IPv6Address(address), mapped_ipv4=_ipv4(value.mapped_ipv4),
            mapped_port=_port(value.mapped_port), flags=layout.PeerFlag(value.flags),
            last_rx_ns=value.last_rx_ns, last_tx_ns=value.last_tx_ns,
            rx_packets=value.rx_packets, rx_bytes=value.rx_bytes,
            tx_packets=value.tx_packets, tx_bytes=value.tx_bytes,
        )


class PeerTable:
    """The LRU peer table, keyed by IPv6 address."""

    def __init__(self, m: MapFd):
        self.map = m

    def put(self, entry: PeerEntry, *, only: str = "any") -> None:
        """Write an entry. only: "any", "new" (KeyError if present), "existing"
        (KeyError if absent). A full LRU table evicts its least recently used entry."""
        flags = {"any": BPF_ANY, "new": BPF_NOEXIST, "existing": BPF_EXIST}[only]
        try:
            self.map.update(_key(entry.address), bytes(entry.to_c()), flags)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOENT) and only != "any":
                raise KeyError(f"{entry.address}: {err.strerror}") from err
            raise RuntimeFailure(f"cannot write peer {entry.address}: {err}") from err

    def get(self, address: IPv6) -> Optional[PeerEntry]:
        raw = self.map.lookup(_key(address))
        if raw is None:
            return None
        return PeerEntry.from_c(address, layout.PeerValue.from_buffer_copy(raw))

    def update(self, address: IPv6, **changes) -> PeerEntry:
        """Change some fields of an existing entry (KeyError if absent).

        Read-modify-write: a packet counted by the data path in between is lost
        from the counters, which is harmless for statistics."""
        entry = self.get(address)
        if entry is None:
            raise KeyError(str(address))
        entry = dataclasses.replace(entry, **changes)
        self.put(entry, only="existing")
        return entry

    def delete(self, address: IPv6) -> bool:
        return self.map.delete(_key(address))

    def __iter__(self) -> Iterator[PeerEntry]:
        for key, raw in self.map.items():
            yield PeerEntry.from_c(key, layout.PeerValue.from_buffer_copy(raw))

    def __len__(self) -> int:
        return sum(1 for _ in self.map.keys())

    def __contains__(self, address: IPv6) -> bool:
        return self.map.lookup(_key(address)) is not None

    def clear(self) -> None:
        for key in list(self.map.keys()):
            self.map.delete(key)


# --------------------------------------------------------------------------- config


@dataclass
class Config:
    """What the control plane tells the data path (the config map's one entry).

    nic_ifindex / tun_ifindex may stay 0 when the Attachment fills them in.
    l2_len is 0 for a tun device; tests set 14 because a SCHED_CLS test run always
    has an Ethernet header.
    """

    local_ipv4: ipaddress.IPv4Address
    local_port: int
    teredo_address: ipaddress.IPv6Address = ipaddress.IPv6Address("::")
    nic_ifindex: int = 0
    tun_ifindex: int = 0
    enabled: bool = True
    learn_peers: bool = True
    relay: bool = False
    peer_timeout: float = constants.PEER_RECENT  # seconds; 0: never stale
    mtu: int = constants.TEREDO_MTU
    l2_len: int = 0
    # The checksum veth (net/csum_veth.py; relay, client on a veth NIC): out of one end, back in at the other.
    csum_out_ifindex: int = 0
    csum_in_ifindex: int = 0
    # Client: every peer gets what is left to offload as it is, except UDP GSO
    # (ConfigFlag.OFFLOADS_PASS; client/csum_detour.py).
    offloads_pass: bool = False

    def __post_init__(self):
        self.local_ipv4 = ipaddress.IPv4Address(self.local_ipv4)
        self.teredo_address = ipaddress.IPv6Address(self.teredo_address)
        _be16(self.local_port)
        if self.l2_len not in (0, 14):
            raise ValueError("l2_len is 0 (tun device) or 14 (Ethernet, test runs)")

    @property
    def flags(self) -> layout.ConfigFlag:
        f = layout.ConfigFlag(0)
        if self.enabled:
            f |= layout.ConfigFlag.ENABLED
        if self.learn_peers:
            f |= layout.ConfigFlag.LEARN_PEERS
        if self.relay:
            f |= layout.ConfigFlag.RELAY
        if self.offloads_pass:
            f |= layout.ConfigFlag.OFFLOADS_PASS
        return f

    def to_c(self) -> layout.ConfigValue:
        value = layout.ConfigValue(
            local_ipv4=_be32(self.local_ipv4), local_port=_be16(self.local_port),
            flags=int(self.flags), nic_ifindex=self.nic_ifindex, tun_ifindex=self.tun_ifindex,
            peer_timeout_ns=int(round(self.peer_timeout * 1e9)), mtu=self.mtu, l2_len=self.l2_len,
            csum_out_ifindex=self.csum_out_ifindex, csum_in_ifindex=self.csum_in_ifindex,
        )
        ctypes.memmove(value.teredo_addr, self.teredo_address.packed, 16)
        return value

    @classmethod
    def from_c(cls, value: layout.ConfigValue) -> "Config":
        flags = layout.ConfigFlag(value.flags)
        return cls(
            local_ipv4=_ipv4(value.local_ipv4), local_port=_port(value.local_port),
            teredo_address=ipaddress.IPv6Address(bytes(value.teredo_addr)),
            nic_ifindex=value.nic_ifindex, tun_ifindex=value.tun_ifindex,
            enabled=bool(flags & layout.ConfigFlag.ENABLED),
            learn_peers=bool(flags & layout.ConfigFlag.LEARN_PEERS),
            relay=bool(flags & layout.ConfigFlag.RELAY),
            offloads_pass=bool(flags & layout.ConfigFlag.OFFLOADS_PASS),
            peer_timeout=value.peer_timeout_ns / 1e9, mtu=value.mtu, l2_len=value.l2_len,
            csum_out_ifindex=value.csum_out_ifindex, csum_in_ifindex=value.csum_in_ifindex,
        )


_ZERO = (0).to_bytes(4, "little")


class ConfigMap:
    def __init__(self, m: MapFd):
        self.map = m

    def write(self, config: Config) -> None:
        self.map.update(_ZERO, bytes(config.to_c()))

    def read(self) -> Optional[Config]:
        """The current config, or None while nothing was written (all zeros)."""
        raw = self.map.lookup(_ZERO)
        if raw is None or not any(raw):
            return None
        return Config.from_c(layout.ConfigValue.from_buffer_copy(raw))

    def clear(self) -> None:
        self.map.update(_ZERO, bytes(ctypes.sizeof(layout.ConfigValue)))


# --------------------------------------------------------------------------- stats


Snapshot = Dict[str, Dict[str, int]]


class StatsTable:
    """The per-CPU verdict counters, summed over CPUs."""

    def __init__(self, m: MapFd):
        self.map = m

    def read(self) -> Snapshot:
        """{reason key: {"packets": n, "bytes": n}} for every reason, zeros included."""
        out: Snapshot = {}
        size = ctypes.sizeof(layout.StatValue)
        for reason in layout.Reason:
            raw = self.map.lookup(int(reason).to_bytes(4, "little")) or b""
            packets = total = 0
            for cpu in range(self.map.ncpus):
                chunk = raw[cpu * self.map.slot_size: cpu * self.map.slot_size + size]
                if len(chunk) == size:
                    value = layout.StatValue.from_buffer_copy(chunk)
                    packets += value.packets
                    total += value.bytes
            out[reason.key] = {"packets": packets, "bytes": total}
        return out

    def clear(self) -> None:
        zero = bytes(self.map.slot_size * self.map.ncpus)
        for reason in layout.Reason:
            self.map.update(int(reason).to_bytes(4, "little"), zero)


def packets(snapshot: Snapshot) -> Dict[str, int]:
    """Just the packet counts, non-zero ones only."""
    return {k: v["packets"] for k, v in snapshot.items() if v["packets"]}


def delta(before: Snapshot, after: Snapshot) -> Dict[str, int]:
    """Packets counted between two snapshots, by reason (non-zero only)."""
    return {k: after[k]["packets"] - before.get(k, {}).get("packets", 0)
            for k in after if after[k]["packets"] != before.get(k, {}).get("packets", 0)}
