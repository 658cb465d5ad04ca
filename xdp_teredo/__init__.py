"""xdp-teredo: Teredo (RFC 4380) with an eBPF data path.

xdp_teredo.teredo is the pure protocol core (no I/O, no root); xdp_teredo.datapath
loads and drives the BPF programs; xdp_teredo.net talks netlink and sockets.
"""

__version__ = "0.1.0"
