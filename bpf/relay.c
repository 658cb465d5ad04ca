/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xdp-teredo relay data path (RFC 4380 §5.4): the relay's compilation unit, maps
 * and entry points. Compiled at run time by bcc (xdp_teredo/datapath/relay.py),
 * with its map block in place of lib/maps.h (datapath/source.py); it shares
 * bpf/lib/ with the client's unit (client.c).
 *
 * Entry points, attached to the ingress of the relay's IPv4 side (IF4) and of its
 * native IPv6 side (IF6), one per device; each serves both directions, so a relay
 * with one dual-stack device works too:
 *   xdp_teredo_relay  XDP: rewrite in place, XDP_REDIRECT through relay_egress.
 *   tc_teredo_relay   tc ingress (clsact): adjust_room, bpf_redirect_neigh. For
 *                     devices that cannot take XDP-redirected frames (a veth whose
 *                     peer has neither an XDP program nor GRO), so nothing is ever
 *                     redirected into a black hole.
 *
 * Directions:
 *   IPv4/UDP to our address:port, plain Teredo from a client whose IPv6 source
 *   embeds the UDP source (§5.4.2), to a native destination: strip IPv4/UDP,
 *   decrement the hop limit, forward to the fib's next hop.
 *   IPv6 to 2001::/32 whose destination is a trusted, fresh peer (§5.4.1):
 *   decrement the hop limit, prepend IPv4/UDP from our address:port to the peer's
 *   mapping, forward to the fib's next hop.
 * With `--inbound stateful` the inbound guard (lib/guard.h, docs/security.md)
 * protects the clients: what native IPv6 sends them must answer a flow they
 * started (recorded when their packets were decapsulated here), reach an allowed
 * port, or be ICMPv6 that IPv6 needs; the rest is dropped before encapsulation.
 * Everything else is left unchanged for the kernel: Teredo traffic reaches the
 * control plane's UDP socket, native IPv6 to 2001::/32 is routed into the relay's
 * tun, where the control plane reads it (bubbles, queue, §5.4.1). Every exit is
 * counted under one reason (layout.py), the same counters as the client's.
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>

/* bpf_htons() and friends come from bcc's helpers.h, which bcc prepends. */
#include "lib/shared.h"
#include "lib/maps.h"
#include "lib/compat.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/encap.h"
#include "lib/decap.h"
#include "lib/stats.h"
#include "lib/relay.h"
#include "lib/guard.h"
#include "lib/limit.h"
#include "lib/peer.h"

/* ------------------------------------------------------------ checksum detour */

/* A packet that came back in from the checksum veth (finished there). */
static __always_inline int relay_came_round(const struct __sk_buff *skb)
{
	const struct teredo_config *cfg = config_get();

	return cfg && cfg->csum_in_ifindex && skb->ingress_ifindex == cfg->csum_in_ifindex;
}

/*
 * A same-host sender's offload request (a checksum left pending, or a GSO packet)
 * that tc cannot carry out for good: no helper changes the skb's offload state. The
 * packet goes out of the relay's checksum veth (relay/csum_veth.py), whose transmit
 * path has no offloads: the kernel finishes checksums and segments GSO there, and
 * the skb comes back in at the other end CHECKSUM_NONE, where this program takes
 * it like a packet from another machine. What comes back still looking pending (a
 * complete checksum equal to the pseudo-header sum, once in 65536), or with no
 * checksum veth configured, is the stack's: never sent round twice.
 */
static __always_inline int tc_csum_detour(struct __sk_buff *skb, __u32 *ret)
{
	const struct teredo_config *cfg = config_get();

	if (!cfg || !cfg->csum_out_ifindex || relay_came_round(skb))
		return TEREDO_R_RELAY_OFFLOAD_PENDING;
	*ret = bpf_redirect(cfg->csum_out_ifindex, 0);
	return TEREDO_R_RELAY_CSUM_DETOUR;
}

