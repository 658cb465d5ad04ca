"""The Teredo server daemon (RFC 4380 §5.3): what `xdp-teredo server` runs.

A server carries no data traffic, only Router Solicitations/Advertisements,
bubbles and echo tests, so it has no BPF data path: the skeleton's loop over the
two UDP sockets (primary and secondary address, port 3544) and the control socket
"@xdp-teredo-server". Each datagram goes to ServerPolicy.handle
(teredo/server_policy.py), which decides everything; what it returns is sent here.

Logs: server_started / server_stopped, and server_stats every --stats-interval
seconds if asked; never one line per packet.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Optional

from ..daemon.base import Daemon
from ..daemon.control import SERVER_SOCKET
from ..errors import RuntimeFailure
from ..teredo.ratelimit import RateLimiter
from ..teredo.server_policy import Received, SendIpv6, SendUdp, ServerPolicy
from .plan import ServerConfig

# Datagrams read from one socket before looking at the others (fairness, and a
# bound on the time between two deadline checks).
_BATCH = 64
# The largest UDP payload over IPv4; anything longer than MAX_DATAGRAM is dropped
# by the policy, but it must be read whole to be counted as such.
_RECV_BUFFER = 65535


class ServerDaemon(Daemon):
    role = "server"

    def __init__(self, config: ServerConfig, *, clock=None):
        super().__init__(clock=clock)
        self.config = config
        limiter = RateLimiter(config.per_source, max_sources=config.max_sources,
                              overall=config.overall, clock=self.clock)
        self.policy = ServerPolicy(config.primary, config.secondary, limiter=limiter,
                                   native_ipv6=config.native_ipv6)
        self._sockets: dict = {}          # local IPv4 -> UDP socket
        self._raw6: Optional[socket.socket] = None
        self._buffer = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buffer)
        if config.stats_interval > 0:
            self.loop.every(config.stats_interval,
                            lambda: self.log.info("server_stats", **self.status()["counters"]))

    def setup(self) -> None:
        for address in (self.config.primary, self.config.secondary):
            sock = self._udp_socket(address)
            self._sockets[address] = sock
            self.teardown.push_always(f"socket {address}", sock.close)
            self.loop.add_reader(sock, lambda s=sock, a=address: self._receive(s, a))
        if self.config.native_ipv6:
            self._raw6 = self._raw_ipv6_socket()
            if self._raw6 is None:
                self.policy.native_ipv6 = False
            else:
                self.teardown.push_always("raw IPv6 socket", self._raw6.close)
        # After the sockets: their port is the server's lock (a second server on
        # other addresses in this network namespace runs, without a control socket).
        self.open_control(SERVER_SOCKET, "a Teredo server", required=False)

    def serving(self) -> None:
        status = self.status()
        self.log.info("server_started", primary=status["primary"],
                      secondary=status["secondary"], port=status["port"],
                      prefix=status["prefix"], native_ipv6=status["native_ipv6"],
                      control_socket=self.control_socket)

    def stopped_fields(self) -> dict:
        return self.status()["counters"]

    def _udp_socket(self, address: ipaddress.IPv4Address) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # No SO_REUSEADDR: a second server (or miredo-server) on the same
            # address and port must be an error, not a silent split of the traffic.
            sock.bind((str(address), self.config.port))
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            raise RuntimeFailure(f"cannot bind UDP {address}:{self.config.port}: "
                                 f"{err.strerror or err}") from err
        return sock

    def _raw_ipv6_socket(self) -> Optional[socket.socket]:
        """The socket for native forwarding (header included: IPPROTO_RAW), or None."""
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            sock.setblocking(False)
            return sock
        except OSError as err:
            self.log.warning("native_ipv6_unavailable", error=str(err))
            return None

    def _receive(self, sock: socket.socket, local: ipaddress.IPv4Address) -> None:
        for _ in range(_BATCH):
            try:
                nbytes, (ip, port) = sock.recvfrom_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP errors queued on the socket (port unreachable after a send)
                # surface here as ECONNREFUSED and the like: nothing was received.
                continue
            received = Received(local=local, src_ip=ipaddress.IPv4Address(ip),
                                src_port=port, payload=bytes(self._view[:nbytes]))
            for send in self.policy.handle(received):
                self._send(send)

    def _send(self, send) -> None:
        try:
            if isinstance(send, SendUdp):
                self._sockets[send.via].sendto(send.payload, (str(send.dst_ip), send.dst_port))
            elif isinstance(send, SendIpv6) and self._raw6 is not None:
                self._raw6.sendto(send.packet, (str(send.dst), 0))
            else:
                self.counters["send_failed"] += 1
        except OSError:
            # Full socket buffer, no route, ICMP error: a lost control packet, which
            # the client's own retries (§5.2.1, §5.2.6, §5.2.9) are there for.
            self.counters["send_failed"] += 1

    def observe(self):
        seen = super().observe()
        seen.server = self.policy.counters()
        return seen

    def status(self) -> dict:
        counters = self.policy.counters()
        counters["send_failed"] = self.counters["send_failed"]
        return {
            "role": "server",
            "pid": os.getpid(),
            "primary": str(self.config.primary),
            "secondary": str(self.config.secondary),
            "port": self.config.port,
            "prefix": str(self.policy.prefix),
            "link_local": str(self.policy.link_local),
            "native_ipv6": self.policy.native_ipv6,
            "uptime_s": self.uptime(),
            "rate_limit": self.policy.limiter.status(),
            "counters": counters,
        }
