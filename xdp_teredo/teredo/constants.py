"""Protocol constants: the single source of truth.

bpf/lib/shared.h is generated from this module (and from
xdp_teredo.datapath.layout) by tools/gen_shared_header.py; a unit test fails when
the committed header differs from what the generator produces, so C and Python
cannot drift.
"""

import ipaddress

# RFC 4380 §2.6: the Teredo service prefix 2001:0000::/32.
TEREDO_PREFIX = ipaddress.IPv6Network("2001::/32")
TEREDO_PREFIX_HI32 = 0x20010000
# RFC 4380 §2.7: the Teredo UDP port (servers listen on it).
TEREDO_PORT = 3544
# RFC 4380 §5.1.2: the tunnel MTU.
TEREDO_MTU = 1280
# RFC 4380 §5.2.1: an RA's MTU option is honoured between TEREDO_MTU and this.
RA_MTU_MAX = 65535
# RFC 4380 §2.17: local discovery multicast group.
TEREDO_DISCOVERY_GROUP = "224.0.0.253"

# RFC 4380 §4: flags. The cone bit; RFC 5991 §3 deprecates setting it.
FLAG_CONE = 0x8000
# RFC 4380 §4 as updated by RFC 5991 §4: the U (0x0200) and G (0x0100) bits must be
# zero; the remaining 12 bits are random so that the address is not guessable.
FLAG_U = 0x0200
FLAG_G = 0x0100
# RFC 5991 §4 lays the flags out as "CRAAAAUG AAAAAAAA": R is reserved (zero), so the
# 12 random A bits are 0x3C00 | 0x00FF.
FLAG_RESERVED = 0x4000
FLAG_RANDOM_MASK = 0xFFFF & ~(FLAG_CONE | FLAG_RESERVED | FLAG_U | FLAG_G)  # 12 bits: 0x3CFF

# RFC 4380 §5.1.1: encapsulation headers that may precede the IPv6 packet.
INDICATOR_AUTH = 0x0001
INDICATOR_ORIGIN = 0x0000
ORIGIN_INDICATION_LEN = 8
AUTH_NONCE_LEN = 8

# Outer headers we write: IPv4 (20, no options) + UDP (8).
IPV4_HDR_LEN = 20
UDP_HDR_LEN = 8
ENCAP_OVERHEAD = IPV4_HDR_LEN + UDP_HDR_LEN
IPV6_HDR_LEN = 40

# IPv6 / ICMPv6 numbers used by the protocol.
IPPROTO_ICMPV6 = 58
IPPROTO_UDP = 17
IPPROTO_NONE = 59  # RFC 4380 §2.8: a bubble carries "no next header"
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
ICMPV6_ROUTER_SOLICITATION = 133
ICMPV6_ROUTER_ADVERTISEMENT = 134
# RFC 4443 §3.1: Destination Unreachable, code 3 "address unreachable" (what Miredo's
# relay answers when a Teredo destination does not answer its bubbles).
ICMPV6_DESTINATION_UNREACHABLE = 1
ICMPV6_CODE_ADDRESS_UNREACHABLE = 3
# RFC 4443 §2.4 (e): no ICMPv6 error about an ICMPv6 error (types below 128).
ICMPV6_INFORMATIONAL_MIN = 128

# Miredo's link-local addresses for the RS (libteredo/teredo.h).
LINK_LOCAL_RESTRICTED = "fe80::ffff:ffff:ffff"
LINK_LOCAL_CONE = "fe80::8000:5445:5245:444f"  # "TEREDO"
ALL_ROUTERS = "ff02::2"

# Timers, in seconds.
QUALIFICATION_TIMEOUT = 4.0      # RFC 4380 §5.2.1: RS timeout
QUALIFICATION_TRIES = 3          # RFC 4380 §5.2.1
REFRESH_INTERVAL = 30.0          # RFC 4380 §5.2.7: default refresh interval
RESTART_DELAY = 100.0            # Miredo: wait after failed qualification
RESTART_DELAY_MAX = 800.0        # ours: cap of the doubling back-off after RESTART_DELAY
ECHO_TIMEOUT = 2.0               # RFC 4380 §5.2.9: direct connectivity test
ECHO_TRIES = 3
BUBBLE_MIN_INTERVAL = 2.0        # RFC 4380 §5.2.6
BUBBLE_MAX_UNANSWERED = 4        # RFC 4380 §5.2.6: ... in BUBBLE_WINDOW
BUBBLE_WINDOW = 300.0
PEER_RECENT = 30.0               # RFC 4380 §5.2.3/§5.2.4: "recent" receive
PEER_QUEUE_BYTES = 1280          # Miredo: queued bytes per peer
PEER_EXPIRY = 300.0              # ours: idle peers removed; >= BUBBLE_WINDOW on purpose
PEER_LIST_MAX = 1024             # Miredo (MAX_PEERS without Judy): peer list capacity
DISCOVERY_INTERVAL_MIN = 200.0   # RFC 4380 §5.2.8
DISCOVERY_INTERVAL_MAX = 300.0
# Miredo's default route metric: never overrides native IPv6.
DEFAULT_ROUTE_METRIC = 1029