/*
 * Whether a client takes what a native sender left to offload (a checksum, a GSO
 * super-packet) as it is, learnt from its own packets: left to offload, they only
 * stay so within this kernel, across veths. A client whose outer UDP checksum
 * arrives pending sent it from a socket on this host (Miredo), and reads our
 * packets in userspace as they arrive: a checksum left pending stays wrong, a
 * super-packet stays one datagram. One whose checksum arrives finished either
 * decapsulates in the kernel (ours sends 0) or is reached through a device that
 * finishes offloads (another machine): PeerFlag TAKES_OFFLOADS, and
 * tc_relay_encap sends it packets whole. Learnt from what arrives from the
 * network, not from what the checksum veth finished (relay_came_round). Written
 * only when it changes; an entry the control plane makes anew starts without it
 * (the detour: always right).
 */
static __always_inline void relay_learn_offloads(struct teredo_peer *peer, int csum_pending)
{
	__u16 flags;

	if (!peer)
		return;
	flags = csum_pending ? peer->flags & ~TEREDO_PEER_TAKES_OFFLOADS :
			       peer->flags | TEREDO_PEER_TAKES_OFFLOADS;
	if (flags != peer->flags)
		peer->flags = flags;
}

/*
 * Whether tc_relay_encap encapsulates a packet with something left to offload as
 * it is: to a client that takes it (relay_learn_offloads), a checksum left
 * pending, and a TCP super-packet (UDP-tunnel GSO after the encapsulation, cut
 * after us) whose segments fit the client's MTU. UDP GSO goes round the checksum
 * veth as the client's does (tx_needs_detour in client.c): the kernel cannot cut
 * an encapsulated one; so does a super-packet whose IPv6 length is not its own
 * (BIG TCP): the outer lengths come from it.
 */
static __always_inline int relay_sends_whole(const struct __sk_buff *skb,
					     const struct teredo_peer *peer,
					     const struct ipv6hdr *ip6, const void *data_end,
					     __u32 ip6_len, const struct teredo_config *cfg)
{
	if (!(peer->flags & TEREDO_PEER_TAKES_OFFLOADS))
		return 0;
	if (!skb->gso_size)
		return 1;
	if (ip6->nexthdr != IPPROTO_TCP || ip6_len != skb->len - ETH_HLEN)
		return 0;
	return relay_gso_segment_len(ip6, (const __u8 *)(ip6 + 1), data_end, skb->gso_size) <=
	       cfg->mtu;
}

/* ------------------------------------------------------------ decapsulation */

/* The receive decision (lib/peer.h), then the relay's own (§5.4.2). */
static __always_inline int relay_rx_decide(void *data, void *data_end, __u32 pkt_len,
					   struct rx_decision *rx)
{
	struct cursor c = { .pos = data, .end = data_end };
	struct rx_view v = {};
	int reason;

	reason = rx_decide(&c, pkt_len, rx, &v);
	if (!rx->ip6)
		return reason; /* not past the headers: no peer verdict to weigh */
	reason = relay_decap_verdict(&v, reason);
	if (reason != RELAY_GO)
		return reason;
	rx->hop_limit = v.ip6->hop_limit;
	rx->udp_csum_pending = v.udp->check &&
			       csum_left_to_offload(v.udp->check, ipv4_pseudo_sum(v.ip, v.udp->len));
	return RELAY_GO;
}

/* An XDP frame's way out, through the devmap slot relay_slots gave its device. */
static __always_inline int xdp_relay_out(__u32 slot, int *action, int done)
{
	*action = relay_egress_redirect(slot, 0);
	return *action == XDP_REDIRECT ? done : TEREDO_R_RELAY_REDIRECT_FAILED;
}

/* The inbound guard's flow for a packet a client sends to native IPv6 (lib/guard.h). */
static __always_inline void guard_record(struct ipv6hdr *ip6, void *end, __u64 now)
{
	struct cursor c = { .pos = ip6 + 1, .end = end };

	guard_outbound(&c, ip6, now);
}

