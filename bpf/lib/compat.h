/* SPDX-License-Identifier: GPL-2.0 */
/* What bcc 0.26 and the 6.1 uapi headers lack, and the flags both units pass. */
#ifndef TEREDO_COMPAT_H
#define TEREDO_COMPAT_H

#include <uapi/linux/bpf.h>

/* bcc 0.26 declares bpf_redirect_neigh with three parameters; the kernel helper
 * takes four (ifindex, params, plen, flags), and calling the three-parameter one
 * leaves R4 (flags) unset (docs/kernel-notes.md). */
static long (*redirect_neigh)(__u32 ifindex, void *params, int plen, __u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

/* Linux 6.3; not in the 6.1 uapi headers bcc compiles against here. The drivers
 * feature-probe it (datapath/probe.py) before attaching a program that uses it. */
#define TEREDO_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)

/* Stripping IPv4 + UDP in front of IPv6 (client and relay receive). A GSO
 * super-packet (a sender's TSO kept across veths: gso_type UDP_TUNNEL | TCPV6)
 * stays one skb; its gso_size is the inner TCP segment size, which the outer
 * headers never counted, so FIXED_GSO: without it bpf_skb_net_shrink adds the 28
 * bytes to gso_size and TCP (rcv_mss) or a later segmentation sees segments 28
 * bytes too big. This kernel (6.18) has no BPF_F_ADJ_ROOM_DECAP_L4_UDP, so
 * SKB_GSO_UDP_TUNNEL and skb->encapsulation stay set (docs/kernel-notes.md). A GSO
 * packet that is neither TCP nor UDP_L4 is refused (-ENOTSUPP) and left whole. */
#define TEREDO_DECAP_FLAGS (TEREDO_ADJ_ROOM_DECAP_L3_IPV6 | BPF_F_ADJ_ROOM_FIXED_GSO)

/* Growing room for IPv4 + UDP switches skb->protocol to IPv4; FIXED_GSO keeps a
 * GSO packet's gso_size (the MTU it was cut for). */
#define TEREDO_ENCAP_FLAGS (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | \
			    BPF_F_ADJ_ROOM_FIXED_GSO)

#endif /* TEREDO_COMPAT_H */
