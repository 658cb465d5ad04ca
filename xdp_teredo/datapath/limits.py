"""The slow-path limits the receive programs apply (bpf/lib/limit.h): typed access.

    limits = SlowPathLimits(source_pps=100, source_burst=100, global_pps=2000, global_burst=2000)
    prog.slow_path.write(limits)       # the client and the relay do this once attached
    prog.slow_path.read()              # what the programs use now (None: no limit)

Rates become GCRA parameters here, once: interval = 1 s / rate, tolerance = (burst
- 1) * interval, in nanoseconds (bpf_ktime_get_ns). A rate of 0 means no limit for
that bucket. The map entry all zeros (never written, or `clear`) means no limit at
all: the tests that run thousands of packets from one source through the programs
rely on that, and write limits where they test them.
"""

from __future__ import annotations

import ctypes
import dataclasses
from typing import Dict, Optional

from ..teredo import constants
from . import layout, registry
from .libbpf import MapFd

# The maps of the limiter, by name (as the compilation units declare them).
LIMITS_MAP = "slow_path_limits"     # the one entry: SlowPathLimits
SOURCES_MAP = "slow_path_sources"   # LRU: (IPv4 source, kind) -> its bucket
GLOBAL_MAP = "slow_path_global"     # the one bucket for everything
MAPS = registry.group("slow_path")  # the three above (registry.py)

_NS = 1_000_000_000
_ZERO = (0).to_bytes(4, "little")


@dataclasses.dataclass(frozen=True)
class SlowPathLimits:
    """Packets per second to the control plane: per IPv4 source (and kind), and in all."""

    source_pps: float = constants.SLOW_PATH_SOURCE_PPS
    source_burst: int = constants.SLOW_PATH_SOURCE_BURST
    global_pps: float = constants.SLOW_PATH_GLOBAL_PPS
    global_burst: int = constants.SLOW_PATH_GLOBAL_BURST

    def __post_init__(self):
        for name in ("source_pps", "global_pps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: no limit)")
        for name in ("source_burst", "global_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def to_c(self) -> layout.SlowPathLimits:
        def gcra(pps: float, burst: int):
            if not pps:
                return 0, 0
            interval = max(1, int(round(_NS / pps)))
            return interval, interval * (burst - 1)

        source, total = gcra(self.source_pps, self.source_burst), gcra(self.global_pps,
                                                                         self.global_burst)
        return layout.SlowPathLimits(source_interval_ns=source[0], source_tolerance_ns=source[1],
                                     global_interval_ns=total[0], global_tolerance_ns=total[1])

    @classmethod
    def from_c(cls, value: layout.SlowPathLimits) -> "SlowPathLimits":
        def rate(interval: int, tolerance: int):
            if not interval:
                return 0.0, 1
            return _NS / interval, int(round(tolerance / interval)) + 1

        s, g = rate(value.source_interval_ns, value.source_tolerance_ns), \
            rate(value.global_interval_ns, value.global_tolerance_ns)
        return cls(source_pps=s[0], source_burst=s[1], global_pps=g[0], global_burst=g[1])

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# What a relay admits: every client's bubbles come through its slow path (§5.4.1).
RELAY_LIMITS = SlowPathLimits(global_pps=constants.RELAY_SLOW_PATH_GLOBAL_PPS,
                              global_burst=constants.RELAY_SLOW_PATH_GLOBAL_BURST)


class SlowPathMaps:
    """The limits entry and the per-source buckets of one compiled data path."""

    def __init__(self, limits: MapFd, sources: MapFd, total: MapFd):
        self.limits = limits
        self.sources = sources
        self.total = total

    @classmethod
    def of(cls, maps: Dict[str, MapFd]) -> "SlowPathMaps":
        return cls(maps[LIMITS_MAP], maps[SOURCES_MAP], maps[GLOBAL_MAP])

    def write(self, limits: SlowPathLimits) -> None:
        self.limits.update(_ZERO, bytes(limits.to_c()))

    def read(self) -> Optional[SlowPathLimits]:
        raw = self.limits.lookup(_ZERO)
        if raw is None or not any(raw):
            return None
        return SlowPathLimits.from_c(layout.SlowPathLimits.from_buffer_copy(raw))

    def tracked(self) -> int:
        """Senders with a bucket now (bounded by the LRU's capacity)."""
        return sum(1 for _ in self.sources.keys())

    def clear(self) -> None:
        """No limit, and every bucket forgotten."""
        self.limits.update(_ZERO, bytes(ctypes.sizeof(layout.SlowPathLimits)))
        self.total.update(_ZERO, bytes(8))
        for key in list(self.sources.keys()):
            self.sources.delete(key)
