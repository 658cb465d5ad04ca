"""The Teredo server (RFC 4380 §5.3): sockets and a loop, no protocol logic.

A server carries no data traffic, only Router Solicitations/Advertisements,
bubbles and echo tests, so it has no BPF data path: one thread, a selector over
the two UDP sockets (primary and secondary address, port 3544), the status socket
and a signal wake-up. Each datagram goes to ServerPolicy.handle (teredo/
server_policy.py), which decides everything; what it returns is sent here.

Status: the abstract unix socket "@xdp-teredo-server" (per network namespace, so
one server per namespace publishes it) answers every connection with one JSON
object and closes; `xdp-teredo server --status` reads it (query_status).
Logs: server_started / server_stopped, and server_stats every --stats-interval
seconds if asked; never one line per packet.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import os
import selectors
import signal
import socket
from typing import Optional

from xdp_teredo import log
from xdp_teredo.errors import RuntimeFailure, UsageError
from xdp_teredo.teredo import constants as C
from xdp_teredo.teredo.clock import Clock, SystemClock
from xdp_teredo.teredo.ipv4 import as_ipv4, is_global_unicast
from xdp_teredo.teredo.ratelimit import Limits, RateLimiter
from xdp_teredo.teredo.server_policy import Received, SendIpv6, SendUdp, ServerPolicy

# Abstract unix socket name (leading NUL): no file to clean up, private to the netns.
STATUS_SOCKET = "\0xdp-teredo-server"

# Defaults of the rate limits (docs/server.md, "Sizing"): a client needs one RA per
# 30 s (117 bytes) plus a few bubbles, so 20 packets/s and 2 KiB/s per IPv4 address
# leave room for several hundred clients behind one NAT, while a spoofed source can
# aim at most 2 KiB/s (after an 8 KiB burst) at any one victim. The overall bucket
# caps the total the server can emit, whatever the number of sources.
DEFAULT_SOURCE_PPS = 20.0
DEFAULT_SOURCE_BPS = 2048.0
DEFAULT_GLOBAL_PPS = 20000.0
DEFAULT_GLOBAL_BPS = 4_000_000.0
DEFAULT_MAX_SOURCES = 65536

# Datagrams read from one socket before looking at the others (fairness, and a
# bound on the time between two checks of the stop flag).
_BATCH = 64
# The largest UDP payload over IPv4; anything longer than MAX_DATAGRAM is dropped
# by the policy, but it must be read whole to be counted as such.
_RECV_BUFFER = 65535


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    primary: ipaddress.IPv4Address
    secondary: ipaddress.IPv4Address
    port: int = C.TEREDO_PORT
    native_ipv6: bool = True
    per_source: Limits = Limits(DEFAULT_SOURCE_PPS, DEFAULT_SOURCE_BPS)
    overall: Optional[Limits] = Limits(DEFAULT_GLOBAL_PPS, DEFAULT_GLOBAL_BPS)
    max_sources: int = DEFAULT_MAX_SOURCES
    stats_interval: float = 0.0
    status_socket: Optional[str] = STATUS_SOCKET


def server_addresses(bind: str, bind2: Optional[str] = None):
    """(primary, secondary) from the command line, or UsageError naming the problem.

    Both must be global unicast IPv4 (ipv4.is_global_unicast: what Miredo's clients
    accept; the documentation ranges are). The secondary defaults to primary + 1:
    Miredo's clients (ServerAddress2) and Windows assume that.
    """
    primary = _global_address("--bind", bind)
    if bind2 is None:
        if int(primary) == 0xFFFFFFFF:
            raise UsageError(f"--bind {primary}: no primary + 1 address; give --bind2")
        secondary = _global_address("--bind2 (default: --bind + 1)", str(primary + 1))
    else:
        secondary = _global_address("--bind2", bind2)
    if secondary == primary:
        raise UsageError(f"--bind2 {secondary}: must differ from --bind")
    return primary, secondary


def _global_address(option: str, value: str) -> ipaddress.IPv4Address:
    try:
        address = as_ipv4(value.strip() if isinstance(value, str) else value)
    except UsageError as err:
        raise UsageError(f"{option}: {err}") from None
    if not is_global_unicast(address):
        raise UsageError(f"{option} {address}: not a global unicast IPv4 address "
                         "(a Teredo server needs public addresses, RFC 4380 §5.3)")
    return address


class TeredoServer:
    """Owns the sockets; `serve()` runs until stop() (or a signal via run())."""

    def __init__(self, config: ServerConfig, *, clock: Optional[Clock] = None):
        self.config = config
        self.clock = clock or SystemClock()
        limiter = RateLimiter(config.per_source, max_sources=config.max_sources,
                              overall=config.overall, clock=self.clock)
        self.policy = ServerPolicy(config.primary, config.secondary, limiter=limiter,
                                   native_ipv6=config.native_ipv6)
        self.send_failed = 0
        self.status_served = 0
        self.started = None
        self._sockets: dict = {}          # local IPv4 -> UDP socket
        self._raw6: Optional[socket.socket] = None
        self._status: Optional[socket.socket] = None
        self._selector: Optional[selectors.BaseSelector] = None
        self._wake_r = self._wake_w = None
        self._stopping = False
        self._buffer = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self.log = log.get("xdp_teredo.server")

    # -- set-up and tear-down ----------------------------------------------------------

    def open(self) -> "TeredoServer":
        """Bind everything; on failure close what was opened and raise RuntimeFailure."""
        try:
            self._selector = selectors.DefaultSelector()
            for address in (self.config.primary, self.config.secondary):
                sock = self._udp_socket(address)
                self._sockets[address] = sock
                self._selector.register(sock, selectors.EVENT_READ, address)
            if self.config.native_ipv6:
                self._raw6 = self._raw_ipv6_socket()
                if self._raw6 is None:
                    self.policy.native_ipv6 = False
            if self.config.status_socket:
                self._status = self._status_listener(self.config.status_socket)
                if self._status is not None:
                    self._selector.register(self._status, selectors.EVENT_READ, "status")
            self._wake_r, self._wake_w = socket.socketpair()
            for end in (self._wake_r, self._wake_w):
                end.setblocking(False)
            self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        except BaseException:
            self.close()
            raise
        self.started = self.clock.monotonic()
        return self

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

    def _status_listener(self, name: str) -> Optional[socket.socket]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(name)
            sock.listen(8)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            # Not fatal: the server works without it (e.g. a second one in this netns).
            self.log.warning("status_socket_unavailable", socket="@" + name.lstrip("\0"),
                             error=str(err))
            return None
        return sock

    def close(self) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for sock in [*self._sockets.values(), self._raw6, self._status,
                     self._wake_r, self._wake_w]:
            if sock is not None:
                sock.close()
        self._sockets.clear()
        self._raw6 = self._status = self._wake_r = self._wake_w = None

    def stop(self) -> None:
        """Ask serve() to return; safe from a signal handler or another thread."""
        self._stopping = True
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass  # full or closed: the loop is waking up or gone anyway

    @property
    def wakeup_fd(self) -> int:
        return self._wake_w.fileno()

    # -- the loop ------------------------------------------------------------------

    def serve(self) -> None:
        interval = self.config.stats_interval
        next_stats = self.clock.monotonic() + interval if interval > 0 else None
        while not self._stopping:
            timeout = None
            if next_stats is not None:
                timeout = max(0.0, next_stats - self.clock.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.data == "wake":
                    self._drain_wake()
                elif key.data == "status":
                    self._serve_status()
                else:
                    self._receive(key.fileobj, key.data)
            if next_stats is not None and self.clock.monotonic() >= next_stats:
                self.log.info("server_stats", **self.status()["counters"])
                next_stats += interval

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
                self.send_failed += 1
        except OSError:
            # Full socket buffer, no route, ICMP error: a lost control packet, which
            # the client's own retries (§5.2.1, §5.2.6, §5.2.9) are there for.
            self.send_failed += 1

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _serve_status(self) -> None:
        try:
            conn, _ = self._status.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.settimeout(1.0)
            try:
                conn.sendall(json.dumps(self.status()).encode() + b"\n")
                self.status_served += 1
            except OSError:
                pass  # the asker went away

    # -- reporting -----------------------------------------------------------------------

    def status(self) -> dict:
        counters = self.policy.counters()
        counters["send_failed"] = self.send_failed
        return {
            "role": "server",
            "pid": os.getpid(),
            "primary": str(self.config.primary),
            "secondary": str(self.config.secondary),
            "port": self.config.port,
            "prefix": str(self.policy.prefix),
            "link_local": str(self.policy.link_local),
            "native_ipv6": self.policy.native_ipv6,
            "uptime_s": (round(self.clock.monotonic() - self.started, 3)
                         if self.started is not None else 0.0),
            "rate_limit": self.policy.limiter.status(),
            "counters": counters,
        }


def run(config: ServerConfig) -> int:
    """Serve until SIGINT or SIGTERM; 0 on a clean stop. RuntimeFailure if binding fails."""
    server = TeredoServer(config).open()
    previous = {}
    old_wakeup = None
    try:
        stopped_by = []

        def on_signal(signum, _frame):
            # No logging here: the handler may interrupt a log call in progress.
            stopped_by.append(signal.Signals(signum).name)
            server.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
        # The C-level handler writes to this fd at once, so a select() in progress
        # returns even before the Python handler runs.
        old_wakeup = signal.set_wakeup_fd(server.wakeup_fd)
        status = server.status()
        server.log.info("server_started", primary=status["primary"],
                        secondary=status["secondary"], port=status["port"],
                        prefix=status["prefix"], native_ipv6=status["native_ipv6"],
                        status_socket=("@" + config.status_socket.lstrip("\0")
                                       if server._status is not None else None))
        server.serve()
        server.log.info("server_stopped", signal=stopped_by[0] if stopped_by else None,
                        **server.status()["counters"])
        return 0
    finally:
        if old_wakeup is not None:
            signal.set_wakeup_fd(old_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()


def query_status(name: str = STATUS_SOCKET, timeout: float = 2.0) -> dict:
    """The JSON status of the server running in this network namespace."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    chunks = []
    try:
        sock.connect(name)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as err:
        if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise RuntimeFailure("no xdp-teredo server is running in this network namespace "
                                 f"(@{name.lstrip(chr(0))} not listening)") from err
        raise RuntimeFailure(f"cannot read the server status: {err}") from err
    finally:
        sock.close()
    try:
        return json.loads(b"".join(chunks))
    except ValueError as err:
        raise RuntimeFailure(f"unreadable server status: {err}") from err


