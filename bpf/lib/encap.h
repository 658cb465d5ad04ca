/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Encapsulation (RFC 4380 §5.1.1, plain Teredo): IPv4 | UDP | IPv6 packet.
 *
 * The outer header stack is one packed struct, so that a single bounds check (or a
 * single bpf_skb_store_bytes) covers it. The writer below is pure: it takes no
 * context and touches no map, so what it produces depends only on its arguments.
 */
#ifndef TEREDO_ENCAP_H
#define TEREDO_ENCAP_H

#include <linux/ip.h>
#include <linux/udp.h>

#include "csum.h"

/* TTL of the outer IPv4 header: the Linux default for UDP sockets, as Miredo sends. */
#ifndef TEREDO_TTL
#define TEREDO_TTL 64
#endif

struct teredo_outer4 {
	struct iphdr ip;
	struct udphdr udp;
} __attribute__((packed));

_Static_assert(sizeof(struct teredo_outer4) == TEREDO_ENCAP_OVERHEAD,
	       "the outer headers are exactly IPv4 (no options) + UDP");

/*
 * Fill the outer headers for an IPv6 packet of ip6_len bytes, from
 * saddr:sport to daddr:dport (all in network order).
 *
 * - DF clear: the IPv6 layer above assumes the fixed 1280-byte tunnel MTU
 *   (RFC 4380 §5.1.2) and never learns the IPv4 path MTU, so a path narrower than
 *   1308 bytes must fragment rather than black-hole. Hence a real IPv4 ID, unique
 *   per destination (RFC 6864 §4.3 for non-atomic datagrams): the caller passes
 *   the peer's packet counter.
 * - UDP checksum 0: legal over IPv4 (RFC 768); the inner IPv6 packet carries its
 *   own mandatory upper-layer checksum (RFC 8200 §8.1), and summing up to 1280
 *   bytes per packet here would cost more than the rest of the encapsulation.
 * - IPv4 header checksum: bpf_csum_diff over the 20 bytes on the stack, folded.
 */
static __always_inline void encap4_build(struct teredo_outer4 *o, __be32 saddr, __be16 sport,
					 __be32 daddr, __be16 dport, __u32 ip6_len, __u16 ip_id)
{
	__s64 sum;

	o->ip.version = 4;
	o->ip.ihl = sizeof(o->ip) / 4;
	o->ip.tos = 0;
	o->ip.tot_len = bpf_htons(ip6_len + TEREDO_ENCAP_OVERHEAD);
	o->ip.id = bpf_htons(ip_id);
	o->ip.frag_off = 0;
	o->ip.ttl = TEREDO_TTL;
	o->ip.protocol = TEREDO_IPPROTO_UDP;
	o->ip.check = 0;
	o->ip.saddr = saddr;
	o->ip.daddr = daddr;

	o->udp.source = sport;
	o->udp.dest = dport;
	o->udp.len = bpf_htons(ip6_len + TEREDO_UDP_HDR_LEN);
	o->udp.check = 0;

	sum = bpf_csum_diff(NULL, 0, (__be32 *)&o->ip, sizeof(o->ip), 0);
	o->ip.check = csum_fold32(sum < 0 ? 0 : (__u64)sum);
}

/*
 * RFC 4380 §5.2.4 (client) and §5.4.1 (relay): send directly only to a trusted peer
 * heard from recently; anything else goes to the control plane, which queues and
 * bubbles. A pure decision on an already looked-up entry (NULL: none).
 */
static __always_inline int tx_peer_verdict(const struct teredo_peer *peer, __u64 now,
					   __u64 timeout_ns)
{
	if (!peer)
		return TEREDO_R_TX_NO_PEER;
	if (!(peer->flags & TEREDO_PEER_TRUSTED))
		return TEREDO_R_TX_UNTRUSTED_PEER;
	/* A timeout of 0 means "never stale" (static peers). A last_rx_ns ahead of
	 * our clock was written by the control plane just now: fresh. */
	if (timeout_ns && peer->last_rx_ns < now && now - peer->last_rx_ns > timeout_ns)
		return TEREDO_R_TX_STALE_PEER;
	return TEREDO_R_ENCAPSULATED;
}

#endif /* TEREDO_ENCAP_H */