# IPv6 header (RFC 8200 §3).
IPV6_VERSION = 6
# RFC 4861 §6.1: Neighbor Discovery messages travel with hop limit 255, so that a
# receiver knows they were not forwarded.
ND_HOP_LIMIT = 255
# Hop limit of the ordinary packets we originate (echo requests of the direct
# connectivity test); the Linux default.
DEFAULT_HOP_LIMIT = 64
# RFC 4861 §4.6: Neighbor Discovery option types, and the option length unit.
ND_OPT_SOURCE_LINK_LAYER = 1
ND_OPT_PREFIX_INFORMATION = 3
ND_OPT_MTU = 5
ND_OPT_UNIT = 8
# RFC 4861 §4.6.2: prefix information flags.
ND_PREFIX_FLAG_ON_LINK = 0x80
ND_PREFIX_FLAG_AUTONOMOUS = 0x40
# RFC 4380 §5.2.9: the direct connectivity test's nonce is at least 64 bits.
ECHO_NONCE_MIN_LEN = 8

# Teredo server (RFC 4380 §5.3), as Miredo's miredo-server behaves.
# The retransmission timer its Router Advertisements carry, in milliseconds.
RA_RETRANS_TIMER_MS = 2000
# The largest IPv6 payload of a non-bubble that a server forwards: room for an echo
# carrying a nonce or hash (Miredo's limit, libteredo/server.c), too small for data.
SERVER_FORWARD_MAX_PAYLOAD = 88

# Teredo relay (RFC 4380 §5.4).
# Peer table of the relay's data path; Miredo's relay holds up to 1M with Judy.
RELAY_PEER_MAX = 65536
# ICMPv6 errors the relay's control plane sends per second (Miredo: one per 100 ms).
RELAY_ICMPV6_ERRORS_PER_S = 10.0

# Inbound guard (docs/security.md): how long a conversation the host started stays
# open to the other end's packets, by state, in seconds. Each is Linux conntrack's
# default where it has one, unless an RFC asks for more.
GUARD_TCP_HANDSHAKE = 60.0       # our SYN or SYN-ACK sent (conntrack: SYN_RECV 60 s); every retransmission restarts it
GUARD_TCP_ESTABLISHED = 7440.0   # RFC 5382 REQ-5: an established TCP idle timeout of at least 2 h 4 min
GUARD_TCP_CLOSING = 120.0        # a FIN seen either way (conntrack: FIN_WAIT / TIME_WAIT 120 s)
GUARD_TCP_CLOSED = 10.0          # an RST seen either way (conntrack: CLOSE 10 s)
GUARD_UDP = 30.0                 # UDP sent, nothing back yet (conntrack: udp_timeout 30 s)
GUARD_UDP_REPLIED = 180.0        # UDP answered (conntrack: 120 s stream; RFC 4787 REQ-5: at least 2 min)
GUARD_ICMP_ECHO = 30.0           # our echo request waits for its reply (conntrack: icmpv6_timeout 30 s)
GUARD_OTHER = 600.0              # any other transport (conntrack: generic_timeout 600 s)
GUARD_FRAGMENT = 60.0            # RFC 8200 §4.5: reassembly gives up 60 s after the first fragment
# Capacities of the guard's maps (LRU: the oldest conversation goes first).
GUARD_FLOW_MAX = 16384           # about 100 bytes of kernel memory each
GUARD_FRAGMENT_MAX = 1024        # fragmented packets in flight
GUARD_ALLOW_MAX = 1024           # (protocol, port) pairs --allow may open (a range counts each port)
# IPv6 next-header values the guard looks at or through (IANA "Assigned Internet
# Protocol Numbers"; RFC 8200 §4 for the extension headers).
IPPROTO_TCP = 6
IPPROTO_HOPOPTS = 0
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51
IPPROTO_DSTOPTS = 60
# RFC 4443 §2.1: the ICMPv6 errors RFC 4890 §4.3.1 says must not be dropped.
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_TIME_EXCEEDED = 3
ICMPV6_PARAMETER_PROBLEM = 4

# Admission to the slow path, in XDP (bpf/lib/limit.h, datapath/limits.py,
# docs/reliability.md): what one IPv4 source (per kind: a server's RAs apart), and
# all senders together, may make the control plane read from its socket. A client's
# legitimate slow path is a few packets per second (RAs every 30 s, bubbles at most
# every 2 s per peer, §5.2.6); Python handles tens of thousands per second, so the
# global rate keeps it at a few per cent of a core whatever arrives.
SLOW_PATH_SOURCE_PPS = 100
SLOW_PATH_SOURCE_BURST = 100
SLOW_PATH_GLOBAL_PPS = 2000
SLOW_PATH_GLOBAL_BURST = 2000
# A relay's slow path serves every client's bubbles (§5.4.1): ten times more.
RELAY_SLOW_PATH_GLOBAL_PPS = 20000
RELAY_SLOW_PATH_GLOBAL_BURST = 20000
# A server with its fast path in XDP (bpf/server.c): what still goes up to the daemon
# (bubbles, echo tests, odd RSs), in all; about what one Python process answers.
SERVER_SLOW_PATH_GLOBAL_PPS = 10000
