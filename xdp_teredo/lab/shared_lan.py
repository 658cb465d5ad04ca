"""A LAN with several hosts behind one NAT that does not hairpin.

                        +-- lan1  10.3.0.2
    inet -- nat3 ==br0==+
      198.51.100.33     +-- lan2  10.3.0.3

Added to a built Lab (`add_shared_lan(lab)`), after its own hosts: nat3 hangs off
inet like nat1, MASQUERADEs its LAN behind 198.51.100.33 and drops unsolicited
inbound UDP, as a home router does; its LAN side is a bridge, so the hosts behind
it are layer-2 neighbours (one link, one broadcast domain: what RFC 4380 §5.2.8's
224.0.0.253 reaches). Linux NAT does not hairpin: a packet from lan1 to
198.51.100.33 never reaches lan2, which is the case local discovery exists for.
Kept apart from topology.py: it only uses the Lab's namespaces and teardown.
"""

from __future__ import annotations

import ipaddress

from xdp_teredo.lab import netns
from xdp_teredo.lab.topology import LAN, UPLINK, Host

NAT_LINK = "198.51.100.32/28"
NAT_ADDRESS = "198.51.100.33"
NAT_GATEWAY = "198.51.100.46"   # inet's end
LAN_SUBNET = "10.3.0.0/24"
LAN_GATEWAY = "10.3.0.1"


def add_shared_lan(lab, nat: str = "nat3", hosts=("lan1", "lan2")) -> None:
    """Build nat3 and its LAN hosts into `lab` (which must have inet)."""
    inet = lab["inet"]
    ns = lab._new_ns(nat)
    gw = Host(role=nat, netns=ns, uplink=UPLINK, lan=LAN)
    lab.hosts[nat] = gw
    netns.enable_forwarding(ns, ipv4=True)
    netns.add_veth(ns, UPLINK, inet.netns, f"to-{nat}")
    prefixlen = ipaddress.ip_network(NAT_LINK).prefixlen
    netns.add_address(inet.netns, f"to-{nat}", f"{NAT_GATEWAY}/{prefixlen}")
    netns.add_address(ns, UPLINK, f"{NAT_ADDRESS}/{prefixlen}")
    netns.add_route(ns, "default", via=NAT_GATEWAY)
    gw.ipv4 = [ipaddress.IPv4Address(NAT_ADDRESS)]
    gw.gateway = ipaddress.IPv4Address(NAT_GATEWAY)
    gw.public_ipv4 = gw.ipv4[0]
    netns.masquerade(ns, UPLINK)

    lan_prefixlen = ipaddress.ip_network(LAN_SUBNET).prefixlen
    netns.run(["ip", "-n", ns, "link", "add", LAN, "type", "bridge"])
    netns.link_up(ns, LAN)
    netns.add_address(ns, LAN, f"{LAN_GATEWAY}/{lan_prefixlen}")
    for i, role in enumerate(hosts):
        hns = lab._new_ns(role)
        port = f"to-{role}"
        netns.add_veth(hns, UPLINK, ns, port)
        netns.run(["ip", "-n", ns, "link", "set", port, "master", LAN])
        address = f"10.3.0.{2 + i}"
        netns.add_address(hns, UPLINK, f"{address}/{lan_prefixlen}")
        netns.add_route(hns, "default", via=LAN_GATEWAY)
        lab.hosts[role] = Host(role=role, netns=hns, uplink=UPLINK,
                               ipv4=[ipaddress.IPv4Address(address)],
                               gateway=ipaddress.IPv4Address(LAN_GATEWAY),
                               public_ipv4=gw.public_ipv4)
