"""The client's UPnP port mapping (RFC 6081 §4.3, UPnP-enabled NATs).

A thread of its own finds the gateway (net/ssdp.py), maps UDP <external port> on
it to a socket of ours (net/igd.py), renews the lease at half its life and
removes the mapping at exit. Qualification never waits for it: with no IGD on
the link the search costs one datagram and a thread that waits SEARCH_TIMEOUT,
and the daemon's start-up does not wait for that thread at all.

At start it first removes what a killed instance of ours left on the gateway
(same description, same internal address, another internal port or the same):
a SIGKILL runs no teardown, and the lease would keep it for an hour.

client/mapped_port.py moves our Teredo port onto the mapping, so that the
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
        if self._thread is not None and self.service is not None:
            # A gateway answered: a mapping may be on its way; wait for it to land
            # (bounded) so that it is removed. Still searching: nothing to wait for.
            self._thread.join(timeout=3 * HTTP_TIMEOUT)
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
        if self._stop.is_set():
            return 0.0
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
