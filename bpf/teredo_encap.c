/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xdp-teredo data path: the one compilation unit (maps and entry points).
 * Compiled at run time by bcc (xdp_teredo/datapath/loader.py), with -I bpf/.
 *
 * Entry points:
 *   xdp_teredo_rx      XDP on the NIC: decapsulate plain Teredo from trusted peers
 *                      (strip IPv4/UDP, Ethernet type to IPv6, mark via metadata).
 *   tc_teredo_ingress  tc ingress on the NIC: send frames XDP marked into the tun.
 *   tc_teredo_rx       tc ingress on the NIC, tc-only variant of the two above
 *                      (bpf_skb_adjust_room decap + redirect), for when XDP is not used.
 *   tc_teredo_tx       tc egress on the tun: encapsulate IPv6 to trusted, fresh
 *                      peers and send it out of the NIC.
 * The inbound guard (teredo_guard.h) sits in the shared receive decision, so
 * that XDP drops what nobody asked for before anything else is spent on it, and
 * in the transmit path, which records the flows the host starts.
 * Whatever the fast path does not take is left unchanged for the kernel: on the
 * NIC it reaches the control plane's UDP socket, on the tun the control plane's
 * reader. Every exit is counted under a reason (teredo_shared.h, layout.py).
 *
 * Time base: bpf_ktime_get_ns(), CLOCK_MONOTONIC, the clock the control plane
 * reads (time.monotonic_ns(), xdp_teredo/teredo/clock.py).
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>

/* bpf_htons() and friends come from bcc's helpers.h, which bcc prepends. */
#include "teredo_shared.h"
#include "teredo_parse.h"
#include "teredo_csum.h"
#include "teredo_encap.h"
#include "teredo_decap.h"
#include "teredo_stats.h"
#include "teredo_guard.h"
#include "teredo_limit.h"

/* Capacity of the peer table; the loader passes constants.PEER_LIST_MAX. */
#ifndef TEREDO_PEER_MAX
#define TEREDO_PEER_MAX 1024
#endif

/* bcc 0.26 declares bpf_redirect_neigh with three parameters; the kernel helper
 * takes four (ifindex, params, plen, flags), and calling the three-parameter one
 * leaves R4 (flags) unset. */
static long (*redirect_neigh)(__u32 ifindex, void *params, int plen, __u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

/* Not in the 6.1 uapi headers bcc compiles against here (Linux 6.3 added it);
 * the loader feature-probes it before using the tc-only receive path. */
#define TEREDO_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)

#define TEREDO_ENCAP_FLAGS (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | \
			    BPF_F_ADJ_ROOM_FIXED_GSO)

/* Peers by IPv6 address (RFC 4380 §5.2.4's peer list); LRU so learning stays bounded. */
BPF_TABLE("lru_hash", struct teredo_peer_key, struct teredo_peer, peers, TEREDO_PEER_MAX);
/* The control plane's configuration: one entry, index 0. */
BPF_ARRAY(config, struct teredo_config, 1);
/* One counter pair per verdict reason, per CPU. */
BPF_PERCPU_ARRAY(stats, struct teredo_stat, TEREDO_R_MAX);

static __always_inline const struct teredo_config *config_get(void)
{
	int zero = 0;

	return config.lookup(&zero);
}

static __always_inline void count(int reason, __u32 bytes)
{
	struct teredo_stat *slot = stats.lookup(&reason);

	if (slot)
		stat_add(slot, bytes);
}

/* ------------------------------------------------------------ inbound guard */

/* Capacities of the guard's maps; the loader passes constants.GUARD_*_MAX. */
#ifndef TEREDO_FLOW_MAX
#define TEREDO_FLOW_MAX 16384
#endif
#ifndef TEREDO_FRAGMENT_MAX
#define TEREDO_FRAGMENT_MAX 1024
#endif
#ifndef TEREDO_ALLOW_MAX
#define TEREDO_ALLOW_MAX 1024
#endif

/* The guard's policy and flow timeouts: one entry, index 0; all zeros = open. */
BPF_ARRAY(guard_config, struct teredo_guard_config, 1);
/* Conversations the host started, written on transmit, read on receive; LRU: when
 * full, the flow idle longest goes (its replies are unsolicited then). */
BPF_TABLE("lru_hash", struct teredo_flow_key, struct teredo_flow, guard_flows, TEREDO_FLOW_MAX);
/* Fragmented packets whose first fragment came in -> when (RFC 8200 §4.5). */
BPF_TABLE("lru_hash", struct teredo_fragment_key, __u64, guard_fragments, TEREDO_FRAGMENT_MAX);
/* (protocol, port) -> hits: what --allow opened; written by the control plane. */
BPF_HASH(guard_allow, struct teredo_allow_key, struct teredo_allow, TEREDO_ALLOW_MAX);

/* The map operations teredo_guard.h's rules use (declared there). */
static __always_inline const struct teredo_guard_config *guard_config_get(void)
{
	int zero = 0;

	return guard_config.lookup(&zero);
}

