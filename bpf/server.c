/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xdp-teredo server fast path (RFC 4380 §5.3): the server's compilation unit,
 * maps and entry point. Compiled at run time by bcc (xdp_teredo/datapath/server.py),
 * with its map block in place of lib/maps.h (datapath/source.py).
 *
 * Entry point, attached (XDP) to the device that holds both server addresses:
 *   xdp_teredo_server  a Router Solicitation to either address, port 3544, gets
 *                      its Router Advertisement by XDP_TX (lib/server.h), within
 *                      the RA rates (per IPv4 address, and in all); a bubble or
 *                      echo test to a client of ours is forwarded to its mapped
 *                      address by XDP_TX with the sender's origin indication
 *                      (lib/server_fwd.h), within the forwarding rate (per IPv4
 *                      sender and per target); everything else of ours (native
 *                      echo tests, headers, RSs of other shapes) goes up to the
 *                      daemon's sockets (XDP_PASS), within the slow path's rates
 *                      (lib/limit.h's buckets).
 * A forwarded packet leaves by XDP_TX only when the fib's next hop for the target
 * is on the device it came in on; otherwise (no route or neighbour, another
 * device, IPv4 forwarding off there) the daemon sends it (server_forward_no_route).
 * Every exit is counted under one reason (layout.py).
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/socket.h>
#include <linux/udp.h>

/* bpf_htons() and friends come from bcc's helpers.h, which bcc prepends. */
#include "lib/shared.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/encap.h"
#include "lib/stats.h"
#include "lib/limit.h"
#include "lib/server.h"
#include "lib/server_fwd.h"

/* What the daemon gets (the pass reasons of our traffic): admitted per IPv4
 * source and in all, as the client's and relay's slow paths are (lib/limit.h). */
static __always_inline int server_admit(int reason, __be32 saddr)
{
	struct teredo_slow_path_key key = { .saddr = saddr, .kind = TEREDO_SLOW_PATH_OTHER };

	return slow_path_buckets(reason, &key);
}

/* The RA rates (ServerPolicy's "ra" bucket): to this IPv4 address, then in all. */
static __always_inline int server_ra_admit(const struct teredo_server_config *cfg, __be32 daddr)
{
	struct teredo_slow_path_key key = { .saddr = daddr, .kind = TEREDO_SLOW_PATH_RA };
	__u64 now = bpf_ktime_get_ns(), *tat;

	if (cfg->ra_source_interval_ns) {
		tat = slow_path_sources_lookup_or_init(&key);
		if (tat && !gcra_admit(tat, now, cfg->ra_source_interval_ns,
				       cfg->ra_source_tolerance_ns))
			return TEREDO_R_SERVER_RA_SOURCE_LIMIT;
	}
	tat = server_ra_global_get();
	if (tat && !gcra_admit(tat, now, cfg->ra_global_interval_ns, cfg->ra_global_tolerance_ns))
		return TEREDO_R_SERVER_RA_LIMIT;
	return SERVER_GO;
}

/*
 * Turn the RS frame into its RA in place: Ethernet (addresses swapped) | IPv4 |
 * UDP | [authentication header, nonce echoed] | origin indication | RA.
 */
static __always_inline int server_answer(struct xdp_md *ctx, const struct teredo_server_config *cfg,
					 struct server_rs *rs)
{
	__u8 mac[ETH_ALEN];
	struct in6_addr client_ll;
	struct teredo_outer4 outer;
	struct teredo_origin *origin;
	struct ipv6hdr *ra;
	struct ethhdr *eth;
	void *data, *data_end, *p;
	__be32 saddr = rs->ip->saddr, via;
	__be16 sport = rs->udp->source;
	__u32 hdr_len = 0, payload_len, frame_len;
	__u8 *icmp;
	int has_auth = rs->auth != NULL;

	via = server_ra_via(cfg, rs->ip->daddr, &rs->ip6->saddr);
	__builtin_memcpy(&client_ll, &rs->ip6->saddr, sizeof(client_ll));
	if (has_auth)
		hdr_len = sizeof(struct teredo_auth0);
	payload_len = hdr_len + sizeof(struct teredo_origin) + TEREDO_SERVER_RA_LEN;
	frame_len = ETH_HLEN + TEREDO_ENCAP_OVERHEAD + payload_len;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (bpf_xdp_adjust_tail(ctx, (int)frame_len - (int)(data_end - data)))
		return TEREDO_R_RX_DECAP_UNSUPPORTED; /* refused: the daemon answers */

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	p = data + ETH_HLEN + TEREDO_ENCAP_OVERHEAD;
	if (p > data_end)
		return TEREDO_R_RX_DECAP_UNSUPPORTED; /* cannot happen: the verifier wants it */

	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	encap4_build(&outer, via, cfg->port, saddr, sport, payload_len, 0);
	__builtin_memcpy(data + ETH_HLEN, &outer, sizeof(outer));

	if (has_auth) {
		struct teredo_auth0 *auth = p;

		if ((void *)(auth + 1) > data_end)
			return TEREDO_R_RX_DECAP_UNSUPPORTED;
		/* §5.1.1: the RS's own header, where it was (no client id, no auth
		 * value: server_check_rs made sure), so the client's nonce is echoed in
		 * place; confirmation 0 (we do not do secure qualification). */
		auth->confirmation = 0;
		p = auth + 1;
	}
	origin = p;
	ra = (void *)(origin + 1);
	if ((void *)ra + TEREDO_SERVER_RA_LEN > data_end)
		return TEREDO_R_RX_DECAP_UNSUPPORTED;
	origin->indicator = bpf_htons(TEREDO_INDICATOR_ORIGIN);
	origin->port = ~sport;
	origin->addr = ~saddr;
	__builtin_memcpy(ra, cfg->ra, TEREDO_SERVER_RA_LEN);
	__builtin_memcpy(&ra->daddr, &client_ll, sizeof(client_ll));
	icmp = (__u8 *)(ra + 1);
	*(__u16 *)(icmp + 2) = server_ra_csum(cfg, &client_ll);
	return TEREDO_R_SERVER_RA;
}

/* ServerPolicy's limiter.allow((sender, target)): one bucket per IPv4 address,
 * charged whether it sends or is sent to (a flood of spoofed bubbles at a client
 * is bounded by the target's bucket); not the RA buckets (kind RA), so that such a
 * flood cannot cost the client its qualification (§5.2.7). */
static __always_inline int server_fwd_admit(const struct teredo_server_config *cfg,
					    __be32 sender, __be32 target)
{
	struct teredo_slow_path_key key = { .saddr = sender, .kind = TEREDO_SLOW_PATH_FORWARD };
	__u64 now = bpf_ktime_get_ns(), *tat;

	if (!cfg->fwd_interval_ns)
		return SERVER_GO;
	tat = slow_path_sources_lookup_or_init(&key);
	if (tat && !gcra_admit(tat, now, cfg->fwd_interval_ns, cfg->fwd_tolerance_ns))
		return TEREDO_R_SERVER_FORWARD_SOURCE_LIMIT;
	key.saddr = target;
	tat = slow_path_sources_lookup_or_init(&key);
	if (tat && !gcra_admit(tat, now, cfg->fwd_interval_ns, cfg->fwd_tolerance_ns))
		return TEREDO_R_SERVER_FORWARD_DESTINATION_LIMIT;
	return SERVER_GO;
}

/*
 * §5.3.1: the packet to a client of ours, in place: Ethernet (the fib's next hop)
 * | IPv4 primary:port -> the target's mapping | UDP | origin indication of the
 * sender | the IPv6 packet as it came (any headers the sender put in front are
 * not forwarded: the origin is what we saw, not what they claim).
 */
static __always_inline int server_forward(struct xdp_md *ctx, const struct teredo_server_config *cfg,
					  struct server_rs *rs, struct server_fwd *fwd)
{
	struct bpf_fib_lookup fib = {};
	struct teredo_outer4 outer;
	struct teredo_origin *origin;
	struct ethhdr *eth;
	void *data, *data_end;
	__be32 saddr = rs->ip->saddr;
	__be16 sport = rs->udp->source;
	__u32 ip6_len = fwd->ip6_len;
	int extra, reason = fwd->bubble ? TEREDO_R_SERVER_FORWARDED_BUBBLE
					: TEREDO_R_SERVER_FORWARDED_ECHO;
	long rc;

	/* Egress perspective: from our primary address and port to the mapping. */
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = cfg->port;
	fib.dport = fwd->target_port;
	fib.tot_len = TEREDO_ENCAP_OVERHEAD + sizeof(struct teredo_origin) + ip6_len;
	fib.ifindex = ctx->ingress_ifindex;
	fib.ipv4_src = cfg->primary_ipv4;
	fib.ipv4_dst = fwd->target_ipv4;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex != ctx->ingress_ifindex)
		return TEREDO_R_SERVER_FORWARD_NO_ROUTE;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	/* Bytes after the IPv6 packet (Ethernet padding): not to be forwarded. */
	extra = (int)(data_end - (void *)fwd->ip6) - (int)ip6_len;
	if (extra > 0 && bpf_xdp_adjust_tail(ctx, -extra))
		return TEREDO_R_SERVER_FORWARD_NO_ROUTE; /* refused: the daemon sends it */
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct teredo_origin)))
		return TEREDO_R_SERVER_FORWARD_NO_ROUTE;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	origin = data + ETH_HLEN + TEREDO_ENCAP_OVERHEAD;
	if ((void *)(origin + 1) > data_end)
		return TEREDO_R_RX_DECAP_UNSUPPORTED; /* cannot happen: the verifier wants it */
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	encap4_build(&outer, cfg->primary_ipv4, cfg->port, fwd->target_ipv4, fwd->target_port,
		     sizeof(struct teredo_origin) + ip6_len, 0);
	__builtin_memcpy(data + ETH_HLEN, &outer, sizeof(outer));
	origin->indicator = bpf_htons(TEREDO_INDICATOR_ORIGIN);
	origin->port = ~sport;
	origin->addr = ~saddr;
	return reason;
}

