"""The inbound guard's policy: which IPv6 packets arriving over Teredo the host takes.

A Teredo address makes a host behind a NAT reachable from the whole IPv6 internet
(docs/security.md). With the "stateful" policy the host takes, from Teredo, only:
- packets of a conversation it started itself (a *flow*, recorded when its own
  packet left), while that flow is alive;
- new TCP connections and UDP datagrams to a port the operator allowed
  (`--allow tcp/22`);
- the ICMPv6 that IPv6 needs (RFC 4890 §4.3.1): Packet Too Big always, the other
  errors when they are about one of its flows, echo requests and replies;
- later fragments of a packet whose first fragment was let in.
Everything else is dropped and counted under one of the VERDICTS.

This module is the policy in plain Python, with no I/O: the flow table, the
fragment table and the allowed ports are passed in (plain dicts in tests, the BPF
maps in the client: xdp_teredo/datapath/guard.py). The BPF data path implements
the same rules in C (bpf/lib/guard.h) for the fast path; this module decides
for the slow path (packets the control plane delivers into the tun) and is the
reference the BPF tests compare the C with, packet for packet.

Flows are keyed as the host sees them: (local address, remote address, transport
protocol, local port, remote port). ICMPv6 echo uses the identifier as the local
port and 0 as the remote one; other transports have no ports (0, 0). Time is
nanoseconds of CLOCK_MONOTONIC (the data path reads it as of the last tick:
bpf/lib/clock.h), passed in.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import time
from typing import Dict, Iterable, MutableMapping, NamedTuple, Optional, Tuple

from xdp_teredo.errors import UsageError
from xdp_teredo.teredo import constants

# Verdicts: the names of the drop reasons (xdp_teredo.datapath.layout.Reason keys).
UNSOLICITED = "guard_unsolicited"
ICMPV6 = "guard_icmpv6"
FRAGMENT = "guard_fragment"
UNPARSED = "guard_unparsed"
VERDICTS = (UNSOLICITED, ICMPV6, FRAGMENT, UNPARSED)

# Extension headers looked through before the transport header. More than this in
# one packet is unusual enough to refuse (RFC 8200 §4.1 lists at most one of each,
# destination options twice); the C walks the same number, unrolled.
EXT_MAX = 4
_EXTENSIONS = frozenset({constants.IPPROTO_HOPOPTS, constants.IPPROTO_ROUTING, constants.IPPROTO_DSTOPTS, constants.IPPROTO_AH,
                         constants.IPPROTO_FRAGMENT})
# RFC 9293 §3.1: control bits in byte 13 of the TCP header.
TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04
_ERRORS_ABOUT_A_FLOW = frozenset({constants.ICMPV6_DESTINATION_UNREACHABLE, constants.ICMPV6_TIME_EXCEEDED,
                                  constants.ICMPV6_PARAMETER_PROBLEM})
_PORT_PROTOCOLS = {"tcp": constants.IPPROTO_TCP, "udp": constants.IPPROTO_UDP}
_PROTOCOL_NAMES = {v: k for k, v in _PORT_PROTOCOLS.items()}


class Policy(str, enum.Enum):
    STATEFUL = "stateful"  # unsolicited inbound dropped (the client's default)
    OPEN = "open"          # everything passes, nothing recorded (the relay's default)


class FlowState(enum.IntEnum):
    # The state of a flow decides its timeout (Timeouts). Values are part of the
    # BPF contract (layout.py puts them in bpf/lib/shared.h).
    TCP_HANDSHAKE = 1    # a SYN or SYN-ACK of ours went out, the handshake is under way
    TCP_ESTABLISHED = 2  # we sent a segment without SYN/FIN/RST
    TCP_CLOSING = 3      # a FIN went either way
    TCP_CLOSED = 4       # an RST went either way
    UDP = 5              # we sent UDP, nothing came back yet
    UDP_REPLIED = 6      # the other end answered
    ICMP_ECHO = 7        # our echo request: errors about it (traceroute) come in
    OTHER = 8            # any other transport, no ports


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Seconds a flow stays alive after its last packet, by state (constants.py)."""

    tcp_handshake: float = constants.GUARD_TCP_HANDSHAKE
    tcp_established: float = constants.GUARD_TCP_ESTABLISHED
    tcp_closing: float = constants.GUARD_TCP_CLOSING
    tcp_closed: float = constants.GUARD_TCP_CLOSED
    udp: float = constants.GUARD_UDP
    udp_replied: float = constants.GUARD_UDP_REPLIED
    icmp_echo: float = constants.GUARD_ICMP_ECHO
    other: float = constants.GUARD_OTHER
    fragment: float = constants.GUARD_FRAGMENT

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise UsageError(f"guard timeout {f.name} must be positive")

    def for_state(self, state: int) -> float:
        return {
            FlowState.TCP_HANDSHAKE: self.tcp_handshake,
            FlowState.TCP_ESTABLISHED: self.tcp_established,
            FlowState.TCP_CLOSING: self.tcp_closing,
            FlowState.TCP_CLOSED: self.tcp_closed,
            FlowState.UDP: self.udp,
            FlowState.UDP_REPLIED: self.udp_replied,
            FlowState.ICMP_ECHO: self.icmp_echo,
            FlowState.OTHER: self.other,
        }.get(state, 0.0)  # an unknown state is a dead flow


