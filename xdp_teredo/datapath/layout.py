"""The binary contract between the BPF programs and Python: the source of truth.

Everything the kernel side and the userspace side must agree on is declared here
once: the ctypes structs of map keys and values, the flag bits, the XDP metadata
mark and the enum of verdict reasons. tools/gen_shared_header.py turns this module
(plus the protocol numbers of xdp_teredo.teredo.constants) into
bpf/lib/shared.h; tests/unit/test_shared_header.py fails when the committed
header differs from the generator's output, and compiles a small C program with gcc
to check that sizeof/offsetof of every struct equal what ctypes computes here.

Conventions (so that the BPF code compares packet bytes without byte swaps):
- addresses and ports are kept in network byte order (C type __be32/__be16);
  xdp_teredo.datapath.maps converts them to and from ipaddress objects;
- no implicit padding: every struct is laid out so that its fields are naturally
  aligned and the generator refuses a struct with holes;
- times are nanoseconds of CLOCK_MONOTONIC, what time.monotonic_ns() reads (the
  control plane's clock, teredo/clock.py) and the data path reads as of the last
  tick (bpf/lib/clock.h).
"""

import ctypes
import enum
from typing import Dict, List, Tuple

from xdp_teredo.teredo import guard as _guard

# ---------------------------------------------------------------------------
# Structs. `_c_name_` is the C struct name, `_c_types_` overrides the C type of a
# field (byte order), `_c_doc_` gives the one-line comment the header carries.


class PeerKey(ctypes.Structure):
    _c_name_ = "teredo_peer_key"
    _c_doc_ = "Key of the peer table: the peer's IPv6 address, as on the wire."
    _fields_ = [("addr", ctypes.c_uint8 * 16)]
    _c_types_: Dict[str, str] = {}


class PeerValue(ctypes.Structure):
    """One peer (RFC 4380 §5.2.4's peer list entry, minus what only userspace needs:
    nonce, bubble count and the queue stay in the control plane)."""

    _c_name_ = "teredo_peer"
    _c_doc_ = "Value of the peer table: where the peer's packets go, and activity."
    _fields_ = [
        ("mapped_ipv4", ctypes.c_uint32),   # the peer's mapped IPv4 address
        ("mapped_port", ctypes.c_uint16),   # the peer's mapped UDP port
        ("flags", ctypes.c_uint16),         # PeerFlag
        ("last_rx_ns", ctypes.c_uint64),    # last receive (RFC 4380 §5.2.3 "recent")
        ("last_tx_ns", ctypes.c_uint64),    # last send
        ("rx_packets", ctypes.c_uint64),
        ("rx_bytes", ctypes.c_uint64),      # IPv6 bytes (inner packet) received
        ("tx_packets", ctypes.c_uint64),    # also the source of the outer IPv4 ID
        ("tx_bytes", ctypes.c_uint64),      # IPv6 bytes (inner packet) sent
    ]
    _c_types_ = {"mapped_ipv4": "__be32", "mapped_port": "__be16"}


class ConfigValue(ctypes.Structure):
    _c_name_ = "teredo_config"
    _c_doc_ = "The one entry of the config map, written by the control plane."
    _fields_ = [
        ("local_ipv4", ctypes.c_uint32),     # our IPv4 address (the Teredo socket's)
        ("local_port", ctypes.c_uint16),     # our UDP port (the Teredo socket's)
        ("flags", ctypes.c_uint16),          # ConfigFlag
        ("teredo_addr", ctypes.c_uint8 * 16),  # our Teredo IPv6 address
        ("nic_ifindex", ctypes.c_uint32),    # where encapsulated packets leave
        ("tun_ifindex", ctypes.c_uint32),    # where decapsulated packets arrive
        ("peer_timeout_ns", ctypes.c_uint64),  # a peer is fresh this long after last_rx
        ("mtu", ctypes.c_uint32),            # the tunnel MTU (RFC 4380 §5.1.2: 1280)
        ("l2_len", ctypes.c_uint32),         # tc egress: bytes before the IPv6 header
        ("csum_out_ifindex", ctypes.c_uint32),  # tc (relay; client on a veth NIC): the checksum veth end to send pending-checksum packets out of (0: none, net/csum_veth.py)
        ("csum_in_ifindex", ctypes.c_uint32),   # its other end, where they come back finished
    ]
    _c_types_ = {"local_ipv4": "__be32", "local_port": "__be16"}


