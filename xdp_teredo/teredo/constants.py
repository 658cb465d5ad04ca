"""Protocol constants: the single source of truth.

bpf/teredo_shared.h is generated from this module (and from
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
# RFC 4380 §2.17: local discovery multicast group.
TEREDO_DISCOVERY_GROUP = "224.0.0.253"

# RFC 4380 §4: flags. The cone bit; RFC 5991 §3 deprecates setting it.
FLAG_CONE = 0x8000
# RFC 4380 §4 as updated by RFC 5991 §4: the U (0x0200) and G (0x0100) bits must be
# zero; the remaining 12 bits are random so that the address is not guessable.
FLAG_U = 0x0200
FLAG_G = 0x0100
FLAG_RANDOM_MASK = 0x7FFF & ~(FLAG_U | FLAG_G)  # 12 bits: 0x3CFF

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

# Miredo's link-local addresses for the RS (libteredo/teredo.h).
LINK_LOCAL_RESTRICTED = "fe80::ffff:ffff:ffff"
LINK_LOCAL_CONE = "fe80::8000:5445:5245:444f"  # "TEREDO"
ALL_ROUTERS = "ff02::2"

# Timers, in seconds.
QUALIFICATION_TIMEOUT = 4.0      # RFC 4380 §5.2.1: RS timeout
QUALIFICATION_TRIES = 3          # RFC 4380 §5.2.1
REFRESH_INTERVAL = 30.0          # RFC 4380 §5.2.7: default refresh interval
RESTART_DELAY = 100.0            # Miredo: wait after failed qualification
ECHO_TIMEOUT = 2.0               # RFC 4380 §5.2.9: direct connectivity test
ECHO_TRIES = 3
BUBBLE_MIN_INTERVAL = 2.0        # RFC 4380 §5.2.6
BUBBLE_MAX_UNANSWERED = 4        # RFC 4380 §5.2.6: ... in BUBBLE_WINDOW
BUBBLE_WINDOW = 300.0
PEER_RECENT = 30.0               # RFC 4380 §5.2.3/§5.2.4: "recent" receive
PEER_QUEUE_BYTES = 1280          # Miredo: queued bytes per peer
DISCOVERY_INTERVAL_MIN = 200.0   # RFC 4380 §5.2.8
DISCOVERY_INTERVAL_MAX = 300.0
# Miredo's default route metric: never overrides native IPv6.
DEFAULT_ROUTE_METRIC = 1029