@dataclasses.dataclass(frozen=True)
class AllowRule:
    """`--allow tcp/22` or `--allow udp/5000-5010`: new inbound traffic to these ports."""

    protocol: str   # "tcp" or "udp"
    first: int
    last: int

    @property
    def proto(self) -> int:
        return _PORT_PROTOCOLS[self.protocol]

    def pairs(self) -> Iterable[Tuple[int, int]]:
        """(IPv6 next header, port) for every port of the rule."""
        return ((self.proto, port) for port in range(self.first, self.last + 1))

    def __str__(self) -> str:
        ports = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.protocol}/{ports}"


def parse_allow(text: str, option: str = "--allow") -> AllowRule:
    """"tcp/22", "UDP/53", "tcp/8000-8080" -> AllowRule; UsageError (one line) otherwise."""
    proto, sep, ports = str(text).strip().partition("/")
    proto = proto.lower()
    if not sep or proto not in _PORT_PROTOCOLS:
        raise UsageError(f"{option} {text!r}: want PROTO/PORT with PROTO tcp or udp "
                         "(e.g. tcp/22, udp/5000-5010)")
    first, dash, last = ports.partition("-")
    try:
        low = int(first, 10)
        high = int(last, 10) if dash else low
    except ValueError:
        raise UsageError(f"{option} {text!r}: the port is not a number") from None
    if not (1 <= low <= high <= 0xFFFF):
        raise UsageError(f"{option} {text!r}: ports are 1-65535, a range low-high")
    return AllowRule(proto, low, high)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `--inbound` and `--allow` say, checked."""

    policy: Policy = Policy.STATEFUL
    allowed: Tuple[AllowRule, ...] = ()
    timeouts: Timeouts = Timeouts()

    def __post_init__(self):
        object.__setattr__(self, "policy", Policy(self.policy))
        if len(self.allowed_pairs()) > constants.GUARD_ALLOW_MAX:
            raise UsageError(f"--allow opens {len(self.allowed_pairs())} ports; at most "
                             f"{constants.GUARD_ALLOW_MAX}")

    @classmethod
    def from_options(cls, inbound: Optional[str], allow: Iterable[str],
                     default: Policy = Policy.STATEFUL) -> "Settings":
        """The command line's --inbound and --allow values; UsageError on bad ones."""
        try:
            policy = Policy(inbound) if inbound else default
        except ValueError:
            raise UsageError(f"--inbound {inbound!r}: one of stateful, open") from None
        rules = tuple(parse_allow(a) for a in allow)
        return cls(policy=policy, allowed=rules)

    def allowed_pairs(self) -> frozenset:
        return frozenset(p for rule in self.allowed for p in rule.pairs())

    def describe(self) -> dict:
        """For `status`: the policy and the allowed ports, as the user wrote them."""
        return {"policy": self.policy.value, "allowed": [str(r) for r in self.allowed]}


# --------------------------------------------------------------------------- packets


class FlowKey(NamedTuple):
    local: bytes        # 16 bytes, our address
    remote: bytes       # 16 bytes, the other end's
    proto: int          # transport (IPv6 next header after the extension headers)
    local_port: int     # ICMPv6 echo: the identifier
    remote_port: int