static __always_inline int xdp_relay_decap(struct xdp_md *ctx, int *action)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct bpf_fib_lookup fib;
	struct rx_decision rx = {};
	struct ethhdr *eth;
	struct ipv6hdr *ip6;
	__u32 *slot;
	int extra, reason;

	reason = relay_rx_decide(data, data_end, data_end - data, &rx);
	if (reason != RELAY_GO)
		return reason;
	relay_learn_offloads(rx.peer, rx.udp_csum_pending);
	relay_fib6_params(&fib, rx.ip6, rx.ip6_len, ctx->ingress_ifindex);
	reason = relay_fib_verdict(bpf_fib_lookup(ctx, &fib, sizeof(fib), 0));
	if (reason != RELAY_GO)
		return reason;
	slot = relay_slots_lookup(&fib.ifindex);
	if (!slot)
		return TEREDO_R_RELAY_EGRESS_NOT_XDP;
	/* The client starts (or goes on with) a flow: its answers may come back. */
	guard_record(rx.ip6, data_end, rx.now);

	/* Bytes after the IPv4 packet (rx_check_headers allows them): not IPv6's. */
	extra = (int)(data_end - data) - (ETH_HLEN + TEREDO_ENCAP_OVERHEAD + (int)rx.ip6_len);
	if (extra > 0 && bpf_xdp_adjust_tail(ctx, -extra))
		return TEREDO_R_RX_DECAP_UNSUPPORTED;
	if (bpf_xdp_adjust_head(ctx, TEREDO_ENCAP_OVERHEAD))
		return TEREDO_R_RX_DECAP_UNSUPPORTED; /* refused: the packet is unchanged */

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return TEREDO_R_RELAY_REDIRECT_FAILED; /* cannot happen: the verifier wants it */
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	ip6->hop_limit = rx.hop_limit - 1;

	rx_account(&rx);
	return xdp_relay_out(*slot, action, TEREDO_R_DECAPSULATED);
}

static __always_inline int tc_relay_decap(struct __sk_buff *skb, __u32 *ret)
{
	/* Ethernet + IPv4 + UDP + IPv6: the headers relay_rx_decide reads directly, and
	 * what the guard reads after them. */
	const __u32 want = ETH_HLEN + TEREDO_ENCAP_OVERHEAD + TEREDO_IPV6_HDR_LEN + GUARD_PEEK;
	struct bpf_redir_neigh nh = { .nh_family = AF_INET6 };
	__be16 ipv6_type = bpf_htons(ETH_P_IPV6);
	struct bpf_fib_lookup fib;
	struct rx_decision rx = {};
	void *data, *data_end;
	__u32 keep;
	__u8 hop_limit;
	long rc;
	int reason;

	if (!tc_maybe_udp4(skb))
		return TEREDO_R_RX_NOT_TEREDO;
	tc_pull(skb, want);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	reason = rx_gso_verdict(relay_rx_decide(data, data_end, skb->len, &rx), skb->gso_size);
	if (reason != RELAY_GO)
		return reason;
	/* What comes back from the checksum veth was finished there: it says nothing
	 * about the client. */
	if (!relay_came_round(skb))
		relay_learn_offloads(rx.peer, rx.udp_csum_pending);
	/* Only a Teredo client on this very host sends these (a veth passes its UDP
	 * checksum on unfinished). Stripped as it is, the skb would keep csum_start
	 * inside the headers we remove (the moved MAC header): a device further on that
	 * finishes checksums would write into the Ethernet type. */
	if (rx.udp_csum_pending)
		return tc_csum_detour(skb, ret);
	relay_fib6_params(&fib, rx.ip6, skb->gso_size ?
			  relay_gso_segment_len(rx.ip6, (void *)(rx.ip6 + 1), data_end, skb->gso_size) :
			  rx.ip6_len, skb->ingress_ifindex);
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	/* bpf_redirect_neigh resolves a missing neighbour itself: not a reason to stop. */
	if (rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		reason = relay_fib_verdict(rc);
		if (reason != RELAY_GO)
			return reason;
	}

	guard_record(rx.ip6, data_end, rx.now);

	keep = ETH_HLEN + TEREDO_ENCAP_OVERHEAD + rx.ip6_len;
	if (skb->len > keep && bpf_skb_change_tail(skb, keep, 0))
		return TEREDO_R_RX_DECAP_UNSUPPORTED;
	/* A refusal (a kernel without the DECAP flags) leaves the packet unchanged. */
	if (bpf_skb_adjust_room(skb, -TEREDO_ENCAP_OVERHEAD, BPF_ADJ_ROOM_MAC, TEREDO_DECAP_FLAGS))
		return TEREDO_R_RX_DECAP_UNSUPPORTED;
	hop_limit = rx.hop_limit - 1;
	/* bpf_redirect_neigh writes the MACs; the type is ours to set. */
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &ipv6_type, sizeof(ipv6_type), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, hop_limit), &hop_limit,
				sizeof(hop_limit), 0))
		return TEREDO_R_RELAY_REDIRECT_FAILED;

	rx_account(&rx);
	/* The fib's next hop (the gateway, or the destination on a connected network)
	 * spares bpf_redirect_neigh a second route lookup. */
	__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, sizeof(nh.ipv6_nh));
	*ret = redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	if (*ret != TC_ACT_REDIRECT)
		return TEREDO_R_RELAY_REDIRECT_FAILED;
	return TEREDO_R_DECAPSULATED;
}

