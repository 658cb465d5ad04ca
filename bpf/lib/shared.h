/* SPDX-License-Identifier: GPL-2.0 */
/*
 * GENERATED FILE, DO NOT EDIT.
 * Made by tools/gen_shared_header.py from xdp_teredo/teredo/constants.py and
 * xdp_teredo/datapath/layout.py: change those, then run
 *     .venv/bin/python tools/gen_shared_header.py
 * tests/unit/test_shared_header.py fails while this file is out of date.
 */
#ifndef TEREDO_SHARED_H
#define TEREDO_SHARED_H

#include <linux/types.h>

/* Protocol numbers (xdp_teredo/teredo/constants.py). */
#define TEREDO_PREFIX_HI32       0x20010000   /* RFC 4380 §2.6: 2001:0000::/32, first 32 bits */
#define TEREDO_MTU               1280         /* RFC 4380 §5.1.2: tunnel MTU */
#define TEREDO_INDICATOR_AUTH    1            /* RFC 4380 §5.1.1: authentication header */
#define TEREDO_INDICATOR_ORIGIN  0            /* RFC 4380 §5.1.1: origin indication */
#define TEREDO_IPPROTO_UDP       17           /* outer transport */
#define TEREDO_IPPROTO_NONE      59           /* RFC 4380 §2.8: a bubble's next header */
#define TEREDO_IPPROTO_ICMPV6    58           /* RFC 4443: what a server answers (RS) */
#define TEREDO_IPV6_VERSION      6            /* RFC 8200 §3 */
#define TEREDO_IPV4_HDR_LEN      20           /* outer IPv4 header we write (no options) */
#define TEREDO_UDP_HDR_LEN       8            /* outer UDP header */
#define TEREDO_ENCAP_OVERHEAD    28           /* IPv4 + UDP in front of the IPv6 packet */
#define TEREDO_IPV6_HDR_LEN      40           /* fixed IPv6 header */
#define TEREDO_ICMPV6_ECHO_REQUEST 128          /* RFC 4443 §4.1 */
#define TEREDO_ICMPV6_ECHO_REPLY 129          /* RFC 4443 §4.2 */
#define TEREDO_SERVER_FORWARD_MAX_PAYLOAD 88           /* the longest echo a server forwards (ICMPv6 bytes): nothing that could carry data */

/* struct teredo_config.flags */
#define TEREDO_CFG_ENABLED 0x1       /* off: every Teredo packet goes to the slow path (not qualified yet) */
#define TEREDO_CFG_LEARN_PEERS 0x2   /* RFC 4380 §5.2.3: a source embedding its UDP source becomes a trusted peer */
#define TEREDO_CFG_RELAY 0x4         /* RFC 4380 §5.4.2: relay rules instead of client rules */
#define TEREDO_CFG_OFFLOADS_PASS 0x8 /* client: the NIC finishes what is left to offload (not a veth, or --veth-offloads pass); only UDP GSO takes the checksum veth */

/* struct teredo_peer.flags */
#define TEREDO_PEER_TRUSTED 0x1      /* RFC 4380 §5.2.4: the peer answered; send to it directly */
#define TEREDO_PEER_LEARNED 0x2      /* created by the data path (ConfigFlag.LEARN_PEERS), not the control plane */
#define TEREDO_PEER_RELAY 0x4        /* a native IPv6 host reached through this relay (§5.2.9) */
#define TEREDO_PEER_TAKES_OFFLOADS 0x8 /* no checksum detour to it: client, an echo left to offload came back (client/csum_detour.py); relay, its outer UDP checksums arrive finished (bpf/relay.c) */

/* struct teredo_server_config.flags */
#define TEREDO_SERVER_ENABLED 0x1    /* off: every datagram to the server goes to the daemon (ServerPolicy) */

/* struct teredo_guard_config.policy */
#define TEREDO_GUARD_OPEN 0x0        /* the guard map never written, or --inbound open: everything passes */
#define TEREDO_GUARD_STATEFUL 0x1    /* only flows the host started, allowed ports and needed ICMPv6 come in */