def config_from_options(bind: str, bind2: Optional[str] = None, *, native_ipv6: bool = True,
                        source_pps: float = DEFAULT_SOURCE_PPS,
                        source_bps: float = DEFAULT_SOURCE_BPS,
                        global_pps: float = DEFAULT_GLOBAL_PPS,
                        global_bps: float = DEFAULT_GLOBAL_BPS,
                        max_sources: int = DEFAULT_MAX_SOURCES,
                        stats_interval: float = 0.0) -> ServerConfig:
    """A ServerConfig from the command line's values; UsageError on bad ones.

    global_pps or global_bps of 0 turns the overall bucket off.
    """
    primary, secondary = server_addresses(bind, bind2)
    if secondary != primary + 1:
        log.get("xdp_teredo.server").warning(
            "secondary_not_consecutive", primary=str(primary), secondary=str(secondary),
            hint="Miredo clients assume primary + 1 unless ServerAddress2 says otherwise")
    try:
        per_source = Limits(source_pps, source_bps)
        overall = Limits(global_pps, global_bps) if global_pps and global_bps else None
    except ValueError as err:
        raise UsageError(f"rate limit: {err}") from None
    if stats_interval < 0:
        raise UsageError(f"--stats-interval {stats_interval}: must be 0 (off) or positive")
    return ServerConfig(primary=primary, secondary=secondary, native_ipv6=native_ipv6,
                        per_source=per_source, overall=overall, max_sources=max_sources,
                        stats_interval=stats_interval)
