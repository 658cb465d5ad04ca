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

/* Growing room for IPv4 + UDP switches skb->protocol to IPv4; FIXED_GSO keeps a
 * GSO packet's gso_size (the MTU it was cut for). */
#define TEREDO_ENCAP_FLAGS (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | \
			    BPF_F_ADJ_ROOM_FIXED_GSO)

#endif /* TEREDO_COMPAT_H */
