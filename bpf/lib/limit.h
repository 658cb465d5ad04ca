/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Admission to the slow path (docs/reliability.md, "Hostile input").
 *
 * What the fast path leaves to the control plane's UDP socket (bubbles, server
 * traffic, unknown peers: the pass reasons from rx_disabled to rx_mapping_mismatch)
 * costs a Python parse each. Anyone who can reach our address and port can send
 * those as fast as the link goes, so they are admitted here first, in XDP (or the
 * tc-only receive program), where the volume is:
 *
 *   - one token bucket per IPv4 source and class (struct teredo_slow_path_key), in
 *     an LRU map: one sender, spoofed or not, gets at most its share;
 *   - one bucket for everything, whatever the number of sources (a spoofer who
 *     varies the source address gets the global rate and no more).
 *
 * The class keeps the server's Router Advertisements (authentication header,
 * RFC 4380 §5.1.1) apart from the rest, so that a flood of, say, forged indirect
 * bubbles from the server's address does not starve the qualification exchange
 * (§5.2.7). What is refused is dropped and counted: rx_slow_path_source_limit,
 * rx_slow_path_limit. The fast path (decapsulated) is never limited here.
 *
 * Buckets are kept as a GCRA "theoretical arrival time" (one u64, RFC 2697's
 * token bucket in another form): a packet is admitted when the bucket's time is at
 * most `tolerance` ahead of now, and moves it `interval` on. interval = 1 s / rate,
 * tolerance = (burst - 1) * interval. Updates from two CPUs may race: at worst a
 * packet or two more are admitted, never fewer.
 *
 * The rates come from the control plane (struct teredo_slow_path_limits, one
 * entry; datapath/limits.py); all zeros, as before anything is written: no limit.
 *
 * The maps (slow_path_limits, slow_path_sources, slow_path_global) are the unit's:
 * it defines their accessors (lib/maps.h) before including this.
 */
#ifndef TEREDO_LIMIT_H
#define TEREDO_LIMIT_H

#include <linux/if_ether.h>
#include <linux/ip.h>

/* struct teredo_slow_path_key.kind */
#define TEREDO_SLOW_PATH_OTHER 0     /* bubbles, unknown peers, ...: anything but the below */
#define TEREDO_SLOW_PATH_AUTH 1      /* an authentication header: a server's RA (§5.1.1) */
#define TEREDO_SLOW_PATH_RA 2        /* a server's RAs to this address (bpf/server.c) */
#define TEREDO_SLOW_PATH_FORWARD 3   /* packets a server forwards from or to this address (bpf/server.c) */

/* Pass reasons that end at the control plane's socket (shared.h's order). */
static __always_inline int reason_is_punt(int reason)
{
	return reason >= TEREDO_R_RX_DISABLED && reason <= TEREDO_R_RX_MAPPING_MISMATCH;
}

/* GCRA: admit at `now` if the bucket's time is at most `tolerance` ahead; 0 = no limit. */
static __always_inline int gcra_admit(__u64 *tat, __u64 now, __u64 interval, __u64 tolerance)
{
	__u64 t = *tat;

	if (!interval)
		return 1;
	if (t < now)
		t = now;
	if (t - now > tolerance)
		return 0;
	*tat = t + interval;
	return 1;
}

/*
 * `reason`, or a slow-path limit when the bucket of `key` (its IPv4 source and
 * kind) or the global one is empty: what reaches the control plane is bounded per
 * sender and in all (docs/reliability.md).
 */
static __always_inline int slow_path_buckets(int reason, struct teredo_slow_path_key *key)
{
	const struct teredo_slow_path_limits *limits = slow_path_limits_get();
	__u64 now, *tat;

	if (!limits)
		return reason;
	now = bpf_ktime_get_ns();
	if (limits->source_interval_ns) {
		tat = slow_path_sources_lookup_or_init(key);
		if (tat && !gcra_admit(tat, now, limits->source_interval_ns,
				       limits->source_tolerance_ns))
			return TEREDO_R_RX_SLOW_PATH_SOURCE_LIMIT;
	}
	tat = slow_path_global_get();
	if (tat && !gcra_admit(tat, now, limits->global_interval_ns, limits->global_tolerance_ns))
		return TEREDO_R_RX_SLOW_PATH_LIMIT;
	return reason;
}

/*
 * The reason to count for a frame the receive decision gave `reason`: itself, or a
 * slow-path limit when it would go to the control plane and its buckets are empty.
 * `data` is the frame as the decision saw it (Ethernet first; unchanged, since
 * nothing is decapsulated for a pass reason).
 */
static __always_inline int slow_path_admit(int reason, void *data, void *data_end)
{
	struct teredo_slow_path_key key = {};
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if (!reason_is_punt(reason))
		return reason;
	/* The relay's IPv6 side counts rx_link_local_source too: not ours to limit. */
	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return reason;
	key.saddr = ip->saddr;
	key.kind = reason == TEREDO_R_RX_AUTH ? TEREDO_SLOW_PATH_AUTH : TEREDO_SLOW_PATH_OTHER;
	return slow_path_buckets(reason, &key);
}

#endif /* TEREDO_LIMIT_H */