/* ------------------------------------------------------------ encapsulation */

/* What xdp_complete_l4_csum sums: 64 bytes per bpf_csum_diff, 24 chunks (1536
 * bytes, more than a tunnel-MTU packet), then the tail. */
#define RELAY_CSUM_CHUNK 64

#define RELAY_CSUM_STEP()							\
	do {									\
		if (left < RELAY_CSUM_CHUNK)					\
			goto tail;						\
		if (p + RELAY_CSUM_CHUNK > data_end)				\
			return;							\
		part = bpf_csum_diff(NULL, 0, p, RELAY_CSUM_CHUNK, 0);		\
		if (part < 0)							\
			return;							\
		sum += (__u32)part;						\
		p += RELAY_CSUM_CHUNK;						\
		left -= RELAY_CSUM_CHUNK;					\
	} while (0)
#define RELAY_CSUM_STEP4() \
	do { RELAY_CSUM_STEP(); RELAY_CSUM_STEP(); RELAY_CSUM_STEP(); RELAY_CSUM_STEP(); } while (0)

/*
 * A local sender's TCP/UDP checksum left to offload (a veth passes CHECKSUM_PARTIAL
 * on as it is) must be completed before the packet is tunnelled: a redirected XDP
 * frame carries no offload metadata any more, and nobody else would ever compute
 * it. RFC 8200 §8.1 over the pseudo-header and the transport bytes. Packets whose
 * checksum is complete are left alone, look-alikes included (verified first).
 */
static __always_inline void xdp_complete_l4_csum(struct xdp_md *ctx, struct ipv6hdr *ip6,
						 __u32 ip6_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l4_len = ip6_len - TEREDO_IPV6_HDR_LEN, left = l4_len;
	__u8 tail[RELAY_CSUM_CHUNK] = {};
	void *l4 = ip6 + 1, *p = l4;
	__u64 pseudo, sum = 0;
	__u16 *field, value;
	__s64 part;

	if (ip6->nexthdr == IPPROTO_TCP)
		field = l4 + offsetof(struct tcphdr, check);
	else if (ip6->nexthdr == IPPROTO_UDP)
		field = l4 + offsetof(struct udphdr, check);
	else
		return;
	if ((void *)(field + 1) > data_end)
		return;
	pseudo = ipv6_pseudo_sum(ip6, l4_len, ip6->nexthdr);
	if (!csum_left_to_offload(*field, pseudo))
		return;

	/* Written out rather than a loop: clang turns a loop into a trip count the
	 * verifier cannot bound; this way each chunk sits at a constant offset. */
	RELAY_CSUM_STEP4(); RELAY_CSUM_STEP4(); RELAY_CSUM_STEP4();
	RELAY_CSUM_STEP4(); RELAY_CSUM_STEP4(); RELAY_CSUM_STEP4();
tail:
	if (left >= RELAY_CSUM_CHUNK)
		return; /* beyond what we sum: left as it is */
	/* clang knows left < 64 and would drop the mask; the verifier needs it. */
	asm volatile("" : "+r"(left));
	left &= RELAY_CSUM_CHUNK - 1;
	if (left) {
		/* The tail, zero-padded to a whole chunk (padding adds nothing). */
		if (bpf_xdp_load_bytes(ctx, (__u32)(p - data), tail, left))
			return;
		part = bpf_csum_diff(NULL, 0, (__be32 *)tail, RELAY_CSUM_CHUNK, 0);
		if (part < 0)
			return;
		sum += (__u32)part;
	}
	if (csum_fold16(sum + pseudo) == 0xffff)
		return; /* complete already: a look-alike */
	/* The field held the pseudo-header sum, so the bytes summed are data + pseudo. */
	value = csum_fold32(sum);
	if (!value && ip6->nexthdr == IPPROTO_UDP)
		value = 0xffff; /* RFC 8200 §8.1: a zero UDP checksum is not allowed over IPv6 */
	*field = value;
}

