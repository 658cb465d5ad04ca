"""The skeleton of the three daemons: set-up -> drop privileges -> serve -> teardown.

A role (client/, relay/, server/) subclasses Daemon and writes only what differs:

    class ServerDaemon(Daemon):
        role = "server"
        def setup(self):           # as root; every resource is handed to self.teardown
            self.open_control(SERVER_SOCKET, "a Teredo server")
            ...
        def serving(self):         # once, when the loop starts: "server_started"
        def status(self): ...      # what `status` answers

    run(ServerDaemon(config))      # the command: 0, or RuntimeFailure

What run() guarantees for every role, in this order:
1. SIGINT and SIGTERM (and the role's `extra_signals`) are handled *before* set-up:
   a signal during a long set-up (compiling the BPF programs takes seconds) stops
   it at the next checkpoint and still ends in the teardown, never in a dead
   process with XDP attached.
2. set-up registers each thing it makes with `self.teardown` as soon as it exists;
   if set-up fails half-way, the teardown removes exactly what was made.
3. privileges are dropped (if the role asks) once everything that needs root is done.
4. the event loop serves until a signal or `stop()`; under systemd (notify.py)
   READY=1 is sent once `serving()` returned, STATUS= mirrors `status_line()`, and
   the loop sends WATCHDOG=1 if the unit has WatchdogSec=.
   With `metrics` (--metrics HOST:PORT), the Prometheus listener is opened
   between set-up and the drop, and served from the loop (daemon/metrics.py says why).
5. STOPPING=1; the control socket closes first (nobody is told "running" any
   more), then the teardown runs in reverse, every step tried; what it could not remove is one
   RuntimeFailure (exit 1), as is `self.failed` (a fatal error while serving).
"""

from __future__ import annotations

import datetime
import os
import pwd
import signal
import time
from typing import Callable, Dict, List, Optional, Tuple

from .. import log
from ..errors import RuntimeFailure
from ..teredo.clock import Clock, SystemClock
from .control import ControlServer, display_name
from .counters import Counters
from .loop import EventLoop, Stopped
from .notify import Notifier

# How often STATUS= is compared with the role's state, besides the role's own
# publish_status() at each change (a peer count, a retry's countdown).
STATUS_REFRESH = 5.0


class Teardown:
    """What set-up made, undone in reverse. Each step says what it does when the
    daemon stops for good (`remove`) and when it leaves the fast path running for
    the next instance (`keep`: None skips the step then)."""

    def __init__(self, logger):
        self._steps: List[Tuple[str, Callable[[], None], Optional[Callable[[], None]]]] = []
        self._log = logger
        self.done = False

    def push(self, what: str, remove: Callable[[], None],
             keep: Optional[Callable[[], None]] = None) -> None:
        self._steps.append((what, remove, keep))

    def push_always(self, what: str, fn: Callable[[], None]) -> None:
        """A step that runs either way (closing our own file descriptors)."""
        self.push(what, fn, fn)

    def run(self, *, keep: bool = False) -> List[str]:
        """Every step, last pushed first; the failures, each also logged. Idempotent."""
        failures: List[str] = []
        self.done = True
        while self._steps:
            what, remove, kept = self._steps.pop()
            fn = kept if keep else remove
            if fn is None:
                continue
            try:
                fn()
            except Exception as err:  # keep going: whatever can be removed must be
                failures.append(f"{what}: {err}")
                self._log.error("cleanup_failed", step=what, error=str(err))
        return failures


def iso(wall: float) -> str:
    """A wall-clock time as `status` shows it."""
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).isoformat(
        timespec="seconds")


