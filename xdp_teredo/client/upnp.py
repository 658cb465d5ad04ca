"""The client's UPnP port mapping (RFC 6081 §4.3, UPnP-enabled NATs).

A thread of its own finds the gateway (net/ssdp.py), maps UDP <external port> on
it to our Teredo socket (net/igd.py), renews the lease at half its life and
removes the mapping at exit. Qualification never waits for it: with no IGD on
the link the search costs one datagram and a thread that waits SEARCH_TIMEOUT,
and the daemon's start-up does not wait for that thread at all.

At start it first removes what a killed instance of ours left on the gateway
(same description, same internal address, another internal port or the same):
a SIGKILL runs no teardown, and the lease would keep it for an hour.

Then (UpnpMapping, below) our Teredo port moves onto the mapping, so that the
address embeds it (RFC 6081 §4.3); `status` shows it (`upnp: mapped A:P`) and
the NAT type notes "UPnP yes".
"""

from __future__ import annotations

import random
import threading
from typing import Callable, Optional

from ..net import igd, ssdp

# How long one search waits for a gateway's answer (SSDP MX is 1 s).
SEARCH_TIMEOUT = 2.0
# Each HTTP exchange with the gateway.
HTTP_TIMEOUT = 2.0
# The lease we ask for; renewed at half of it. A gateway that only grants
# permanent mappings (IGD:1 error 725) is asked again with 0.
LEASE = 3600
ONLY_PERMANENT = 725
# After a failed search or mapping: try again this much later.
RETRY = 120.0
# Other external ports to try when ours is taken (ConflictInMappingEntry).
OTHER_PORTS = 3
DESCRIPTION = "xdp-teredo {tunnel}"
# From the introduction bubble to moving onto the mapped socket: the server's
# relay of it must have crossed the NAT first (a lab round trip is < 1 ms).
INTRODUCTION_WAIT = 0.5


class PortMapper:
    """One UDP port mapping on the gateway for (local_ip, local_port)."""

    def __init__(self, local: tuple, tunnel: str, log, *, wake: Callable[[], None] = lambda: None,
                 lease: int = LEASE, search_timeout: float = SEARCH_TIMEOUT,
                 rng: Optional[random.Random] = None):
        self.local = (str(local[0]), int(local[1]))
        self.description = DESCRIPTION.format(tunnel=tunnel)
        self.log = log
        self.wake = wake
        self.lease = lease
        self.search_timeout = search_timeout
        self._rng = rng or random.SystemRandom()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.service: Optional[igd.Service] = None
        # (external IPv4Address, external port) while mapped; read by status().
        self.mapped: Optional[tuple] = None
        self.searched = False          # the first search is over (found or not)
        self.error: Optional[str] = None

    # -- the loop's side ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="upnp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """At exit: stop the thread, remove the mapping (bounded by HTTP_TIMEOUT)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=SEARCH_TIMEOUT + 2 * HTTP_TIMEOUT)
        mapped, service = self.mapped, self.service
        if mapped is None or service is None:
            return
        try:
            igd.delete_mapping(service, mapped[1], HTTP_TIMEOUT)
            self.log.info("upnp_removed", external=f"{mapped[0]}:{mapped[1]}")
        except igd.UpnpError as err:
            self.log.warning("upnp_failed", step="remove", error=str(err))
        self.mapped = None

    def describe(self) -> Optional[str]:
        """`status`'s "upnp" value: "mapped A:P", or None (no gateway, off, failed)."""
        mapped = self.mapped
        return f"mapped {mapped[0]}:{mapped[1]}" if mapped else None

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._once()
            except igd.UpnpError as err:
                self.error = str(err)
                self.mapped = None
                self.log.warning("upnp_failed", error=str(err), retry_in_s=RETRY)
                wait = RETRY
            self.searched = True
            self.wake()
            self._stop.wait(wait)

    def _once(self) -> float:
        """Find, clean up, map or renew; the seconds until the next turn."""
        if self.service is None:
            answer = ssdp.discover(self.local[0], self.search_timeout)
            if answer is None:
                self.log.debug("upnp_no_gateway", waited_s=self.search_timeout)
                return RETRY
            self.service = igd.describe(answer.location, HTTP_TIMEOUT)
            self._remove_stale()
        external = igd.external_ip(self.service, HTTP_TIMEOUT)
        renewing = self.mapped is not None
        port = self._map(self.mapped[1] if renewing else self.local[1])
        self.mapped = (external, port)
        self.error = None
        self.log.info("upnp_renewed" if renewing else "upnp_mapped",
                      external=f"{external}:{port}", internal=f"{self.local[0]}:{self.local[1]}",
                      lease_s=self.lease, gateway=self.service.control_url)
        return self.lease / 2 if self.lease else RETRY * 30

    def _map(self, first: int) -> int:
        """AddPortMapping to our socket, `first` as external port, then a few
        random ones if it is taken; the external port mapped."""
        ports = [first] + [self._rng.randint(1024, 65535) for _ in range(OTHER_PORTS)]
        for port in ports:
            try:
                igd.add_mapping(self.service, port, self.local, self.description,
                                self.lease, HTTP_TIMEOUT)
                return port
            except igd.UpnpError as err:
                if err.code == ONLY_PERMANENT and self.lease:
                    self.lease = 0
                    igd.add_mapping(self.service, port, self.local, self.description,
                                    0, HTTP_TIMEOUT)
                    return port
                if err.code != igd.CONFLICT:
                    raise
        raise igd.UpnpError(f"every external port tried is taken: {ports}", igd.CONFLICT)

    def _remove_stale(self) -> None:
        """Mappings of ours (description and internal address) that a killed
        instance left: removed before we map, whatever their ports."""
        try:
            entries = igd.mappings(self.service, HTTP_TIMEOUT)
        except igd.UpnpError as err:   # listing is optional in IGD:2: map anyway
            self.log.debug("upnp_list_failed", error=str(err))
            return
        for entry in entries:
            if entry.protocol == "UDP" and entry.description == self.description \
                    and entry.internal_client == self.local[0]:
                igd.delete_mapping(self.service, entry.external_port, HTTP_TIMEOUT)
                self.log.info("upnp_removed", external_port=entry.external_port,
                              internal=f"{entry.internal_client}:{entry.internal_port}",
                              reason="left by an earlier instance")


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
