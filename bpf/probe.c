/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Feature probes (xdp_teredo/datapath/probe.py): one tiny program per kernel
 * feature the data path relies on. Each returns the helper's own result, so that
 * a BPF_PROG_TEST_RUN on a suitable packet says whether the running kernel
 * accepts exactly the call client.c and relay.c make. A helper the kernel does not know
 * at all shows up earlier, as a program that does not load.
 */
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>

#include "lib/compat.h"

/* tc egress on the tun: grow room for IPv4 + UDP, switching skb->protocol. */
int probe_adjust_room_encap(struct __sk_buff *skb)
{
	return bpf_skb_adjust_room(skb, 28, BPF_ADJ_ROOM_MAC, TEREDO_ENCAP_FLAGS);
}

/* tc egress on the tun: a MAC header for bpf_redirect_neigh to fill. */
int probe_change_head(struct __sk_buff *skb)
{
	return bpf_skb_change_head(skb, 14, 0);
}

/* tc egress on the tun: route + neighbour lookup, out of the NIC. */
int probe_redirect_neigh(struct __sk_buff *skb)
{
	return redirect_neigh(1, NULL, 0, 0);
}

/* tc-only receive path: strip IPv4 + UDP, switching skb->protocol to IPv6. */
int probe_adjust_room_decap(struct __sk_buff *skb)
{
	return bpf_skb_adjust_room(skb, -28, BPF_ADJ_ROOM_MAC, TEREDO_ADJ_ROOM_DECAP_L3_IPV6);
}

/* XDP receive path: the mark that tells tc ingress "decapsulated". */
int probe_xdp_adjust_meta(struct xdp_md *ctx)
{
	return bpf_xdp_adjust_meta(ctx, -4);
}
