/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The relay's decisions (RFC 4380 §5.4): which native IPv6 packets it encapsulates
 * towards a Teredo client (§5.4.1), which Teredo packets it decapsulates towards
 * native IPv6 (§5.4.2), and what an answer of bpf_fib_lookup means for a packet.
 *
 * Pure functions on parsed headers and already looked-up map values, shared by the
 * XDP and tc entry points of relay.c: no context, no map. Each returns a
 * reason (shared.h), or RELAY_GO for "nothing against it, go on".
 */
#ifndef TEREDO_RELAY_H
#define TEREDO_RELAY_H

#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include <linux/ipv6.h>
#include <linux/socket.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "csum.h"
#include "decap.h"
#include "parse.h"

/* Not a reason (reasons are >= 0): the caller goes on to its next step. */
#define RELAY_GO (-1)

/* RFC 8200 §3: version (4 bits) | traffic class (8) | flow label (20). */
#define RELAY_IPV6_FLOWINFO 0x0fffffff

/* RFC 4380 §2.6: inside 2001:0000::/32. */
static __always_inline int ipv6_is_teredo(const struct in6_addr *a)
{
	return a->s6_addr32[0] == bpf_htonl(TEREDO_PREFIX_HI32);
}

/*
 * §5.4.2, once rx_check_headers found a plain Teredo packet to our address and
 * port and rx_source_verdict (relay mode) judged its source.
 */
static __always_inline int relay_decap_verdict(const struct rx_view *v, int source)
{
	/* "Unknown peer": no entry, and the IPv6 source is not a Teredo address
	 * embedding the UDP source. §5.4.2: "MUST be discarded". (A client proven at
	 * another mapping has an entry: a mismatch there goes to the control plane.) */
	if (source == TEREDO_R_RX_UNKNOWN_PEER)
		return TEREDO_R_RELAY_SOURCE_MISMATCH;
	if (source != TEREDO_R_DECAPSULATED)
		return source;
	/* A relay connects Teredo to native IPv6; clients reach each other directly
	 * (§5.2.6). Should one send another's traffic here, the slow path hairpins it. */
	if (ipv6_is_teredo(&v->ip6->daddr))
		return TEREDO_R_RELAY_TEREDO_DESTINATION;
	/* Forwarding decrements it (RFC 8200 §3); at 1 the stack answers Time Exceeded. */
	if (v->ip6->hop_limit <= 1)
		return TEREDO_R_RELAY_HOP_LIMIT;
	return RELAY_GO;
}

/* §5.4.1: a native IPv6 packet of ip6_len bytes on its way to a Teredo client. */
static __always_inline int relay_encap_verdict(const struct ipv6hdr *ip6, __u32 ip6_len,
					       const struct teredo_config *cfg)
{
	/* Native to native is the host's own routing. */
	if (!ipv6_is_teredo(&ip6->daddr))
		return TEREDO_R_RX_NOT_TEREDO;
	if (!(cfg->flags & TEREDO_CFG_ENABLED) || !cfg->nic_ifindex)
		return TEREDO_R_TX_DISABLED;
	/* RFC 4291 §2.5.6: a router never forwards a link-local source. */
	if (ipv6_is_link_local(&ip6->saddr))
		return TEREDO_R_RX_LINK_LOCAL_SOURCE;
	if (ip6->hop_limit <= 1)
		return TEREDO_R_RELAY_HOP_LIMIT;
	/* §5.1.2: Teredo clients have a 1280-byte MTU. Bigger packets go on to the tun
	 * (MTU 1280), where the stack answers Packet Too Big: never silently dropped. */
	if (ip6_len > cfg->mtu)
		return TEREDO_R_TX_TOO_BIG;
	return RELAY_GO;
}

/*
 * What an answer of bpf_fib_lookup means. NO_NEIGH is a slow-path case only for
 * XDP, which must write the MACs itself; tc's bpf_redirect_neigh resolves
 * neighbours (the caller decides). Every refusal (blackhole, unreachable,
 * prohibit, not forwarded, forwarding disabled, lwt, -EINVAL) is the stack's to
 * answer, so the packet goes there unchanged.
 */
static __always_inline int relay_fib_verdict(long rc)
{
	if (rc == BPF_FIB_LKUP_RET_SUCCESS)
		return RELAY_GO;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return TEREDO_R_RELAY_NO_NEIGH;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return TEREDO_R_RELAY_FRAG_NEEDED;
	return TEREDO_R_RELAY_NO_ROUTE;
}

/* The decapsulated packet's next hop: an ordinary IPv6 forwarding lookup from the
 * device it arrived on (ingress perspective: the kernel checks that IPv6
 * forwarding is on there, as ip6_forward would). tot_len makes it check the MTU. */
static __always_inline void relay_fib6_params(struct bpf_fib_lookup *p, const struct ipv6hdr *ip6,
					      __u32 ip6_len, __u32 ingress_ifindex)
{
	__builtin_memset(p, 0, sizeof(*p));
	p->family = AF_INET6;
	p->l4_protocol = ip6->nexthdr;
	p->tot_len = ip6_len;
	p->ifindex = ingress_ifindex;
	p->flowinfo = *(const __be32 *)ip6 & bpf_htonl(RELAY_IPV6_FLOWINFO);
	__builtin_memcpy(p->ipv6_src, &ip6->saddr, sizeof(p->ipv6_src));
	__builtin_memcpy(p->ipv6_dst, &ip6->daddr, sizeof(p->ipv6_dst));
}

/*
 * What the MTU check must see for a decapsulated GSO super-packet (a client's TSO
 * carried whole, lib/compat.h TEREDO_DECAP_FLAGS): one segment, as it will be cut
 * (IPv6 header + transport header + gso_size), not the whole skb, which would
 * always look "too big" and send every super-packet to the stack and from there
 * to our socket. The transport header is read where it can be (TCP: data offset;
 * UDP_L4 GSO: 8 bytes); otherwise the largest TCP header, so that the check errs
 * towards the stack. l4 is just after the IPv6 header.
 */
#define RELAY_TCP_HDR_MAX 60

static __always_inline __u32 relay_gso_segment_len(const struct ipv6hdr *ip6, const __u8 *l4,
						   const void *data_end, __u32 gso_size)
{
	__u32 l4_len = RELAY_TCP_HDR_MAX;

	if (ip6->nexthdr == IPPROTO_TCP && (const void *)(l4 + 13) <= data_end)
		l4_len = (l4[12] >> 4) * 4;
	else if (ip6->nexthdr == IPPROTO_UDP)
		l4_len = 8;
	return TEREDO_IPV6_HDR_LEN + l4_len + gso_size;
}

/* The encapsulated packet's next hop: leaving the IPv4 side (egress perspective,
 * BPF_FIB_LOOKUP_OUTPUT) from our address and port to the client's mapping. The
 * kernel still wants IPv4 forwarding on that device for any lookup (the loader
 * checks, and uses tc instead when it is off). */
static __always_inline void relay_fib4_params(struct bpf_fib_lookup *p,
					      const struct teredo_config *cfg,
					      const struct teredo_peer *peer, __u32 ip6_len)
{
	__builtin_memset(p, 0, sizeof(*p));
	p->family = AF_INET;
	p->l4_protocol = IPPROTO_UDP;
	p->sport = cfg->local_port;
	p->dport = peer->mapped_port;
	p->tot_len = ip6_len + TEREDO_ENCAP_OVERHEAD;
	p->ifindex = cfg->nic_ifindex;
	p->ipv4_src = cfg->local_ipv4;
	p->ipv4_dst = peer->mapped_ipv4;
}

#endif /* TEREDO_RELAY_H */
