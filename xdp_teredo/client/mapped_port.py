"""Our Teredo port moved onto a UPnP mapping (RFC 6081 §4.3): the ClientDaemon
mixin that starts client/upnp.py's PortMapper and acts on its mapping.
"""

from __future__ import annotations

from typing import Optional

from .upnp import PortMapper

# From the introduction bubble to moving onto the mapped socket: the server's
# relay of it must have crossed the NAT first (a lab round trip is < 1 ms).
INTRODUCTION_WAIT = 0.5


class UpnpMapping:
    """Mixed into ClientDaemon (plan, local, sock, qual, peers, log, loop, teardown
    live there): the mapping, and moving our Teredo port onto it.

    RFC 6081 §4.3 wants the address to embed the UPnP mapping. Behind a NAT that
    forwards the mapped port inbound only (miniupnpd's DNAT) and gives every flow
    of ours a random port (symmetric), the server sees another port for every
    socket that spoke first. So the mapping is made for a second, silent socket:
    once it exists, the qualified one sends a bubble through our server to the
    address embedding the mapping (the introduction); the server relays it there,
    the NAT forwards it to the silent socket, and that flow is now one the NAT
    answers from the mapped port. The silent socket becomes our Teredo socket and
    requalifies: the server, and every peer that reached us first, see the mapped
    port. The PeerList then bubbles indirectly only (peers.inbound_open).
    """

    upnp: Optional[PortMapper] = None
    _upnp_socket = None          # the silent socket the mapping is for
    _upnp_move_at: Optional[float] = None

    def start_upnp(self) -> None:
        """The mapping, in its own thread: qualification never waits for it (RFC
        6081 §4.3 is an optimisation, not a precondition). Removed at exit; kept
        when the fast path is kept (the next instance replaces it). With --bind-port
        the port is the user's: mapped as it is, never moved."""
        if not self.plan.upnp or self.local is None:
            return
        local = self.local
        if not self.config.bind_port:
            from ..net.udp import TeredoSocket

            self._upnp_socket = TeredoSocket(self.local[0], 0, device=self.plan.nic.name)
            self.teardown.push_always("UPnP socket", self._close_upnp_socket)
            local = self._upnp_socket.local_address
        self.upnp = PortMapper(local, self.config.tunnel, self.log, wake=self.loop.wake)
        self.teardown.push("UPnP mapping", self.upnp.stop, keep=lambda: None)
        self.loop.deadline(self.upnp_due, self.on_upnp_due)
        self.upnp.start()

    def _close_upnp_socket(self) -> None:
        if self._upnp_socket is not None:
            self._upnp_socket.close()
            self._upnp_socket = None

    def upnp_due(self) -> Optional[float]:
        if self._upnp_socket is None or self.upnp is None:
            return None
        if self._upnp_move_at is not None:
            return self._upnp_move_at
        qual = self.qual
        if self.upnp.mapped is not None and qual is not None and qual.mapping is not None:
            return 0.0
        return None

    def on_upnp_due(self, now: float) -> None:
        from ..teredo.address import TeredoAddress
        from ..teredo.constants import TEREDO_PORT

        if self._upnp_move_at is None:
            server, (ip, port) = self.qual.mapping.server, self.upnp.mapped
            self.send_bubble(TeredoAddress.build(server, ip, port).ipv6, server, TEREDO_PORT,
                             "upnp_introduction")
            self._upnp_move_at = now + INTRODUCTION_WAIT
            self.log.info("upnp_introduced", external=f"{ip}:{port}", server=str(server))
            return
        self._upnp_move_at = None
        new, self._upnp_socket = self._upnp_socket, None
        old, previous = self.sock, self.local
        self.loop.remove_reader(old)
        old.close()
        self.loop.add_reader(new, self.read_udp)
        self.sock, self.local = new, new.local_address
        self.configure_datapath()
        self.log.info("upnp_moved", old=f"{previous[0]}:{previous[1]}",
                      new=f"{self.local[0]}:{self.local[1]}")
        self.qualification(self.qual.refresh_now(now))

    def address_changed(self, old, new) -> None:
        super().address_changed(old, new)
        mapped = self.upnp.mapped if self.upnp is not None else None
        self.peers.inbound_open = new is not None and mapped is not None \
            and (new.mapped_ip, new.mapped_port) == mapped

    def _nat_detail(self, nat_type) -> Optional[dict]:
        """The NAT type's details, with Windows' "UPNP: Yes/No" once we searched."""
        if nat_type is None:
            return None
        detail = nat_type.describe()
        if self.upnp is not None and self.upnp.searched:
            detail["upnp"] = self.upnp.mapped is not None
        return detail
