/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The client's data path (RFC 4380 §5.2): maps and entry points. Compiled at run
 * time by bcc (xdp_teredo/datapath/client.py), with its map block in place of
 * lib/maps.h (datapath/source.py).
 *
 * Entry points:
 *   xdp_teredo_rx      XDP on the NIC: decapsulate plain Teredo from trusted peers
 *                      (strip IPv4/UDP, Ethernet type to IPv6, mark via metadata).
 *   tc_teredo_ingress  tc ingress on the NIC: send frames XDP marked into the tun.
 *   tc_teredo_rx       tc ingress on the NIC, tc-only variant of the two above
 *                      (bpf_skb_adjust_room decap + redirect), for when XDP is not used.
 *   tc_teredo_tx       tc egress on the tun: encapsulate IPv6 to trusted, fresh
 *                      peers and send it out of the NIC; on a veth NIC, what is
 *                      left to offload goes round the checksum veth first.
 *   tc_teredo_tx_back  tc ingress on the checksum veth's far end: encapsulate
 *                      what came back finished, out of the NIC.
 * The inbound guard (lib/guard.h) sits in the receive decision, so that XDP drops
 * what nobody asked for before anything else is spent on it, and in the transmit
 * path, which records the flows the host starts.
 * Whatever the fast path does not take is left unchanged for the kernel: on the
 * NIC it reaches the control plane's UDP socket, on the tun the control plane's
 * reader. Every exit is counted under a reason (lib/shared.h, layout.py).
 *
 * Time base: CLOCK_MONOTONIC, the clock the control plane reads
 * (time.monotonic_ns(), xdp_teredo/teredo/clock.py), read once per packet at its
 * last tick (lib/clock.h).
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
#include "lib/guard.h"
#include "lib/limit.h"
#include "lib/peer.h"

/* ---------------------------------------------------------------- receive */

/* The receive decision, the guard last: only what the fast path would deliver is
 * its business, and a dropped packet teaches the peer table nothing. */
static __always_inline int client_rx_decide(void *data, void *data_end, __u32 pkt_len,
					    struct rx_decision *d)
{
	struct cursor c = { .pos = data, .end = data_end };
	struct rx_view v = {};
	int reason, guarded;

	reason = rx_decide(&c, pkt_len, d, &v);
	if (reason != TEREDO_R_DECAPSULATED)
		return reason;
	guarded = guard_inbound(&c, v.ip6, d->now);
	return guarded != GUARD_PASS ? guarded : reason;
}

/*
 * Strip IPv4/UDP in XDP and let the frame go up as IPv6 on the NIC, marked, for
 * tc_teredo_ingress to redirect into the tun (XDP_REDIRECT into a tun would hand
 * the frame to the tun's reader, not to the stack). The metadata goes first: a
 * driver without metadata support then leaves the packet untouched.
 */
static __always_inline int xdp_decap(struct xdp_md *ctx)
{
	struct rx_decision d = {};
	unsigned char macs[2 * ETH_ALEN];
	struct teredo_xdp_meta *meta;
	struct ethhdr *eth;
	void *data, *data_end;
	int reason;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	reason = client_rx_decide(data, data_end, data_end - data, &d);
	if (reason != TEREDO_R_DECAPSULATED)
		return reason;

	eth = data;
	if ((void *)(eth + 1) > data_end)
		return TEREDO_R_RX_NOT_TEREDO;
	__builtin_memcpy(macs, eth, sizeof(macs));

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*meta)))
		return TEREDO_R_RX_DECAP_UNSUPPORTED;
	if (bpf_xdp_adjust_head(ctx, TEREDO_ENCAP_OVERHEAD)) {
		bpf_xdp_adjust_meta(ctx, (int)sizeof(*meta));
		return TEREDO_R_RX_DECAP_UNSUPPORTED;
	}

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	meta = (void *)(long)ctx->data_meta;
	eth = data;
	if ((void *)(meta + 1) > data || (void *)(eth + 1) > data_end)
		return TEREDO_R_RX_DECAP_UNSUPPORTED; /* cannot happen: the verifier wants it */
	__builtin_memcpy(eth, macs, sizeof(macs));
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	meta->magic = TEREDO_XDP_META_MAGIC;

	rx_account(&d);
	return TEREDO_R_DECAPSULATED;
}

int xdp_teredo_rx(struct xdp_md *ctx)
{
	__u32 bytes = ctx->data_end - ctx->data;
	int reason = xdp_decap(ctx);

	reason = slow_path_admit(reason, (void *)(long)ctx->data, (void *)(long)ctx->data_end);
	count(reason, bytes);
	return xdp_action_of(reason);
}