class StatValue(ctypes.Structure):
    _c_name_ = "teredo_stat"
    _c_doc_ = "Value of the per-CPU stats array, one slot per Reason."
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]
    _c_types_: Dict[str, str] = {}


class XdpMeta(ctypes.Structure):
    _c_name_ = "teredo_xdp_meta"
    _c_doc_ = "XDP metadata in front of a decapsulated frame, read by tc ingress."
    _fields_ = [("magic", ctypes.c_uint32)]
    _c_types_: Dict[str, str] = {}


# The inbound guard (bpf/lib/guard.h, xdp_teredo/teredo/guard.py, docs/security.md).


class FlowKey(ctypes.Structure):
    _c_name_ = "teredo_flow_key"
    _c_doc_ = "Key of the guard's flow table: a conversation the host started, as it sees it."
    _fields_ = [
        ("local", ctypes.c_uint8 * 16),     # our IPv6 address (a relay: its client's)
        ("remote", ctypes.c_uint8 * 16),    # the other end's IPv6 address
        ("local_port", ctypes.c_uint16),    # TCP/UDP port on our side; ICMPv6 echo: the identifier
        ("remote_port", ctypes.c_uint16),   # TCP/UDP port on the other side; else 0
        ("proto", ctypes.c_uint8),          # transport: IPv6 next header after the extension headers
        ("pad", ctypes.c_uint8 * 3),        # zero (hash keys compare every byte)
    ]
    _c_types_ = {"local_port": "__be16", "remote_port": "__be16"}


class FlowValue(ctypes.Structure):
    _c_name_ = "teredo_flow"
    _c_doc_ = "Value of the guard's flow table: when the flow last moved, and its state."
    _fields_ = [
        ("seen_ns", ctypes.c_uint64),       # last packet of the flow, either way
        ("state", ctypes.c_uint32),         # FlowState: decides the timeout
        ("pad", ctypes.c_uint32),
    ]
    _c_types_: Dict[str, str] = {}


class FragmentKey(ctypes.Structure):
    _c_name_ = "teredo_fragment_key"
    _c_doc_ = "Key of the guard's fragment table: a fragmented packet whose first fragment came in."
    _fields_ = [
        ("local", ctypes.c_uint8 * 16),
        ("remote", ctypes.c_uint8 * 16),
        ("identification", ctypes.c_uint32),  # RFC 8200 §4.5, as on the wire
    ]
    _c_types_ = {"identification": "__be32"}


class AllowKey(ctypes.Structure):
    _c_name_ = "teredo_allow_key"
    _c_doc_ = "Key of the guard's allowed ports (--allow PROTO/PORT)."
    _fields_ = [
        ("proto", ctypes.c_uint8),          # 6 (TCP) or 17 (UDP)
        ("pad", ctypes.c_uint8),
        ("port", ctypes.c_uint16),          # our port
    ]
    _c_types_ = {"port": "__be16"}


class AllowValue(ctypes.Structure):
    _c_name_ = "teredo_allow"
    _c_doc_ = "Value of the guard's allowed ports: how many new conversations it let in."
    _fields_ = [("packets", ctypes.c_uint64)]
    _c_types_: Dict[str, str] = {}


class GuardConfigValue(ctypes.Structure):
    _c_name_ = "teredo_guard_config"
    _c_doc_ = "The one entry of the guard map: the policy and the flow timeouts."
    _fields_ = [
        ("policy", ctypes.c_uint32),        # GuardPolicy; all zeros (never written): open
        ("pad", ctypes.c_uint32),
        ("tcp_handshake_ns", ctypes.c_uint64),
        ("tcp_established_ns", ctypes.c_uint64),
        ("tcp_closing_ns", ctypes.c_uint64),
        ("tcp_closed_ns", ctypes.c_uint64),
        ("udp_ns", ctypes.c_uint64),
        ("udp_replied_ns", ctypes.c_uint64),
        ("icmp_echo_ns", ctypes.c_uint64),
        ("other_ns", ctypes.c_uint64),
        ("fragment_ns", ctypes.c_uint64),   # a first fragment lets the rest in this long
    ]
    _c_types_: Dict[str, str] = {}


