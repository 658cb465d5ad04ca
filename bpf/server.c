/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xdp-teredo server fast path (RFC 4380 §5.3): the server's compilation unit,
 * maps and entry point. Compiled at run time by bcc (xdp_teredo/datapath/server.py),
 * with its map block in place of lib/maps.h (datapath/source.py).
 *
 * Entry point, attached (XDP) to the device that holds both server addresses:
 *   xdp_teredo_server  a Router Solicitation to either address, port 3544, gets
 *                      its Router Advertisement by XDP_TX (lib/server.h), within
 *                      the RA rates (per IPv4 address, and in all); everything
 *                      else of ours (bubbles, echo tests, RSs of other shapes)
 *                      goes up to the daemon's sockets (XDP_PASS), within the
 *                      slow path's rates (lib/limit.h's buckets).
 * Bubbles and echo tests are forwarded by the daemon (ServerPolicy), not here:
 * a client sends them once per new peer, not every 30 s as it sends its RS, and
 * their checks (§5.3.1) and the native echo's raw socket are the policy's.
 * Every exit is counted under one reason (layout.py).
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
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
	if (reason == SERVER_GO)
		reason = server_check_rs(&c, cfg, &rs);
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
