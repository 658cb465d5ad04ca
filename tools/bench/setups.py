"""The implementations under comparison, each able to stand up one path in a lab.

A setup starts whatever daemons its implementation needs for a path, warms the
path up (qualification, bubbles, the relay's peer entry) and says where to send:
an Endpoint. Every setup's teardown leaves the lab as it found it, so the
implementations take turns on the same hosts within one run.

Paths (the issue's two):
  p2p    client2 (behind two stacked NATs) -> public (a host on the internet)
  relay  client1 (behind one NAT) -> v6host (native IPv6 behind the relay)
The plain path is the same hosts without a tunnel: IPv4 end to end. v6host is
IPv6-only in the lab, so for the plain relay path the benchmark gives it an IPv4
address routed through the relay, the same hops the tunnel takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List

from xdp_teredo.errors import RuntimeFailure
from xdp_teredo.lab import miredo, roles, traffic

PATHS = {
    "p2p": ("client2", "public"),
    "relay": ("client1", "v6host"),
}
HOSTS = {"server", "relay", "public", "client1", "client2", "v6host"}

V6HOST_IPV4 = "192.0.2.40"   # bench-only, see module doc
RELAY_LAN_IPV4 = "192.0.2.33"


@dataclass
class Endpoint:
    src: str                     # lab role that sends
    dst: str                     # lab role that receives
    address: str                 # what the sender targets
    daemons: Dict[str, List[int]] = field(default_factory=dict)  # label -> pids (CPU)
    stop: List[Callable[[], None]] = field(default_factory=list)

    def teardown(self) -> None:
        for fn in reversed(self.stop):
            try:
                fn()
            except Exception:  # noqa: BLE001 - teardown goes on; the lab cleans up the rest
                pass


def _warm(lab, ep: Endpoint, tries: int = 20) -> None:
    """Ping until the path answers: bubbles and peer set-up are not measured."""
    for _ in range(tries):
        if lab.ping(ep.src, ep.address, count=3, deadline=3, interval=0.2).ok:
            return
    raise RuntimeFailure(f"{ep.src} -> {ep.address} never answered")


def prepare_lab(lab) -> None:
    """Bench-only additions, the same for every implementation:
    - an IPv4 address on v6host routed through the relay (the plain relay path);
    - IPv4 forwarding on the relay (the plain path needs it; so does bpf_fib_lookup
      for our relay's XDP encapsulation);
    - GRO on the far ends of the relay's veths, so that they take XDP-redirected
      frames (a real NIC does).
    The offloads stay as the kernel sets them, also under our client (on a veth NIC
    it finishes pending offloads round its own checksum veth: net/csum_veth.py).
    """
    lab.run("relay", "ip", "addr", "add", f"{RELAY_LAN_IPV4}/28", "dev", lab["relay"].lan)
    lab.run("v6host", "ip", "addr", "add", f"{V6HOST_IPV4}/28", "dev", lab["v6host"].uplink)
    lab.run("v6host", "ip", "route", "add", "default", "via", RELAY_LAN_IPV4)
    lab.run("relay", "sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.run("inet", "ip", "route", "add", "192.0.2.32/28", "via", str(lab["relay"].ipv4[0]))
    lab.run("inet", "ethtool", "-K", "to-relay", "gro", "on")
    lab.run("v6host", "ethtool", "-K", lab["v6host"].uplink, "gro", "on")


def plain(lab, path: str) -> Endpoint:
    src, dst = PATHS[path]
    address = V6HOST_IPV4 if dst == "v6host" else str(lab[dst].ipv4[0])
    ep = Endpoint(src, dst, address)
    _warm(lab, ep)
    return ep


def miredo_impl(lab, path: str) -> Endpoint:
    src, dst = PATHS[path]
    ep = Endpoint(src, dst, "")
    server = miredo.start_server(lab, "server")
    ep.stop.append(server.stop)
    client = miredo.start_client(lab, src, server)
    ep.stop.append(client.stop)
    ep.daemons[f"miredo@{src}"] = [client.process.pid]
    if path == "p2p":
        peer = miredo.start_client(lab, dst, server)
        ep.stop.append(peer.stop)
        ep.daemons[f"miredo@{dst}"] = [peer.process.pid]
        ep.address = str(peer.address)
    else:
        relay = miredo.start_relay(lab, "relay")
        ep.stop.append(relay.stop)
        ep.daemons["miredo@relay"] = [relay.process.pid]
        ep.address = str(lab["v6host"].ipv6[0])
    _warm(lab, ep)
    return ep


def xdp_teredo_impl(lab, path: str, relay_args=()) -> Endpoint:
    """relay_args: extra options of `xdp-teredo relay` (the table-size run's
    --max-peers)."""
    src, dst = PATHS[path]
    ep = Endpoint(src, dst, "")
    server = lab["server"].ipv4[0]
    srv = roles.start_server(lab, "xdp-teredo")
    ep.stop.append(srv.stop)
    client = roles.start_client(lab, "xdp-teredo", src, server)
    ep.stop.append(client.stop)
    ep.daemons[f"xdp-teredo@{src}"] = [client.process.pid]
    if path == "p2p":
        # It runs the iperf3 servers: their ports open in its inbound guard.
        peer = roles.start_client(lab, "xdp-teredo", dst, server, *traffic.ALLOW_IPERF)
        ep.stop.append(peer.stop)
        ep.daemons[f"xdp-teredo@{dst}"] = [peer.process.pid]
        ep.address = str(peer.address)
    else:
        relay = roles.start_relay(lab, "xdp-teredo", "relay", *relay_args)
        ep.stop.append(relay.stop)
        ep.daemons["xdp-teredo@relay"] = [relay.process.pid]
        ep.address = str(lab["v6host"].ipv6[0])
    _warm(lab, ep)
    return ep


IMPLEMENTATIONS: Dict[str, Callable] = {
    "plain": plain,
    "miredo": miredo_impl,
    "xdp-teredo": xdp_teredo_impl,
}