# Admission to the slow path (bpf/lib/limit.h, datapath/limits.py, docs/reliability.md).


class SlowPathKey(ctypes.Structure):
    _c_name_ = "teredo_slow_path_key"
    _c_doc_ = "Key of the slow-path buckets: who sent it, and what kind of packet."
    _fields_ = [
        ("saddr", ctypes.c_uint32),         # the outer IPv4 source, as on the wire
        ("kind", ctypes.c_uint32),          # TEREDO_SLOW_PATH_AUTH (a server's RA) or _OTHER
    ]
    _c_types_ = {"saddr": "__be32"}


class SlowPathLimits(ctypes.Structure):
    _c_name_ = "teredo_slow_path_limits"
    _c_doc_ = "The one entry of the slow-path limits: GCRA interval and tolerance; 0 = no limit."
    _fields_ = [
        ("source_interval_ns", ctypes.c_uint64),   # per source and kind: 1 s / rate
        ("source_tolerance_ns", ctypes.c_uint64),  # (burst - 1) * interval
        ("global_interval_ns", ctypes.c_uint64),   # everything together
        ("global_tolerance_ns", ctypes.c_uint64),
    ]
    _c_types_: Dict[str, str] = {}


# The server's fast path (bpf/server.c, datapath/server.py, docs/server.md).

# Bytes of the Router Advertisement a server sends (RFC 4380 §5.3.1, as ServerPolicy
# builds it): IPv6 header, RA, MTU option, one prefix information option.
SERVER_RA_LEN = 96


class ServerConfigValue(ctypes.Structure):
    _c_name_ = "teredo_server_config"
    _c_doc_ = "The one entry of the server's config: its addresses, its RA, the RA and forwarding rates."
    _fields_ = [
        ("primary_ipv4", ctypes.c_uint32),    # the address clients are given (RFC 4380 §5.3)
        ("secondary_ipv4", ctypes.c_uint32),  # the other one: the cone test's (§5.2.1)
        ("port", ctypes.c_uint16),            # UDP port of both (3544)
        ("flags", ctypes.c_uint16),           # ServerFlag
        ("ra_sum", ctypes.c_uint32),          # the RA's ICMPv6 sum without its destination, unfolded
        ("link_local", ctypes.c_uint8 * 16),  # the server's link-local: RSs may be sent to it
        ("ra_source_interval_ns", ctypes.c_uint64),   # RAs to one IPv4 address: 1 s / rate
        ("ra_source_tolerance_ns", ctypes.c_uint64),  # (burst - 1) * interval
        ("ra_global_interval_ns", ctypes.c_uint64),   # RAs in all; 0: no limit
        ("ra_global_tolerance_ns", ctypes.c_uint64),
        ("fwd_interval_ns", ctypes.c_uint64),   # forwarded packets per IPv4 address (sender or target): 1 s / rate; 0: no limit
        ("fwd_tolerance_ns", ctypes.c_uint64),  # (burst - 1) * interval
        ("ra", ctypes.c_uint8 * SERVER_RA_LEN),  # the RA (IPv6 header first), destination and checksum zero
    ]
    _c_types_ = {"primary_ipv4": "__be32", "secondary_ipv4": "__be32", "port": "__be16"}


STRUCTS: Tuple[type, ...] = (PeerKey, PeerValue, ConfigValue, StatValue, XdpMeta, FlowKey, FlowValue,
                             FragmentKey, AllowKey, AllowValue, GuardConfigValue,
                             SlowPathKey, SlowPathLimits, ServerConfigValue)

# Marks a frame that our XDP program decapsulated (an arbitrary constant). Any other
# value, or no metadata at all, means the tc ingress program leaves the skb alone.
XDP_META_MAGIC = 0x7E3ED0DE

# ---------------------------------------------------------------------------
# Flags.