class FragmentKey(NamedTuple):
    local: bytes
    remote: bytes
    identification: int  # RFC 8200 §4.5


class Flow(NamedTuple):
    seen_ns: int         # last packet of the flow, either way
    state: int           # FlowState


@dataclasses.dataclass(frozen=True)
class View:
    """What the guard looks at in one IPv6 packet."""

    key: Optional[FlowKey]                 # None: could not be parsed (UNPARSED)
    tcp_flags: int = 0
    icmp_type: Optional[int] = None
    fragment: Optional[Tuple[int, bool, int]] = None  # (offset in 8-byte units, more, id)
    related: Optional[FlowKey] = None      # ICMPv6 error: the flow of the packet it is about

    @property
    def later_fragment(self) -> bool:
        return self.fragment is not None and self.fragment[0] != 0

    def fragment_key(self) -> Optional[FragmentKey]:
        if self.key is None or self.fragment is None:
            return None
        return FragmentKey(self.key.local, self.key.remote, self.fragment[2])


_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _ports(packet: bytes, at: int) -> Tuple[int, int]:
    return _U16.unpack_from(packet, at)[0], _U16.unpack_from(packet, at + 2)[0]


def classify(packet: bytes, inbound: bool) -> View:
    """Parse an IPv6 packet (header first) for the guard.

    inbound: the packet arrives (local = destination) or leaves (local = source).
    A packet the guard cannot read far enough gets key None (the C drops those as
    guard_unparsed: with a default-deny policy, what cannot be checked stays out).
    """
    if len(packet) < constants.IPV6_HDR_LEN or packet[0] >> 4 != constants.IPV6_VERSION:
        return View(None)
    src, dst = bytes(packet[8:24]), bytes(packet[24:40])
    local, remote = (dst, src) if inbound else (src, dst)
    nh, pos, end = packet[6], constants.IPV6_HDR_LEN, len(packet)
    fragment = None
    for _ in range(EXT_MAX):
        if nh in (constants.IPPROTO_HOPOPTS, constants.IPPROTO_ROUTING, constants.IPPROTO_DSTOPTS, constants.IPPROTO_AH):
            if pos + 2 > end:
                return View(None)
            # RFC 8200 §4.3-4.6: length in 8-byte units after the first 8;
            # RFC 4302 §2.2: AH's in 4-byte units, minus 2.
            size = (packet[pos + 1] + 2) * 4 if nh == constants.IPPROTO_AH else (packet[pos + 1] + 1) * 8
            if pos + size > end:
                return View(None)
            nh, pos = packet[pos], pos + size
        elif nh == constants.IPPROTO_FRAGMENT:
            if pos + 8 > end:
                return View(None)
            word = _U16.unpack_from(packet, pos + 2)[0]
            fragment = (word >> 3, bool(word & 1), _U32.unpack_from(packet, pos + 4)[0])
            nh, pos = packet[pos], pos + 8
            if fragment[0]:
                break
        else:
            break
    if fragment is not None and fragment[0]:
        # RFC 8200 §4.5: a later fragment carries no transport header.
        return View(FlowKey(local, remote, nh, 0, 0), fragment=fragment)
    if nh in _EXTENSIONS:
        return View(None)

    if nh == constants.IPPROTO_TCP:
        if pos + 14 > end:
            return View(None)
        sport, dport = _ports(packet, pos)
        lport, rport = (dport, sport) if inbound else (sport, dport)
        return View(FlowKey(local, remote, nh, lport, rport), tcp_flags=packet[pos + 13],
                    fragment=fragment)
    if nh == constants.IPPROTO_UDP:
        if pos + constants.UDP_HDR_LEN > end:
            return View(None)
        sport, dport = _ports(packet, pos)
        lport, rport = (dport, sport) if inbound else (sport, dport)
        return View(FlowKey(local, remote, nh, lport, rport), fragment=fragment)
    if nh == constants.IPPROTO_ICMPV6:
        # RFC 4443 §2.1: type, code, checksum, then 4 bytes that every message has.
        if pos + 8 > end:
            return View(None)
        icmp_type = packet[pos]
        if icmp_type in (constants.ICMPV6_ECHO_REQUEST, constants.ICMPV6_ECHO_REPLY):
            ident = _U16.unpack_from(packet, pos + 4)[0]
            return View(FlowKey(local, remote, nh, ident, 0), icmp_type=icmp_type, fragment=fragment)
        related = None
        if icmp_type in _ERRORS_ABOUT_A_FLOW:
            related = _invoking_flow(packet, pos + 8)
        return View(FlowKey(local, remote, nh, 0, 0), icmp_type=icmp_type, fragment=fragment,
                    related=related)
    return View(FlowKey(local, remote, nh, 0, 0), fragment=fragment)