/* What both hooks decide before touching a native packet (§5.4.1): for a
 * trusted, fresh client, past the guard. c is just past the IPv6 header;
 * verdict_len 0 leaves the length to the stack (a GSO packet); *now is the
 * packet's clock (lib/clock.h), once it is read. */
static __always_inline int relay_tx_decide(struct cursor *c, const struct ethhdr *eth,
					   struct ipv6hdr *ip6, __u32 verdict_len,
					   const struct teredo_config *cfg, struct teredo_peer **peer,
					   __u64 *now)
{
	struct teredo_peer_key key;
	int reason;

	reason = relay_encap_verdict(ip6, verdict_len, cfg);
	if (reason != RELAY_GO)
		return reason;
	/* A frame to a group address was not routed to us. */
	if (eth->h_dest[0] & 1)
		return TEREDO_R_RX_NOT_TEREDO;
	/* For the client, this packet is inbound: the guard decides, before the peer
	 * lookup, so that neither path takes it. */
	*now = datapath_now();
	reason = guard_inbound(c, ip6, *now);
	if (reason != GUARD_PASS)
		return reason;

	__builtin_memcpy(&key, &ip6->daddr, sizeof(key));
	*peer = peers_lookup(&key);
	reason = tx_peer_verdict(*peer, *now, cfg->peer_timeout_ns);
	if (reason != TEREDO_R_ENCAPSULATED || !*peer)
		return reason;
	return RELAY_GO;
}

/* The peer's activity and the outer IPv4 ID of this packet (lib/peer.h). */
static __always_inline __u16 relay_tx_account(struct teredo_peer *peer, __u32 ip6_len, __u64 now)
{
	__u16 ip_id = tx_ip_id(peer);

	tx_account(peer, ip6_len, now);
	return ip_id;
}

