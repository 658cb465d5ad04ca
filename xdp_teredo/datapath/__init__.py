"""Everything that touches BPF: the drivers, maps, statistics, BPF_PROG_TEST_RUN.

The public surface (see docs/datapath.md):
    ClientDatapath.compile(...), RelayDatapath.compile(...)   compile + load, no device
    ClientDatapath.attach(nic_ifindex, tun_ifindex, ...) -> ClientAttachment
    RelayDatapath.attach({ifindex: "xdp" | "tc"}, ...) -> RelayAttachment
    .configure(Config), .peers (PeerTable), .stats(), .detach()
    stats.read(...)                        counters of this or a running instance
    Reason, PeerFlag, ConfigFlag           the shared enums (layout.py)
"""

from .client import ClientDatapath
from .layout import ConfigFlag, PeerFlag, Reason
from .maps import Config, PeerEntry, now_ns
from .relay import RelayDatapath

__all__ = ["ClientDatapath", "Config", "ConfigFlag", "PeerEntry", "PeerFlag", "RelayDatapath",
           "Reason", "now_ns"]
