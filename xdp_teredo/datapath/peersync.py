"""Between the protocol core's peer decisions and the BPF peer table, for both roles.

The PeerList (teredo/peers.py) decides who is trusted; the data path carries the
trusted peers' packets and keeps their activity (last_rx/last_tx, written per
packet in BPF). This module is the one place that moves facts between the two:

- `install`: a peer the PeerList trusts enters the table (keeping the counters of
  an entry the data path already has for the same mapping);
- `refresh`: a trusted peer answered on the slow path (its entry went stale):
  the table learns it at once, so its next packets take the fast path;
- `observe` / `sync`: the table's activity flows back into the PeerList, so that
  a peer busy on the fast path is neither expired nor bubbled again;
- `sync` also expires what the data path learned by itself (§5.2.3/§5.4.2
  learning) and nobody used for `expiry` seconds: the PeerList does not know them.

A failing map call is counted (`map_<operation>_failed`) and logged, never fatal:
the slow path still works without the entry.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Iterable, Optional

from ..errors import RuntimeFailure
from .layout import PeerFlag
from .maps import PeerEntry, now_ns

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address


def seconds(ns: int) -> Optional[float]:
    """A data-path timestamp (CLOCK_MONOTONIC ns; 0: never) on the control plane's clock."""
    return ns / 1e9 if ns else None


class NoTable:
    """The peer table before there is one: empty, every write a no-op."""

    def get(self, address):
        return None

    def put(self, entry) -> None:
        pass

    def update(self, address, **fields) -> None:
        pass

    def delete(self, address) -> None:
        pass

    def clear(self) -> None:
        pass

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


class PeerSync:
    def __init__(self, table, counters, logger, *, clock_ns: Callable[[], int] = now_ns,
                 verbose: bool = True):
        # maps.PeerTable (or a fake in unit tests). None: no data path yet (the
        # client qualifies before its programs are loaded, client/handover.py):
        # an empty table that takes nothing, until the hand-over sets the real one.
        self.table = NoTable() if table is None else table
        self.counters = counters
        self.log = logger
        self.now_ns = clock_ns
        # One log line per peer change: a client's few peers, yes; a relay's
        # thousands of clients, at debug level only (the counters say how many).
        self.note = logger.info if verbose else logger.debug

    def call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeFailure, OSError, KeyError) as err:
            self.counters[f"map_{what}_failed"] += 1
            self.log.warning("peer_map_failed", operation=what, error=str(err))
            return None

    # -- the control plane's decisions -> the table --

    def install(self, address: IPv6Address, ip: IPv4Address, port: int,
                flags: PeerFlag = PeerFlag.TRUSTED) -> None:
        """The peer is trusted at (ip, port): the fast path may carry it from now on."""
        entry = self.call("get", self.table.get, address)
        if entry is not None and (entry.mapped_ipv4, entry.mapped_port) == (ip, port):
            self.call("update", self.table.update, address, flags=entry.flags | flags,
                      last_rx_ns=self.now_ns())
        else:
            self.call("put", self.table.put, PeerEntry(
                address=address, mapped_ipv4=ip, mapped_port=port, flags=flags,
                last_rx_ns=self.now_ns()))

    def refresh(self, address: IPv6Address, mapping, flags: PeerFlag) -> None:
        """A trusted peer answered on the slow path: unless the table is up to date
        (same mapping, trusted, received within the last second), tell it."""
        entry = self.call("get", self.table.get, address)
        if entry is not None and (entry.mapped_ipv4, entry.mapped_port) == tuple(mapping) \
                and entry.trusted and self.now_ns() - entry.last_rx_ns < 1e9:
            return
        self.install(address, mapping[0], mapping[1], flags)

    def remove(self, address: IPv6Address) -> None:
        self.call("delete", self.table.delete, address)

    def clear(self) -> None:
        self.call("clear", self.table.clear)

    # -- the table's activity -> the PeerList --

    def observe(self, address: IPv6Address, peers) -> list:
        """The PeerList's actions after merging one peer's fast-path activity."""
        if address not in peers:
            return []
        entry = self.call("get", self.table.get, address)
        if entry is None:
            return []
        return peers.observe(address, last_rx=seconds(entry.last_rx_ns),
                             last_tx=seconds(entry.last_tx_ns))

    def observe_many(self, addresses: Iterable[IPv6Address], peers) -> list:
        actions: list = []
        for address in addresses:
            actions += self.observe(address, peers)
        return actions

    def sync(self, peers, now: float, expiry: float, *, observe: bool = True) -> list:
        """Read the whole table once: merge its activity into the PeerList (observe),
        and remove learned entries the PeerList does not know, idle for `expiry`.
        Returns the PeerList's actions."""
        actions: list = []
        entries = self.call("iterate", lambda: list(self.table)) or []
        for entry in entries:
            last_rx, last_tx = seconds(entry.last_rx_ns), seconds(entry.last_tx_ns)
            if entry.address in peers:
                if observe:
                    actions += peers.observe(entry.address, last_rx=last_rx, last_tx=last_tx)
                continue
            last = max(t for t in (last_rx, last_tx, 0.0) if t is not None)
            if now - last >= expiry:
                self.remove(entry.address)
                self.counters["peer_expired"] += 1
                self.note("peer_expired", peer=str(entry.address), learned=True)
        return actions
