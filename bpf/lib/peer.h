/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The peer table as both units use it: the receive decision up to the peer's
 * verdict, the peer's activity on receive (refresh, or learn it: RFC 4380
 * §5.2.3 for a client, §5.4.2 for a relay) and on transmit. The maps (config,
 * peers) are the unit's: it defines their accessors (lib/maps.h) before this.
 */
#ifndef TEREDO_PEER_H
#define TEREDO_PEER_H

#include "clock.h"
#include "decap.h"
#include "parse.h"

/* What a receive path knows once a Teredo packet may be decapsulated. */
struct rx_decision {
	struct teredo_peer_key key;
	struct teredo_peer *peer;
	struct ipv6hdr *ip6;	/* in the packet, valid until it is changed */
	int refresh;
	__be32 saddr;
	__be16 sport;
	__u16 cfg_flags;
	__u32 ip6_len;
	__u32 tun_ifindex;
	__u8 hop_limit;
	__u8 udp_csum_pending;	/* the sender (a local one) left the UDP checksum to offload */
	__u64 now;		/* datapath_now() when the packet was judged (lib/clock.h) */
};

/* From the Ethernet header to the peer's verdict (rx_source_verdict's reason);
 * *c ends just after the IPv6 header, *v holds the parsed headers. */
static __always_inline int rx_decide(struct cursor *c, __u32 pkt_len, struct rx_decision *d,
				     struct rx_view *v)
{
	const struct teredo_config *cfg;
	struct ethhdr *eth;
	int reason;

	if (parse_ethhdr(c, &eth) != ETH_P_IP)
		return TEREDO_R_RX_NOT_TEREDO;
	cfg = config_get();
	if (!cfg)
		return TEREDO_R_RX_NOT_TEREDO;
	reason = rx_check_headers(c, pkt_len - sizeof(*eth), cfg, v);
	if (reason != RX_CANDIDATE)
		return reason;

	__builtin_memcpy(&d->key, &v->ip6->saddr, sizeof(d->key));
	d->peer = peers_lookup(&d->key);
	d->ip6 = v->ip6;
	d->saddr = v->ip->saddr;
	d->sport = v->udp->source;
	d->cfg_flags = cfg->flags;
	d->ip6_len = v->ip6_len;
	d->tun_ifindex = cfg->tun_ifindex;
	d->now = datapath_now();
	return rx_source_verdict(d->peer, v, cfg->flags, &d->refresh);
}

/* Activity of a peer we decapsulated for, or a new peer learned from it. */
static __always_inline void rx_account(const struct rx_decision *d)
{
	__u64 now = d->now;

	if (d->peer && d->refresh) {
		d->peer->last_rx_ns = now;
		__sync_fetch_and_add(&d->peer->rx_packets, 1);
		__sync_fetch_and_add(&d->peer->rx_bytes, d->ip6_len);
		return;
	}
	if (!d->peer && (d->cfg_flags & TEREDO_CFG_LEARN_PEERS)) {
		struct teredo_peer fresh = {
			.mapped_ipv4 = d->saddr,
			.mapped_port = d->sport,
			.flags = TEREDO_PEER_TRUSTED | TEREDO_PEER_LEARNED,
			.last_rx_ns = now,
			.rx_packets = 1,
			.rx_bytes = d->ip6_len,
		};
		/* NOEXIST: never overwrite what the control plane wrote meanwhile. */
		peers_insert(&d->key, &fresh);
	}
}

/* The outer IPv4 ID of the next packet to a peer: RFC 6864 §4.3 wants it unique
 * per destination; the peer's packet counter is. */
static __always_inline __u16 tx_ip_id(const struct teredo_peer *peer)
{
	return (__u16)peer->tx_packets;
}

/* Activity of a peer we encapsulated for. */
static __always_inline void tx_account(struct teredo_peer *peer, __u32 ip6_len, __u64 now)
{
	peer->last_tx_ns = now;
	__sync_fetch_and_add(&peer->tx_packets, 1);
	__sync_fetch_and_add(&peer->tx_bytes, ip6_len);
}

#endif /* TEREDO_PEER_H */