class Daemon:
    role = "daemon"
    # Signals that stop the daemon; a role may add its own (the client: SIGHUP).
    extra_signals: Tuple[signal.Signals, ...] = ()

    def __init__(self, *, clock: Optional[Clock] = None,
                 notifier: Optional[Notifier] = None):
        self.clock = clock or SystemClock()
        # The service manager, if any ($NOTIFY_SOCKET): read once, here, as root.
        self.notifier = notifier if notifier is not None else Notifier.from_environ()
        self.log = log.get(f"xdp_teredo.{self.role}")
        self.loop = EventLoop(self.clock)
        self.counters = Counters()
        self.teardown = Teardown(self.log)
        self.control: Optional[ControlServer] = None
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.started_wall = time.time()
        self.started = self.clock.monotonic()
        # A fatal error met while serving (the tunnel deleted under us): exit 1.
        self.failed: Optional[str] = None
        # Leave the fast path running at the teardown (crash-only: a crash while
        # serving, the client's --restart-safe SIGHUP): the next start adopts it.
        self.keep_datapath = False
        self.serving_now = False
        self.metrics = None         # daemon/metrics.MetricsServer, with --metrics
        self.state_wall = self.started_wall   # when the skeleton's state last changed

    # -- what a role writes --

    def setup(self) -> None:
        raise NotImplementedError

    def serving(self) -> None:
        """Called once, when the loop is about to start (log "<role>_started")."""

    def handlers(self) -> Dict[str, Callable[[], object]]:
        """The control socket's requests."""
        return {"status": self.status}

    def status(self) -> dict:
        raise NotImplementedError

    def observe(self):
        """What --metrics shows (daemon/metrics.py, Observation): read at each scrape,
        on the loop. A role adds its state, its data path, its peers."""
        from .metrics import Observation

        serving = "serving" if self.serving_now else "starting"
        return Observation(role=self.role, state=serving, states=("starting", "serving"),
                           state_since=self.state_wall, slow_path=self.counters)

    def status_line(self) -> str:
        """One line for systemd's STATUS= (`systemctl status`): the state and the
        address, e.g. "qualified: 2001:0:... via server 192.0.2.1 on eth0". Read at
        every publish_status() and every STATUS_REFRESH seconds: a role whose
        status() is costly (it walks BPF maps) writes a cheaper one."""
        from .render import status_summary

        return status_summary(self.status())

    def privileged_user(self) -> Optional[str]:
        """The user to become after set-up, keeping CAP_NET_ADMIN; None: stay."""
        return None

    def on_signal(self, signum: int) -> None:
        """A stopping signal arrived (no logging here: it may interrupt a log call)."""
        self.stop(signal.Signals(signum).name)

    def stopped_fields(self) -> dict:
        """Extra fields of the "<role>_stopped" log line."""
        return {}

    def crashed(self) -> None:
        """An exception is about to end the daemon, before the teardown runs."""

    # -- what the skeleton does --

    def open_control(self, name: str, owner: str, hint: str = "stop it first", *,
                     required: bool = True) -> None:
        """The control socket. For a tunnel role, set-up's first step: it is also the
        lock against a second daemon with the same tunnel in this network namespace.
        Not `required` (the server, whose lock is its UDP port): a taken name is a
        warning, and the daemon runs without it."""
        control = ControlServer(name, self.handlers(), owner=owner, hint=hint)
        try:
            control.open()
        except RuntimeFailure as err:
            if required:
                raise
            self.log.warning("control_socket_unavailable", socket=display_name(name),
                             error=str(err))
            return
        self.control = control
        control.attach(self.loop)

    @property
    def control_socket(self) -> Optional[str]:
        return display_name(self.control.name) if self.control is not None else None

    def checkpoint(self) -> None:
        self.loop.checkpoint()

    def open_metrics(self, address) -> None:
        """The Prometheus listener (as root: any port), served from the loop; closed
        by the teardown. RuntimeFailure (exit 1) if the address is taken."""
        from . import metrics

        server = metrics.MetricsServer(address, metrics.registry_for(self.observe),
                                       monotonic=self.clock.monotonic, log=self.log)
        server.open()
        self.teardown.push_always(f"metrics listener {address}", server.close)
        server.attach(self.loop)
        self.metrics = server
        self.log.info("metrics_listening", address=str(address), port=server.port)

    def drop_privileges(self) -> None:
        from . import privileges

        user = self.privileged_user()
        if user is None or user == "root" or os.geteuid() != 0:
            return
        dropped = privileges.drop_privileges(user)
        self.user = dropped.user
        self.log.info("privileges_dropped", user=dropped.user, kept=list(dropped.kept_names))

    def serve(self) -> None:
        self.serving_now = True
        self.state_wall = time.time()
        self.serving()
        self._notify_serving()
        self.loop.run()

    def _notify_serving(self) -> None:
        """READY=1 with the first STATUS=; the watchdog and the status refresh on the
        loop. Nothing at all without a service manager."""
        notifier = self.notifier
        if not notifier.enabled:
            return
        notifier.ready(self._status_line())
        interval = notifier.watchdog_interval
        if interval is not None:
            # From the loop itself: a loop stuck in a callback stops the pings, and
            # systemd restarts the unit (Restart=on-failure takes a watchdog timeout).
            self.loop.every(interval, notifier.watchdog, first=0.0)
        self.loop.every(STATUS_REFRESH, self.publish_status)

    def _status_line(self) -> str:
        try:
            return self.status_line()
        except Exception as err:  # noqa: BLE001 (a status must never stop the daemon)
            return f"status unavailable: {err}"

    def publish_status(self) -> None:
        """STATUS= if the role's status line changed (a role calls it on a change)."""
        if self.notifier.enabled and self.serving_now:
            self.notifier.status(self._status_line())

    def stop(self, reason: Optional[str] = None) -> None:
        """Ask serve() to return; safe from a signal handler."""
        self.loop.stop(reason)

    def fail(self, message: str) -> None:
        """A fatal error while serving: stop, remove everything, exit 1."""
        self.failed = message
        self.stop("failed")

    def shutdown(self) -> List[str]:
        """The control socket, then everything set-up made, in reverse. Idempotent."""
        if self.teardown.done:
            return []
        failures: List[str] = []
        if self.control is not None:
            try:
                self.control.close()
            except OSError as err:
                failures.append(f"control socket: {err}")
        failures += self.teardown.run(keep=self.keep_datapath)
        self.loop.close()
        return failures

    def uptime(self) -> float:
        return round(self.clock.monotonic() - self.started, 3)


