"""The Teredo server daemon (RFC 4380 §5.3): what `xdp-teredo server` runs.

A server carries no data traffic, only Router Solicitations/Advertisements,
bubbles and echo tests: the skeleton's loop over the two UDP sockets (primary and
secondary address, port 3544) and the control socket "@xdp-teredo-server". Each
datagram goes to ServerPolicy.handle (teredo/server_policy.py), which decides
everything; what it returns is sent here.

The per-packet bulk, the RS every client sends every 30 s, is answered in XDP
when the kernel lets it (--xdp-mode, datapath/server.py, docs/server.md): the
program sends the RA this policy would (its bytes come from the policy), within
the same per-address rate; it also forwards the bubbles and echo tests to our
clients that this policy would forward (§5.3.1), with IPv4 forwarding turned on
for its device meanwhile (forwarding.py); what it leaves goes up to the sockets.
Without it (--xdp-mode off, or a kernel that refuses) the daemon answers all.
The sockets answer from the first moment: the programs compile in a child while
the daemon serves (datapath/isolated.py, as the client does: issue 13), and XDP
is attached when they arrive (`server_fast_path_ready`); until then, and if the
compile fails under --xdp-mode auto, Python answers every RS.

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
from ..teredo import constants
from ..teredo.ratelimit import RateLimiter
from ..teredo.server_policy import RATE_LIMITED, Received, SendIpv6, SendUdp, ServerPolicy
from .plan import ServerConfig

# The XDP program's verdicts (datapath/layout.py) under ServerPolicy's names.
_XDP_RATE_LIMITED = ("server_ra_source_limit", "server_ra_limit",
                     "server_forward_source_limit", "server_forward_destination_limit",
                     "rx_slow_path_source_limit", "rx_slow_path_limit")
_XDP_DROPS = {"source_not_global": ("server_source_not_global",),
              "loop": ("server_loop",),
              "malformed": ("server_rs_malformed", "server_forward_malformed",
                            "rx_ipv4_checksum", "rx_ipv4_length", "rx_udp_length"),
              "source_mismatch": ("server_source_mismatch",),
              "not_ours": ("server_not_ours",),
              "destination_other_server": ("server_destination_other_server",),
              "destination_not_global": ("server_destination_not_global",),
              "echo_too_big": ("server_echo_too_big",)}
_XDP_SENT = {"rs_answered": "server_ra", "forwarded_bubble": "server_forwarded_bubble",
             "forwarded_echo": "server_forwarded_echo"}

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
        self.xdp = None                   # the attached fast path (datapath/server.py)
        self.xdp_prog = None
        self.xdp_why: Optional[str] = "--xdp-mode off" if config.xdp_mode == "off" else None
        self.compiling = None             # isolated.Compiling while the child compiles
        self._xdp_target = None           # (ifindex, name, mode, pin_root) for the attach
        self._buffer = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buffer)
        if config.stats_interval > 0:
            self.loop.every(config.stats_interval,
                            lambda: self.log.info("server_stats", **self.counters_all()))

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
        if self.config.xdp_mode != "off":
            self._attach_fast_path()

    def _attach_fast_path(self) -> None:
        """Start compiling the XDP program for the addresses' device; "auto" goes on
        without it if that fails (now or when the child answers)."""
        try:
            self._start_xdp()
        except RuntimeFailure as err:
            self._xdp_failed(err)

    def _xdp_failed(self, err: RuntimeFailure) -> None:
        if self.config.xdp_mode != "auto":
            if self.serving_now:
                self.log.error("datapath_failed", error=str(err))
                self.fail(str(err))
                return
            raise err
        self.xdp_why = str(err)
        self.log.warning("server_xdp_unavailable", reason=str(err),
                         hint="the daemon answers every RS (--xdp-mode off says so quietly)")

    def _start_xdp(self) -> None:
        from ..datapath import stats as dp_stats
        from ..datapath.redirect import check_egress
        from ..datapath.server import ServerDatapath, detach_stale

        ifindex, name = _device_of(self.config.primary, self.config.secondary)
        mode = self.config.xdp_mode
        if mode == "auto":
            # On a veth, native XDP_TX hands the RA to the peer's XDP ring, which needs
            # XDP or GRO on the peer (redirect.py) and, in our lab even with GRO on,
            # lost most RAs once the ring filled (docs/server.md); generic XDP sends
            # through the stack's transmit path and lost none. A NIC: native.
            check = check_egress(ifindex, name)
            mode = "generic" if check.kind == "veth" else "native"
            if mode == "generic":
                self.log.info("server_xdp_generic", device=name,
                              reason="a veth: XDP_TX there depends on its peer")
        pin_root = self.config.pin_root or dp_stats.DEFAULT_PIN_ROOT
        detach_stale(ifindex, pin_root=pin_root)
        self._xdp_target = (ifindex, name, mode, pin_root)
        self.compiling = ServerDatapath.compile_started()
        self.teardown.push_always("compiling the data path", self._cancel_compile)
        self.xdp_why = "compiling: the daemon answers every RS meanwhile"
        self.loop.add_reader(self.compiling, self._on_compiled)
        deadline = self.clock.monotonic() + self.compiling.timeout
        self.loop.deadline(lambda: deadline if self.compiling is not None else None,
                           lambda now: self._on_compiled())

    def _cancel_compile(self) -> None:
        compiling, self.compiling = self.compiling, None
        if compiling is not None:
            self.loop.remove_reader(compiling)
            compiling.cancel()

    def _on_compiled(self) -> None:
        compiling, self.compiling = self.compiling, None
        if compiling is None:
            return
        self.loop.remove_reader(compiling)
        try:
            self.xdp_prog = compiling.result()
            self.teardown.push_always("BPF programs", self.xdp_prog.close)
            self._attach_xdp()
        except RuntimeFailure as err:
            self._xdp_failed(err)
            return
        self.log.info("server_fast_path_ready", mode=self.xdp.xdp_attached,
                      seconds=round(self.clock.monotonic() - self.started, 3))

    def _attach_xdp(self) -> None:
        from ..datapath.limits import SlowPathLimits
        from ..datapath.server import SERVER_SLOW_PATH

        ifindex, name, mode, pin_root = self._xdp_target
        # The daemon's own slow path: what the program passes up, per source and in all.
        self.xdp_prog.slow_path.write(SERVER_SLOW_PATH if self.config.overall else
                                      SlowPathLimits(global_pps=0))
        self.xdp_prog.configure(self._fast_path_config())
        self.xdp = self.xdp_prog.attach(ifindex, xdp_mode=mode, pin_root=pin_root)
        self.teardown.push("XDP fast path", self.xdp.detach)
        self.xdp_why = None
        self._forward_in_xdp(name)

    def _forward_in_xdp(self, device: str) -> None:
        """The fib lookup of the program's forwarding wants IPv4 forwarding on the
        device (server/forwarding.py); without it Python forwards, as before."""
        from .forwarding import enable_ipv4_forwarding

        try:
            undo = enable_ipv4_forwarding(device)
        except RuntimeFailure as err:
            self.log.warning("server_xdp_forward_unavailable", reason=str(err),
                             hint="bubbles and echo tests are forwarded by the daemon")
            return
        if undo is not None:
            self.teardown.push(f"net.ipv4.conf.{device}.forwarding back to 0", undo)
            self.log.info("server_xdp_forwarding_on", device=device,
                          reason="bpf_fib_lookup answers only for a forwarding device")

    def _fast_path_config(self):
        """The program's config: ServerPolicy's RA, its per-address RA rate and its
        per-address forwarding rate (the limiter's packets and bytes per source,
        in packets of a forwarded bubble's size)."""
        from ..datapath.server import RaLimits, server_config
        from ..teredo.encap import AuthHeader, OriginIndication, build_udp_payload

        limits = self.config.per_source
        # ServerPolicy charges an RA's payload (headers included) to the packets and
        # bytes of its "ra" bucket: in RAs per second, the smaller of the two.
        ra_bytes = len(build_udp_payload(self.policy._router_advertisement(self.policy.link_local),
                                         auth=AuthHeader(nonce=bytes(8)),
                                         origin=OriginIndication(port=1, address=self.config.primary)))
        pps = min(limits.packets_per_s, limits.bytes_per_s / ra_bytes)
        burst = int(min(limits.packet_burst, limits.byte_burst / ra_bytes))
        fwd_bytes = constants.ORIGIN_INDICATION_LEN + constants.IPV6_HDR_LEN
        fwd_pps = min(limits.packets_per_s, limits.bytes_per_s / fwd_bytes)
        fwd_burst = int(min(limits.packet_burst, limits.byte_burst / fwd_bytes))
        return server_config(self.policy, RaLimits(source_pps=pps, source_burst=max(1, burst),
                                                   global_pps=self.config.xdp_ra_pps,
                                                   global_burst=max(1, int(self.config.xdp_ra_pps)),
                                                   forward_pps=fwd_pps,
                                                   forward_burst=max(1, fwd_burst)),
                             port=self.config.port)

    def serving(self) -> None:
        status = self.status()
        self.log.info("server_started", primary=status["primary"],
                      secondary=status["secondary"], port=status["port"],
                      prefix=status["prefix"], native_ipv6=status["native_ipv6"],
                      control_socket=self.control_socket)

    def stopped_fields(self) -> dict:
        return self.counters_all()

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
        seen.server = self.counters_all()
        if self.xdp is not None:
            seen.datapath = self.xdp.stats()
        return seen

    def xdp_status(self) -> dict:
        if self.xdp is None:
            return {"mode": "off", "why": self.xdp_why}
        fast = self.xdp.stats()
        return {"mode": self.xdp.xdp_attached, "ifindex": self.xdp.ifindex,
                "pin_dir": self.xdp.pin_dir,
                "ra_per_s_limit": self.config.xdp_ra_pps or None,
                "counters": {k: v["packets"] for k, v in fast.items() if v["packets"]}}

    def counters_all(self) -> dict:
        """ServerPolicy's counters, with what the XDP program decided itself added
        under the same names: the server's outcomes, wherever they were decided."""
        counters = self.policy.counters()
        counters["send_failed"] = self.counters["send_failed"]
        if self.xdp is None:
            return counters
        fast = {k: v["packets"] for k, v in self.xdp.stats().items()}
        dropped = counters["dropped"]
        for name, reasons in _XDP_DROPS.items():
            dropped[name] += sum(fast[r] for r in reasons)
        for name, reason in _XDP_SENT.items():
            counters[name] += fast[reason]
        counters[RATE_LIMITED] += sum(fast[r] for r in _XDP_RATE_LIMITED)
        counters["dropped_total"] = sum(dropped.values())
        counters["received"] += (sum(fast[r] for r in _XDP_SENT.values())
                                 + sum(fast[r] for r in _XDP_RATE_LIMITED)
                                 + sum(fast[r] for rs in _XDP_DROPS.values() for r in rs))
        return counters

    def status(self) -> dict:
        counters = self.counters_all()
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
            "xdp": self.xdp_status(),
        }


def _device_of(primary: ipaddress.IPv4Address, secondary: ipaddress.IPv4Address):
    """(ifindex, name) of the device holding both server addresses, or RuntimeFailure."""
    from ..datapath.hooks import open_iproute

    ipr = open_iproute()
    try:
        found = {}
        for msg in ipr.get_addr(family=socket.AF_INET):
            found[msg.get_attr("IFA_ADDRESS")] = msg["index"]
        where = {found.get(str(primary)), found.get(str(secondary))}
        if None in where:
            raise RuntimeFailure(f"{primary} and {secondary} are not both on a device here "
                                 "(a server behind DNAT cannot answer in XDP)")
        if len(where) != 1:
            raise RuntimeFailure(f"{primary} and {secondary} are on different devices: "
                                 "the XDP fast path wants them on one")
        ifindex = where.pop()
        name = ipr.get_links(ifindex)[0].get_attr("IFLA_IFNAME")
        return ifindex, name
    finally:
        ipr.close()
