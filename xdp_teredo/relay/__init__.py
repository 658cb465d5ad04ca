"""The Teredo relay (RFC 4380 §5.4): `xdp-teredo relay --ipv4-iface IF4 --ipv6-iface IF6`.

    plan.py     what the command line says; the devices, the address, forwarding
    daemon.py   RelayDaemon: set-up, the slow path of both sides, status
    egress.py   XDP or tc per device, and the devmap of XDP redirect targets
"""

from ..daemon.base import run
from .plan import DEFAULT_TUNNEL, RelayConfig, preflight


def relay(config: RelayConfig, *, metrics=None) -> int:
    """`xdp-teredo relay`: preflight, set up, relay until SIGINT/SIGTERM, remove
    everything. `metrics`: daemon.metrics.MetricsAddress (--metrics)."""
    preflight(config)
    from .daemon import RelayDaemon

    return run(RelayDaemon(config), metrics=metrics)


__all__ = ["DEFAULT_TUNNEL", "RelayConfig", "relay"]