def _invoking_flow(packet: bytes, at: int) -> Optional[FlowKey]:
    """RFC 4443 §3: an error carries the start of the packet that caused it, which
    one of ours sent: its flow, as the host recorded it when it left. Only the
    fixed header and the first 8 transport bytes are read (no extension headers)."""
    if at + constants.IPV6_HDR_LEN + 8 > len(packet):
        return None
    src, dst, nh = bytes(packet[at + 8:at + 24]), bytes(packet[at + 24:at + 40]), packet[at + 6]
    l4 = at + constants.IPV6_HDR_LEN
    if nh in (constants.IPPROTO_TCP, constants.IPPROTO_UDP):
        sport, dport = _ports(packet, l4)
        return FlowKey(src, dst, nh, sport, dport)
    if nh == constants.IPPROTO_ICMPV6 and packet[l4] == constants.ICMPV6_ECHO_REQUEST:
        return FlowKey(src, dst, nh, _U16.unpack_from(packet, l4 + 4)[0], 0)
    return FlowKey(src, dst, nh, 0, 0)


# --------------------------------------------------------------------------- decisions

Flows = MutableMapping[FlowKey, Flow]
Fragments = MutableMapping[FragmentKey, int]


def _alive(flows: Flows, key: Optional[FlowKey], now_ns: int, timeouts: Timeouts) -> Optional[Flow]:
    """The flow if it exists and has not timed out; a timed-out one is removed. A
    seen_ns ahead of now (written on another CPU a moment ago) is alive."""
    if key is None:
        return None
    flow = flows.get(key)
    if flow is None:
        return None
    limit = int(round(timeouts.for_state(flow.state) * 1e9))
    if flow.seen_ns < now_ns and now_ns - flow.seen_ns > limit:
        flows.pop(key, None)
        return None
    return flow


def inbound(view: View, settings: Settings, flows: Flows, fragments: Fragments,
            allowed: Iterable[Tuple[int, int]], now_ns: int) -> Optional[str]:
    """None if the packet may come in, else the verdict it is dropped under.

    Side effects, as the C has them: a matching flow is refreshed (and moves on:
    UDP answered, TCP FIN/RST seen); an admitted first fragment is remembered so
    that the later ones of the same packet follow it in.
    """
    if settings.policy is Policy.OPEN:
        return None
    if view.key is None:
        return UNPARSED
    key, t = view.key, settings.timeouts
    if view.later_fragment:
        seen = fragments.get(view.fragment_key())
        if seen is not None and (seen >= now_ns or now_ns - seen <= int(round(t.fragment * 1e9))):
            return None
        return FRAGMENT

    if key.proto == constants.IPPROTO_ICMPV6:
        verdict = _icmpv6(view, flows, now_ns, t)
    else:
        verdict = UNSOLICITED
        flow = _alive(flows, key, now_ns, t)
        if flow is not None:
            flows[key] = Flow(now_ns, _answered(flow.state, key.proto, view.tcp_flags))
            verdict = None
        elif key.proto in (constants.IPPROTO_TCP, constants.IPPROTO_UDP) and (key.proto, key.local_port) in allowed:
            verdict = None
    if verdict is None and view.fragment is not None and view.fragment[1]:
        fragments[view.fragment_key()] = now_ns
    return verdict


def _icmpv6(view: View, flows: Flows, now_ns: int, t: Timeouts) -> Optional[str]:
    kind = view.icmp_type
    if kind == constants.ICMPV6_PACKET_TOO_BIG:
        return None  # RFC 4890 §4.3.1: path MTU discovery must work, whatever the flow
    if kind in _ERRORS_ABOUT_A_FLOW:
        return None if _alive(flows, view.related, now_ns, t) is not None else ICMPV6
    if kind in (constants.ICMPV6_ECHO_REQUEST, constants.ICMPV6_ECHO_REPLY):
        # RFC 4890 §4.3.1: ping keeps working both ways. Replies pass without a
        # flow too: the direct connectivity test's request (RFC 4380 §5.2.9) goes
        # out through the server, so a relay never sees it, yet must let the
        # reply through to its client.
        return None
    return ICMPV6  # informational types a host over Teredo has no use for from afar