static __always_inline struct teredo_flow *guard_flow_lookup(struct teredo_flow_key *key)
{
	return guard_flows.lookup(key);
}

static __always_inline void guard_flow_update(struct teredo_flow_key *key, struct teredo_flow *flow)
{
	guard_flows.update(key, flow);
}

static __always_inline void guard_flow_delete(struct teredo_flow_key *key)
{
	guard_flows.delete(key);
}

static __always_inline __u64 *guard_fragment_lookup(struct teredo_fragment_key *key)
{
	return guard_fragments.lookup(key);
}

static __always_inline void guard_fragment_update(struct teredo_fragment_key *key, __u64 *seen)
{
	guard_fragments.update(key, seen);
}

static __always_inline struct teredo_allow *guard_allow_lookup(struct teredo_allow_key *key)
{
	return guard_allow.lookup(key);
}

/* Senders with a slow-path bucket (teredo_limit.h); LRU, so a spoofer's many
 * sources push out one another, bounded. */
#ifndef TEREDO_SLOW_PATH_SOURCES
#define TEREDO_SLOW_PATH_SOURCES 4096
#endif
/* The slow-path rates, written by the control plane (datapath/limits.py). */
BPF_ARRAY(slow_path_limits, struct teredo_slow_path_limits, 1);
/* One GCRA bucket per (IPv4 source, kind). */
BPF_TABLE("lru_hash", struct teredo_slow_path_key, __u64, slow_path_sources, TEREDO_SLOW_PATH_SOURCES);
/* The one bucket for every sender together. */
BPF_ARRAY(slow_path_global, __u64, 1);

static __always_inline const struct teredo_slow_path_limits *slow_path_limits_get(void)
{
	int zero = 0;

	return slow_path_limits.lookup(&zero);
}

static __always_inline __u64 *slow_path_source_bucket(struct teredo_slow_path_key *key)
{
	__u64 fresh = 0;

	return slow_path_sources.lookup_or_try_init(key, &fresh);
}

static __always_inline __u64 *slow_path_global_bucket(void)
{
	int zero = 0;

	return slow_path_global.lookup(&zero);
}

/* ---------------------------------------------------------------- receive */

/* Activity of a peer we decapsulated for; learning per RFC 4380 §5.2.3. */
static __always_inline void rx_account(struct teredo_peer *peer, int refresh,
				       const struct teredo_peer_key *key, __be32 saddr,
				       __be16 sport, __u32 ip6_len, __u16 cfg_flags)
{
	__u64 now = bpf_ktime_get_ns();

	if (peer && refresh) {
		peer->last_rx_ns = now;
		__sync_fetch_and_add(&peer->rx_packets, 1);
		__sync_fetch_and_add(&peer->rx_bytes, ip6_len);
		return;
	}
	if (!peer && (cfg_flags & TEREDO_CFG_LEARN_PEERS)) {
		struct teredo_peer fresh = {
			.mapped_ipv4 = saddr,
			.mapped_port = sport,
			.flags = TEREDO_PEER_TRUSTED | TEREDO_PEER_LEARNED,
			.last_rx_ns = now,
			.rx_packets = 1,
			.rx_bytes = ip6_len,
		};
		/* NOEXIST: never overwrite what the control plane wrote meanwhile. */
		peers.insert((struct teredo_peer_key *)key, &fresh);
	}
}

/* What the receive paths share: everything up to "decapsulate this one". */
struct rx_decision {
	struct teredo_peer_key key;
	struct teredo_peer *peer;
	int refresh;
	__be32 saddr;
	__be16 sport;
	__u16 cfg_flags;
	__u32 ip6_len;
	__u32 tun_ifindex;
};

static __always_inline int rx_decide(void *data, void *data_end, __u32 pkt_len,
				     struct rx_decision *d)
{
	struct cursor c = { .pos = data, .end = data_end };
	const struct teredo_config *cfg;
	struct ethhdr *eth;
	struct rx_view v = {};
	int reason;

	if (parse_ethhdr(&c, &eth) != ETH_P_IP)
		return TEREDO_R_RX_NOT_TEREDO;
	cfg = config_get();
	if (!cfg)
		return TEREDO_R_RX_NOT_TEREDO;
	reason = rx_check_headers(&c, pkt_len - sizeof(*eth), cfg, &v);
	if (reason != RX_CANDIDATE)
		return reason;

	__builtin_memcpy(&d->key, &v.ip6->saddr, sizeof(d->key));
	d->peer = peers.lookup(&d->key);
	reason = rx_source_verdict(d->peer, &v, cfg->flags, &d->refresh);
	if (reason == TEREDO_R_DECAPSULATED) {
		/* The guard last: only what the fast path would deliver is its business,
		 * and a dropped packet teaches the peer table nothing. */
		int guarded = guard_inbound(&c, v.ip6);

		if (guarded != GUARD_PASS)
			reason = guarded;
	}
	d->saddr = v.ip->saddr;
	d->sport = v.udp->source;
	d->cfg_flags = cfg->flags;
	d->ip6_len = v.ip6_len;
	d->tun_ifindex = cfg->tun_ifindex;
	return reason;
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
	reason = rx_decide(data, data_end, data_end - data, &d);
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

