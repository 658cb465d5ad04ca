"""The user's hook script, run on every state change with Miredo's environment.

Miredo's privileged process (src/privproc.c) runs /etc/miredo/client-hook with:

    STATE          up | down | destroy
    ADDRESS        the Teredo address          (only when STATE=up)
    LLADDRESS      the tunnel's link-local     (only when STATE=up)
    MTU            the tunnel MTU              (only when STATE=up)
    IFACE, IFINDEX the tunnel's name and index
    OLD_STATE      the previous run's STATE (down before the first run)
    OLD_ADDRESS, OLD_LLADDRESS, OLD_MTU        the previous run's values, if it was up

and at exit one last "down" then "destroy", without updating the OLD_ values in
between. We do the same, so Debian's client-hook (which adds ADDRESS/32 and a default
route with metric 1029) and users' own hooks keep working unchanged.

Differences from Miredo, deliberate: the script's output goes to our log, one
`hook_output` event per line, rather than to stderr; a script that runs longer than
`timeout` seconds is killed (with its process group), so a stuck hook cannot stall
the client forever; a failure (non-zero exit, timeout, cannot execute) is logged as
`hook_failed` and never stops the client. Runs are synchronous: state changes are
rare, and the data path runs in the kernel meanwhile.

The script runs with our privileges: after privileges.drop_privileges() that is the
unprivileged user with CAP_NET_ADMIN as an ambient capability, which is what `ip`
needs in Debian's hook.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import signal
import subprocess
import tempfile
import time
from typing import Dict, Mapping, Optional, Union

from xdp_teredo import log as xlog
from xdp_teredo.errors import UsageError

IPv6Like = Union[ipaddress.IPv6Address, str]

STATE_UP = "up"
STATE_DOWN = "down"
STATE_DESTROY = "destroy"

# Long enough for `ip` commands and a DNS update; short enough that a hung script
# does not keep the client from its next refresh (RFC 4380 §5.2.7: 30 s).
DEFAULT_TIMEOUT = 10.0

# Every variable the hook protocol defines: cleared from the inherited environment
# so that a value from our own environment never leaks into a run where it is unset.
HOOK_VARIABLES = ("STATE", "ADDRESS", "LLADDRESS", "MTU", "IFACE", "IFINDEX",
                  "OLD_STATE", "OLD_ADDRESS", "OLD_LLADDRESS", "OLD_MTU")


@dataclasses.dataclass(frozen=True)
class HookResult:
    """What one run did. returncode is None when the script timed out or did not run."""

    state: str
    returncode: Optional[int]
    output: str = ""
    timed_out: bool = False
    error: str = ""
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclasses.dataclass(frozen=True)
class TunnelSettings:
    """One run's values (Miredo's struct miredo_tunnel_settings plus the state)."""

    state: str
    address: Optional[ipaddress.IPv6Address] = None
    link_local: Optional[ipaddress.IPv6Address] = None
    mtu: Optional[int] = None


class Hook:
    """Runs one hook script for one tunnel, remembering the previous run for OLD_*.

    Hook(None, ...) is a hook that does nothing (no --hook given), so callers need
    no special case. `base_env` is the environment the script inherits (default:
    ours, as Miredo's).
    """

    def __init__(self, path: Optional[str], *, iface: str, ifindex: int,
                 timeout: float = DEFAULT_TIMEOUT,
                 base_env: Optional[Mapping[str, str]] = None, log=None):
        if path is not None and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise UsageError(f"hook {path} is not an executable file")
        self.path = path
        self.iface = iface
        self.ifindex = ifindex
        self.timeout = timeout
        self._base_env = dict(os.environ if base_env is None else base_env)
        self._log = log or xlog.get("xdp_teredo.hook")
        # Miredo's privproc starts with OLD_STATE=down and no other OLD_ value.
        self._previous = TunnelSettings(STATE_DOWN)
        self._destroyed = False

    # -- the state changes --------------------------------------------------------------

    def up(self, address: IPv6Like, link_local: IPv6Like, mtu: int) -> Optional[HookResult]:
        """Qualified, or the address or MTU changed."""
        return self._change(TunnelSettings(STATE_UP, ipaddress.IPv6Address(address),
                                      ipaddress.IPv6Address(link_local), int(mtu)))

    def resume(self, address: IPv6Like, link_local: IPv6Like, mtu: int) -> None:
        """A previous instance ran `up` with these values and left them installed
        (a restart that kept the tunnel): the next run's OLD_* are these. Nothing
        runs now: for the script, nothing changed."""
        self._previous = TunnelSettings(STATE_UP, ipaddress.IPv6Address(address),
                                        ipaddress.IPv6Address(link_local), int(mtu))

    def down(self) -> Optional[HookResult]:
        """Offline: no address."""
        return self._change(TunnelSettings(STATE_DOWN))

    def destroy(self) -> Optional[HookResult]:
        """Exit: Miredo's last two runs, "down" then "destroy", with the OLD_ values
        of the last change before them. Runs once; later calls do nothing."""
        if self._destroyed:
            return None
        self._destroyed = True
        self._run(self.environment(TunnelSettings(STATE_DOWN)), STATE_DOWN)
        return self._run(self.environment(TunnelSettings(STATE_DESTROY)), STATE_DESTROY)

    # -- the environment --------------------------------------------------------------

    def environment(self, settings: TunnelSettings) -> Dict[str, str]:
        """The script's environment for `settings`, given the previous change."""
        env = {k: v for k, v in self._base_env.items() if k not in HOOK_VARIABLES}
        env["STATE"] = settings.state
        if settings.state == STATE_UP:
            env["ADDRESS"] = settings.address.compressed
            env["LLADDRESS"] = settings.link_local.compressed
            env["MTU"] = str(settings.mtu)
        env["IFACE"] = self.iface
        env["IFINDEX"] = str(self.ifindex)
        previous = self._previous
        env["OLD_STATE"] = previous.state
        if previous.state == STATE_UP:
            env["OLD_ADDRESS"] = previous.address.compressed
            env["OLD_LLADDRESS"] = previous.link_local.compressed
            env["OLD_MTU"] = str(previous.mtu)
        return env

    # -- running ------------------------------------------------------------------------

    def _change(self, settings: TunnelSettings) -> Optional[HookResult]:
        result = self._run(self.environment(settings), settings.state)
        # Miredo moves the values to OLD_* after each run, whatever its result.
        self._previous = settings
        return result

    def _run(self, env: Dict[str, str], state: str) -> Optional[HookResult]:
        if self.path is None:
            return None
        started = time.monotonic()
        # Output goes to an unlinked temporary file, not a pipe: we wait for the
        # script to exit (as Miredo's waitpid), not for every process it started in
        # the background to close its stdout.
        with tempfile.TemporaryFile() as output:
            try:
                process = subprocess.Popen(
                    [self.path], env=env, stdin=subprocess.DEVNULL, stdout=output,
                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
            except OSError as err:
                result = HookResult(state, None, error=err.strerror or str(err))
                self._log.warning("hook_failed", hook=self.path, state=state,
                                  error=result.error)
                return result
            timed_out = False
            try:
                process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                # The script's children too: it leads its own session.
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
            output.seek(0)
            text = output.read().decode("utf-8", errors="replace")
        for line in text.splitlines():
            self._log.info("hook_output", hook=self.path, state=state, line=line)
        result = HookResult(state, None if timed_out else process.returncode, output=text,
                            timed_out=timed_out, duration=time.monotonic() - started)
        if timed_out:
            self._log.warning("hook_failed", hook=self.path, state=state,
                              error=f"timed out after {self.timeout:g} s")
        elif result.returncode != 0:
            self._log.warning("hook_failed", hook=self.path, state=state,
                              returncode=result.returncode)
        else:
            self._log.info("hook_ran", hook=self.path, state=state,
                           duration=round(result.duration, 3))
        return result