class ConfigFlag(enum.IntFlag):
    # LEARN_PEERS: the peer map is an LRU hash, so learning stays bounded. RELAY: a
    # relay takes any IPv6 destination but only sources that embed their mapping.
    ENABLED = 0x1      # off: every Teredo packet goes to the slow path (not qualified yet)
    LEARN_PEERS = 0x2  # RFC 4380 §5.2.3: a source embedding its UDP source becomes a trusted peer
    RELAY = 0x4        # RFC 4380 §5.4.2: relay rules instead of client rules
    OFFLOADS_PASS = 0x8  # client: the NIC finishes what is left to offload (not a veth, or --veth-offloads pass); only UDP GSO takes the checksum veth


class ServerFlag(enum.IntFlag):
    ENABLED = 0x1  # off: every datagram to the server goes to the daemon (ServerPolicy)


class GuardPolicy(enum.IntEnum):
    OPEN = 0      # the guard map never written, or --inbound open: everything passes
    STATEFUL = 1  # only flows the host started, allowed ports and needed ICMPv6 come in


# The flow states of the guard, defined with the policy (teredo/guard.py).
FlowState = _guard.FlowState


class PeerFlag(enum.IntFlag):
    TRUSTED = 0x1  # RFC 4380 §5.2.4: the peer answered; send to it directly
    LEARNED = 0x2  # created by the data path (ConfigFlag.LEARN_PEERS), not the control plane
    RELAY = 0x4    # a native IPv6 host reached through this relay (§5.2.9)
    TAKES_OFFLOADS = 0x8  # no checksum detour to it: client, an echo left to offload came back (client/csum_detour.py); relay, its outer UDP checksums arrive finished (bpf/relay.c)


# ---------------------------------------------------------------------------
# Verdict reasons: one per-CPU counter each. The order is part of the contract:
# "ok" reasons first, then the slow-path ("pass") ones, then drops, so that the BPF
# code derives the action from the reason with two comparisons.


class Kind(str, enum.Enum):
    OK = "ok"      # the fast path did its job
    PASS = "pass"  # left untouched for the kernel stack / the control plane
    DROP = "drop"  # malformed, or broken half-way: dropped


