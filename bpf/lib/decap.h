/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Decapsulation decisions (RFC 4380 §5.2.3 for a client, §5.4.2 for a relay):
 * which received IPv4/UDP packets carry IPv6 that the fast path may hand to the
 * tun device. Pure functions on parsed headers and already-looked-up map values;
 * the entry units do the lookups and the packet surgery, the
 * same for XDP and for the tc-only variant.
 */
#ifndef TEREDO_DECAP_H
#define TEREDO_DECAP_H

#include "csum.h"
#include "parse.h"

/* RFC 791 §3.1: the flags/fragment-offset field (net/ip.h is kernel-internal). */
#define IPV4_MORE_FRAGMENTS 0x2000
#define IPV4_FRAG_OFFSET 0x1fff

/* What rx_check_headers found, for the peer check and the decapsulation. */
struct rx_view {
	struct iphdr *ip;
	struct udphdr *udp;
	struct ipv6hdr *ip6;
	__u32 ip6_len;		/* the whole inner packet: 40 + payload length */
};

/* rx_check_headers' "nothing against it so far": the peer check decides next. */
#define RX_CANDIDATE TEREDO_R_DECAPSULATED

/*
 * Checks in order of cost and of specificity: first whether the packet is ours at
 * all (IPv4/UDP to our address and port; otherwise it is host traffic and left
 * untouched), then the outer headers, then the Teredo payload, then the inner
 * addresses. c is positioned just after the Ethernet header of an IPv4 frame;
 * l3_len counts the bytes from there to the end of the packet, which for an skb
 * may reach past c->end (the non-linear part).
 */
static __always_inline int rx_check_headers(struct cursor *c, __u32 l3_len,
					    const struct teredo_config *cfg, struct rx_view *v)
{
	__u32 ip_len, udp_len, payload_len;
	__u8 *payload;

	if (parse_ipv4(c, &v->ip) != TEREDO_IPPROTO_UDP)
		return TEREDO_R_RX_NOT_TEREDO;
	if (v->ip->daddr != cfg->local_ipv4)
		return TEREDO_R_RX_NOT_TEREDO;
	/* A later fragment has no UDP header to look at: the stack reassembles it. */
	if (v->ip->frag_off & bpf_htons(IPV4_FRAG_OFFSET))
		return TEREDO_R_RX_NOT_TEREDO;
	if (parse_udp(c, &v->udp) < 0 || v->udp->dest != cfg->local_port)
		return TEREDO_R_RX_NOT_TEREDO;

	/* Ours from here on. */
	if (!(cfg->flags & TEREDO_CFG_ENABLED) || !cfg->tun_ifindex)
		return TEREDO_R_RX_DISABLED;
	/* Legal IPv4 that the kernel handles well and Teredo peers never send on
	 * purpose: the socket (the slow path) gets it after reassembly. */
	if (v->ip->frag_off & bpf_htons(IPV4_MORE_FRAGMENTS))
		return TEREDO_R_RX_FRAGMENT;
	if (v->ip->ihl != 5)
		return TEREDO_R_RX_IPV4_OPTIONS;
	/* The stack would check the header checksum (ip_rcv); decapsulating here
	 * skips the stack, so we do. The UDP checksum is not verified: the inner IPv6
	 * packet's upper layer has its own (RFC 8200 §8.1). */
	if (!ipv4_csum_ok(v->ip))
		return TEREDO_R_RX_IPV4_CHECKSUM;

	ip_len = bpf_ntohs(v->ip->tot_len);
	/* Shorter than the frame is fine (Ethernet pads to 60 bytes), longer is not. */
	if (ip_len < TEREDO_IPV4_HDR_LEN + TEREDO_UDP_HDR_LEN || ip_len > l3_len)
		return TEREDO_R_RX_IPV4_LENGTH;
	udp_len = bpf_ntohs(v->udp->len);
	if (udp_len != ip_len - TEREDO_IPV4_HDR_LEN)
		return TEREDO_R_RX_UDP_LENGTH;
	payload_len = udp_len - TEREDO_UDP_HDR_LEN;

	/* RFC 4380 §5.1.1: the payload starts with an IPv6 header (version 6) or an
	 * indicator (a zero byte): origin indication 0x0000, authentication 0x0001.
	 * Indicators come from a server (qualification, forwarded bubbles): the
	 * control plane validates them. Anything else is not Teredo (Miredo drops it). */
	payload = c->pos;
	if (payload_len < 2 || (void *)(payload + 2) > c->end)
		return TEREDO_R_RX_NOT_IPV6;
	if (payload[0] == 0) {
		if (payload[1] == TEREDO_INDICATOR_AUTH)
			return TEREDO_R_RX_AUTH;
		if (payload[1] == TEREDO_INDICATOR_ORIGIN)
			return TEREDO_R_RX_ORIGIN;
		return TEREDO_R_RX_NOT_IPV6;
	}
	if ((payload[0] >> 4) != TEREDO_IPV6_VERSION)
		return TEREDO_R_RX_NOT_IPV6;
	if (payload_len < TEREDO_IPV6_HDR_LEN || parse_ipv6(c, &v->ip6) < 0)
		return TEREDO_R_RX_IPV6_TRUNCATED;
	v->ip6_len = TEREDO_IPV6_HDR_LEN + bpf_ntohs(v->ip6->payload_len);
	if (v->ip6_len != payload_len)
		return TEREDO_R_RX_IPV6_LENGTH;

	/* RFC 4380 §2.8: a bubble is for the control plane (it makes a peer trusted). */
	if (v->ip6->nexthdr == TEREDO_IPPROTO_NONE && v->ip6->payload_len == 0)
		return TEREDO_R_RX_BUBBLE;
	/* RFC 4380 §5.2.3 says drop these; the control plane decides and logs. */
	if (ipv6_is_link_local(&v->ip6->saddr))
		return TEREDO_R_RX_LINK_LOCAL_SOURCE;
	if (ipv6_is_multicast(&v->ip6->daddr))
		return TEREDO_R_RX_MULTICAST_DESTINATION;
	/* A client takes packets for its own Teredo address only; a relay forwards to
	 * native IPv6, so any destination is fine (RFC 4380 §5.4.2). */
	if (!(cfg->flags & TEREDO_CFG_RELAY) && !ipv6_equal(&v->ip6->daddr, cfg->teredo_addr))
		return TEREDO_R_RX_NOT_OUR_ADDRESS;
	return RX_CANDIDATE;
}

