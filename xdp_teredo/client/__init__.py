"""The Teredo client (RFC 4380 §5.2): `xdp-teredo attach IFACE`.

    plan.py       what is checked before anything is touched (interface, servers, user)
    config.py     miredo.conf and the command line, merged
    servers.py    server names, the built-in list, resolution
    daemon.py     ClientDaemon: set-up and what arrives on the socket and the tun
    qualify.py    carrying out the Qualification (RS, address, MTU, hook)
    interface.py  following the NIC (link, address changes)
    hook.py       Miredo's client-hook environment
    commands.py   attach, detach, and the questions status and peers ask
"""

from .commands import (
           PEERS_TIMEOUT,
           attach,
           detach,
           pin_root,
           query,
           query_peers,
           query_status,
)

__all__ = ["PEERS_TIMEOUT", "attach", "detach", "pin_root", "query", "query_peers",
           "query_status"]
