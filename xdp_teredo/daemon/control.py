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

Trust, both ways (SO_PEERCRED; docs/security.md). An abstract socket has no file
and so no permissions: any process of the network namespace can connect to it, and
any process can bind the name first. So each side asks the kernel who the other is:
- The daemon answers by request (ACCESS): `status` to anyone (what `ip addr` shows
  anyway: a monitoring agent need not be root), the rest (`peers`, `stats`,
  `counters`: who this host talks to, and how much) to root and to the daemon's own
  uid, and anything that could ever change state to root only (ROOT).
- The asker believes only a listener whose credentials are root's or its own uid's
  (or a user named in $XDP_TEREDO_DAEMON_USER, for a daemon started unprivileged with
  capabilities). The kernel reports the credentials of the process that called
  listen(), and every role listens during set-up, as root, before it drops to its
  --user: a daemon that became `nobody` still shows uid 0, while a `nobody` that
  bound the name shows 65534. Anything else is Squatted: its answer is never read.
- At start, a taken name is "already running" only when root (or our uid) holds it;
  otherwise the holder is named (uid, pid) as a squatter.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import pwd
import socket
import struct
import time
from typing import Callable, Dict, FrozenSet, Iterable, Mapping, Optional, Tuple

from ..errors import RuntimeFailure
from .loop import release

TUNNEL_PREFIX = "\0xdp-teredo-tunnel-"
SERVER_SOCKET = "\0xdp-teredo-server"
# A request is one short line; a client that sends more is not one of ours.
MAX_REQUEST = 4096
REQUEST_TIMEOUT = 1.0
# Bound on the connections waiting for their request line (a local process
# opening many would otherwise grow our memory).
MAX_PENDING = 16

Handler = Callable[[], object]

# Users (names or uids, comma-separated) whose daemons the CLI believes besides root
# and itself: for a daemon started unprivileged with capabilities (a unit's User=).
TRUST_ENV = "XDP_TEREDO_DAEMON_USER"

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Access(enum.Enum):
    """Who a request is answered to."""

    ANYONE = "anyone"        # any local process of the network namespace
    OWNER = "owner"          # root and the daemon's own uid
    ROOT = "root"            # uid 0 only: whatever could change state


# Requests not named here are OWNER: a new one is private until someone decides.
ACCESS: Dict[str, Access] = {"status": Access.ANYONE}


class NotRunning(RuntimeFailure):
    """Nothing listens on that control socket in this network namespace."""


class Squatted(RuntimeFailure):
    """The name is held by a process that is not root and not one of ours."""


