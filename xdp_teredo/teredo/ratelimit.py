"""Token buckets that bound what one IPv4 address can make a Teredo server send.

A Teredo server answers unauthenticated UDP: a Router Solicitation of 61 bytes gets
a Router Advertisement of 117 (RFC 4380 §5.3.1), and an indirect bubble is sent on
to whatever mapped address its destination names. With a spoofed UDP source, both
turn the server into a reflector (RFC 4380 §7, "Denial of service"; RFC 5991 §2
discusses how Teredo can be used against third parties). The cure here is the
classic one: every address the server sends to, and every address that asks it to
send, has a token bucket of packets and of bytes; a send happens only when every
bucket it concerns has the tokens, and then takes them from all of them.

- Two dimensions per bucket, packets and bytes, refilled continuously at their
  rates up to a burst (`Limits.burst_s` seconds' worth of each).
- A bucket for an address seen for the first time starts full: the first exchange
  of a new client is never delayed.
- The table is bounded (`max_sources`): when full, the least recently used entry
  goes. An evicted address comes back with a full bucket, so churning the table
  gives an attacker at most one burst per address per `max_sources` new addresses;
  the optional `overall` bucket caps the total whatever the table does.
- Time comes from an injected clock (xdp_teredo.teredo.clock), so tests never sleep.

Pure: no I/O. Every operation is O(number of keys asked about).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Hashable, Iterable, Optional

from xdp_teredo.teredo.clock import Clock, SystemClock


@dataclasses.dataclass(frozen=True)
class Limits:
    """Sustained rates, and a burst of `burst_s` seconds' worth of each.

    `min_byte_burst` keeps the byte burst at least one largest datagram: a bucket
    that can never hold one would refuse everything.
    """

    packets_per_s: float
    bytes_per_s: float
    burst_s: float = 4.0
    min_byte_burst: int = 1500

    def __post_init__(self):
        for name in ("packets_per_s", "bytes_per_s", "burst_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")

    @property
    def packet_burst(self) -> float:
        return max(1.0, self.packets_per_s * self.burst_s)

    @property
    def byte_burst(self) -> float:
        return max(float(self.min_byte_burst), self.bytes_per_s * self.burst_s)

    def as_dict(self) -> dict:
        return {"packets_per_s": self.packets_per_s, "bytes_per_s": self.bytes_per_s,
                "burst_s": self.burst_s}


class TokenBucket:
    """One bucket of packets and bytes, full when made."""

    __slots__ = ("limits", "packets", "bytes", "stamp")

    def __init__(self, limits: Limits, now: float):
        self.limits = limits
        self.packets = limits.packet_burst
        self.bytes = limits.byte_burst
        self.stamp = now

    def refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            limits = self.limits
            self.packets = min(limits.packet_burst, self.packets + elapsed * limits.packets_per_s)
            self.bytes = min(limits.byte_burst, self.bytes + elapsed * limits.bytes_per_s)
            self.stamp = now

    def has(self, nbytes: int) -> bool:
        return self.packets >= 1.0 and self.bytes >= nbytes

    def take(self, nbytes: int) -> None:
        self.packets -= 1.0
        self.bytes -= nbytes


class RateLimiter:
    """Per-key token buckets in a bounded LRU table, plus an optional overall bucket.

    allow(keys, nbytes) says whether one datagram of `nbytes` may be sent on behalf of
    every key in `keys` (typically: the IPv4 address that asked, and the one that
    would receive it); if so the tokens are taken from all of them at once, and if
    not, from none.
    """

    def __init__(self, per_source: Limits, *, max_sources: int = 65536,
                 overall: Optional[Limits] = None, clock: Optional[Clock] = None):
        if max_sources < 1:
            raise ValueError(f"max_sources must be at least 1, not {max_sources!r}")
        self.per_source = per_source
        self.max_sources = max_sources
        self.clock = clock or SystemClock()
        self._table: "collections.OrderedDict[Hashable, TokenBucket]" = collections.OrderedDict()
        self._overall = TokenBucket(overall, self.clock.monotonic()) if overall else None
        self.evictions = 0

    def allow(self, keys: Iterable[Hashable], nbytes: int) -> bool:
        now = self.clock.monotonic()
        buckets = [self._bucket(key, now) for key in dict.fromkeys(keys)]
        if self._overall is not None:
            buckets.append(self._overall)
        for bucket in buckets:
            bucket.refill(now)
        if not all(bucket.has(nbytes) for bucket in buckets):
            return False
        for bucket in buckets:
            bucket.take(nbytes)
        return True

    def _bucket(self, key: Hashable, now: float) -> TokenBucket:
        bucket = self._table.get(key)
        if bucket is not None:
            self._table.move_to_end(key)
            return bucket
        if len(self._table) >= self.max_sources:
            self._table.popitem(last=False)
            self.evictions += 1
        bucket = self._table[key] = TokenBucket(self.per_source, now)
        return bucket

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._table

    def status(self) -> dict:
        return {"sources": len(self._table), "max_sources": self.max_sources,
                "evictions": self.evictions, "per_source": self.per_source.as_dict(),
                "overall": self._overall.limits.as_dict() if self._overall else None}
