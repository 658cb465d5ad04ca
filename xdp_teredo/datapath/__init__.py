"""Everything that touches BPF: loader, maps, statistics, BPF_PROG_TEST_RUN.

The public surface (see docs/datapath.md):
    Datapath.compile(...) -> Datapath      compile + load, no device touched
    Datapath.attach(nic_ifindex, tun_ifindex, ...) -> Attachment
    Attachment.configure(Config), .peers (PeerTable), .stats(), .detach()
    stats.read(...)                        counters of this or a running instance
    Reason, PeerFlag, ConfigFlag           the shared enums (layout.py)
"""

from .layout import ConfigFlag, PeerFlag, Reason
from .loader import Attachment, Datapath
from .maps import Config, PeerEntry, now_ns

__all__ = ["Attachment", "Config", "ConfigFlag", "Datapath", "PeerEntry", "PeerFlag", "Reason", "now_ns"]