/* Frames xdp_teredo_rx decapsulated are IPv6 now; bring them into the tun as if
 * they had arrived there. Other frames are not a verdict of ours (XDP counted
 * them already) and go on untouched and uncounted. */
int tc_teredo_ingress(struct __sk_buff *skb)
{
	struct teredo_xdp_meta *meta = (void *)(long)skb->data_meta;
	const struct teredo_config *cfg;
	void *data = (void *)(long)skb->data;

	if ((void *)(meta + 1) > data || meta->magic != TEREDO_XDP_META_MAGIC)
		return TC_ACT_OK;
	cfg = config_get();
	if (!cfg || !cfg->tun_ifindex) {
		/* Reconfigured between XDP and here: an IPv6 frame for the tun has no
		 * business on the NIC. */
		count(TEREDO_R_RX_NO_TUN, skb->len);
		return TC_ACT_SHOT;
	}
	count(TEREDO_R_RX_REDIRECTED, skb->len);
	return bpf_redirect(cfg->tun_ifindex, BPF_F_INGRESS);
}

/* The tc-only receive path: the same decision, bpf_skb_adjust_room to strip. */
static __always_inline int tc_decap(struct __sk_buff *skb, __u32 *redirect_ret)
{
	/* Ethernet + IPv4 + UDP + IPv6 and what the guard reads after it: the headers
	 * rx_decide reads directly. */
	const __u32 want = ETH_HLEN + TEREDO_ENCAP_OVERHEAD + TEREDO_IPV6_HDR_LEN + GUARD_PEEK;
	__be16 ipv6_type = bpf_htons(ETH_P_IPV6);
	struct rx_decision d = {};
	void *data, *data_end;
	int reason;

	if (!tc_maybe_udp4(skb))
		return TEREDO_R_RX_NOT_TEREDO;
	tc_pull(skb, want);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	reason = rx_gso_verdict(client_rx_decide(data, data_end, skb->len, &d), skb->gso_size);
	if (reason != TEREDO_R_DECAPSULATED)
		return reason;

	/* A refusal (a kernel without the DECAP flags) leaves the packet unchanged. */
	if (bpf_skb_adjust_room(skb, -TEREDO_ENCAP_OVERHEAD, BPF_ADJ_ROOM_MAC, TEREDO_DECAP_FLAGS))
		return TEREDO_R_RX_DECAP_UNSUPPORTED;
	/* skb->protocol is IPv6 now (the DECAP flag); make the frame say so too. The
	 * tun takes no MAC header, so this only matters to whoever looks (test runs). */
	bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &ipv6_type, sizeof(ipv6_type), 0);

	rx_account(&d);
	*redirect_ret = bpf_redirect(d.tun_ifindex, BPF_F_INGRESS);
	return TEREDO_R_DECAPSULATED;
}

int tc_teredo_rx(struct __sk_buff *skb)
{
	__u32 bytes = skb->len;
	__u32 redirect_ret = TC_ACT_SHOT;
	int reason = tc_decap(skb, &redirect_ret);

	reason = slow_path_admit(reason, (void *)(long)skb->data, (void *)(long)skb->data_end);
	count(reason, bytes);
	return reason == TEREDO_R_DECAPSULATED ? (int)redirect_ret : tc_action_of(reason);
}

/* ---------------------------------------------------------------- transmit */

/*
 * Whether the stack left this packet's checksum or segmentation to the device: a
 * GSO packet (gso_size; TCP always sends them, UDP with UDP_SEGMENT), or a TCP/UDP
 * checksum left CHECKSUM_PARTIAL, which holds the folded pseudo-header sum
 * (lib/csum.h). BPF cannot read ip_summed; a complete checksum that equals the
 * pseudo-header sum by chance (once in 65536) only costs one needless detour.
 */
static __always_inline int tx_offload_pending(struct __sk_buff *skb, struct ipv6hdr *ip6,
					      void *data_end, __u32 ip6_len)
{
	__u16 *field;
	int at;

	if (skb->gso_size)
		return 1;
	at = l4_csum_offset(ip6->nexthdr);
	if (at < 0)
		return 0;
	field = (void *)(ip6 + 1) + at;
	if ((void *)(field + 1) > data_end)
		return 0; /* no transport header to finish: nothing the device would do */
	return csum_left_to_offload(*field, ipv6_pseudo_sum(ip6, ip6_len - TEREDO_IPV6_HDR_LEN,
							    ip6->nexthdr));
}

