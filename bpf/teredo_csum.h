/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Internet checksum (RFC 1071) helpers: pure functions, no context, no map.
 */
#ifndef TEREDO_CSUM_H
#define TEREDO_CSUM_H

#include <linux/ip.h>

/* Fold a 32-bit one's complement sum into 16 bits and complement it. */
static __always_inline __u16 csum_fold32(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/*
 * The one's complement sum of an option-less IPv4 header (20 bytes), with the
 * checksum field included. Unrolled loads rather than bpf_csum_diff so that the
 * XDP receive path can verify a header in packet memory without a helper call.
 */
static __always_inline __u64 ipv4_hdr_sum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	return sum;
}

/* RFC 1071: a correct header sums (checksum included) to 0xffff, i.e. folds to 0. */
static __always_inline int ipv4_csum_ok(const struct iphdr *ip)
{
	return csum_fold32(ipv4_hdr_sum(ip)) == 0;
}

#endif /* TEREDO_CSUM_H */
