"""systemd's readiness protocol (sd_notify(3)), the few lines of it we need.

The protocol is one datagram per notification to the unix socket named by
$NOTIFY_SOCKET (a path, or an abstract name when it starts with "@"), holding
newline-separated KEY=VALUE assignments. Without $NOTIFY_SOCKET (not under
systemd, or Type= is not notify) nothing is sent and nothing is opened. We write
it ourselves rather than depend on python-systemd/sdnotify: it is a sendto().

What the skeleton (base.py) sends, for every role:
- READY=1 once the role serves (after its `serving()`; the client has then started
  qualifying, which is not the same as qualified: docs/operations.md),
- STATUS=<one line> whenever the role's `status_line()` changes,
- WATCHDOG=1 from the event loop every half of $WATCHDOG_USEC (when systemd set it
  for this process, $WATCHDOG_PID), so a loop that hangs gets the unit restarted,
- STOPPING=1 when the teardown begins.

The variables are removed from our environment once read (sd_notify's
unset_environment): the hook script and other children must not speak for us.
"""

from __future__ import annotations

import os
import socket
from typing import MutableMapping, Optional

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(name: str) -> str:
    # "@name" is the abstract namespace: a leading NUL byte on the wire.
    return "\0" + name[1:] if name.startswith("@") else name


class Notifier:
    """Send notifications to the service manager; every method is a no-op when
    there is none (`enabled` False)."""

    def __init__(self, socket_name: Optional[str] = None,
                 watchdog_usec: Optional[int] = None):
        self.socket_name = socket_name or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self.sent = 0
        self.failed = 0
        self.last_error: Optional[str] = None
        self._status: Optional[str] = None
        self._sock: Optional[socket.socket] = None
        if self.socket_name is not None:
            # Opened now, while set-up still runs as root; sendto() needs no privilege
            # on an abstract socket, and only write permission on a path.
            # Non-blocking: a manager that does not read (its queue is full) must not
            # stop the event loop; that notification is lost, the next one may go.
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                       | socket.SOCK_NONBLOCK)
            # Connected now, as root: a role that drops privileges keeps its right to
            # send (the permission is checked here). If the socket is not there yet,
            # each send tries the name again.
            self._connected = False
            try:
                self._sock.connect(_address(self.socket_name))
                self._connected = True
            except OSError as err:
                self.last_error = str(err)

    @classmethod
    def from_environ(cls, environ: Optional[MutableMapping[str, str]] = None, *,
                     unset: bool = True) -> "Notifier":
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET") or None
        usec = None
        pid = env.get("WATCHDOG_PID")
        # WATCHDOG_PID: the watchdog is for that process only (a child that inherited
        # the variables is not the one systemd watches).
        if pid is None or pid == str(os.getpid()):
            try:
                usec = int(env.get("WATCHDOG_USEC", ""))
            except ValueError:
                usec = None
        if unset:
            for key in _VARIABLES:
                env.pop(key, None)
        if name is not None and not (name.startswith("/") or name.startswith("@")):
            name = None  # sd_notify(3) accepts nothing else (vsock is not for us)
        return cls(name, usec)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval(self) -> Optional[float]:
        """Seconds between two WATCHDOG=1: half the timeout, as sd_watchdog_enabled(3)
        advises; None when systemd watches nothing (or we cannot tell it)."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2e6

    def send(self, *assignments: str) -> bool:
        """One datagram with these KEY=VALUE lines; False if it could not go (which
        never stops the daemon: the manager may be restarting)."""
        if self._sock is None:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            if self._connected:
                self._sock.send(message)
            else:
                self._sock.sendto(message, _address(self.socket_name))
        except OSError as err:
            self.failed += 1
            self.last_error = str(err)
            return False
        self.sent += 1
        return True

    def ready(self, status: Optional[str] = None) -> bool:
        if status is not None:
            self._status = status
        return self.send("READY=1", *([f"STATUS={status}"] if status is not None else []))

    def status(self, line: str) -> bool:
        """STATUS=line, only when it changed since the last one sent."""
        if line == self._status:
            return False
        self._status = line
        return self.send(f"STATUS={line}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        self._status = status
        return self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