/*
 * Whether a packet with something left to offload goes round the checksum veth.
 * A NIC that finishes offloads itself (not a veth, or --veth-offloads pass:
 * TEREDO_CFG_OFFLOADS_PASS) takes everything as it is, and so does a peer whose path was seen to take it as it is (its kernel decapsulates, or a
 * NIC on the way finishes it: client/csum_detour.py) gets it whole, GSO as
 * UDP-tunnel GSO, except UDP GSO (UDP_SEGMENT): the tun offers no checksum
 * offload, so the stack hands it over with its checksums not left to offload,
 * and the kernel cannot cut such a packet once it is encapsulated (dropped in
 * validate_xmit_skb, docs/kernel-notes.md). The detour cuts it before.
 */
static __always_inline int tx_needs_detour(struct __sk_buff *skb, const struct teredo_config *cfg,
					   const struct teredo_peer *peer, struct ipv6hdr *ip6,
					   __u32 ip6_len)
{
	if ((cfg->flags & TEREDO_CFG_OFFLOADS_PASS) || (peer->flags & TEREDO_PEER_TAKES_OFFLOADS))
		return skb->gso_size && ip6->nexthdr == IPPROTO_UDP;
	return tx_offload_pending(skb, ip6, (void *)(long)skb->data_end, ip6_len);
}

/*
 * Over a veth NIC (docs/client.md, "Checksums over a veth"): what is left to offload
 * leaves unfinished, and a Teredo peer on this host that decapsulates in userspace
 * (Miredo) would read it so. No helper finishes it for good (kernel-notes.md), so the
 * packet, still IPv6, goes out of the client's checksum veth (net/csum_veth.py),
 * whose transmit path has no offloads: the kernel segments and checksums it there
 * (validate_xmit_skb), and tc_teredo_tx_back encapsulates each finished packet when
 * it comes back in at the other end. The redirect to an Ethernet device needs a MAC
 * header in front (a tun gives none); only its type is read on the way back.
 */
static __always_inline int tx_csum_detour(struct __sk_buff *skb, const struct teredo_config *cfg,
					  __u32 l2_len, __u32 *redirect_ret)
{
	__be16 ipv6_type = bpf_htons(ETH_P_IPV6);

	if (l2_len == 0 && bpf_skb_change_head(skb, ETH_HLEN, 0))
		return TEREDO_R_TX_ENCAP_UNSUPPORTED; /* refused: the packet is unchanged */
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &ipv6_type,
				sizeof(ipv6_type), 0))
		return TEREDO_R_TX_ENCAP_ERROR;
	*redirect_ret = bpf_redirect(cfg->csum_out_ifindex, 0);
	return TEREDO_R_TX_CSUM_DETOUR;
}

/*
 * The tun has no MAC header: skb->data is the IPv6 header (cfg->l2_len == 0). A
 * SCHED_CLS test run always builds an Ethernet frame, so tests set l2_len to 14.
 * back_in: the packet came back from the checksum veth (an Ethernet frame, its
 * offloads finished): encapsulated as it is, never sent round again.
 */