class Reason(enum.IntEnum):
    # The relay's reasons (RELAY_*) sit at the end of their kind's block: numbers are
    # array indexes, not a wire format, so inserting keeps the ok < pass < drop order
    # that the BPF code relies on.
    # -- ok
    DECAPSULATED = 0            # XDP or tc: outer IPv4/UDP stripped, IPv6 to the tun
    ENCAPSULATED = 1            # tc egress: IPv6 wrapped in IPv4/UDP, out of the NIC
    RX_REDIRECTED = 2           # tc ingress: an XDP-decapsulated frame sent into the tun
    SERVER_RA = 3               # server XDP: an RS answered with the Router Advertisement, XDP_TX (RFC 4380 §5.3.1)
    RELAY_CSUM_DETOUR = 4       # relay tc: a same-host sender left a checksum (or GSO) to offload: out through the relay's checksum veth, which finishes it, taken on the way back in
    SERVER_FORWARDED_BUBBLE = 5  # server XDP: a bubble forwarded to a client of ours with the sender's origin indication, XDP_TX (RFC 4380 §5.3.1)
    SERVER_FORWARDED_ECHO = 6   # server XDP: an echo test forwarded to a client of ours, XDP_TX (RFC 4380 §5.3.1, §5.2.9)
    TX_CSUM_DETOUR = 7          # client tc egress, NIC a veth: a checksum (or GSO) left to offload: out through the client's checksum veth, which finishes it, encapsulated on the way back in
    # -- pass: ingress, XDP_PASS / TC_ACT_OK, packet unchanged
    RX_NOT_TEREDO = 8           # not IPv4/UDP to our address and port: host traffic
    RX_DISABLED = 9             # config says not enabled (not qualified yet)
    RX_FRAGMENT = 10            # IPv4 first fragment: the stack reassembles for the socket
    RX_IPV4_OPTIONS = 11         # legal but rare: the socket gets it
    RX_AUTH = 12                 # RFC 4380 §5.1.1 authentication header: server traffic
    RX_ORIGIN = 13              # RFC 4380 §5.1.1 origin indication: server traffic
    RX_BUBBLE = 14              # RFC 4380 §2.8: next header 59, payload length 0
    RX_LINK_LOCAL_SOURCE = 15   # fe80::/10 source (RFC 4380 §5.2.3 says drop: control plane)
    RX_MULTICAST_DESTINATION = 16  # ff00::/8 destination (idem)
    RX_NOT_OUR_ADDRESS = 17     # IPv6 destination is not our Teredo address
    RX_UNKNOWN_PEER = 18        # no peer entry, source does not embed the UDP source
    RX_UNTRUSTED_PEER = 19      # the control plane is still talking to this peer
    RX_MAPPING_MISMATCH = 20    # trusted entry, but from another IPv4 address/port
    RX_DECAP_UNSUPPORTED = 21   # adjust_meta/adjust_head/adjust_room refused: untouched
    # -- pass: egress, TC_ACT_OK: the packet goes on into the tun, to the control plane
    TX_NOT_IPV6 = 22            # not an IPv6 packet
    TX_DISABLED = 23            # config says not enabled
    TX_MALFORMED = 24           # truncated IPv6 header or wrong version
    TX_TOO_BIG = 25             # above the tunnel MTU: the control plane sends Packet Too Big
    TX_NO_PEER = 26             # no peer entry: the control plane resolves it (bubbles, echo)
    TX_UNTRUSTED_PEER = 27      # RFC 4380 §5.2.4: queue and bubble, in the control plane
    TX_STALE_PEER = 28          # RFC 4380 §5.2.4: trusted but no recent receive
    TX_ENCAP_UNSUPPORTED = 29   # bpf_skb_adjust_room refused: untouched
    # -- pass: the relay (bpf/relay.c, RFC 4380 §5.4), XDP_PASS / TC_ACT_OK,
    # packet unchanged: the stack forwards it (into the tun, or natively) and answers
    # for it as a router would (Packet Too Big, Time Exceeded, Unreachable).
    RELAY_NO_NEIGH = 30         # relay XDP: fib lookup found no neighbour (MAC) yet: the stack resolves it
    RELAY_NO_ROUTE = 31         # relay: fib lookup found no usable route (or forwarding is off): the stack decides
    RELAY_FRAG_NEEDED = 32      # relay: above the egress MTU: the stack sends Packet Too Big or fragments
    RELAY_HOP_LIMIT = 33        # relay: hop limit <= 1: the stack sends Time Exceeded (RFC 8200 §3)
    RELAY_TEREDO_DESTINATION = 34  # relay: Teredo client to Teredo address: hairpin through the tun, slow path
    RELAY_EGRESS_NOT_XDP = 35   # relay XDP: the egress device takes no XDP-redirected frames (not in the devmap)
    RELAY_OFFLOAD_PENDING = 36  # relay tc: a checksum or GSO left to offload that no checksum veth took (none, or it came back still looking pending): the stack completes it
    # -- pass: the server (bpf/server.c, RFC 4380 §5.3.1), XDP_PASS: ServerPolicy decides
    SERVER_NOT_RS = 37          # server: a bubble, an echo test or anything but an RS: the daemon's (forwarding, §5.3.1)
    SERVER_RS_SLOW_PATH = 38    # server: an RS in a shape the program leaves to the daemon (client id, origin, other options)
    SERVER_FORWARD_NO_ROUTE = 39  # server XDP: a packet to forward whose next hop the fib does not give on this device (no route, no neighbour, forwarding off): the daemon sends it
    # -- drop
    RX_IPV4_CHECKSUM = 40       # bad outer IPv4 header checksum
    RX_IPV4_LENGTH = 41         # IPv4 total length shorter than its headers or the frame
    RX_UDP_LENGTH = 42          # UDP length != IPv4 payload length
    RX_NOT_IPV6 = 43            # UDP payload is neither IPv6 nor an indicator header
    RX_IPV6_TRUNCATED = 44      # UDP payload shorter than an IPv6 header
    RX_IPV6_LENGTH = 45         # 40 + IPv6 payload length != UDP payload length
    RX_NO_TUN = 46              # tc ingress: a decapsulated frame, but no tun configured any more
    TX_ENCAP_ERROR = 47         # writing the outer headers failed half-way
    TX_REDIRECT_FAILED = 48     # bpf_redirect_neigh refused
    RELAY_SOURCE_MISMATCH = 49  # relay: RFC 4380 §5.4.2: the IPv6 source is not a Teredo address embedding the UDP source
    RELAY_REDIRECT_FAILED = 50  # relay: the redirect failed after the rewrite (devmap entry gone, redirect_neigh refused)
    # -- drop: the inbound guard (bpf/lib/guard.h; --inbound stateful), IPv6 that
    # arrived over Teredo and that nobody here asked for (docs/security.md)
    GUARD_UNSOLICITED = 51      # guard: not a flow the host started, nor an allowed port (a TCP SYN, a UDP probe)
    GUARD_ICMPV6 = 52           # guard: ICMPv6 that IPv6 does not need from afar (errors about no flow of ours, ND)
    GUARD_FRAGMENT = 53         # guard: a later fragment whose first fragment was not let in
    GUARD_UNPARSED = 54         # guard: extension headers or transport header beyond what it reads: not checkable, so not taken
    # -- drop: admission to the slow path (bpf/lib/limit.h; docs/reliability.md)
    RX_SLOW_PATH_SOURCE_LIMIT = 55  # for the control plane, but its sender (IPv4 source and kind) is over its rate
    RX_SLOW_PATH_LIMIT = 56     # for the control plane, but the slow path as a whole is over its rate
    # -- drop: the server (bpf/server.c)
    SERVER_SOURCE_NOT_GLOBAL = 57  # server: the IPv4 source is not global unicast (§5.3.1)
    SERVER_LOOP = 58            # server: the IPv4 source is one of the server's own addresses
    SERVER_RS_MALFORMED = 59    # server: an RS with a bad ICMPv6 checksum, code or option length (§5.3.1: discarded)
    SERVER_RA_SOURCE_LIMIT = 60  # server: RAs to this IPv4 address are over its rate
    SERVER_RA_LIMIT = 61        # server: RAs in all are over the server's rate
    SERVER_SOURCE_MISMATCH = 62  # server: a Teredo IPv6 source that does not embed the UDP source (§5.3.1)
    SERVER_NOT_OURS = 63         # server: neither source nor destination a Teredo address (§5.3.1)
    SERVER_DESTINATION_OTHER_SERVER = 64  # server: a Teredo destination whose server is not our primary address
    SERVER_DESTINATION_NOT_GLOBAL = 65  # server: the destination's mapped IPv4 is not global unicast
    SERVER_ECHO_TOO_BIG = 66     # server: an echo longer than SERVER_FORWARD_MAX_PAYLOAD: could carry data
    SERVER_FORWARD_MALFORMED = 67  # server: an echo to forward with a bad ICMPv6 code or checksum, or truncated
    SERVER_FORWARD_SOURCE_LIMIT = 68  # server: forwarded packets from this IPv4 address are over its rate
    SERVER_FORWARD_DESTINATION_LIMIT = 69  # server: forwarded packets to this IPv4 address are over its rate

    @property
    def kind(self) -> Kind:
        if self < FIRST_PASS:
            return Kind.OK
        if self < FIRST_DROP:
            return Kind.PASS
        return Kind.DROP

    @property
    def key(self) -> str:
        """The name used in statistics dicts and JSON: lower snake case."""
        return self.name.lower()


FIRST_PASS = Reason.RX_NOT_TEREDO
FIRST_DROP = Reason.RX_IPV4_CHECKSUM
REASON_COUNT = len(Reason)


def member_comments(cls: type) -> Dict[str, str]:
    """The comment after each member of an enum class (first line), for the header."""
    import inspect
    import re

    comments: Dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s*([A-Z0-9_]+) = (?:0x)?[0-9a-fA-F]+\s*#\s*(.*)", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    return comments


def field_comments(struct: type) -> Dict[str, str]:
    """The comment after each field of a struct's _fields_, for the generated header."""
    import inspect
    import re

    comments: Dict[str, str] = {}
    for line in inspect.getsource(struct).splitlines():
        m = re.match(r'\s*\("([a-z0-9_]+)",.*\),\s*#\s*(.*)', line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    return comments


def struct_fields(struct: type) -> List[Tuple[str, int, int]]:
    """(name, offset, size) of each field, as ctypes lays it out."""
    return [(name, getattr(struct, name).offset, getattr(struct, name).size)
            for name, _ in struct._fields_]