/* struct teredo_flow.state (xdp_teredo/teredo/guard.py) */
#define TEREDO_FLOW_TCP_HANDSHAKE 0x1 /* a SYN or SYN-ACK of ours went out, the handshake is under way */
#define TEREDO_FLOW_TCP_ESTABLISHED 0x2 /* we sent a segment without SYN/FIN/RST */
#define TEREDO_FLOW_TCP_CLOSING 0x3  /* a FIN went either way */
#define TEREDO_FLOW_TCP_CLOSED 0x4   /* an RST went either way */
#define TEREDO_FLOW_UDP 0x5          /* we sent UDP, nothing came back yet */
#define TEREDO_FLOW_UDP_REPLIED 0x6  /* the other end answered */
#define TEREDO_FLOW_ICMP_ECHO 0x7    /* our echo request: errors about it (traceroute) come in */
#define TEREDO_FLOW_OTHER 0x8        /* any other transport, no ports */

/* struct teredo_xdp_meta.magic of a frame our XDP program decapsulated. */
#define TEREDO_XDP_META_MAGIC 0x7e3ed0deU

/* Key of the peer table: the peer's IPv6 address, as on the wire. */
struct teredo_peer_key {
	__u8 addr[16];
};
_Static_assert(sizeof(struct teredo_peer_key) == 16, "struct teredo_peer_key differs from layout.PeerKey");

/* Value of the peer table: where the peer's packets go, and activity. */
struct teredo_peer {
	__be32 mapped_ipv4;          /* the peer's mapped IPv4 address */
	__be16 mapped_port;          /* the peer's mapped UDP port */
	__u16 flags;                 /* PeerFlag */
	__u64 last_rx_ns;            /* last receive (RFC 4380 §5.2.3 "recent") */
	__u64 last_tx_ns;            /* last send */
	__u64 rx_packets;
	__u64 rx_bytes;              /* IPv6 bytes (inner packet) received */
	__u64 tx_packets;            /* also the source of the outer IPv4 ID */
	__u64 tx_bytes;              /* IPv6 bytes (inner packet) sent */
};
_Static_assert(sizeof(struct teredo_peer) == 56, "struct teredo_peer differs from layout.PeerValue");

/* The one entry of the config map, written by the control plane. */
struct teredo_config {
	__be32 local_ipv4;           /* our IPv4 address (the Teredo socket's) */
	__be16 local_port;           /* our UDP port (the Teredo socket's) */
	__u16 flags;                 /* ConfigFlag */
	__u8 teredo_addr[16];        /* our Teredo IPv6 address */
	__u32 nic_ifindex;           /* where encapsulated packets leave */
	__u32 tun_ifindex;           /* where decapsulated packets arrive */
	__u64 peer_timeout_ns;       /* a peer is fresh this long after last_rx */
	__u32 mtu;                   /* the tunnel MTU (RFC 4380 §5.1.2: 1280) */
	__u32 l2_len;                /* tc egress: bytes before the IPv6 header */
	__u32 csum_out_ifindex;      /* tc (relay; client on a veth NIC): the checksum veth end to send pending-checksum packets out of (0: none, net/csum_veth.py) */
	__u32 csum_in_ifindex;       /* its other end, where they come back finished */
};
_Static_assert(sizeof(struct teredo_config) == 56, "struct teredo_config differs from layout.ConfigValue");

/* Value of the per-CPU stats array, one slot per Reason. */
struct teredo_stat {
	__u64 packets;
	__u64 bytes;
};
_Static_assert(sizeof(struct teredo_stat) == 16, "struct teredo_stat differs from layout.StatValue");

/* XDP metadata in front of a decapsulated frame, read by tc ingress. */
struct teredo_xdp_meta {
	__u32 magic;
};
_Static_assert(sizeof(struct teredo_xdp_meta) == 4, "struct teredo_xdp_meta differs from layout.XdpMeta");

