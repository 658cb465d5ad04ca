"""The relay's health, published as a route any routing daemon can read (docs/scaling.md).

With `--announce-table N`, a serving relay puts one route into kernel routing table N:

    2001::/32 dev teredo proto 144 metric 1024 table N

added once the data path is attached and the slow path listens (RelayDaemon.serving),
removed first thing at the stop. A routing daemon (BIRD's kernel protocol with
`learn`, FRR's `redistribute table N`, a script) imports that table and announces
2001::/32 into the native network while the route exists. No BGP code of ours.

What a crashed control plane announces: nothing. The route names the tun device,
and the tun lives exactly as long as the relay process holds its fd, so a SIGKILLed
(or OOM-killed, or segfaulted) relay loses the route together with its tun, by the
kernel, with no watchdog. That is deliberate, although the XDP/tc programs stay
attached and keep forwarding the clients they know: without the control plane a
relay takes no new client (nobody bubbles, §5.4.1) and its known clients age out
of nothing, so staying in the anycast would blackhole every new (client, native
host) pair routed to it, with no end. Withdrawn, its native traffic moves to the
other relays, which cost each moved client one bubble exchange; clients that still
send to it are decapsulated by its orphaned data path until they switch.
This holds while the relay's tun is not persistent (today: never); a relay that
keeps its tun across a crash must leave the withdrawal to its supervisor.

The route is replaced, not added, so a leftover of ours (a persistent tun kept by
a restart) never makes the next start fail; `proto` 144 marks it as ours, for
filters (`krt_source = 144` in BIRD, `ip route show proto 144`).
"""

from __future__ import annotations

import errno
import socket

from ..errors import RuntimeFailure, UsageError
from ..teredo import constants

# The route's protocol field (rtm_protocol): ours, so that routing daemons can match
# it and `ip route` can show it. Not in iproute2's rt_protos; 144 is unused there.
ANNOUNCE_PROTO = 144

# Tables a relay must never write its announcement into: unspec, the kernel's
# default, main and local tables (routes there would be forwarding state, not a
# signal).
RESERVED_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}
MAX_TABLE = 2 ** 32 - 1


def check_table(table: int) -> int:
    """The table number, or UsageError (exit 2) before anything starts."""
    if not 0 < table <= MAX_TABLE or table in RESERVED_TABLES:
        name = RESERVED_TABLES.get(table)
        why = f"the kernel's {name!r} table" if name else "out of range"
        raise UsageError(f"--announce-table {table}: {why}; use a table of its own "
                         f"(1-252 or 256-{MAX_TABLE})")
    return table


class Announcement:
    """2001::/32 through the tun in table `table` while the relay serves.

    `ipr`: a pyroute2 IPRoute (or anything with its `route` method). open() makes
    one at set-up, as root, so that publishing needs nothing more later.
    """

    @classmethod
    def open(cls, table: int, oif: int) -> "Announcement":
        from pyroute2 import IPRoute

        check_table(table)
        return cls(IPRoute(), table, oif)

    def close(self) -> None:
        self.ipr.close()

    def __init__(self, ipr, table: int, oif: int):
        self.ipr = ipr
        self.table = check_table(table)
        self.oif = oif
        self.published = False

    def _route(self, command: str) -> None:
        prefix = constants.TEREDO_PREFIX
        self.ipr.route(command, family=socket.AF_INET6, dst=str(prefix.network_address),
                       dst_len=prefix.prefixlen, oif=self.oif, table=self.table,
                       proto=ANNOUNCE_PROTO)

    def publish(self) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self._route("replace")
        except NetlinkError as err:
            raise RuntimeFailure(f"--announce-table {self.table}: cannot add "
                                 f"{constants.TEREDO_PREFIX}: {err}") from err
        self.published = True

    def withdraw(self) -> None:
        """Remove the route; already gone (its tun deleted first) is fine."""
        from pyroute2.netlink.exceptions import NetlinkError

        if not self.published:
            return
        try:
            self._route("del")
        except NetlinkError as err:
            if err.code not in (errno.ESRCH, errno.ENODEV, errno.ENOENT):
                raise RuntimeFailure(f"--announce-table {self.table}: cannot remove "
                                     f"{constants.TEREDO_PREFIX}: {err}") from err
        self.published = False

    def describe(self) -> dict:
        return {"table": self.table, "prefix": str(constants.TEREDO_PREFIX),
                "proto": ANNOUNCE_PROTO, "published": self.published}