static __always_inline int xdp_relay_encap(struct xdp_md *ctx, int *action)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = data, .end = data_end };
	const struct teredo_config *cfg = config_get();
	struct teredo_outer4 outer;
	struct teredo_peer *peer;
	struct bpf_fib_lookup fib;
	struct ethhdr *eth;
	struct ipv6hdr *ip6;
	__u32 *slot, ip6_len;
	__u16 ip_id;
	__u64 now;
	__u8 hop_limit;
	int extra, reason;

	if (parse_ethhdr(&c, &eth) != ETH_P_IPV6 || parse_ipv6(&c, &ip6) < 0)
		return TEREDO_R_TX_MALFORMED;
	if (!cfg)
		return TEREDO_R_TX_DISABLED;
	ip6_len = TEREDO_IPV6_HDR_LEN + bpf_ntohs(ip6->payload_len);
	if ((void *)ip6 + ip6_len > data_end)
		return TEREDO_R_TX_MALFORMED; /* truncated, or a jumbogram: the stack's */
	reason = relay_tx_decide(&c, eth, ip6, ip6_len, cfg, &peer, &now);
	if (reason != RELAY_GO)
		return reason;
	relay_fib4_params(&fib, cfg, peer, ip6_len);
	reason = relay_fib_verdict(bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT));
	if (reason != RELAY_GO)
		return reason;
	slot = relay_slots_lookup(&fib.ifindex);
	if (!slot)
		return TEREDO_R_RELAY_EGRESS_NOT_XDP;
	hop_limit = ip6->hop_limit - 1;
	xdp_complete_l4_csum(ctx, ip6, ip6_len);

	/* Ethernet padding of a tiny packet would end up inside the UDP payload. */
	extra = (int)(data_end - (void *)ip6) - (int)ip6_len;
	if (extra > 0 && bpf_xdp_adjust_tail(ctx, -extra))
		return TEREDO_R_TX_ENCAP_UNSUPPORTED;
	if (bpf_xdp_adjust_head(ctx, -TEREDO_ENCAP_OVERHEAD))
		return TEREDO_R_TX_ENCAP_UNSUPPORTED; /* no headroom: the packet is unchanged */

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)eth + ETH_HLEN + TEREDO_ENCAP_OVERHEAD + TEREDO_IPV6_HDR_LEN > data_end)
		return TEREDO_R_TX_ENCAP_ERROR; /* cannot happen: the verifier wants it */
	ip6 = (void *)eth + ETH_HLEN + TEREDO_ENCAP_OVERHEAD;
	ip_id = relay_tx_account(peer, ip6_len, now);
	encap4_build(&outer, cfg->local_ipv4, cfg->local_port, peer->mapped_ipv4,
		     peer->mapped_port, ip6_len, ip_id);
	__builtin_memcpy((void *)eth + ETH_HLEN, &outer, sizeof(outer));
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	ip6->hop_limit = hop_limit;

	return xdp_relay_out(*slot, action, TEREDO_R_ENCAPSULATED);
}

