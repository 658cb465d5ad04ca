"""The running client's control socket: how `status`, `peers` and `stats` reach it.

Rendezvous: the abstract unix socket "@xdp-teredo-client-<tunnel>". An abstract
socket has no file, so nothing is left behind by a killed client, and it belongs
to a network namespace, which is exactly the scope of a client: `ip netns exec NS
xdp-teredo status` finds the client of NS even though `ip netns exec` gives each
command its own /sys (a pinned map or a file under /run would not be shared, see
docs/datapath.md). Binding the name is also the lock that keeps a second client
with the same tunnel name from starting in the same namespace.

Protocol, one exchange per connection: the asker sends one JSON line
{"request": NAME}; the client answers one JSON object (the handler's result, or
{"error": "..."}) and closes. Connections are served from the client's event loop,
never blocking it: a connection that has not sent its request within
REQUEST_TIMEOUT seconds is dropped.

Anyone in the network namespace may ask (abstract sockets have no permissions); the
answers are what `ip addr` and `ss` show anyway, and nothing can be changed here.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import time
from typing import Callable, Dict, Optional

from xdp_teredo.config import DEFAULT_TUNNEL
from xdp_teredo.errors import RuntimeFailure

SOCKET_PREFIX = "\0xdp-teredo-client-"
# A request is one short line; a client that sends more is not one of ours.
MAX_REQUEST = 4096
REQUEST_TIMEOUT = 1.0
# Bound on the connections waiting for their request line (a local process
# opening many would otherwise grow our memory).
MAX_PENDING = 16

Handler = Callable[[], object]


class NotRunning(RuntimeFailure):
    """No client listens on the control socket of that tunnel in this namespace."""


def socket_name(tunnel: str = DEFAULT_TUNNEL) -> str:
    """The abstract socket name of the client whose tunnel is `tunnel`."""
    return SOCKET_PREFIX + tunnel


def display_name(name: str) -> str:
    """How `ss -x` shows an abstract name: "@" instead of the leading NUL."""
    return "@" + name.lstrip("\0")


class ControlServer:
    """The listening side, driven by the owner's selector.

    handlers: request name -> zero-argument callable returning a JSON-able object.
    register(selector) adds the listener; the owner calls handle(key) for every
    ready key whose data is this server (`owns(key)`), and expire() now and then.
    """

    def __init__(self, tunnel: str, handlers: Dict[str, Handler], *, clock=time.monotonic):
        self.name = socket_name(tunnel)
        self.tunnel = tunnel
        self.handlers = dict(handlers)
        self.served = 0
        self.refused = 0
        self._clock = clock
        self._listener: Optional[socket.socket] = None
        self._selector: Optional[selectors.BaseSelector] = None
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
                    f"a Teredo client with tunnel {self.tunnel} is already running in this "
                    f"network namespace ({display_name(self.name)} is taken): stop it, or "
                    "use --tunnel NAME") from err
            raise RuntimeFailure(f"cannot open the control socket {display_name(self.name)}: "
                                 f"{err.strerror or err}") from err
        self._listener = sock
        return self

    def register(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ, self)

    def owns(self, key: selectors.SelectorKey) -> bool:
        return key.data is self

    def handle(self, key: selectors.SelectorKey) -> None:
        if key.fileobj is self._listener:
            self._accept()
        else:
            self._read(key.fileobj)

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
            if self._selector is not None:
                try:
                    self._selector.unregister(self._listener)
                except (KeyError, ValueError):
                    pass
            self._listener.close()
            self._listener = None

    # -- internals --

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._pending) >= MAX_PENDING:
                self.refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            self._pending[conn] = [self._clock() + REQUEST_TIMEOUT, b""]
            self._selector.register(conn, selectors.EVENT_READ, self)

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
            except Exception as err:  # a failing handler must not take the client down
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
        if self._selector is not None:
            try:
                self._selector.unregister(conn)
            except (KeyError, ValueError):
                pass
        conn.close()


def query(request: str, tunnel: str = DEFAULT_TUNNEL, *, timeout: float = 3.0):
    """Ask the client of this network namespace whose tunnel is `tunnel`.

    RuntimeFailure when no such client runs, or when it answers with an error.
    """
    name = socket_name(tunnel)
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
            raise NotRunning(
                f"no xdp-teredo client with tunnel {tunnel} is running in this network "
                f"namespace ({display_name(name)} is not listening)") from err
        raise RuntimeFailure(f"cannot ask the client ({display_name(name)}): "
                             f"{err.strerror or err}") from err
    finally:
        sock.close()
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError as err:
        raise RuntimeFailure(f"unreadable answer from the client: {err}") from err
    if isinstance(reply, dict) and set(reply) == {"error"}:
        raise RuntimeFailure(f"the client says: {reply['error']}")
    return reply


def running(tunnel: str = DEFAULT_TUNNEL) -> Optional[dict]:
    """The status of the client of `tunnel` in this namespace, or None if none runs."""
    try:
        return query("status", tunnel)
    except NotRunning:
        return None