/* A bubble or echo test (no RS): forwarded here, dropped, or the daemon's. */
static __always_inline int server_rx_forward(struct xdp_md *ctx, const struct teredo_server_config *cfg,
					     struct server_rs *rs, struct cursor *payload, int *action)
{
	struct server_fwd fwd = {};
	__be32 saddr = rs->ip->saddr; /* the packet pointers die with the surgery */
	int reason;

	reason = server_check_fwd(payload, cfg, rs->udp, saddr, rs->udp->source, &fwd);
	if (reason == SERVER_GO)
		reason = server_fwd_admit(cfg, saddr, fwd.target_ipv4);
	if (reason == SERVER_GO)
		reason = server_forward(ctx, cfg, rs, &fwd);
	if (reason_is_ok(reason)) {
		*action = XDP_TX;
		return reason;
	}
	return reason_is_drop(reason) ? reason : server_admit(reason, saddr);
}

static __always_inline int server_rx(struct xdp_md *ctx, int *action)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = data, .end = data_end };
	const struct teredo_server_config *cfg = server_config_get();
	struct server_rs rs = {};
	struct ethhdr *eth;
	int reason;

	if (parse_ethhdr(&c, &eth) != ETH_P_IP || !cfg)
		return TEREDO_R_RX_NOT_TEREDO;
	reason = server_check_outer(&c, data_end - (void *)(eth + 1), cfg, &rs);
	if (reason == TEREDO_R_RX_NOT_TEREDO || reason_is_drop(reason))
		return reason;
	if (reason == SERVER_GO) {
		struct cursor payload = c;

		reason = server_check_rs(&c, cfg, &rs);
		if (reason == TEREDO_R_SERVER_NOT_RS && !rs.auth)
			return server_rx_forward(ctx, cfg, &rs, &payload, action);
	}
	if (reason != SERVER_GO)
		return reason_is_drop(reason) ? reason : server_admit(reason, rs.ip->saddr);
	reason = server_ra_admit(cfg, rs.ip->saddr);
	if (reason != SERVER_GO)
		return reason;
	reason = server_answer(ctx, cfg, &rs);
	if (reason == TEREDO_R_SERVER_RA)
		*action = XDP_TX;
	return reason;
}

int xdp_teredo_server(struct xdp_md *ctx)
{
	__u32 bytes = ctx->data_end - ctx->data;
	int action = XDP_PASS;
	int reason;

	reason = server_rx(ctx, &action);
	count(reason, bytes);
	if (reason_is_ok(reason))
		return action;
	return xdp_action_of(reason);
}
