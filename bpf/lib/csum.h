/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Internet checksum (RFC 1071) helpers: pure functions, no context, no map.
 */
#ifndef TEREDO_CSUM_H
#define TEREDO_CSUM_H

#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>

/* Fold a one's complement sum into 16 bits, not complemented: the value a
 * checksum field holds while the checksum is left to offload (the pseudo-header
 * sum the stack seeds it with). */
static __always_inline __u16 csum_fold16(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Fold a 32-bit one's complement sum into 16 bits and complement it. */
static __always_inline __u16 csum_fold32(__u64 sum)
{
	return (__u16)~csum_fold16(sum);
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

/*
 * Pseudo-header sums (RFC 8200 §8.1, RFC 768), unfolded. Every 16-bit word is
 * added as it sits in memory, constants converted to network order first, so the
 * folded result can be compared with (or stored as) a checksum field directly.
 */
static __always_inline __u64 ipv6_pseudo_sum(const struct ipv6hdr *ip6, __u32 l4_len, __u8 proto)
{
	const __u16 *w = (const __u16 *)&ip6->saddr;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < 16; i++) /* source and destination: 32 bytes */
		sum += w[i];
	return sum + bpf_htons(l4_len >> 16) + bpf_htons(l4_len & 0xffff) + bpf_htons(proto);
}

static __always_inline __u64 ipv4_pseudo_sum(const struct iphdr *ip, __be16 l4_len_be)
{
	const __u16 *w = (const __u16 *)&ip->saddr;

	return (__u64)w[0] + w[1] + w[2] + w[3] + bpf_htons(ip->protocol) + l4_len_be;
}

/*
 * A TCP or UDP checksum the sender left to offload (CHECKSUM_PARTIAL: a veth from
 * a local sender passes it on as it is) holds the folded pseudo-header sum. A
 * complete checksum holds that value by chance once in 65536 packets: callers
 * that act on the test verify first, or only take the slow path.
 */
static __always_inline int csum_left_to_offload(__u16 field, __u64 pseudo_sum)
{
	return field == csum_fold16(pseudo_sum);
}

/* Where the checksum sits in the transport header: TCP and UDP, the protocols
 * whose checksums Linux leaves to offload; -1 for the others (ICMPv6 is always
 * computed in software). The client's offload probe relies on it: its echo
 * request, left to offload on purpose, must leave without the detour. */
static __always_inline int l4_csum_offset(__u8 nexthdr)
{
	if (nexthdr == IPPROTO_TCP)
		return offsetof(struct tcphdr, check);
	if (nexthdr == IPPROTO_UDP)
		return offsetof(struct udphdr, check);
	return -1;
}

#endif /* TEREDO_CSUM_H */
