/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The Teredo server's fast path (RFC 4380 §5.3.1): which datagrams are Router
 * Solicitations the program answers itself, and the Router Advertisement it
 * writes. Pure: no context, no map; the unit (bpf/server.c) does the lookups,
 * the limits and the packet surgery.
 *
 * The answer is exactly what ServerPolicy (xdp_teredo/teredo/server_policy.py)
 * sends for the same RS (tests/bpf/test_server.py compares the bytes): the
 * client's nonce echoed in an authentication header without client id, the
 * origin indication of the UDP source, then the RA the daemon wrote into the
 * config (server link-local source, MTU option, prefix 2001:0:<primary>::/64)
 * with the RS's source as destination. Only the two RS shapes clients send are
 * answered here: no options (ours) and one 16-byte option (Miredo's source
 * link-layer address, 14 zero bytes); everything else goes to the daemon.
 */
#ifndef TEREDO_SERVER_H
#define TEREDO_SERVER_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#include "csum.h"
#include "parse.h"

#define SERVER_ICMPV6_RS 133       /* RFC 4861 §4.1 */
#define SERVER_RS_LEN 8            /* type, code, checksum, reserved */
#define SERVER_RS_OPTION_LEN 16    /* one option of two 8-byte units (Miredo's) */
/* The RA the daemon wrote (struct teredo_server_config.ra). */
#define TEREDO_SERVER_RA_LEN sizeof(((struct teredo_server_config *)0)->ra)
/* What the program says while nothing is against the RS: the limits come next. */
#define SERVER_GO TEREDO_R_SERVER_RA

/* RFC 4380 §5.1.1: the authentication header, with no client id nor auth value. */
struct teredo_auth0 {
	__be16 indicator;		/* 0x0001 */
	__u8 id_len;
	__u8 au_len;
	__u8 nonce[8];
	__u8 confirmation;
} __attribute__((packed));

/* RFC 4380 §5.1.1: the origin indication; port and address obfuscated (~). */
struct teredo_origin {
	__be16 indicator;		/* 0x0000 */
	__be16 port;
	__be32 addr;
} __attribute__((packed));

_Static_assert(sizeof(struct teredo_auth0) == 13, "the nonce-only authentication header");
_Static_assert(sizeof(struct teredo_origin) == 8, "the origin indication");

/* What server_rs_check found in an RS it answers. */
struct server_rs {
	struct iphdr *ip;
	struct udphdr *udp;
	struct teredo_auth0 *auth;	/* NULL: the RS came without one */
	struct ipv6hdr *ip6;
};

/* Miredo's is_ipv4_global_unicast (teredo/ipv4.py's REFUSED_NETWORKS). */
static __always_inline int ipv4_is_global_unicast(__be32 addr)
{
	__u32 a = bpf_ntohl(addr);
	__u32 first = a >> 24;

	if (first == 0 || first == 10 || first == 127 || first >= 224)
		return 0;
	if ((a & 0xffff0000) == 0xa9fe0000 || (a & 0xfff00000) == 0xac100000 ||
	    (a & 0xffff0000) == 0xc0a80000 || (a & 0xffffff00) == 0xc0586300)
		return 0;
	return 1;
}

/* ff02::2, all routers (RFC 4291 §2.7.1): where clients send their RS. */
static __always_inline int ipv6_is_all_routers(const struct in6_addr *a)
{
	return a->s6_addr32[0] == bpf_htonl(0xff020000) && !a->s6_addr32[1] &&
	       !a->s6_addr32[2] && a->s6_addr32[3] == bpf_htonl(2);
}

/*
 * The outer headers: ours at all (a server address, our port), then what the
 * kernel would refuse anyway. c is just past the Ethernet header of an IPv4
 * frame; l3_len counts the bytes from there to the end of the frame.
 */
static __always_inline int server_check_outer(struct cursor *c, __u32 l3_len,
					      const struct teredo_server_config *cfg,
					      struct server_rs *rs)
{
	__u32 ip_len;

	if (parse_ipv4(c, &rs->ip) != TEREDO_IPPROTO_UDP)
		return TEREDO_R_RX_NOT_TEREDO;
	if (rs->ip->daddr != cfg->primary_ipv4 && rs->ip->daddr != cfg->secondary_ipv4)
		return TEREDO_R_RX_NOT_TEREDO;
	if (rs->ip->frag_off & bpf_htons(0x1fff))
		return TEREDO_R_RX_NOT_TEREDO; /* a later fragment: the stack reassembles */
	if (parse_udp(c, &rs->udp) < 0 || rs->udp->dest != cfg->port)
		return TEREDO_R_RX_NOT_TEREDO;
	if (!(cfg->flags & TEREDO_SERVER_ENABLED))
		return TEREDO_R_RX_DISABLED;
	if (rs->ip->frag_off & bpf_htons(0x2000))
		return TEREDO_R_RX_FRAGMENT;
	if (rs->ip->ihl != 5)
		return TEREDO_R_RX_IPV4_OPTIONS;
	if (!ipv4_csum_ok(rs->ip))
		return TEREDO_R_RX_IPV4_CHECKSUM;
	ip_len = bpf_ntohs(rs->ip->tot_len);
	if (ip_len < TEREDO_IPV4_HDR_LEN + TEREDO_UDP_HDR_LEN || ip_len > l3_len)
		return TEREDO_R_RX_IPV4_LENGTH;
	if (bpf_ntohs(rs->udp->len) != ip_len - TEREDO_IPV4_HDR_LEN)
		return TEREDO_R_RX_UDP_LENGTH;
	/* §5.3.1, and Miredo's guard against answering itself. */
	if (!ipv4_is_global_unicast(rs->ip->saddr))
		return TEREDO_R_SERVER_SOURCE_NOT_GLOBAL;
	if (rs->ip->saddr == cfg->primary_ipv4 || rs->ip->saddr == cfg->secondary_ipv4)
		return TEREDO_R_SERVER_LOOP;
	return SERVER_GO;
}

