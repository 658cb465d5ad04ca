"""The Teredo server (RFC 4380 §5.3): `xdp-teredo server --bind ADDR [--bind2 ADDR2]`.

    plan.py     the two addresses and the rate limits, from the command line
    daemon.py   ServerDaemon: two UDP sockets and teredo/server_policy.py; RSs
                answered and bubbles forwarded in XDP when the kernel lets it
                (datapath/server.py)
    forwarding.py  IPv4 forwarding on the server's device while XDP forwards

The protocol decisions are in teredo/server_policy.py (pure) and teredo/ratelimit.py.
"""

from ..daemon import control
from ..daemon.base import run
from .plan import (
    DEFAULT_GLOBAL_BPS,
    DEFAULT_GLOBAL_PPS,
    DEFAULT_MAX_SOURCES,
    DEFAULT_SOURCE_BPS,
    DEFAULT_SOURCE_PPS,
    DEFAULT_XDP_RA_PPS,
    XDP_MODES,
    ServerConfig,
    config_from_options,
    preflight,
    server_addresses,
)


def serve(config: ServerConfig, *, metrics=None) -> int:
    """`xdp-teredo server`: preflight, then serve until SIGINT or SIGTERM; 0 on a
    clean stop. `metrics`: daemon.metrics.MetricsAddress (--metrics)."""
    preflight(config)
    from .daemon import ServerDaemon

    return run(ServerDaemon(config), metrics=metrics)


def query_status(timeout: float = 2.0) -> dict:
    """The JSON status of the server running in this network namespace."""
    return control.query(control.SERVER_SOCKET, "status", timeout=timeout,
                         what="xdp-teredo server")


__all__ = ["DEFAULT_GLOBAL_BPS", "DEFAULT_GLOBAL_PPS", "DEFAULT_MAX_SOURCES",
           "DEFAULT_SOURCE_BPS", "DEFAULT_SOURCE_PPS", "DEFAULT_XDP_RA_PPS", "XDP_MODES",
           "ServerConfig", "config_from_options",
           "query_status", "serve", "server_addresses"]