/* Key of the guard's flow table: a conversation the host started, as it sees it. */
struct teredo_flow_key {
	__u8 local[16];              /* our IPv6 address (a relay: its client's) */
	__u8 remote[16];             /* the other end's IPv6 address */
	__be16 local_port;           /* TCP/UDP port on our side; ICMPv6 echo: the identifier */
	__be16 remote_port;          /* TCP/UDP port on the other side; else 0 */
	__u8 proto;                  /* transport: IPv6 next header after the extension headers */
	__u8 pad[3];                 /* zero (hash keys compare every byte) */
};
_Static_assert(sizeof(struct teredo_flow_key) == 40, "struct teredo_flow_key differs from layout.FlowKey");

/* Value of the guard's flow table: when the flow last moved, and its state. */
struct teredo_flow {
	__u64 seen_ns;               /* last packet of the flow, either way */
	__u32 state;                 /* FlowState: decides the timeout */
	__u32 pad;
};
_Static_assert(sizeof(struct teredo_flow) == 16, "struct teredo_flow differs from layout.FlowValue");

/* Key of the guard's fragment table: a fragmented packet whose first fragment came in. */
struct teredo_fragment_key {
	__u8 local[16];
	__u8 remote[16];
	__be32 identification;       /* RFC 8200 §4.5, as on the wire */
};
_Static_assert(sizeof(struct teredo_fragment_key) == 36, "struct teredo_fragment_key differs from layout.FragmentKey");

/* Key of the guard's allowed ports (--allow PROTO/PORT). */
struct teredo_allow_key {
	__u8 proto;                  /* 6 (TCP) or 17 (UDP) */
	__u8 pad;
	__be16 port;                 /* our port */
};
_Static_assert(sizeof(struct teredo_allow_key) == 4, "struct teredo_allow_key differs from layout.AllowKey");

/* Value of the guard's allowed ports: how many new conversations it let in. */
struct teredo_allow {
	__u64 packets;
};
_Static_assert(sizeof(struct teredo_allow) == 8, "struct teredo_allow differs from layout.AllowValue");

/* The one entry of the guard map: the policy and the flow timeouts. */
struct teredo_guard_config {
	__u32 policy;                /* GuardPolicy; all zeros (never written): open */
	__u32 pad;
	__u64 tcp_handshake_ns;
	__u64 tcp_established_ns;
	__u64 tcp_closing_ns;
	__u64 tcp_closed_ns;
	__u64 udp_ns;
	__u64 udp_replied_ns;
	__u64 icmp_echo_ns;
	__u64 other_ns;
	__u64 fragment_ns;           /* a first fragment lets the rest in this long */
};
_Static_assert(sizeof(struct teredo_guard_config) == 80, "struct teredo_guard_config differs from layout.GuardConfigValue");

/* Key of the slow-path buckets: who sent it, and what kind of packet. */
struct teredo_slow_path_key {
	__be32 saddr;                /* the outer IPv4 source, as on the wire */
	__u32 kind;                  /* TEREDO_SLOW_PATH_AUTH (a server's RA) or _OTHER */
};
_Static_assert(sizeof(struct teredo_slow_path_key) == 8, "struct teredo_slow_path_key differs from layout.SlowPathKey");

/* The one entry of the slow-path limits: GCRA interval and tolerance; 0 = no limit. */
struct teredo_slow_path_limits {
	__u64 source_interval_ns;    /* per source and kind: 1 s / rate */
	__u64 source_tolerance_ns;   /* (burst - 1) * interval */
	__u64 global_interval_ns;    /* everything together */
	__u64 global_tolerance_ns;
};
_Static_assert(sizeof(struct teredo_slow_path_limits) == 32, "struct teredo_slow_path_limits differs from layout.SlowPathLimits");