static __always_inline int tc_encap(struct __sk_buff *skb, int back_in, __u32 *redirect_ret)
{
	const struct teredo_config *cfg = config_get();
	struct teredo_outer4 outer;
	struct teredo_peer_key key;
	struct teredo_peer *peer;
	struct ipv6hdr *ip6;
	struct cursor c;
	__u32 l2_len, ip6_len;
	__u16 ip_id;
	__u64 now;
	int reason;

	if (!cfg || !(cfg->flags & TEREDO_CFG_ENABLED) || !cfg->nic_ifindex)
		return TEREDO_R_TX_DISABLED;
	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return TEREDO_R_TX_NOT_IPV6;
	l2_len = back_in ? ETH_HLEN : cfg->l2_len;
	if (l2_len != 0 && l2_len != ETH_HLEN)
		return TEREDO_R_TX_MALFORMED;
	if (skb->len < l2_len + TEREDO_IPV6_HDR_LEN)
		return TEREDO_R_TX_MALFORMED;
	/* The IPv6 header, and what the guard reads after it, in the linear area. */
	tc_pull(skb, l2_len + TEREDO_IPV6_HDR_LEN + GUARD_PEEK);

	c.pos = (void *)(long)skb->data + l2_len;
	c.end = (void *)(long)skb->data_end;
	if (parse_ipv6(&c, &ip6) < 0)
		return TEREDO_R_TX_MALFORMED;
	ip6_len = skb->len - l2_len;
	/* RFC 4380 §5.1.2. With the tun's MTU at 1280 the stack itself enforces this
	 * (Packet Too Big when forwarding, fragmentation or EMSGSIZE locally); a
	 * bigger packet reaching us anyway goes to the control plane, which answers
	 * with ICMPv6 Packet Too Big: never silently dropped. GSO packets are cut to
	 * size after us (gso_size came from the same MTU). */
	if (ip6_len > cfg->mtu && !skb->gso_size)
		return TEREDO_R_TX_TOO_BIG;
	/* Whichever path sends it (this one or the control plane's), the packet
	 * leaves: its flow may be answered (lib/guard.h). Recorded once, not again
	 * when it comes back from the checksum veth. */
	now = datapath_now();
	if (!back_in)
		guard_outbound(&c, ip6, now);

	__builtin_memcpy(&key, &ip6->daddr, sizeof(key));
	peer = peers_lookup(&key);
	reason = tx_peer_verdict(peer, now, cfg->peer_timeout_ns);
	if (reason != TEREDO_R_ENCAPSULATED || !peer)
		return reason;
	if (!back_in && cfg->csum_out_ifindex && tx_needs_detour(skb, cfg, peer, ip6, ip6_len))
		return tx_csum_detour(skb, cfg, l2_len, redirect_ret);

	/* A refusal leaves the packet unchanged: the slow path can still send it. Any
	 * failure after a successful adjust_room leaves it half-built: dropped. */
	if (bpf_skb_adjust_room(skb, TEREDO_ENCAP_OVERHEAD, BPF_ADJ_ROOM_MAC, TEREDO_ENCAP_FLAGS))
		return TEREDO_R_TX_ENCAP_UNSUPPORTED; /* refused: the packet is unchanged */
	ip_id = tx_ip_id(peer);
	encap4_build(&outer, cfg->local_ipv4, cfg->local_port, peer->mapped_ipv4,
		     peer->mapped_port, ip6_len, ip_id);
	if (bpf_skb_store_bytes(skb, l2_len, &outer, sizeof(outer), 0))
		return TEREDO_R_TX_ENCAP_ERROR;
	if (l2_len == 0) {
		/* bpf_redirect_neigh needs a MAC header in front (it frees the packet
		 * otherwise); 14 zero bytes that the neighbour code fills in. */
		if (bpf_skb_change_head(skb, ETH_HLEN, 0))
			return TEREDO_R_TX_ENCAP_ERROR;
	} else {
		__be16 ipv4_type = bpf_htons(ETH_P_IP);

		if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &ipv4_type,
					sizeof(ipv4_type), 0))
			return TEREDO_R_TX_ENCAP_ERROR;
	}

	tx_account(peer, ip6_len, now);

	*redirect_ret = redirect_neigh(cfg->nic_ifindex, NULL, 0, 0);
	if (*redirect_ret != TC_ACT_REDIRECT)
		return TEREDO_R_TX_REDIRECT_FAILED;
	return TEREDO_R_ENCAPSULATED;
}

/* The verdict as tc's action: a redirect where we sent it somewhere. */
static __always_inline int tc_tx_action(int reason, __u32 redirect_ret)
{
	if (reason == TEREDO_R_ENCAPSULATED || reason == TEREDO_R_TX_CSUM_DETOUR)
		return (int)redirect_ret;
	return tc_action_of(reason);
}

int tc_teredo_tx(struct __sk_buff *skb)
{
	__u32 bytes = skb->len;
	__u32 redirect_ret = TC_ACT_SHOT;
	int reason = tc_encap(skb, 0, &redirect_ret);

	count(reason, bytes);
	return tc_tx_action(reason, redirect_ret);
}

/*
 * tc ingress on the checksum veth's far end: what tc_teredo_tx sent round, back
 * finished (segmented, checksummed). Encapsulated like any packet; one that may
 * not be any more (the peer went stale meanwhile, the config changed) is the
 * control plane's: into the tun's transmit path, where tc_teredo_tx sees it again
 * with nothing pending and the tun's reader gets it. Not IPv6 (ARP, router
 * solicitations of the veth itself): not ours, dropped uncounted.
 */
int tc_teredo_tx_back(struct __sk_buff *skb)
{
	const struct teredo_config *cfg;
	__u32 bytes = skb->len;
	__u32 redirect_ret = TC_ACT_SHOT;
	int reason;

	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return TC_ACT_SHOT;
	reason = tc_encap(skb, 1, &redirect_ret);
	count(reason, bytes);
	if (reason == TEREDO_R_ENCAPSULATED || tc_action_of(reason) == TC_ACT_SHOT)
		return tc_tx_action(reason, redirect_ret);
	cfg = config_get();
	if (!cfg || !cfg->tun_ifindex)
		return TC_ACT_SHOT;
	return bpf_redirect(cfg->tun_ifindex, 0);
}

/* License: bcc marks the module GPL (needed for bpf_redirect_neigh and friends). */
