/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Header parsing: one contract for every header (after xdp-tools' parsing_helpers.h).
 *
 *     static __always_inline int parse_X(struct cursor *c, struct X **hdr);
 *
 * c->pos points at the header to parse, c->end is the end of the packet data the
 * program may read (data_end). When the whole header fits, *hdr points at it,
 * c->pos moves just past it, and the return value says what comes next: the
 * EtherType or protocol number in host byte order, or a length where the header
 * has no "next" field (UDP). When it does not fit, or is not that header at all,
 * the return value is -1 and neither c->pos nor *hdr is touched.
 *
 * The helpers take the cursor, not a context, so that the same code parses an
 * xdp_md frame, an __sk_buff on an Ethernet device (tc on the NIC, and every
 * SCHED_CLS test run) and an __sk_buff on the L3 tun device (no MAC header): the
 * caller chooses where the cursor starts.
 */
#ifndef TEREDO_PARSE_H
#define TEREDO_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

struct cursor {
	void *pos;
	void *end;
};

static __always_inline int parse_ethhdr(struct cursor *c, struct ethhdr **hdr)
{
	struct ethhdr *eth = c->pos;

	if ((void *)(eth + 1) > c->end)
		return -1;
	c->pos = eth + 1;
	*hdr = eth;
	/* VLAN tags are not looked through: a tagged frame is not ours. */
	return bpf_ntohs(eth->h_proto);
}

/* IPv4 with its options (IHL 5..15): the cursor lands on the transport header. */
static __always_inline int parse_ipv4(struct cursor *c, struct iphdr **hdr)
{
	struct iphdr *ip = c->pos;
	__u32 hdr_len;

	if ((void *)(ip + 1) > c->end)
		return -1;
	if (ip->version != 4 || ip->ihl < 5)
		return -1;
	hdr_len = ip->ihl * 4;
	if (c->pos + hdr_len > c->end)
		return -1;
	c->pos += hdr_len;
	*hdr = ip;
	return ip->protocol;
}

/* Returns the UDP length field (header included), host byte order. */
static __always_inline int parse_udp(struct cursor *c, struct udphdr **hdr)
{
	struct udphdr *udp = c->pos;

	if ((void *)(udp + 1) > c->end)
		return -1;
	c->pos = udp + 1;
	*hdr = udp;
	return bpf_ntohs(udp->len);
}

/* Only the fixed header (RFC 8200 §3); extension headers are the payload's business. */
static __always_inline int parse_ipv6(struct cursor *c, struct ipv6hdr **hdr)
{
	struct ipv6hdr *ip6 = c->pos;

	if ((void *)(ip6 + 1) > c->end)
		return -1;
	if (ip6->version != TEREDO_IPV6_VERSION)
		return -1;
	c->pos = ip6 + 1;
	*hdr = ip6;
	return ip6->nexthdr;
}

/* Address classes of RFC 4291 §2.4, on the first bytes as stored on the wire. */
static __always_inline int ipv6_is_link_local(const struct in6_addr *a)
{
	return a->s6_addr[0] == 0xfe && (a->s6_addr[1] & 0xc0) == 0x80; /* fe80::/10 */
}

static __always_inline int ipv6_is_multicast(const struct in6_addr *a)
{
	return a->s6_addr[0] == 0xff; /* ff00::/8 */
}

/* Two IPv6 addresses, compared four bytes at a time; b may be a map value. */
static __always_inline int ipv6_equal(const struct in6_addr *a, const __u8 *b)
{
	const __u32 *x = a->s6_addr32;
	const __u32 *y = (const __u32 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

/*
 * RFC 4380 §4: 2001:0000:<server>:<flags>:<port ^ 0xffff>:<client IPv4 ^ 0xffffffff>.
 * True when the address is a Teredo address whose obfuscated mapping is exactly
 * this UDP source (RFC 4380 §5.2.3, §5.4.2). saddr and sport in network order.
 */
static __always_inline int teredo_embeds(const struct in6_addr *a, __be32 saddr, __be16 sport)
{
	return a->s6_addr32[0] == bpf_htonl(TEREDO_PREFIX_HI32) &&
	       a->s6_addr16[5] == (__u16)~sport &&
	       a->s6_addr32[3] == ~saddr;
}

/* tc: the first `want` bytes (or the whole packet) into the linear area, where
 * the parsers read; the caller reloads skb->data and skb->data_end after it. */
static __always_inline void tc_pull(struct __sk_buff *skb, __u32 want)
{
	if ((long)skb->data + want > (long)skb->data_end && skb->len > skb->data_end - skb->data)
		bpf_skb_pull_data(skb, skb->len < want ? skb->len : want);
}

/*
 * tc receive: whether a frame can be Teredo at all (IPv4 carrying UDP), read
 * without a pull. Most of what crosses the NIC is the host's own traffic, TCP
 * from local senders among it, whose skbs are clones with their headers alone
 * in the linear area: bpf_skb_pull_data would make each one private (a copy of
 * its head) just to be told it is not ours. Only a frame that may be ours is
 * pulled.
 */
static __always_inline int tc_maybe_udp4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	struct iphdr *ip = data + ETH_HLEN;
	__u8 proto;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 0;
	if ((void *)(ip + 1) <= (void *)(long)skb->data_end)
		return ip->protocol == IPPROTO_UDP;   /* in the linear area: no helper call */
	if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, protocol), &proto, 1))
		return 0;
	return proto == IPPROTO_UDP;
}

#endif /* TEREDO_PARSE_H */