/*
 * A GSO skb (tc only) that fails a length check is no malformed packet but a batch
 * of datagrams, each with its own outer headers: UDP GSO from a local sender
 * (UDP_SEGMENT) or the NIC's UDP GRO (rx-gro-list), SKB_GSO_UDP_L4. Its outer
 * lengths cover the batch, the first inner IPv6 packet only itself. Not one packet
 * to strip: the stack cuts it for the socket (the slow path). A Teredo super-packet
 * of TCP (UDP_TUNNEL | TCPV6) has one outer header and one inner packet, so its
 * lengths agree and it is stripped whole (lib/compat.h, TEREDO_DECAP_FLAGS).
 */
static __always_inline int rx_gso_verdict(int reason, __u32 gso_size)
{
	if (gso_size && (reason == TEREDO_R_RX_IPV4_LENGTH || reason == TEREDO_R_RX_UDP_LENGTH ||
			 reason == TEREDO_R_RX_IPV6_LENGTH))
		return TEREDO_R_RX_DECAP_UNSUPPORTED;
	return reason;
}

/*
 * Whom to believe (RFC 4380 §5.2.3): a trusted peer whose mapped address and port
 * are the UDP source, or a source address that embeds exactly that UDP source.
 * A relay too: §5.4.2 asks for the latter, but the control plane trusts a client
 * at another mapping only on proof (an answer to its challenge, teredo/peers.py:
 * a NAT that remapped the port, a symmetric NAT), and only then is the entry there. A peer that is in the table but not
 * trusted yet belongs to the control plane, which is queueing packets for it and
 * waiting for this very answer (§5.2.4): it must see the packet.
 *
 * *refresh is set when the packet is to be decapsulated and the peer entry
 * describes this sender, so that its activity counters move.
 */
static __always_inline int rx_source_verdict(const struct teredo_peer *peer, const struct rx_view *v,
					     __u16 cfg_flags, int *refresh)
{
	int embeds = teredo_embeds(&v->ip6->saddr, v->ip->saddr, v->udp->source);
	int matches = peer && peer->mapped_ipv4 == v->ip->saddr &&
		      peer->mapped_port == v->udp->source;

	/* A relay's peers are Teredo clients, whatever its table holds. */
	int foreign = (cfg_flags & TEREDO_CFG_RELAY) &&
		      v->ip6->saddr.s6_addr32[0] != bpf_htonl(TEREDO_PREFIX_HI32);

	*refresh = 0;
	if (peer && !(peer->flags & TEREDO_PEER_TRUSTED))
		return TEREDO_R_RX_UNTRUSTED_PEER;
	if (!embeds && (!peer || foreign))
		return TEREDO_R_RX_UNKNOWN_PEER;
	if (!embeds && !matches)
		return TEREDO_R_RX_MAPPING_MISMATCH;
	*refresh = matches;
	return TEREDO_R_DECAPSULATED;
}

#endif /* TEREDO_DECAP_H */