static __always_inline int tc_relay_encap(struct __sk_buff *skb, __u32 *ret)
{
	/* Ethernet + IPv6 + what the guard and the checksum check read after it. */
	const __u32 want = ETH_HLEN + TEREDO_IPV6_HDR_LEN + GUARD_PEEK;
	const struct teredo_config *cfg = config_get();
	__be16 ipv4_type = bpf_htons(ETH_P_IP);
	struct teredo_outer4 outer;
	struct teredo_peer *peer;
	struct ipv6hdr *ip6;
	struct ethhdr *eth;
	struct cursor c;
	void *data, *data_end;
	__u32 ip6_len;
	int at, whole;
	__u16 ip_id;
	__u64 now;
	__u8 hop_limit;
	int reason;

	if (!cfg)
		return TEREDO_R_TX_DISABLED;
	tc_pull(skb, want);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	c.pos = data;
	c.end = data_end;
	if (parse_ethhdr(&c, &eth) != ETH_P_IPV6 || parse_ipv6(&c, &ip6) < 0)
		return TEREDO_R_TX_MALFORMED;
	ip6_len = TEREDO_IPV6_HDR_LEN + bpf_ntohs(ip6->payload_len);
	if (!skb->gso_size && ip6_len > skb->len - ETH_HLEN)
		return TEREDO_R_TX_MALFORMED; /* truncated, or a jumbogram: the stack's */
	reason = relay_tx_decide(&c, eth, ip6, skb->gso_size ? 0 : ip6_len, cfg, &peer, &now);
	if (reason != RELAY_GO)
		return reason;
	/*
	 * What a local sender left to offload (a veth passes it on): a GSO packet's
	 * segmentation, or a TCP/UDP checksum. The skb keeps CHECKSUM_PARTIAL whatever
	 * we write, so completing it here would be undone by any offloading device
	 * further on; and an encapsulated GSO packet that reaches a Teredo client's
	 * socket on this host unsegmented is one huge datagram. Round the checksum
	 * veth, which segments and completes (tc_csum_detour); without one, the stack,
	 * forwarding into the tun (no offloads): slow path, but right. A client that
	 * takes offloads gets it as it is (relay_sends_whole).
	 */
	whole = relay_sends_whole(skb, peer, ip6, data_end, ip6_len, cfg);
	if (skb->gso_size && !whole)
		return tc_csum_detour(skb, ret);
	at = l4_csum_offset(ip6->nexthdr);
	if (at >= 0 && !whole) {
		__u16 *field = (void *)(ip6 + 1) + at;

		if ((void *)(field + 1) > data_end)
			return TEREDO_R_TX_MALFORMED;
		if (csum_left_to_offload(*field, ipv6_pseudo_sum(ip6, ip6_len - TEREDO_IPV6_HDR_LEN,
								  ip6->nexthdr)))
			return tc_csum_detour(skb, ret);
	}
	hop_limit = ip6->hop_limit - 1;

	if (!skb->gso_size && skb->len > ETH_HLEN + ip6_len &&
	    bpf_skb_change_tail(skb, ETH_HLEN + ip6_len, 0))
		return TEREDO_R_TX_ENCAP_UNSUPPORTED;
	/* A refusal leaves the packet unchanged: the slow path can still send it. */
	if (bpf_skb_adjust_room(skb, TEREDO_ENCAP_OVERHEAD, BPF_ADJ_ROOM_MAC, TEREDO_ENCAP_FLAGS))
		return TEREDO_R_TX_ENCAP_UNSUPPORTED;
	ip_id = relay_tx_account(peer, ip6_len, now);
	encap4_build(&outer, cfg->local_ipv4, cfg->local_port, peer->mapped_ipv4,
		     peer->mapped_port, ip6_len, ip_id);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0) ||
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &ipv4_type, sizeof(ipv4_type), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + TEREDO_ENCAP_OVERHEAD + offsetof(struct ipv6hdr, hop_limit),
				&hop_limit, sizeof(hop_limit), 0))
		return TEREDO_R_TX_ENCAP_ERROR;

	/* The kernel routes out of the IPv4 side, resolves the next hop, writes the
	 * MACs. No fib lookup here: it would want IPv4 forwarding on, this does not. */
	*ret = redirect_neigh(cfg->nic_ifindex, NULL, 0, 0);
	if (*ret != TC_ACT_REDIRECT)
		return TEREDO_R_RELAY_REDIRECT_FAILED;
	return TEREDO_R_ENCAPSULATED;
}

/* ------------------------------------------------------------ entry points */

int xdp_teredo_relay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = data, .end = data_end };
	__u32 bytes = data_end - data;
	int action = XDP_PASS;
	struct ethhdr *eth;
	int proto, reason;

	proto = parse_ethhdr(&c, &eth);
	if (proto == ETH_P_IP)
		reason = xdp_relay_decap(ctx, &action);
	else if (proto == ETH_P_IPV6)
		reason = xdp_relay_encap(ctx, &action);
	else
		reason = TEREDO_R_RX_NOT_TEREDO;
	reason = slow_path_admit(reason, (void *)(long)ctx->data, (void *)(long)ctx->data_end);
	count(reason, bytes);
	if (reason_is_ok(reason))
		return action;
	return reason_is_drop(reason) ? XDP_DROP : XDP_PASS;
}

int tc_teredo_relay(struct __sk_buff *skb)
{
	__u32 bytes = skb->len;
	__u32 ret = TC_ACT_SHOT;
	int reason;

	if (skb->protocol == bpf_htons(ETH_P_IP))
		reason = tc_relay_decap(skb, &ret);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		reason = tc_relay_encap(skb, &ret);
	else
		reason = TEREDO_R_RX_NOT_TEREDO;
	reason = slow_path_admit(reason, (void *)(long)skb->data, (void *)(long)skb->data_end);
	count(reason, bytes);
	return reason_is_ok(reason) ? (int)ret : tc_action_of(reason);
}

/* License: bcc marks the module GPL (needed for bpf_redirect_neigh and friends). */