def peer_credentials(sock: socket.socket) -> Tuple[int, int, int]:
    """(pid, uid, gid) of the other end of a connected unix socket (SO_PEERCRED):
    of the asker on the daemon's side; of the process that called listen() on the
    asker's side."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def trusted_uids(extra: Optional[str] = None) -> FrozenSet[int]:
    """Root, ourselves, and the users of $XDP_TEREDO_DAEMON_USER."""
    uids = {0, os.geteuid()}
    for item in (extra if extra is not None else os.environ.get(TRUST_ENV, "")).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            uids.add(int(item) if item.isdigit() else pwd.getpwnam(item).pw_uid)
        except KeyError:
            raise RuntimeFailure(f"${TRUST_ENV}: no such user {item!r}") from None
    return frozenset(uids)


def holder(name: str) -> Optional[Tuple[Optional[int], Optional[int]]]:
    """(pid, uid) of the process holding the abstract `name` in this network
    namespace, by /proc/net/unix and /proc/*/fd (for a name bound but not listening,
    where SO_PEERCRED has nobody to ask); None if no socket has that name, (None,
    None) if the holder is not visible to us."""
    shown = display_name(name)
    inodes = set()
    try:
        with open("/proc/net/unix") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == shown:
                    inodes.add(fields[6])
    except OSError:
        return (None, None)
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in targets for fd in fds):
                return int(pid), os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue  # gone, or not ours to look at
    return (None, None)


def squatted_message(name: str, pid: Optional[int], uid: Optional[int], *,
                     listening: bool = True) -> str:
    who = f"uid {uid}" if uid is not None else "a process we cannot see"
    if pid is not None:
        who += f" (pid {pid})"
    how = "" if listening else ", bound but not listening"
    return (f"{display_name(name)} is held by {who}{how}, not by an xdp-teredo daemon "
            f"(a daemon listens as root): stop that process")


def tunnel_socket(tunnel: str) -> str:
    """The socket of the client or relay whose tunnel device is `tunnel`."""
    return TUNNEL_PREFIX + tunnel


def display_name(name: str) -> str:
    """How `ss -x` shows an abstract name: "@" instead of the leading NUL."""
    return "@" + name.lstrip("\0")


class ControlServer:
    """The listening side, served by an EventLoop (attach)."""

    def __init__(self, name: str, handlers: Dict[str, Handler], *, owner: str,
                 hint: str = "stop it first", access: Optional[Mapping[str, Access]] = None):
        self.name = name
        self.access = {**ACCESS, **(access or {})}
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
                raise self._taken() from err
            raise RuntimeFailure(f"cannot open the control socket {display_name(self.name)}: "
                                 f"{err.strerror or err}") from err
        self._listener = sock
        return self

    def _taken(self) -> RuntimeFailure:
        """Why the name is taken: one of ours (already running) or a squatter."""
        pid = uid = None
        listening = True
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.settimeout(REQUEST_TIMEOUT)
        try:
            probe.connect(self.name)
            pid, uid, _ = peer_credentials(probe)
        except OSError:
            listening = False
            pid, uid = holder(self.name) or (None, None)
        finally:
            probe.close()
        if listening and uid in trusted_uids():
            return RuntimeFailure(
                f"{self.owner} is already running in this network namespace "
                f"(pid {pid}, {display_name(self.name)} is taken): {self.hint}")
        return Squatted(squatted_message(self.name, pid, uid, listening=listening))

    def allowed(self, request: str, uid: int) -> bool:
        """Is `request` answered to a process of `uid`? (ACCESS, above)"""
        level = self.access.get(request, Access.OWNER)
        if uid == 0 or level is Access.ANYONE:
            return True
        return level is Access.OWNER and uid == os.geteuid()

    def attach(self, loop) -> None:
        """Serve from `loop` (daemon/loop.py): accepts, requests and their timeouts."""
        self._loop = loop
        self._clock = loop.clock.monotonic
        loop.add_reader(self._listener, self._accept)
        loop.deadline(self.next_deadline, lambda now: self.expire())

    def expire(self) -> None:
        """Drop connections that did not send their request in time."""
        now = self._clock()
        for conn, (deadline, *_) in list(self._pending.items()):
            if now >= deadline:
                self.refused += 1
                self._forget(conn)

    def next_deadline(self) -> Optional[float]:
        return min((d for d, *_ in self._pending.values()), default=None)

    def close(self) -> None:
        for conn in list(self._pending):
            self._forget(conn)
        if self._listener is not None:
            release(self._loop, self._listener)
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
            try:
                uid = peer_credentials(conn)[1]
            except OSError:
                uid = -1  # unknown: answered like any other user
            self._pending[conn] = [self._clock() + REQUEST_TIMEOUT, b"", uid]
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
        self._answer(conn, line, entry[2])
        self._forget(conn)

    def _answer(self, conn: socket.socket, line: bytes, uid: int = 0) -> None:
        try:
            request = json.loads(line).get("request")
        except (ValueError, AttributeError):
            request = None
        handler = self.handlers.get(request) if isinstance(request, str) else None
        if handler is None:
            reply = {"error": f"unknown request {request!r}; known: "
                              f"{', '.join(sorted(self.handlers))}"}
        elif not self.allowed(request, uid):
            self.refused += 1
            whom = ("root" if self.access.get(request) is Access.ROOT
                    else f"root and uid {os.geteuid()}")
            reply = {"error": f"permission denied: {request} is answered to {whom} only "
                              f"(you are uid {uid}; docs/security.md)"}
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
        release(self._loop, conn)


def query(name: str, request: str, *, timeout: float = 3.0, what: str = "daemon",
          trust: Optional[Iterable[int]] = None):
    """Ask the daemon listening on `name` in this network namespace.

    NotRunning when nothing listens there; Squatted when the listener is not root,
    not us and not a user of `trust` (default: trusted_uids()), before anything is
    sent to it or read from it; RuntimeFailure when it answers with an error or
    cannot be read. `what` names the daemon in those messages.
    """
    trusted = frozenset(trust) if trust is not None else trusted_uids()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    chunks = []
    try:
        try:
            sock.connect(name)
        except OSError as err:
            if err.errno == errno.ECONNREFUSED:
                found = holder(name)
                if found is not None and found[1] not in trusted:
                    raise Squatted(squatted_message(name, *found, listening=False)) from err
            raise
        pid, uid, _ = peer_credentials(sock)
        if uid not in trusted:
            raise Squatted(squatted_message(name, pid, uid))
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
