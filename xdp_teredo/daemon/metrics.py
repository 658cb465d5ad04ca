"""`--metrics HOST:PORT`: the daemon's counters and state in Prometheus' text format.

Every role has it, through the skeleton (base.run): a role only says what it sees
(`Daemon.observe()` -> Observation); this module turns that into metric families
at scrape time and serves them. Nothing is counted here: the data path counts in
BPF per-CPU maps, the slow path in Daemon.counters, the server in its policy; a
scrape reads them (one map lookup per reason), so Python does no per-packet work
for metrics and no thread keeps gauges up to date.

    xdp_teredo_info{role, version}                      1
    xdp_teredo_datapath_packets_total{reason, kind}     every verdict of `stats`
    xdp_teredo_datapath_bytes_total{reason, kind}       kind: ok | pass | drop
    xdp_teredo_slow_path_events_total{event}            Daemon.counters
    xdp_teredo_slow_path_drops_total{reason}            Daemon.counters' drop_<reason>
    xdp_teredo_peer_list_drops_total{reason}            the peer policy's drops
    xdp_teredo_peers{where}                             datapath | pending
    xdp_teredo_state{state}                             1 for the current state, 0 others
    xdp_teredo_state_age_seconds                        since the last state change
    xdp_teredo_state_changed_timestamp_seconds          when (Unix time)
    xdp_teredo_server_received_total                    the server role
    xdp_teredo_server_sent_total{outcome}
    xdp_teredo_server_rate_limited_total
    xdp_teredo_server_drops_total{reason}

docs/metrics.md lists them with their meaning; docs/grafana-dashboard.json uses them.

Why the daemon's own event loop serves the scrapes, not prometheus_client's HTTP
server thread:
- the collector reads state the loop mutates (Counters, the PeerList, the
  qualification): on the loop it sees a consistent picture with no lock, where a
  thread could meet "dictionary changed size during iteration" mid-scrape;
- the listening socket is bound during set-up, as root (a port below 1024 works,
  and a port in use fails before serving, with the teardown undoing set-up), and
  no thread exists when privileges are dropped (capabilities are per thread:
  daemon/privileges.py refuses to drop with more than one);
- the connections are non-blocking and bounded in number, size and age, so a slow
  or hostile scraper costs the loop nothing but a few reads; answering is one
  pass over ~50 map entries.
prometheus_client still does the exposition: the registry, the collector API and
the text/OpenMetrics encoders (content negotiation on Accept).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
import time
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__
from ..errors import RuntimeFailure, UsageError
from .loop import release

PREFIX = "xdp_teredo"
# Connections served at once; one more closes the oldest (Prometheus scrapes one
# target with one connection).
MAX_CONNECTIONS = 8
# A request is a GET line and a few headers: anything longer is not a scrape.
MAX_REQUEST = 8192
# A connection that has not sent its request (or taken its answer) by then is closed.
CONNECTION_TIMEOUT = 5.0
SWEEP_INTERVAL = 1.0


# -- the address ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MetricsAddress:
    host: str   # an IPv4 or IPv6 literal; "" means every address (as node_exporter's ":9100")
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, option: str = "--metrics") -> MetricsAddress:
    """HOST:PORT, [IPV6]:PORT or :PORT (every address); UsageError otherwise.
    HOST is an IP address: a name would be resolved at start-up, once, silently."""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise UsageError(f"{option} {text!r}: expected HOST:PORT (e.g. 127.0.0.1:9417)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ip(host, 6):
            raise UsageError(f"{option} {text!r}: {host!r} is not an IPv6 address")
    elif host and not _is_ip(host, 4):
        hint = " (an IPv6 address goes in brackets: [::1]:9417)" if ":" in host else ""
        raise UsageError(f"{option} {text!r}: {host!r} is not an IP address{hint}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"{option} {text!r}: the port must be a number from 1 to 65535")
    return MetricsAddress(host, int(port_text))


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


# -- what a daemon shows ------------------------------------------------------------------

@dataclasses.dataclass
class Observation:
    """One role's state at scrape time (Daemon.observe()). None: not this role's."""

    role: str
    state: str
    states: Sequence[str]                      # every state the role can be in
    state_since: float                         # Unix time of the last state change
    slow_path: Mapping[str, int]               # Daemon.counters (drop_<reason> included)
    datapath: Optional[Mapping[str, Mapping[str, int]]] = None  # datapath stats snapshot
    peers: Optional[Mapping[str, int]] = None  # {"datapath": n, "pending": n}
    peer_list_drops: Optional[Mapping[str, int]] = None
    server: Optional[Mapping] = None           # ServerPolicy.counters()


class DaemonCollector(Collector):
    """Reads `observe()` at each scrape and turns it into metric families."""

    def __init__(self, observe: Callable[[], Observation], *,
                 wall: Callable[[], float] = time.time):
        self._observe = observe
        self._wall = wall

    def collect(self):
        from ..datapath.layout import Reason

        seen = self._observe()
        info = InfoMetricFamily(PREFIX, "The daemon: its role and version.")
        info.add_metric([], {"role": seen.role, "version": __version__})
        yield info

        state = GaugeMetricFamily(f"{PREFIX}_state",
                                  "1 for the state the daemon is in, 0 for the others.",
                                  labels=["state"])
        for name in seen.states:
            state.add_metric([name], 1.0 if name == seen.state else 0.0)
        yield state
        yield GaugeMetricFamily(f"{PREFIX}_state_changed_timestamp_seconds",
                                "Unix time of the last state change (start-up, qualified, ...).",
                                value=seen.state_since)
        yield GaugeMetricFamily(f"{PREFIX}_state_age_seconds",
                                "Seconds since the last state change; in state qualified, "
                                "the qualification's age.",
                                value=max(0.0, self._wall() - seen.state_since))

        if seen.datapath is not None:
            packets = CounterMetricFamily(f"{PREFIX}_datapath_packets",
                                          "Packets the BPF data path gave each verdict, by "
                                          "reason (kind: ok, pass to the stack or the "
                                          "control plane, drop).", labels=["reason", "kind"])
            size = CounterMetricFamily(f"{PREFIX}_datapath_bytes",
                                       "Bytes of those packets, by verdict reason.",
                                       labels=["reason", "kind"])
            kinds = {r.key: r.kind.value for r in Reason}
            for reason, value in seen.datapath.items():
                labels = [reason, kinds.get(reason, "unknown")]
                packets.add_metric(labels, value.get("packets", 0))
                size.add_metric(labels, value.get("bytes", 0))
            yield packets
            yield size

        events = CounterMetricFamily(f"{PREFIX}_slow_path_events",
                                     "What the control plane did with what reached it "
                                     "(datagrams read, bubbles sent, peers trusted, ...).",
                                     labels=["event"])
        drops = CounterMetricFamily(f"{PREFIX}_slow_path_drops",
                                    "What the control plane dropped, by reason.",
                                    labels=["reason"])
        for name, count in sorted(seen.slow_path.items()):
            if name.startswith("drop_"):
                drops.add_metric([name[len("drop_"):]], count)
            else:
                events.add_metric([name], count)
        yield events
        yield drops

        if seen.peer_list_drops is not None:
            family = CounterMetricFamily(f"{PREFIX}_peer_list_drops",
                                         "Packets the peer policy (RFC 4380 §5.2.4, §5.4) "
                                         "neither sent nor delivered, by reason.",
                                         labels=["reason"])
            for reason, count in sorted(seen.peer_list_drops.items()):
                family.add_metric([reason], count)
            yield family

        if seen.peers is not None:
            peers = GaugeMetricFamily(f"{PREFIX}_peers",
                                      "Peers: in the data path's table (trusted, on the fast "
                                      "path), or pending in the control plane (bubbles or "
                                      "echo test under way).", labels=["where"])
            for where, count in seen.peers.items():
                peers.add_metric([where], count)
            yield peers

        if seen.server is not None:
            yield from _server_families(seen.server)


def _server_families(counters: Mapping):
    from ..teredo.server_policy import RATE_LIMITED, SENT_OUTCOMES

    yield CounterMetricFamily(f"{PREFIX}_server_received",
                              "Datagrams the server read on its two addresses.",
                              value=counters.get("received", 0))
    sent = CounterMetricFamily(f"{PREFIX}_server_sent",
                               "What the server sent, by outcome (rs_answered: a Router "
                               "Advertisement, RFC 4380 §5.3).", labels=["outcome"])
    for outcome in SENT_OUTCOMES:
        sent.add_metric([outcome], counters.get(outcome, 0))
    yield sent
    yield CounterMetricFamily(f"{PREFIX}_server_rate_limited",
                              "Datagrams not answered: their source (or the server as a "
                              "whole) was over its rate.", value=counters.get(RATE_LIMITED, 0))
    drops = CounterMetricFamily(f"{PREFIX}_server_drops",
                                "Datagrams the server dropped, by reason (RFC 4380 §5.3.1).",
                                labels=["reason"])
    for reason, count in sorted(counters.get("dropped", {}).items()):
        drops.add_metric([reason], count)
    yield drops


def registry_for(observe: Callable[[], Observation]) -> CollectorRegistry:
    """A registry of our own (not prometheus_client's global one, which a library
    could fill behind our back), with the process' CPU, memory and fds."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(observe))
    ProcessCollector(registry=registry)
    return registry