def _answered(state: int, proto: int, tcp_flags: int) -> int:
    """A flow's state after a packet from the other end."""
    if proto == constants.IPPROTO_UDP:
        return FlowState.UDP_REPLIED
    if proto == constants.IPPROTO_TCP:
        if tcp_flags & TCP_RST:
            return FlowState.TCP_CLOSED
        if tcp_flags & TCP_FIN and state != FlowState.TCP_CLOSED:
            return FlowState.TCP_CLOSING
    return state


def outbound(view: View, settings: Settings, flows: Flows, now_ns: int) -> None:
    """Record (or refresh) the flow of a packet the host sends; nothing under OPEN."""
    if settings.policy is Policy.OPEN or view.key is None or view.later_fragment:
        return
    key = view.key
    if key.proto == constants.IPPROTO_ICMPV6:
        if view.icmp_type == constants.ICMPV6_ECHO_REQUEST:
            flows[key] = Flow(now_ns, FlowState.ICMP_ECHO)
        return  # errors and replies answer something: they start nothing
    flow = _alive(flows, key, now_ns, settings.timeouts)
    if key.proto == constants.IPPROTO_TCP:
        state = _sent_tcp(flow.state if flow else None, view.tcp_flags)
        if state is None:
            return
    elif key.proto == constants.IPPROTO_UDP:
        state = flow.state if flow else FlowState.UDP
    else:
        state = FlowState.OTHER
    flows[key] = Flow(now_ns, state)


def _sent_tcp(state: Optional[int], flags: int) -> Optional[int]:
    """A TCP flow's state after a segment of ours; None: record nothing."""
    if flags & TCP_RST:
        # An RST that answers nothing we know opens nothing.
        return FlowState.TCP_CLOSED if state is not None else None
    if flags & TCP_FIN:
        return FlowState.TCP_CLOSED if state == FlowState.TCP_CLOSED else FlowState.TCP_CLOSING
    if flags & TCP_SYN:
        return FlowState.TCP_HANDSHAKE
    if state in (FlowState.TCP_CLOSING, FlowState.TCP_CLOSED):
        return state  # the last ACKs of a close do not reopen it
    return FlowState.TCP_ESTABLISHED


def protocol_name(proto: int) -> str:
    return _PROTOCOL_NAMES.get(proto, str(proto))


def empty_tables() -> Tuple[Dict[FlowKey, Flow], Dict[FragmentKey, int]]:
    """Flow and fragment tables for tests and for a guard without a data path."""
    return {}, {}


class Guard:
    """The policy over one set of tables, for a control plane's slow path.

    flows / fragments / allowed: the data path's maps (xdp_teredo.datapath.guard),
    so that both paths share one state; dicts and a set in tests. now_ns: the
    clock the data path uses (CLOCK_MONOTONIC in ns), injected.
    """

    def __init__(self, settings: Settings, flows: Optional[Flows] = None,
                 fragments: Optional[Fragments] = None, allowed=None, *, now_ns=None):
        self.settings = settings
        self.flows = {} if flows is None else flows
        self.fragments = {} if fragments is None else fragments
        self.allowed = settings.allowed_pairs() if allowed is None else allowed
        self._now_ns = now_ns or time.monotonic_ns

    def inbound(self, packet: bytes) -> Optional[str]:
        """None: deliver `packet` (IPv6, arriving over Teredo); else why not."""
        if self.settings.policy is Policy.OPEN:
            return None
        return inbound(classify(packet, inbound=True), self.settings, self.flows, self.fragments,
                       self.allowed, self._now_ns())

    def outbound(self, packet: bytes) -> None:
        """`packet` leaves the host (or, for a relay, its client) by a path no BPF
        program sees: record its flow."""
        if self.settings.policy is not Policy.OPEN:
            outbound(classify(packet, inbound=False), self.settings, self.flows, self._now_ns())
