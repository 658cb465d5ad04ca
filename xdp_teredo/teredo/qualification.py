"""Client qualification and maintenance (RFC 4380 §5.2.1, §5.2.7; Miredo's variant).

A pure state machine: it is fed events with the current time and returns the
actions the orchestrator must perform (send a Router Solicitation, arm the one
timer, install or withdraw the address, flush the peer list). No I/O, no clock
reads, no threads: the opposite of Miredo's maintenance loop, same behaviour.

    OFFLINE --start/restart--> QUALIFYING --valid RA--> QUALIFIED
       ^                          |   ^                     |
       +---- every server failed -+   +-- server failed, ---+
       +---------------- every server failed ---------------+  (next one in list)

Procedure (teredo-facts.md, "Qualification"):
- QUALIFYING: send an RS to the current server with a fresh random 8-byte nonce
  (authentication header); wait QUALIFICATION_TIMEOUT (4 s) for an RA; try
  QUALIFICATION_TRIES (3) times. Like Miredo and RFC 5991 practice we only send
  the restricted form of the RS (no cone probe; no secondary-address probe for
  symmetric NATs).
- An RA is accepted only if an RS is outstanding, it comes from the server (UDP
  source = server:3544, decided by the caller), it echoes the current nonce, it
  carries an origin indication, and its prefix is 2001:0000:<server IPv4>::/64.
  Anything else is ignored and counted in `ignored[reason]`.
- QUALIFIED: every REFRESH_INTERVAL (30 s) a maintenance RS, validated the same
  way, keeps the NAT binding open (§5.2.7; like Miredo, no interval
  determination). A different mapping invalidates the address: AddressChanged
  (old, new) and FlushPeers.
- A server that does not answer its tries is lost (ServerLost). We then move to
  the next server of the list at once; when every server of the list failed in a
  row, we go OFFLINE and try again (with the next server, wrapping around) after a
  delay: RESTART_DELAY (Miredo's 100 s) doubled after each fruitless round up to
  RESTART_DELAY_MAX, back to RESTART_DELAY after a success. Labs and tests pass
  shorter delays.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from xdp_teredo import log
from xdp_teredo.teredo import security
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.constants import (
    AUTH_NONCE_LEN,
    QUALIFICATION_TIMEOUT,
    QUALIFICATION_TRIES,
    RA_MTU_MAX,
    REFRESH_INTERVAL,
    RESTART_DELAY,
    RESTART_DELAY_MAX,
    TEREDO_MTU,
    TEREDO_PREFIX_HI32,
)

_FLAG_RANDOM_BITS = 12  # RFC 5991 §4: random bits in the flags of a new address

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address
# (server, mapped IPv4, mapped port) -> our Teredo address.
AddressFactory = Callable[[IPv4Address, IPv4Address, int], IPv6Address]

_log = log.get("xdp_teredo.qualification")


class State(enum.Enum):
    OFFLINE = "offline"        # not started, stopped, or waiting to restart
    QUALIFYING = "qualifying"  # RS sent to a server, no valid RA yet
    QUALIFIED = "qualified"    # we have an address; maintenance RS every refresh


# Every allowed `old -> new`; anything else is a bug and raises IllegalTransition.
TRANSITIONS = {
    State.OFFLINE: frozenset({State.QUALIFYING}),
    State.QUALIFYING: frozenset({State.QUALIFIED, State.OFFLINE}),
    # QUALIFIED -> QUALIFYING: the server stopped answering, another is tried.
    State.QUALIFIED: frozenset({State.QUALIFYING, State.OFFLINE}),
}


class IllegalTransition(RuntimeError):
    """The machine tried a transition TRANSITIONS does not allow (a bug)."""


# --- what qualification learns -------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    """Our NAT mapping as the server saw it, and what follows from it."""

    server: IPv4Address
    mapped_ip: IPv4Address
    mapped_port: int
    address: IPv6Address  # our Teredo address (§4)
    mtu: int              # from the RA's MTU option, else TEREDO_MTU

    def same_binding(self, server: IPv4Address, ip: IPv4Address, port: int) -> bool:
        return (self.server, self.mapped_ip, self.mapped_port) == (server, ip, port)


# --- actions for the orchestrator -----------------------------------------------


@dataclass(frozen=True)
class SendRouterSolicitation:
    """Send an RS to server:3544 with an auth header carrying `nonce` (§5.2.1).

    `cone` is always False: only the restricted link-local form is sent.
    """

    server: IPv4Address
    nonce: bytes
    cone: bool = False


@dataclass(frozen=True)
class SetTimer:
    """(Re)arm the machine's single timer: call on_timer(at). None disarms it."""

    at: Optional[float]


