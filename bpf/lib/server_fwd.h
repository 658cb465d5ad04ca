/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The Teredo server's forwarding (RFC 4380 §5.3.1): which bubbles and echo tests
 * the program forwards itself to a client of ours, and which it drops. Pure: no
 * context, no map; the unit (bpf/server.c) does the limits, the fib lookup and
 * the packet surgery.
 *
 * The reference is ServerPolicy._forward (xdp_teredo/teredo/server_policy.py) and
 * its tests; tests/bpf/test_server.py compares the program's output with it. The
 * program takes only what it can decide alone, everything else goes to the daemon
 * unchanged (SERVER_NOT_RS):
 *   - a payload without authentication header or origin indication (what Miredo's
 *     clients and ours send to a server: §5.2.3 indirect bubbles, §5.2.9 echoes);
 *   - a bubble (§2.8: next header 59, payload length 0) or an ICMPv6 echo request
 *     or reply of at least 8 bytes (RFC 4443 §4);
 *   - to a Teredo destination (2001:0::/32). Native destinations (a client's
 *     direct connectivity test, §5.2.9) need the raw IPv6 socket: the daemon's.
 * Its checks, in ServerPolicy's order: a Teredo source embeds the UDP source it
 * came from (else source_mismatch); a non-Teredo source is taken only towards a
 * Teredo destination (else not_ours); the destination's server is our primary
 * address (§5.3.1: we only relay for our own clients) and its mapped IPv4 is
 * global unicast; an echo is at most SERVER_FORWARD_MAX_PAYLOAD bytes (it must
 * not carry data), has code 0 and a valid checksum (parse_echo).
 */
#ifndef TEREDO_SERVER_FWD_H
#define TEREDO_SERVER_FWD_H

#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#include "csum.h"
#include "parse.h"
#include "server.h"

/* What the checks found in a packet the program forwards. */
struct server_fwd {
	struct ipv6hdr *ip6;
	__u32 ip6_len;		/* IPv6 header and payload */
	__be32 target_ipv4;	/* the destination's mapping (RFC 4380 §4), network order */
	__be16 target_port;
	int bubble;
};

static __always_inline int ipv6_is_teredo(const struct in6_addr *a)
{
	return a->s6_addr32[0] == bpf_htonl(TEREDO_PREFIX_HI32);
}

/* RFC 4443 §4: an echo of `len` bytes (8 <= len <= SERVER_FORWARD_MAX_PAYLOAD)
 * whose checksum holds. Words summed as they sit in memory (csum.h). */
static __always_inline int server_echo_ok(const struct ipv6hdr *ip6, __u8 *icmp, __u32 len,
					  void *end)
{
	__u64 sum = ipv6_pseudo_sum(ip6, len, TEREDO_IPPROTO_ICMPV6);

	if (icmp[1] != 0)
		return 0; /* RFC 4443 §4.1: code 0 */
#pragma unroll
	for (int i = 0; i < TEREDO_SERVER_FORWARD_MAX_PAYLOAD / 2; i++) {
		__u8 *p = icmp + 2 * i;

		if (2 * i + 2 > len)
			break;
		if ((void *)p + 2 > end)
			return 0;
		sum += *(__u16 *)p;
	}
	if (len & 1) {
		/* len - 1 < 128 (the caller checked len): a bound the verifier sees. */
		__u8 *last = icmp + ((len - 1) & 0x7f);

		if ((void *)last + 1 > end)
			return 0;
		sum += *last; /* the odd byte, padded with a zero after it (RFC 1071) */
	}
	return csum_fold16(sum) == 0xffff;
}

/*
 * A payload that is no RS (server_check_rs said SERVER_NOT_RS and saw no
 * authentication header): SERVER_GO with `fwd` filled when the program forwards
 * it, a drop reason, or SERVER_NOT_RS (the daemon decides). c is just past the
 * UDP header; `saddr`/`sport` the outer source.
 */
static __always_inline int server_check_fwd(struct cursor *c, const struct teredo_server_config *cfg,
					    const struct udphdr *udp, __be32 saddr, __be16 sport,
					    struct server_fwd *fwd)
{
	int left = (int)bpf_ntohs(udp->len) - TEREDO_UDP_HDR_LEN;
	struct ipv6hdr *ip6;
	__u32 payload_len;
	__u8 *icmp = NULL;
	int next;

	next = parse_ipv6(c, &ip6); /* an indicator header (first byte 0) fails here */
	if (next < 0 || left < TEREDO_IPV6_HDR_LEN)
		return TEREDO_R_SERVER_NOT_RS;
	payload_len = bpf_ntohs(ip6->payload_len);
	if ((int)payload_len != left - TEREDO_IPV6_HDR_LEN)
		return TEREDO_R_SERVER_NOT_RS; /* malformed: the daemon counts it */
	if (next == TEREDO_IPPROTO_NONE && payload_len == 0) {
		fwd->bubble = 1;
	} else if (next == TEREDO_IPPROTO_ICMPV6 && payload_len >= 8) {
		icmp = c->pos;
		if ((void *)icmp + 8 > c->end)
			return TEREDO_R_SERVER_NOT_RS;
		if (icmp[0] != TEREDO_ICMPV6_ECHO_REQUEST && icmp[0] != TEREDO_ICMPV6_ECHO_REPLY)
			return TEREDO_R_SERVER_NOT_RS;
		fwd->bubble = 0;
	} else {
		return TEREDO_R_SERVER_NOT_RS;
	}
	/* Addressed to the server itself: ServerPolicy's solicitation path. */
	if (ipv6_is_all_routers(&ip6->daddr) || ipv6_equal(&ip6->daddr, cfg->link_local))
		return TEREDO_R_SERVER_NOT_RS;
	if (ipv6_is_teredo(&ip6->saddr) && !teredo_embeds(&ip6->saddr, saddr, sport))
		return TEREDO_R_SERVER_SOURCE_MISMATCH;
	if (!ipv6_is_teredo(&ip6->daddr))
		return ipv6_is_teredo(&ip6->saddr) ? TEREDO_R_SERVER_NOT_RS /* native: the daemon's */
						    : TEREDO_R_SERVER_NOT_OURS;
	if (ip6->daddr.s6_addr32[1] != cfg->primary_ipv4)
		return TEREDO_R_SERVER_DESTINATION_OTHER_SERVER;
	fwd->target_ipv4 = ~ip6->daddr.s6_addr32[3];
	fwd->target_port = ~ip6->daddr.s6_addr16[5];
	if (!ipv4_is_global_unicast(fwd->target_ipv4))
		return TEREDO_R_SERVER_DESTINATION_NOT_GLOBAL;
	if (icmp) {
		if (payload_len > TEREDO_SERVER_FORWARD_MAX_PAYLOAD)
			return TEREDO_R_SERVER_ECHO_TOO_BIG;
		if (!server_echo_ok(ip6, icmp, payload_len, c->end))
			return TEREDO_R_SERVER_FORWARD_MALFORMED;
	}
	fwd->ip6 = ip6;
	fwd->ip6_len = TEREDO_IPV6_HDR_LEN + payload_len;
	return SERVER_GO;
}

#endif /* TEREDO_SERVER_FWD_H */
