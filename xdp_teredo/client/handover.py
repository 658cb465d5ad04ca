"""Qualify first, then hand the peers to the fast path (issue 13: IPv6 in under a
second).

Compiling the BPF programs takes seconds (bcc + LLVM, in a child: datapath/
isolated.py); Miredo has an address in 0.2 s. So a fresh start does not wait for
it: set-up starts the compile and goes on with the tun and the UDP socket, and
the client qualifies and carries its peers on the slow path, as Miredo does (the
PeerList in Python, the inbound guard over plain dicts). When the child answers
(a reader on the event loop), this mixin of ClientDaemon:

  1. attaches the programs, the receive hook chosen per device (datapath/rxhook.py),
     with the config zeroed: everything still goes to the slow path;
  2. configures the guard's maps and copies the flows the slow path recorded, so
     a reply to a conversation started before keeps getting in;
  3. installs every trusted peer of the PeerList into the BPF table (peersync);
  4. writes the config with the current mapping (enabled once qualified).
From then on the fast path carries the trusted peers; `fast_path_ready` says when.

A compile that fails or times out after set-up stops the client the same way as
one that failed during set-up: one line, exit 1, everything removed. A SIGTERM
while it runs: the teardown kills and reaps the child (Compiling.cancel).
Adopting a running data path (crash-only) still compiles during set-up: the
running programs carry the traffic meanwhile, and adoption needs the maps.
"""

from __future__ import annotations

import time
from typing import Optional

from ..errors import RuntimeFailure
from ..teredo import guard


class HandingOver:
    """Mixed into ClientDaemon: the state lives there (prog, att, peers, guard, ...)."""

    compiling = None            # isolated.Compiling while the child compiles
    fast_path_at: Optional[float] = None   # monotonic time the fast path took over

    def start_compile(self) -> None:
        from ..datapath.client import ClientDatapath

        self.compiling = ClientDatapath.compile_started(peer_max=self.plan.peer_max)
        self.teardown.push_always("compiling the data path", self._cancel_compile)
        self.compile_deadline = self.clock.monotonic() + self.compiling.timeout
        self.loop.add_reader(self.compiling, self.on_compiled)
        self.loop.deadline(lambda: self.compile_deadline if self.compiling else None,
                           lambda now: self.on_compiled())

    def _cancel_compile(self) -> None:
        compiling, self.compiling = self.compiling, None
        if compiling is not None:
            self.loop.remove_reader(compiling)
            compiling.cancel()

    def slow_path_guard(self) -> None:
        """The inbound guard over plain dicts until the maps exist (same policy)."""
        self.guard = guard.Guard(self.plan.inbound, now_ns=time.monotonic_ns)

    def on_compiled(self) -> None:
        """The child answered (or the deadline passed: result() then says so)."""
        compiling, self.compiling = self.compiling, None
        if compiling is None:
            return
        self.loop.remove_reader(compiling)
        try:
            prog = compiling.result()
        except RuntimeFailure as err:
            self.log.error("datapath_failed", error=str(err))
            self.fail(str(err))
            return
        self.prog = prog
        self.teardown.push_always("BPF programs", prog.close)
        try:
            self.hand_over()
        except RuntimeFailure as err:
            self.log.error("datapath_failed", error=str(err))
            self.fail(str(err))

    def hand_over(self) -> None:
        """Attach, and give the fast path what the slow path knows (module docstring)."""
        self.own_datapath(self._attach(None))
        att = self.att
        slow = self.guard
        self._guard_and_limits()
        if slow is not None:
            copied = 0
            for table, into in ((slow.flows, att.guard.flows),
                                (slow.fragments, att.guard.fragments)):
                for key, value in list(table.items()):
                    try:
                        into[key] = value
                        copied += 1
                    except (RuntimeFailure, OSError):
                        self.counters["guard_copy_failed"] += 1
        self.sync.table = att.peers
        installed = 0
        for peer in list(self.peers):
            if peer.trusted and peer.mapping is not None:
                self.sync.install(peer.address, peer.mapping[0], peer.mapping[1],
                                  self.trust_flags(peer.address))
                installed += 1
        self.configure_datapath()
        self.fast_path_at = self.clock.monotonic()
        self.log.info("fast_path_ready", seconds=round(self.fast_path_at - self.started, 3),
                      decap=att.ingress, decap_why=self.receive.why, xdp=att.xdp_attached,
                      peers=installed, qualified=self.address is not None)
        self.publish_status()

    @property
    def fast_path(self) -> str:
        """`status`: "compiling" (the slow path carries everything) or "on"."""
        if self.att is not None:
            return "on"
        return "compiling" if self.compiling is not None else "off"
