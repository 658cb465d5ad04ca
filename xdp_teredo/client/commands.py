"""The client's commands: `attach`, `detach`, and the questions `status` and
`peers` ask a running client (or relay) of this network namespace."""

from __future__ import annotations

import dataclasses
from typing import List, Optional

from ..daemon import control
from ..daemon.base import run
from ..errors import RuntimeFailure, UsageError
from ..teredo import constants, guard
from . import config as cfg
from .plan import Timers, pin_root, prepare  # noqa: F401 (pin_root: re-exported)

# A relay's table holds up to 131,072 peers: building and sending that many rows
# takes the daemon about a second, longer on a busy machine.
PEERS_TIMEOUT = 30.0


def attach(settings: cfg.Settings, config_path: Optional[str] = None,
           timers: Timers = Timers(), *, restart_safe: bool = False,
           peer_max: int = constants.PEER_LIST_MAX, inbound: Optional[guard.Settings] = None,
           metrics=None, upnp: bool = True, veth_offloads: str = "finish") -> int:
    """`xdp-teredo attach`: prepare (nothing touched on a bad input), then run.
    `metrics`: daemon.metrics.MetricsAddress (--metrics)."""
    from .daemon import ClientDaemon

    if peer_max < 1:
        raise UsageError(f"--peer-max {peer_max}: must be at least 1")
    plan = prepare(settings, config_path, timers)
    if inbound is not None:
        plan = dataclasses.replace(plan, inbound=inbound)
    return run(ClientDaemon(dataclasses.replace(plan, restart_safe=restart_safe,
                                                peer_max=peer_max, upnp=upnp,
                                                veth_offloads=veth_offloads)),
               metrics=metrics)


def detach(interface: str, tunnel: str = cfg.DEFAULT_TUNNEL) -> List[str]:
    """`xdp-teredo detach IFACE`: remove what a killed client left (XDP and tc
    programs, pins, a tunnel nobody holds, its checksum veth). Refuses while a
    client runs here."""
    from pyroute2 import IPRoute

    from ..datapath.client import detach_stale
    from ..net import csum_veth
    from ..net.tunnel import remove_stale_tunnel

    cfg.check_interface_name(interface, "interface")
    cfg.check_interface_name(tunnel, "--tunnel name")
    status = control.running(control.tunnel_socket(tunnel), what=_what(tunnel))
    if status is not None:
        raise RuntimeFailure(
            f"a client is running here (pid {status.get('pid')}, tunnel {tunnel} over "
            f"{status.get('interface')}): stop it with SIGTERM, it removes everything itself")
    with IPRoute() as ipr:
        nic = ipr.link_lookup(ifname=interface)
        tun = ipr.link_lookup(ifname=tunnel)
    if not nic:
        raise UsageError(f"no such interface: {interface} (in this network namespace)")
    removed = detach_stale(nic[0], tun[0] if tun else 0, pin_root=pin_root())
    if remove_stale_tunnel(tunnel):
        removed.append(f"tunnel {tunnel}")
    if csum_veth.remove(tunnel):
        removed.append(f"checksum veth {csum_veth.names(tunnel)[0]}")
    return removed


def _what(tunnel: str) -> str:
    return f"xdp-teredo client with tunnel {tunnel}"


def query(request: str, tunnel: str = cfg.DEFAULT_TUNNEL, *, timeout: float = 3.0):
    """Ask the client (or relay) of `tunnel` in this network namespace."""
    return control.query(control.tunnel_socket(tunnel), request, timeout=timeout,
                         what=_what(tunnel))


def query_status(tunnel: str = cfg.DEFAULT_TUNNEL) -> dict:
    return query("status", tunnel)


def query_peers(tunnel: str = cfg.DEFAULT_TUNNEL) -> list:
    return query("peers", tunnel, timeout=PEERS_TIMEOUT)
