"""A min-heap keyed by IPv6 address with at most one live entry per address: the
peer list's expiry and eviction orders in O(log n) (peers.py).

On a busy node the list is full (a flood of new or spoofed peers
keeps it so), every new peer evicts one, and the daemon asks for the next
deadline on every turn of its loop; scanning all peers for each of these made
admitting a peer cost O(capacity). So besides the peers themselves (a dict, in
creation order) the list keeps three lazy min-heaps: untrusted and trusted peers
by last activity, ties to the older entry (what `min` over the dict chose), and
every peer's next deadline (echo retry, else expiry). An entry is never changed
in place: when a peer's key changes a new entry is pushed and the old one goes
stale, dropped when it reaches the top or when stale entries outnumber live ones
(a rebuild: O(n) once per Omega(n) pushes). Last activity can even go back
(`observe` may report a last_tx later than a `now` that follows), which a heap
handles and an ordered list touched "at the end" would not. Every public method
re-files the peer it touched before it returns (`_refile`), so each costs
O(log n) amortized; Peer objects are therefore changed only through the list.
`due` and `holding` name the few peers a daemon must `observe` before on_timer
(those it will act on, those holding packets), so that it need not observe all.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from typing import Dict, Optional, Tuple

IPv6Address = ipaddress.IPv6Address


class LazyHeap:
    """A min-heap with at most one live entry per address, found in O(log n).

    Entries are (*key, stamp, address); `_live` maps an address to the key and
    stamp of its live entry, and any other entry of that address is stale.
    Stamps are unique, so tuples never compare further than the stamp.
    """

    # Stale entries tolerated beyond the live ones before a rebuild.
    _SLACK = 64

    def __init__(self):
        self._heap: list = []
        self._live: Dict[IPv6Address, Tuple[tuple, int]] = {}
        self._stamps = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def key(self, address: IPv6Address) -> Optional[tuple]:
        live = self._live.get(address)
        return None if live is None else live[0]

    def put(self, address: IPv6Address, key: tuple) -> None:
        """File `address` under `key` (a no-op if it already is)."""
        live = self._live.get(address)
        if live is not None and live[0] == key:
            return
        stamp = next(self._stamps)
        self._live[address] = (key, stamp)
        heapq.heappush(self._heap, (*key, stamp, address))
        if len(self._heap) > 2 * len(self._live) + self._SLACK:
            self._heap = [e for e in self._heap if self._is_live(e)]
            heapq.heapify(self._heap)

    def discard(self, address: IPv6Address) -> None:
        self._live.pop(address, None)

    def peek(self) -> Optional[tuple]:
        """The live entry with the smallest key (None if empty)."""
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)
        return heap[0] if heap else None

    def pop(self) -> Optional[tuple]:
        entry = self.peek()
        if entry is not None:
            heapq.heappop(self._heap)
            del self._live[entry[-1]]
        return entry

    def _is_live(self, entry: tuple) -> bool:
        live = self._live.get(entry[-1])
        return live is not None and live[1] == entry[-2]