@dataclass(frozen=True)
class StateChanged:
    old: State
    new: State


@dataclass(frozen=True)
class AddressChanged:
    """Withdraw `old` (if any) and install `new` (if any); run the hook."""

    old: Optional[Mapping]
    new: Optional[Mapping]


@dataclass(frozen=True)
class MtuChanged:
    """Same address, new MTU from the RA."""

    old: int
    new: int
    mapping: Mapping


@dataclass(frozen=True)
class FlushPeers:
    """The address changed: every peer's trust was built on the old one (§5.2.7)."""


@dataclass(frozen=True)
class ServerLost:
    """`server` did not answer QUALIFICATION_TRIES solicitations.

    `qualified` is True when we had an address through it (Miredo's "Lost Teredo
    connectivity"), False during qualification ("No reply from Teredo server").
    """

    server: IPv4Address
    qualified: bool


@dataclass(frozen=True)
class Offline:
    """Every server failed in a row; the next attempt starts at `retry_at`."""

    retry_at: float
    next_server: IPv4Address


Action = Union[SendRouterSolicitation, SetTimer, StateChanged, AddressChanged,
               MtuChanged, FlushPeers, ServerLost, Offline]


# --- the machine ----------------------------------------------------------------


class Qualification:
    """The client's qualification/maintenance state machine.

    Events: start(now), stop(now), on_timer(now), on_router_advertisement(now, ...).
    Each returns a list of actions, in the order they must be performed.
    """

    def __init__(
        self,
        servers: Sequence[Union[IPv4Address, str]],
        *,
        rng: Optional[security.Rng] = None,
        address_factory: Optional[AddressFactory] = None,
        timeout: float = QUALIFICATION_TIMEOUT,
        tries: int = QUALIFICATION_TRIES,
        refresh_interval: float = REFRESH_INTERVAL,
        restart_delay: float = RESTART_DELAY,
        restart_delay_max: float = RESTART_DELAY_MAX,
    ):
        self.servers = tuple(IPv4Address(s) for s in servers)
        if not self.servers:
            raise ValueError("at least one Teredo server is needed")
        if tries < 1 or timeout <= 0 or refresh_interval <= 0 or restart_delay < 0:
            raise ValueError("tries >= 1, timeout > 0, refresh > 0, restart delay >= 0")
        self._rng = rng
        self._address_factory = address_factory or self._default_address
        self.timeout = float(timeout)
        self.tries = int(tries)
        self.refresh_interval = float(refresh_interval)
        self.restart_delay = float(restart_delay)
        self.restart_delay_max = max(float(restart_delay_max), self.restart_delay)

        self.state = State.OFFLINE
        self.since: Optional[float] = None   # time of the last state change
        self.mapping: Optional[Mapping] = None
        self.ignored: Counter = Counter()    # RAs ignored, by reason
        self.timer_at: Optional[float] = None

        self._index = 0                # current server in self.servers
        self._failed_in_row = 0        # servers that failed since the last success
        self._nonce: Optional[bytes] = None  # outstanding RS nonce, None when idle
        self._sent = 0                 # RS sent in the current exchange
        self._delay = self.restart_delay     # next OFFLINE wait

    # -- read-only views --

    @property
    def server(self) -> IPv4Address:
        """The server we are qualifying with (or will try next)."""
        return self.servers[self._index]

    @property
    def mtu(self) -> int:
        return self.mapping.mtu if self.mapping else TEREDO_MTU

    @property
    def awaiting_advertisement(self) -> bool:
        return self._nonce is not None

    # -- events --

    def start(self, now: float) -> list:
        """Begin qualifying with the current server; no-op unless OFFLINE."""
        if self.state is not State.OFFLINE:
            return []
        self._failed_in_row = 0
        actions = self._transition(State.QUALIFYING, now)
        return actions + self._solicit(now, first=True)

    def resume(self, now: float, mapping: Mapping) -> list:
        """Start from the mapping a previous instance had, whose address is still
        installed (a restart that kept the data path, docs/reliability.md).

        QUALIFYING at once with `mapping` in place, and an RS to its server: an RA
        with the same binding keeps the address (no AddressChanged, no FlushPeers:
        the peers still trust it), another binding replaces it (§5.2.7, as a
        refresh would), and no answer withdraws it as for a lost server. A server
        no longer in our list is tried last: the RA of another server is another
        binding. No-op unless OFFLINE.
        """
        if self.state is not State.OFFLINE:
            return []
        if mapping.server in self.servers:
            self._index = self.servers.index(mapping.server)
        self.mapping = mapping
        self._failed_in_row = 0
        _log.info("qualification_resumed", address=str(mapping.address),
                  mapped=f"{mapping.mapped_ip}:{mapping.mapped_port}", server=str(mapping.server))
        actions = self._transition(State.QUALIFYING, now)
        return actions + self._solicit(now, first=True)

    def refresh_now(self, now: float) -> list:
        """Something changed under us (the interface came back up, its address
        changed): ask the server now rather than at the next refresh (§5.2.7) or
        after the restart delay. A new mapping then shows as it would at a refresh.
        """
        if self.state is State.OFFLINE:
            if self.timer_at is None:
                return []   # not started, or stopped: nothing to hurry
            self.timer_at = now
            return self.on_timer(now)
        return self._solicit(now, first=True)

    def stop(self, now: float) -> list:
        """Withdraw the address, disarm the timer, go OFFLINE and stay there."""
        actions = []
        if self.state is not State.OFFLINE:
            actions += self._transition(State.OFFLINE, now)
        actions += self._withdraw()
        self._nonce = None
        self._sent = 0
        return actions + self._arm(None)

    def on_timer(self, now: float) -> list:
        """The timer fired. Calls before the armed time (or when disarmed) do nothing."""
        if self.timer_at is None or now < self.timer_at:
            return []
        self.timer_at = None
        if self.state is State.OFFLINE:
            # Restart delay over: try again (self._index already points at the
            # server after the one that failed last).
            return self._transition(State.QUALIFYING, now) + self._solicit(now, first=True)
        if self._nonce is None:
            # QUALIFIED and the refresh interval is over: maintenance RS (§5.2.7).
            return self._solicit(now, first=True)
        if self._sent < self.tries:
            return self._solicit(now, first=False)
        return self._server_failed(now)

    def on_router_advertisement(
        self,
        now: float,
        *,
        nonce: Optional[bytes],
        origin_ip: Optional[IPv4Address],
        origin_port: Optional[int],
        prefix: Union[IPv6Address, ipaddress.IPv6Network, None],
        mtu: Optional[int] = None,
        from_server: bool,
    ) -> list:
        """An RA arrived (already parsed by the caller).

        nonce: the auth header's nonce (None if absent); origin_ip/origin_port: the
        origin indication, de-obfuscated (None if absent); prefix: the prefix
        information option's prefix (an address or a /64); mtu: the MTU option or
        None; from_server: True when the UDP source was self.server, port 3544.
        """
        reason = self._reject_reason(nonce, origin_ip, origin_port, prefix, from_server)
        if reason:
            self.ignored[reason] += 1
            _log.debug("router_advertisement_ignored", reason=reason, server=str(self.server))
            return []

        if mtu is not None and not TEREDO_MTU <= mtu <= RA_MTU_MAX:
            # §5.2.1 lets us honour the MTU option only inside this range; a bad
            # option does not void the rest of an authenticated RA.
            self.ignored["mtu_out_of_range"] += 1
            mtu = None
        mtu = TEREDO_MTU if mtu is None else int(mtu)
        origin_ip = IPv4Address(origin_ip)
        origin_port = int(origin_port)

        self._nonce = None
        self._sent = 0
        self._failed_in_row = 0
        self._delay = self.restart_delay

        actions = []
        if self.state is State.QUALIFYING:
            actions += self._transition(State.QUALIFIED, now)
        old = self.mapping
        if old is not None and old.same_binding(self.server, origin_ip, origin_port):
            if old.mtu != mtu:
                self.mapping = Mapping(old.server, old.mapped_ip, old.mapped_port,
                                       old.address, mtu)
                _log.info("mtu_changed", old=old.mtu, new=mtu)
                actions.append(MtuChanged(old.mtu, mtu, self.mapping))
        else:
            address = self._address_factory(self.server, origin_ip, origin_port)
            self.mapping = Mapping(self.server, origin_ip, origin_port, address, mtu)
            _log.info("address_changed", old=str(old.address) if old else None,
                      new=str(address), mapped=f"{origin_ip}:{origin_port}",
                      server=str(self.server), mtu=mtu)
            actions += [AddressChanged(old, self.mapping), FlushPeers()]
        return actions + self._arm(now + self.refresh_interval)

    # -- internals --

    def _reject_reason(self, nonce, origin_ip, origin_port, prefix, from_server):
        if self._nonce is None:
            return "unsolicited"
        if not from_server:
            return "not_from_server"
        if not security.nonces_equal(self._nonce, nonce):
            return "nonce_mismatch"
        if origin_ip is None or origin_port is None:
            # Miredo: without an origin indication we cannot know our mapping.
            return "no_origin_indication"
        if not 0 < int(origin_port) <= 0xFFFF:
            return "bad_origin_port"
        if prefix is None:
            return "no_prefix"
        if isinstance(prefix, ipaddress.IPv6Network):
            if prefix.prefixlen != 64:
                return "prefix_length"
            prefix = prefix.network_address
        value = int(IPv6Address(prefix))
        if value >> 96 != TEREDO_PREFIX_HI32:
            return "prefix_not_teredo"
        if (value >> 64) & 0xFFFFFFFF != int(self.server):
            return "prefix_server_mismatch"
        return None

    def _solicit(self, now: float, first: bool) -> list:
        """Send one RS with a fresh nonce and arm the reply timeout."""
        if first:
            self._sent = 0
        self._sent += 1
        self._nonce = security.generate_nonce(self._rng, AUTH_NONCE_LEN)
        _log.debug("router_solicitation", server=str(self.server), attempt=self._sent)
        return [SendRouterSolicitation(self.server, self._nonce)] + self._arm(now + self.timeout)

    def _server_failed(self, now: float) -> list:
        lost = self.server
        was_qualified = self.state is State.QUALIFIED
        if was_qualified:
            _log.warning("lost_connectivity", server=str(lost))
        else:
            _log.warning("no_reply_from_server", server=str(lost), tries=self._sent)
        actions = [ServerLost(lost, was_qualified)]
        self._nonce = None
        self._sent = 0
        self._failed_in_row += 1
        self._index = (self._index + 1) % len(self.servers)

        if self._failed_in_row < len(self.servers):
            # Another server has not been tried in this round: fail over now.
            _log.info("server_failover", old=str(lost), new=str(self.server))
            if was_qualified:
                actions += self._transition(State.QUALIFYING, now)
            actions += self._withdraw()
            return actions + self._solicit(now, first=True)

        # Every server failed in a row: wait, then start over with the next one.
        self._failed_in_row = 0
        retry_at = now + self._delay
        self._delay = min(self._delay * 2, self.restart_delay_max)
        actions += self._transition(State.OFFLINE, now)
        actions += self._withdraw()
        _log.info("offline", retry_at=retry_at, next_server=str(self.server))
        return actions + [Offline(retry_at, self.server)] + self._arm(retry_at)

    def _withdraw(self) -> list:
        if self.mapping is None:
            return []
        old, self.mapping = self.mapping, None
        _log.info("address_changed", old=str(old.address), new=None)
        return [AddressChanged(old, None), FlushPeers()]

    def _arm(self, at: Optional[float]) -> list:
        self.timer_at = at
        return [SetTimer(at)]

    def _transition(self, new: State, now: float) -> list:
        old = self.state
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"{old.value} -> {new.value}")
        self.state = new
        self.since = now
        _log.info("state_changed", old=old.value, new=new.value, server=str(self.server))
        return [StateChanged(old, new)]

    def _default_address(self, server: IPv4Address, ip: IPv4Address, port: int) -> IPv6Address:
        # RFC 5991 §4: fresh random flag bits for every new address, from our rng
        # when one is injected (address.py draws them from the OS otherwise).
        rng = None
        if self._rng is not None:
            def rng():
                return int.from_bytes(self._rng(2), "big") % (1 << _FLAG_RANDOM_BITS)
        return TeredoAddress.build(server, ip, port, rng=rng).ipv6