# -- serving, from the daemon's event loop ------------------------------------------------

class _Connection:
    __slots__ = ("sock", "opened", "request", "response")

    def __init__(self, sock: socket.socket, opened: float):
        self.sock = sock
        self.opened = opened
        self.request = b""
        self.response = b""


class MetricsServer:
    """A listening socket on the event loop that answers GET /metrics."""

    def __init__(self, address: MetricsAddress, registry: CollectorRegistry, *,
                 monotonic: Callable[[], float] = time.monotonic, log=None):
        self.address = address
        self.registry = registry
        self._monotonic = monotonic
        self._log = log
        self._listener: Optional[socket.socket] = None
        self._loop = None
        self._connections: Dict[int, _Connection] = {}
        self.scrapes = 0

    def open(self) -> None:
        """Bind and listen; RuntimeFailure (one line) if the address is taken."""
        family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
        host = self.address.host
        if not host:
            # Every address, IPv4 included, through one dual-stack socket (IPv4
            # only on a kernel without IPv6).
            family, host = (socket.AF_INET6, "::") if socket.has_ipv6 else \
                (socket.AF_INET, "0.0.0.0")
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as err:
            if host != "::":
                raise RuntimeFailure(f"--metrics {self.address}: {err.strerror or err}") from err
            family, host = socket.AF_INET, "0.0.0.0"
            sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # A restart must not wait for the old connections' TIME_WAIT; a port
            # another socket listens on is still refused (EADDRINUSE) on Linux.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and host == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, self.address.port))
            sock.listen(16)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            why = ("in use" if err.errno == errno.EADDRINUSE
                   else err.strerror or str(err))
            raise RuntimeFailure(f"--metrics {self.address}: cannot listen: {why}") from err
        self._listener = sock

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def attach(self, loop) -> None:
        self._loop = loop
        loop.add_reader(self._listener, self._accept)
        loop.every(SWEEP_INTERVAL, self._sweep)

    def close(self) -> None:
        for fd in list(self._connections):
            self._drop(fd)
        if self._listener is not None:
            release(self._loop, self._listener)
            self._listener = None

    # -- connections --

    def _accept(self) -> None:
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ECONNABORTED, EMFILE: nothing to serve now
            sock.setblocking(False)
            if len(self._connections) >= MAX_CONNECTIONS:
                oldest = min(self._connections.values(), key=lambda c: c.opened)
                self._drop(oldest.sock.fileno())
            conn = _Connection(sock, self._monotonic())
            self._connections[sock.fileno()] = conn
            self._loop.add_reader(sock, lambda c=conn: self._read(c))

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn.sock.fileno())
            return
        conn.request += data
        if b"\r\n\r\n" not in conn.request and b"\n\n" not in conn.request:
            if len(conn.request) > MAX_REQUEST:
                self._respond(conn, 431, b"request too long\n")
            return
        self._loop.remove_reader(conn.sock)
        self._respond(conn, *self._answer(conn.request))

    def _answer(self, request: bytes) -> Tuple[int, bytes, str]:
        head = request.split(b"\n", 1)[0].decode("latin-1").split()
        if len(head) < 2:
            return 400, b"bad request\n", "text/plain"
        method, target = head[0], head[1]
        if method not in ("GET", "HEAD"):
            return 405, b"GET /metrics\n", "text/plain"
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/"):
            return 404, b"GET /metrics\n", "text/plain"
        accept = ""
        for line in request.decode("latin-1").split("\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        encoder, content_type = choose_encoder(accept)
        self.scrapes += 1
        try:
            body = encoder(self.registry)
        except Exception as err:  # noqa: BLE001 (a broken read must not stop the daemon)
            if self._log is not None:
                self._log.error("metrics_failed", error=str(err))
            return 500, b"metrics unavailable\n", "text/plain"
        return 200, body if method == "GET" else b"", content_type

    def _respond(self, conn: _Connection, status: int, body: bytes,
                 content_type: str = "text/plain") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error"}[status]
        conn.response = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                         ).encode("ascii") + body
        self._loop.remove_reader(conn.sock)
        self._loop.add_writer(conn.sock, lambda: self._write(conn))

    def _write(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.response)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sent = len(conn.response)  # the scraper went away: nothing more to do
        conn.response = conn.response[sent:]
        if not conn.response:
            self._drop(conn.sock.fileno())

    def _sweep(self) -> None:
        """Close connections that took too long (a stalled or idle client)."""
        limit = self._monotonic() - CONNECTION_TIMEOUT
        for fd, conn in list(self._connections.items()):
            if conn.opened < limit:
                self._drop(fd)

    def _drop(self, fd: int) -> None:
        conn = self._connections.pop(fd, None)
        if conn is None:
            return
        release(self._loop, conn.sock)