	rx_account(d.peer, d.refresh, &d.key, d.saddr, d.sport, d.ip6_len, d.cfg_flags);
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

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + want > data_end && skb->len > data_end - data) {
		bpf_skb_pull_data(skb, skb->len < want ? skb->len : want);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	reason = rx_decide(data, data_end, skb->len, &d);
	if (reason != TEREDO_R_DECAPSULATED)
		return reason;

	/* A refusal (a kernel without the DECAP flags) leaves the packet unchanged. */
	if (bpf_skb_adjust_room(skb, -TEREDO_ENCAP_OVERHEAD, BPF_ADJ_ROOM_MAC,
				TEREDO_ADJ_ROOM_DECAP_L3_IPV6))
		return TEREDO_R_RX_DECAP_UNSUPPORTED;
	/* skb->protocol is IPv6 now (the DECAP flag); make the frame say so too. The
	 * tun takes no MAC header, so this only matters to whoever looks (test runs). */
	bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &ipv6_type, sizeof(ipv6_type), 0);

	rx_account(d.peer, d.refresh, &d.key, d.saddr, d.sport, d.ip6_len, d.cfg_flags);
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
 * The tun has no MAC header: skb->data is the IPv6 header (cfg->l2_len == 0). A
 * SCHED_CLS test run always builds an Ethernet frame, so tests set l2_len to 14.
 */
static __always_inline int tc_encap(struct __sk_buff *skb, __u32 *redirect_ret)
{
	const struct teredo_config *cfg = config_get();
	struct teredo_outer4 outer;
	struct teredo_peer_key key;
	struct teredo_peer *peer;
	struct ipv6hdr *ip6;
	struct cursor c;
	__u32 l2_len, ip6_len, want;
	__u16 ip_id;
	__u64 now;
	int reason;

	if (!cfg || !(cfg->flags & TEREDO_CFG_ENABLED) || !cfg->nic_ifindex)
		return TEREDO_R_TX_DISABLED;
	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return TEREDO_R_TX_NOT_IPV6;
	l2_len = cfg->l2_len;
	if (l2_len != 0 && l2_len != ETH_HLEN)
		return TEREDO_R_TX_MALFORMED;
	if (skb->len < l2_len + TEREDO_IPV6_HDR_LEN)
		return TEREDO_R_TX_MALFORMED;
	/* The IPv6 header, and what the guard reads after it, in the linear area. */
	want = l2_len + TEREDO_IPV6_HDR_LEN + GUARD_PEEK;
	if (want > skb->len)
		want = skb->len;
	if ((long)skb->data + want > (long)skb->data_end)
		bpf_skb_pull_data(skb, want);

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
	 * leaves: its flow may be answered (teredo_guard.h). */
	guard_outbound(&c, ip6);

	__builtin_memcpy(&key, &ip6->daddr, sizeof(key));
	peer = peers.lookup(&key);
	now = bpf_ktime_get_ns();
	reason = tx_peer_verdict(peer, now, cfg->peer_timeout_ns);
	if (reason != TEREDO_R_ENCAPSULATED || !peer)
		return reason;

	/* A refusal leaves the packet unchanged: the slow path can still send it. Any
	 * failure after a successful adjust_room leaves it half-built: dropped. */
	if (bpf_skb_adjust_room(skb, TEREDO_ENCAP_OVERHEAD, BPF_ADJ_ROOM_MAC, TEREDO_ENCAP_FLAGS))
		return TEREDO_R_TX_ENCAP_UNSUPPORTED; /* refused: the packet is unchanged */
	ip_id = (__u16)peer->tx_packets;
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

	peer->last_tx_ns = now;
	__sync_fetch_and_add(&peer->tx_packets, 1);
	__sync_fetch_and_add(&peer->tx_bytes, ip6_len);

	*redirect_ret = redirect_neigh(cfg->nic_ifindex, NULL, 0, 0);
	if (*redirect_ret != TC_ACT_REDIRECT)
		return TEREDO_R_TX_REDIRECT_FAILED;
	return TEREDO_R_ENCAPSULATED;
}

int tc_teredo_tx(struct __sk_buff *skb)
{
	__u32 bytes = skb->len;
	__u32 redirect_ret = TC_ACT_SHOT;
	int reason = tc_encap(skb, &redirect_ret);

	count(reason, bytes);
	return reason == TEREDO_R_ENCAPSULATED ? (int)redirect_ret : tc_action_of(reason);
}

/* License: bcc marks the module GPL (needed for bpf_redirect_neigh and friends). */