/*
 * The Teredo payload: an RS of a shape answered here (SERVER_GO), or why not.
 * c is just past the UDP header. ServerPolicy's order (server_policy.py): an RS
 * from a link-local source to ff02::2 or our link-local, whose ICMPv6 checksum
 * holds; RSs it would refuse for source or destination go to it, to be counted.
 */
static __always_inline int server_check_rs(struct cursor *c, const struct teredo_server_config *cfg,
					   struct server_rs *rs)
{
	/* Lengths are checked as numbers against the UDP length, accesses against the
	 * frame's end (the verifier only trusts the latter). */
	int left = (int)bpf_ntohs(rs->udp->len) - TEREDO_UDP_HDR_LEN;
	struct teredo_auth0 *auth = c->pos;
	struct ipv6hdr *ip6;
	__u8 *icmp;
	__u32 icmp_len;
	__u64 sum;

	rs->auth = NULL;
	if (left >= 2 && (void *)auth + 2 <= c->end && ((__u8 *)auth)[0] == 0) {
		if (((__u8 *)auth)[1] != 1)
			return TEREDO_R_SERVER_RS_SLOW_PATH; /* an origin indication: no client sends one */
		if (left < (int)sizeof(*auth) || (void *)(auth + 1) > c->end ||
		    auth->id_len || auth->au_len)
			return TEREDO_R_SERVER_RS_SLOW_PATH; /* secure qualification: not ours */
		rs->auth = auth;
		c->pos = auth + 1;
		left -= sizeof(*auth);
	}
	if (left < TEREDO_IPV6_HDR_LEN + SERVER_RS_LEN ||
	    parse_ipv6(c, &ip6) != TEREDO_IPPROTO_ICMPV6)
		return TEREDO_R_SERVER_NOT_RS;
	icmp = c->pos;
	if ((void *)icmp + SERVER_RS_LEN > c->end || icmp[0] != SERVER_ICMPV6_RS)
		return TEREDO_R_SERVER_NOT_RS;
	rs->ip6 = ip6;
	icmp_len = bpf_ntohs(ip6->payload_len);
	/* parse_ipv6 in Python: exactly the bytes present, no more, no less. */
	if ((int)icmp_len != left - TEREDO_IPV6_HDR_LEN)
		return TEREDO_R_SERVER_RS_MALFORMED;
	if (icmp_len != SERVER_RS_LEN && icmp_len != SERVER_RS_LEN + SERVER_RS_OPTION_LEN)
		return TEREDO_R_SERVER_RS_SLOW_PATH;
	if (!ipv6_is_link_local(&ip6->saddr) ||
	    !(ipv6_is_all_routers(&ip6->daddr) || ipv6_equal(&ip6->daddr, cfg->link_local)))
		return TEREDO_R_SERVER_RS_SLOW_PATH;
	if (icmp[1] != 0)
		return TEREDO_R_SERVER_RS_MALFORMED; /* RFC 4861 §6.1.1: code 0 */

	sum = ipv6_pseudo_sum(ip6, icmp_len, TEREDO_IPPROTO_ICMPV6);
#pragma unroll
	for (int i = 0; i < SERVER_RS_LEN / 2; i++)
		sum += ((__u16 *)icmp)[i];
	if (icmp_len != SERVER_RS_LEN) {
		__u16 *option = (__u16 *)(icmp + SERVER_RS_LEN);

		if ((void *)option + SERVER_RS_OPTION_LEN > c->end)
			return TEREDO_R_SERVER_RS_MALFORMED;
		/* RFC 4861 §4.6: the length in 8-byte units; one option, all of it. */
		if (((__u8 *)option)[1] != SERVER_RS_OPTION_LEN / 8)
			return TEREDO_R_SERVER_RS_SLOW_PATH;
#pragma unroll
		for (int i = 0; i < SERVER_RS_OPTION_LEN / 2; i++)
			sum += option[i];
	}
	if (csum_fold16(sum) != 0xffff)
		return TEREDO_R_SERVER_RS_MALFORMED;
	return SERVER_GO;
}

/* §5.3.1: the RA leaves from the address the RS came to, unless the RS's source
 * has the cone bit (fe80::8000:...): then from the other one (the cone test). */
static __always_inline __be32 server_ra_via(const struct teredo_server_config *cfg,
					    __be32 arrived_on, const struct in6_addr *rs_source)
{
	if (!(rs_source->s6_addr[8] & 0x80))
		return arrived_on;
	return arrived_on == cfg->primary_ipv4 ? cfg->secondary_ipv4 : cfg->primary_ipv4;
}

/*
 * The RA's ICMPv6 checksum for this destination: the daemon summed everything
 * else (pseudo-header source, length, next header; the message with a zero
 * checksum) into ra_sum, the same way (16-bit words as they sit in memory).
 */
static __always_inline __u16 server_ra_csum(const struct teredo_server_config *cfg,
					    const struct in6_addr *dst)
{
	__u64 sum = cfg->ra_sum;

#pragma unroll
	for (int i = 0; i < 8; i++)
		sum += dst->s6_addr16[i];
	return csum_fold32(sum);
}

#endif /* TEREDO_SERVER_H */
