"""Following the NIC the client runs over (docs/reliability.md).

net/watch.py says when something happened to the interface; this mixin of
ClientDaemon looks at it again and follows: a refresh at once when the link or
its address comes back, a new socket (same port if free) when its IPv4 address
changes, whose RA then brings the new mapping and address (§5.2.7).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Optional, Tuple

from ..errors import RuntimeFailure
from . import config as cfg

IPv4Address = ipaddress.IPv4Address

# linux/if.h: administratively up, and running (carrier).
_IFF_UP = 0x1
_IFF_RUNNING = 0x40


class FollowingTheNic:
    """Mixed into ClientDaemon (state: plan, sock, local, interface_up, ...)."""

    def interface_changed(self) -> None:
        """Something happened to the NIC: look at it again and follow (docs/reliability.md).

        Down: said, nothing else (the next RS failing decides, as for any lost
        server). Up again, or its address back: a refresh at once, not at the next
        interval. Another IPv4 address: a new socket on it (same port if free), the
        data path told (XDP knows our traffic by it), and a refresh at once, whose
        RA brings the new mapping and so the new Teredo address (§5.2.7). No IPv4
        address at all: said; the refreshes then fail and the client goes offline.
        """
        from pyroute2.netlink.exceptions import NetlinkError

        if not self.watch.changed():
            return
        nic = self.plan.nic
        try:
            up, ipv4 = self._look_at_interface()
        except (NetlinkError, OSError, IndexError) as err:
            self.log.warning("interface_unreadable", interface=nic.name, error=str(err))
            return
        refresh = False
        if up != self.interface_up:
            self.interface_up = up
            self.log.info("interface_up" if up else "interface_down", interface=nic.name)
            refresh = up
        if ipv4 is None:
            if not self._address_lost:
                self._address_lost = True
                self.log.warning("interface_address_lost", interface=nic.name,
                             address=str(self.local[0]))
        elif ipv4 != self.local[0]:
            refresh = self._rebind(ipv4) or refresh
        elif self._address_lost:
            self._address_lost = False
            self.log.info("interface_address_back", interface=nic.name, address=str(ipv4))
            refresh = True
        if refresh and up and self.qual is not None:
            self.counters["interface_refresh"] += 1
            self.qualification(self.qual.refresh_now(self.clock.monotonic()))

    def _look_at_interface(self) -> Tuple[bool, Optional[IPv4Address]]:
        """(link up with carrier, the IPv4 address to use or None), as prepare picks
        it: the configured BindAddress, else ours while the NIC keeps it, else its
        first one."""
        from pyroute2 import IPRoute

        nic = self.plan.nic
        with IPRoute() as ipr:
            flags = ipr.get_links(nic.ifindex)[0]["flags"]
            addresses = [IPv4Address(a.get_attr("IFA_ADDRESS"))
                         for a in ipr.get_addr(family=socket.AF_INET, index=nic.ifindex)]
        up = bool(flags & _IFF_UP) and bool(flags & _IFF_RUNNING)
        if self.config.bind_address != cfg.DEFAULT_BIND_ADDRESS:
            return up, self.config.bind_address if self.config.bind_address in addresses else None
        if self.local[0] in addresses:
            return up, self.local[0]
        return up, addresses[0] if addresses else None

    def _rebind(self, ipv4: IPv4Address) -> bool:
        """Move the Teredo socket to `ipv4`, keeping the port when it is free there."""
        from ..net.udp import TeredoSocket

        nic, old = self.plan.nic, self.sock
        try:
            try:
                new = TeredoSocket(ipv4, self.local[1], device=nic.name)
            except RuntimeFailure:
                new = TeredoSocket(ipv4, 0, device=nic.name)
        except RuntimeFailure as err:
            self.counters["rebind_failed"] += 1
            self.log.error("interface_rebind_failed", interface=nic.name, address=str(ipv4),
                       error=str(err))
            return False
        new.refusals.update(old.refusals)
        self.loop.remove_reader(old)
        old.close()
        self.loop.add_reader(new, self.read_udp)
        self.sock, previous = new, self.local
        self.local = new.local_address
        self._address_lost = False
        self.configure_datapath()
        self.log.info("interface_address_changed", interface=nic.name,
                  old=f"{previous[0]}:{previous[1]}", new=f"{self.local[0]}:{self.local[1]}")
        return True