def run(daemon: Daemon, *, metrics=None) -> int:
    """Set up, drop privileges, serve until a signal, remove everything.

    `metrics`: a daemon.metrics.MetricsAddress to serve Prometheus metrics on.

    0 after a clean stop (a signal during set-up included); RuntimeFailure when the
    teardown left something behind or the daemon failed while serving. Set-up
    errors propagate after the teardown undid what set-up made.
    """
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, *daemon.extra_signals):
        previous[sig] = signal.signal(sig, lambda signum, _frame: daemon.on_signal(signum))
    old_wakeup = signal.set_wakeup_fd(daemon.loop.wakeup_fd)
    failures: List[str] = []
    stopping = "stopping"
    try:
        try:
            daemon.setup()
            daemon.checkpoint()
            if metrics is not None:
                # After set-up (a second daemon is told by set-up's own lock, the
                # control socket), before the drop (no thread yet, any port).
                daemon.open_metrics(metrics)
            daemon.drop_privileges()
            daemon.checkpoint()
            daemon.serve()
        except Stopped:
            pass
        except Exception as err:
            stopping = f"stopping: {err}"
            daemon.crashed()
            raise
    finally:
        signal.set_wakeup_fd(old_wakeup)
        if daemon.failed:
            stopping = f"stopping: {daemon.failed}"
        daemon.notifier.stopping(stopping)
        try:
            fields = daemon.stopped_fields()
        except Exception as err:  # noqa: BLE001 (a half-made daemon: say so, go on)
            fields = {"fields_unavailable": str(err)}
        failures = daemon.shutdown()
        daemon.notifier.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    daemon.log.info(f"{daemon.role}_stopped", signal=daemon.loop.stopped_by,
                    failures=failures or None, **fields)
    if daemon.failed:
        raise RuntimeFailure(daemon.failed)
    if failures:
        raise RuntimeFailure("clean-up left things behind: " + "; ".join(failures))
    return 0
