"""The control socket every role serves: how `status`, `peers`, `stats` reach a daemon.

Rendezvous: an abstract unix socket per network namespace, named after what the
daemon owns there: "@xdp-teredo-tunnel-<tunnel>" for a client or a relay (each
owns one tun device; `tunnel_socket`), "@xdp-teredo-server" for a server. An
abstract socket has no file, so nothing is left behind by a killed daemon, and it
belongs to a network namespace, which is exactly a daemon's scope: `ip netns exec
NS xdp-teredo status` finds the daemon of NS even though `ip netns exec` gives each
command its own /sys (a pinned map or a file under /run would not be shared, see
docs/datapath.md). Binding the name is also the lock that keeps a second daemon
of the same name from starting in the same namespace.

Protocol, one exchange per connection: the asker sends one JSON line
{"request": NAME}; the daemon answers one JSON object (the handler's result, or
{"error": "..."}) and closes. Connections are served from the daemon's event loop,
never blocking it: one that has not sent its request within REQUEST_TIMEOUT
seconds is dropped.

Anyone in the network namespace may ask (abstract sockets have no permissions); the
answers are what `ip addr` and `ss` show anyway, and nothing can be changed here.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from typing import Callable, Dict, Optional

from ..errors import RuntimeFailure

TUNNEL_PREFIX = "\0xdp-teredo-tunnel-"
SERVER_SOCKET = "\0xdp-teredo-server"
# A request is one short line; a client that sends more is not one of ours.
MAX_REQUEST = 4096
REQUEST_TIMEOUT = 1.0
# Bound on the connections waiting for their request line (a local process
# opening many would otherwise grow our memory).
MAX_PENDING = 16

Handler = Callable[[], object]


class NotRunning(RuntimeFailure):
    """Nothing listens on that control socket in this network namespace."""


def tunnel_socket(tunnel: str) -> str:
    """The socket of the client or relay whose tunnel device is `tunnel`."""
    return TUNNEL_PREFIX + tunnel


def display_name(name: str) -> str:
    """How `ss -x` shows an abstract name: "@" instead of the leading NUL."""
    return "@" + name.lstrip("\0")


class ControlServer:
    """The listening side, served by an EventLoop (attach)."""

    def __init__(self, name: str, handlers: Dict[str, Handler], *, owner: str,
                 hint: str = "stop it first"):
        self.name = name
        self.owner = owner               # "a Teredo client with tunnel teredo", for errors
        self.hint = hint
        self.handlers = dict(handlers)
        self.served = 0
        self.refused = 0
        self._clock = time.monotonic     # the loop's, once attached
        self._listener: Optional[socket.socket] = None
        self._loop = None
        self._pending: Dict[socket.socket, list] = {}   # conn -> [deadline, bytes]

    def open(self) -> "ControlServer":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.name)
            sock.listen(MAX_PENDING)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            if err.errno == errno.EADDRINUSE:
                raise RuntimeFailure(
                    f"{self.owner} is already running in this network namespace "
                    f"({display_name(self.name)} is taken): {self.hint}") from err
            raise RuntimeFailure(f"cannot open the control socket {display_name(self.name)}: "
                                 f"{err.strerror or err}") from err
        self._listener = sock
        return self

    def attach(self, loop) -> None:
        """Serve from `loop` (daemon/loop.py): accepts, requests and their timeouts."""
        self._loop = loop
        self._clock = loop.clock.monotonic
        loop.add_reader(self._listener, self._accept)
        loop.deadline(self.next_deadline, lambda now: self.expire())

    def expire(self) -> None:
        """Drop connections that did not send their request in time."""
        now = self._clock()
        for conn, (deadline, _) in list(self._pending.items()):
            if now >= deadline:
                self.refused += 1
                self._forget(conn)

    def next_deadline(self) -> Optional[float]:
        return min((d for d, _ in self._pending.values()), default=None)

    def close(self) -> None:
        for conn in list(self._pending):
            self._forget(conn)
        if self._listener is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._listener)
            self._listener.close()
            self._listener = None

    # -- internals --

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # EAGAIN included: nothing more to accept now
                return
            if len(self._pending) >= MAX_PENDING:
                self.refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            self._pending[conn] = [self._clock() + REQUEST_TIMEOUT, b""]
            self._loop.add_reader(conn, lambda c=conn: self._read(c))

    def _read(self, conn: socket.socket) -> None:
        entry = self._pending.get(conn)
        if entry is None:
            return
        try:
            chunk = conn.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        entry[1] += chunk
        if b"\n" not in entry[1] and chunk and len(entry[1]) < MAX_REQUEST:
            return  # the line is not complete yet
        line = entry[1].split(b"\n", 1)[0]
        self._answer(conn, line)
        self._forget(conn)

    def _answer(self, conn: socket.socket, line: bytes) -> None:
        try:
            request = json.loads(line).get("request")
        except (ValueError, AttributeError):
            request = None
        handler = self.handlers.get(request) if isinstance(request, str) else None
        if handler is None:
            reply = {"error": f"unknown request {request!r}; known: "
                              f"{', '.join(sorted(self.handlers))}"}
        else:
            try:
                reply = handler()
            except Exception as err:  # a failing handler must not take the daemon down
                reply = {"error": f"{request} failed: {err}"}
        data = json.dumps(reply).encode() + b"\n"
        try:
            # The answer may be larger than the socket buffer (a big peer table):
            # a short blocking send, bounded, rather than buffering it ourselves.
            conn.setblocking(True)
            conn.settimeout(REQUEST_TIMEOUT)
            conn.sendall(data)
            self.served += 1
        except OSError:
            self.refused += 1  # the asker went away

    def _forget(self, conn: socket.socket) -> None:
        self._pending.pop(conn, None)
        if self._loop is not None:
            self._loop.remove_reader(conn)
        conn.close()


def query(name: str, request: str, *, timeout: float = 3.0, what: str = "daemon"):
    """Ask the daemon listening on `name` in this network namespace.

    NotRunning when nothing listens there; RuntimeFailure when it answers with an
    error or cannot be read. `what` names the daemon in those messages.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    chunks = []
    try:
        sock.connect(name)
        sock.sendall(json.dumps({"request": request}).encode() + b"\n")
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as err:
        if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise NotRunning(f"no {what} is running in this network namespace "
                             f"({display_name(name)} is not listening)") from err
        raise RuntimeFailure(f"cannot ask the {what} ({display_name(name)}): "
                             f"{err.strerror or err}") from err
    finally:
        sock.close()
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError as err:
        raise RuntimeFailure(f"unreadable answer from the {what}: {err}") from err
    if isinstance(reply, dict) and set(reply) == {"error"}:
        raise RuntimeFailure(f"the {what} says: {reply['error']}")
    return reply


def running(name: str, *, what: str = "daemon") -> Optional[dict]:
    """The status of the daemon on `name`, or None if none runs."""
    try:
        return query(name, "status", what=what)
    except NotRunning:
        return None
