/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Verdicts: every program ends in one exit function that counts the packet under
 * its reason (struct teredo_stat, per CPU) and turns the reason into the program's
 * return code. The reasons are ordered by kind (shared.h: ok, pass, drop),
 * so the action is two comparisons away from the reason.
 */
#ifndef TEREDO_STATS_H
#define TEREDO_STATS_H

#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>

static __always_inline int reason_is_drop(int reason)
{
	return reason >= TEREDO_R_FIRST_DROP;
}

static __always_inline int reason_is_ok(int reason)
{
	return reason < TEREDO_R_FIRST_PASS;
}

/* XDP: a decapsulated frame goes up as IPv6 (the tc ingress program takes it from
 * there); everything that is not dropped goes up unchanged. */
static __always_inline int xdp_action_of(int reason)
{
	return reason_is_drop(reason) ? XDP_DROP : XDP_PASS;
}

/* tc: "ok" means a redirect was set up (bpf_redirect, bpf_redirect_neigh);
 * "pass" continues into the device (on the tun: to the control plane). */
static __always_inline int tc_action_of(int reason)
{
	if (reason_is_ok(reason))
		return TC_ACT_REDIRECT;
	return reason_is_drop(reason) ? TC_ACT_SHOT : TC_ACT_OK;
}

static __always_inline void stat_add(struct teredo_stat *slot, __u32 bytes)
{
	/* Per-CPU slot: no other CPU writes it, no atomic needed. */
	slot->packets += 1;
	slot->bytes += bytes;
}

/* The one exit of every program: the stats map is the unit's (lib/maps.h). */
static __always_inline void count(int reason, __u32 bytes)
{
	struct teredo_stat *slot = stats_lookup(&reason);

	if (slot)
		stat_add(slot, bytes);
}

#endif /* TEREDO_STATS_H */