/* The one entry of the server's config: its addresses, its RA, the RA and forwarding rates. */
struct teredo_server_config {
	__be32 primary_ipv4;         /* the address clients are given (RFC 4380 §5.3) */
	__be32 secondary_ipv4;       /* the other one: the cone test's (§5.2.1) */
	__be16 port;                 /* UDP port of both (3544) */
	__u16 flags;                 /* ServerFlag */
	__u32 ra_sum;                /* the RA's ICMPv6 sum without its destination, unfolded */
	__u8 link_local[16];         /* the server's link-local: RSs may be sent to it */
	__u64 ra_source_interval_ns; /* RAs to one IPv4 address: 1 s / rate */
	__u64 ra_source_tolerance_ns; /* (burst - 1) * interval */
	__u64 ra_global_interval_ns; /* RAs in all; 0: no limit */
	__u64 ra_global_tolerance_ns;
	__u64 fwd_interval_ns;       /* forwarded packets per IPv4 address (sender or target): 1 s / rate; 0: no limit */
	__u64 fwd_tolerance_ns;      /* (burst - 1) * interval */
	__u8 ra[96];                 /* the RA (IPv6 header first), destination and checksum zero */
};
_Static_assert(sizeof(struct teredo_server_config) == 176, "struct teredo_server_config differs from layout.ServerConfigValue");

/* Verdict reasons: the index of the per-CPU stats array. Ordered by kind: ok,
 * then pass (untouched, to the stack / control plane), then drop. */
enum teredo_reason {
	TEREDO_R_DECAPSULATED = 0,               /* ok: XDP or tc: outer IPv4/UDP stripped, IPv6 to the tun */
	TEREDO_R_ENCAPSULATED = 1,               /* ok: tc egress: IPv6 wrapped in IPv4/UDP, out of the NIC */
	TEREDO_R_RX_REDIRECTED = 2,              /* ok: tc ingress: an XDP-decapsulated frame sent into the tun */
	TEREDO_R_SERVER_RA = 3,                  /* ok: server XDP: an RS answered with the Router Advertisement, XDP_TX (RFC 4380 §5.3.1) */
	TEREDO_R_RELAY_CSUM_DETOUR = 4,          /* ok: relay tc: a same-host sender left a checksum (or GSO) to offload: out through the relay's checksum veth, which finishes it, taken on the way back in */
	TEREDO_R_SERVER_FORWARDED_BUBBLE = 5,    /* ok: server XDP: a bubble forwarded to a client of ours with the sender's origin indication, XDP_TX (RFC 4380 §5.3.1) */
	TEREDO_R_SERVER_FORWARDED_ECHO = 6,      /* ok: server XDP: an echo test forwarded to a client of ours, XDP_TX (RFC 4380 §5.3.1, §5.2.9) */
	TEREDO_R_TX_CSUM_DETOUR = 7,             /* ok: client tc egress, NIC a veth: a checksum (or GSO) left to offload: out through the client's checksum veth, which finishes it, encapsulated on the way back in */
	TEREDO_R_RX_NOT_TEREDO = 8,              /* pass: not IPv4/UDP to our address and port: host traffic */
	TEREDO_R_RX_DISABLED = 9,                /* pass: config says not enabled (not qualified yet) */
	TEREDO_R_RX_FRAGMENT = 10,               /* pass: IPv4 first fragment: the stack reassembles for the socket */
	TEREDO_R_RX_IPV4_OPTIONS = 11,           /* pass: legal but rare: the socket gets it */
	TEREDO_R_RX_AUTH = 12,                   /* pass: RFC 4380 §5.1.1 authentication header: server traffic */
	TEREDO_R_RX_ORIGIN = 13,                 /* pass: RFC 4380 §5.1.1 origin indication: server traffic */
	TEREDO_R_RX_BUBBLE = 14,                 /* pass: RFC 4380 §2.8: next header 59, payload length 0 */
	TEREDO_R_RX_LINK_LOCAL_SOURCE = 15,      /* pass: fe80::/10 source (RFC 4380 §5.2.3 says drop: control plane) */
	TEREDO_R_RX_MULTICAST_DESTINATION = 16,  /* pass: ff00::/8 destination (idem) */
	TEREDO_R_RX_NOT_OUR_ADDRESS = 17,        /* pass: IPv6 destination is not our Teredo address */
	TEREDO_R_RX_UNKNOWN_PEER = 18,           /* pass: no peer entry, source does not embed the UDP source */
	TEREDO_R_RX_UNTRUSTED_PEER = 19,         /* pass: the control plane is still talking to this peer */
	TEREDO_R_RX_MAPPING_MISMATCH = 20,       /* pass: trusted entry, but from another IPv4 address/port */
	TEREDO_R_RX_DECAP_UNSUPPORTED = 21,      /* pass: adjust_meta/adjust_head/adjust_room refused: untouched */
	TEREDO_R_TX_NOT_IPV6 = 22,               /* pass: not an IPv6 packet */
	TEREDO_R_TX_DISABLED = 23,               /* pass: config says not enabled */
	TEREDO_R_TX_MALFORMED = 24,              /* pass: truncated IPv6 header or wrong version */
	TEREDO_R_TX_TOO_BIG = 25,                /* pass: above the tunnel MTU: the control plane sends Packet Too Big */
	TEREDO_R_TX_NO_PEER = 26,                /* pass: no peer entry: the control plane resolves it (bubbles, echo) */
	TEREDO_R_TX_UNTRUSTED_PEER = 27,         /* pass: RFC 4380 §5.2.4: queue and bubble, in the control plane */
	TEREDO_R_TX_STALE_PEER = 28,             /* pass: RFC 4380 §5.2.4: trusted but no recent receive */
	TEREDO_R_TX_ENCAP_UNSUPPORTED = 29,      /* pass: bpf_skb_adjust_room refused: untouched */
	TEREDO_R_RELAY_NO_NEIGH = 30,            /* pass: relay XDP: fib lookup found no neighbour (MAC) yet: the stack resolves it */
	TEREDO_R_RELAY_NO_ROUTE = 31,            /* pass: relay: fib lookup found no usable route (or forwarding is off): the stack decides */
	TEREDO_R_RELAY_FRAG_NEEDED = 32,         /* pass: relay: above the egress MTU: the stack sends Packet Too Big or fragments */
	TEREDO_R_RELAY_HOP_LIMIT = 33,           /* pass: relay: hop limit <= 1: the stack sends Time Exceeded (RFC 8200 §3) */
	TEREDO_R_RELAY_TEREDO_DESTINATION = 34,  /* pass: relay: Teredo client to Teredo address: hairpin through the tun, slow path */
	TEREDO_R_RELAY_EGRESS_NOT_XDP = 35,      /* pass: relay XDP: the egress device takes no XDP-redirected frames (not in the devmap) */
	TEREDO_R_RELAY_OFFLOAD_PENDING = 36,     /* pass: relay tc: a checksum or GSO left to offload that no checksum veth took (none, or it came back still looking pending): the stack completes it */
	TEREDO_R_SERVER_NOT_RS = 37,             /* pass: server: a bubble, an echo test or anything but an RS: the daemon's (forwarding, §5.3.1) */
	TEREDO_R_SERVER_RS_SLOW_PATH = 38,       /* pass: server: an RS in a shape the program leaves to the daemon (client id, origin, other options) */
	TEREDO_R_SERVER_FORWARD_NO_ROUTE = 39,   /* pass: server XDP: a packet to forward whose next hop the fib does not give on this device (no route, no neighbour, forwarding off): the daemon sends it */
	TEREDO_R_RX_IPV4_CHECKSUM = 40,          /* drop: bad outer IPv4 header checksum */
	TEREDO_R_RX_IPV4_LENGTH = 41,            /* drop: IPv4 total length shorter than its headers or the frame */
	TEREDO_R_RX_UDP_LENGTH = 42,             /* drop: UDP length != IPv4 payload length */
	TEREDO_R_RX_NOT_IPV6 = 43,               /* drop: UDP payload is neither IPv6 nor an indicator header */
	TEREDO_R_RX_IPV6_TRUNCATED = 44,         /* drop: UDP payload shorter than an IPv6 header */
	TEREDO_R_RX_IPV6_LENGTH = 45,            /* drop: 40 + IPv6 payload length != UDP payload length */
	TEREDO_R_RX_NO_TUN = 46,                 /* drop: tc ingress: a decapsulated frame, but no tun configured any more */
	TEREDO_R_TX_ENCAP_ERROR = 47,            /* drop: writing the outer headers failed half-way */
	TEREDO_R_TX_REDIRECT_FAILED = 48,        /* drop: bpf_redirect_neigh refused */
	TEREDO_R_RELAY_SOURCE_MISMATCH = 49,     /* drop: relay: RFC 4380 §5.4.2: the IPv6 source is not a Teredo address embedding the UDP source */
	TEREDO_R_RELAY_REDIRECT_FAILED = 50,     /* drop: relay: the redirect failed after the rewrite (devmap entry gone, redirect_neigh refused) */
	TEREDO_R_GUARD_UNSOLICITED = 51,         /* drop: guard: not a flow the host started, nor an allowed port (a TCP SYN, a UDP probe) */
	TEREDO_R_GUARD_ICMPV6 = 52,              /* drop: guard: ICMPv6 that IPv6 does not need from afar (errors about no flow of ours, ND) */
	TEREDO_R_GUARD_FRAGMENT = 53,            /* drop: guard: a later fragment whose first fragment was not let in */
	TEREDO_R_GUARD_UNPARSED = 54,            /* drop: guard: extension headers or transport header beyond what it reads: not checkable, so not taken */
	TEREDO_R_RX_SLOW_PATH_SOURCE_LIMIT = 55, /* drop: for the control plane, but its sender (IPv4 source and kind) is over its rate */
	TEREDO_R_RX_SLOW_PATH_LIMIT = 56,        /* drop: for the control plane, but the slow path as a whole is over its rate */
	TEREDO_R_SERVER_SOURCE_NOT_GLOBAL = 57,  /* drop: server: the IPv4 source is not global unicast (§5.3.1) */
	TEREDO_R_SERVER_LOOP = 58,               /* drop: server: the IPv4 source is one of the server's own addresses */
	TEREDO_R_SERVER_RS_MALFORMED = 59,       /* drop: server: an RS with a bad ICMPv6 checksum, code or option length (§5.3.1: discarded) */
	TEREDO_R_SERVER_RA_SOURCE_LIMIT = 60,    /* drop: server: RAs to this IPv4 address are over its rate */
	TEREDO_R_SERVER_RA_LIMIT = 61,           /* drop: server: RAs in all are over the server's rate */
	TEREDO_R_SERVER_SOURCE_MISMATCH = 62,    /* drop: server: a Teredo IPv6 source that does not embed the UDP source (§5.3.1) */
	TEREDO_R_SERVER_NOT_OURS = 63,           /* drop: server: neither source nor destination a Teredo address (§5.3.1) */
	TEREDO_R_SERVER_DESTINATION_OTHER_SERVER = 64, /* drop: server: a Teredo destination whose server is not our primary address */
	TEREDO_R_SERVER_DESTINATION_NOT_GLOBAL = 65, /* drop: server: the destination's mapped IPv4 is not global unicast */
	TEREDO_R_SERVER_ECHO_TOO_BIG = 66,       /* drop: server: an echo longer than SERVER_FORWARD_MAX_PAYLOAD: could carry data */
	TEREDO_R_SERVER_FORWARD_MALFORMED = 67,  /* drop: server: an echo to forward with a bad ICMPv6 code or checksum, or truncated */
	TEREDO_R_SERVER_FORWARD_SOURCE_LIMIT = 68, /* drop: server: forwarded packets from this IPv4 address are over its rate */
	TEREDO_R_SERVER_FORWARD_DESTINATION_LIMIT = 69, /* drop: server: forwarded packets to this IPv4 address are over its rate */
	TEREDO_R_MAX = 70,
};
#define TEREDO_R_FIRST_PASS 8
#define TEREDO_R_FIRST_DROP 40

#endif /* TEREDO_SHARED_H */
