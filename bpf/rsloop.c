/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Lab only: the closed-loop load generator of the server benchmark
 * (xdp_teredo/lab/rsloop.py, tools/bench/server_bench.py). Attached to the
 * generator host's uplink, it turns every Router Advertisement a Teredo server
 * sends back into the next Router Solicitation to that server and transmits it
 * out of the same device (XDP_TX). Seeded with K solicitations, K stay in
 * flight, and the rate the program turns RAs around is the rate the server
 * answers: whatever this program costs, it costs the same for every server.
 *
 * The solicitation is not encoded here: the Python side writes the UDP payload
 * (an authentication header with a nonce, RFC 4380 §5.1.1, then the RS of RFC
 * 4861 §4.1 from fe80::ffff:ffff:ffff to ff02::2) into rsloop_template once. Its
 * ICMPv6 checksum covers neither the nonce nor the IPv4 addresses, so the copy
 * is already right; the program keeps the RA's nonce in place (the server echoed
 * the one it got: the loop's K nonces never change) and only rewrites the outer
 * headers: MACs, IPv4 addresses and UDP ports swapped, lengths, the IPv4 checksum
 * computed anew, UDP checksum 0 (RFC 768: none, legal over IPv4).
 *
 * -D from rsloop.py: RSLOOP_PAYLOAD_LEN (the template's bytes), RSLOOP_SERVER_PORT
 * (constants.TEREDO_PORT), RSLOOP_NONCE_OFFSET.
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>

#include "lib/shared.h"
#include "lib/csum.h"

#define RSLOOP_ICMPV6_RA 134	/* RFC 4861 §4.2 */
#define RSLOOP_AUTH_LEN 13	/* §5.1.1: indicator, id_len 0, au_len 0, nonce, confirmation */
#define RSLOOP_ORIGIN_LEN 8	/* §5.1.1: indicator, port, address */
/* From the UDP payload to the RA's type: auth, origin, the IPv6 header. */
#define RSLOOP_RA_TYPE_AT (RSLOOP_AUTH_LEN + RSLOOP_ORIGIN_LEN + TEREDO_IPV6_HDR_LEN)
#define RSLOOP_FRAME_LEN (ETH_HLEN + TEREDO_IPV4_HDR_LEN + TEREDO_UDP_HDR_LEN + RSLOOP_PAYLOAD_LEN)
#define RSLOOP_TTL 64

enum {
	RSLOOP_TURNED = 0,	/* an RA went back out as an RS */
	RSLOOP_PASSED = 1,	/* not an RA from a server: to the stack */
	RSLOOP_STOPPED = 2,	/* an RA while the loop is stopped: dropped, the loop ends */
	RSLOOP_TAIL = 3,	/* bpf_xdp_adjust_tail refused: dropped */
	RSLOOP_COUNTERS
};

struct rsloop_template {
	__u8 payload[RSLOOP_PAYLOAD_LEN];
	__u32 running;		/* 0: drop RAs instead (between measurements) */
};

BPF_ARRAY(rsloop_template, struct rsloop_template, 1);
BPF_PERCPU_ARRAY(rsloop_counts, __u64, RSLOOP_COUNTERS);

static __always_inline int count(int what, int verdict)
{
	__u32 key = what;
	__u64 *n = rsloop_counts.lookup(&key);

	if (n)
		*n += 1;
	return verdict;
}

int rsloop_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *p = (void *)(udp + 1);
	struct rsloop_template *t;
	__u8 mac[ETH_ALEN];
	__be32 saddr, daddr;
	__be16 sport, dport;
	__u32 key = 0;
	int grow;

	if ((void *)(p + RSLOOP_RA_TYPE_AT + 1) > end)
		return count(RSLOOP_PASSED, XDP_PASS);
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != TEREDO_IPPROTO_UDP || udp->source != bpf_htons(RSLOOP_SERVER_PORT))
		return count(RSLOOP_PASSED, XDP_PASS);
	/* An RA as servers send it (§5.2.1): authentication header without client id,
	 * then an origin indication, then IPv6 carrying ICMPv6 type 134. */
	if (p[0] != 0 || p[1] != TEREDO_INDICATOR_AUTH || p[2] || p[3] ||
	    p[RSLOOP_AUTH_LEN] != 0 || p[RSLOOP_AUTH_LEN + 1] != TEREDO_INDICATOR_ORIGIN ||
	    p[RSLOOP_AUTH_LEN + RSLOOP_ORIGIN_LEN + 6] != TEREDO_IPPROTO_ICMPV6 ||
	    p[RSLOOP_RA_TYPE_AT] != RSLOOP_ICMPV6_RA)
		return count(RSLOOP_PASSED, XDP_PASS);
	t = rsloop_template.lookup(&key);
	if (!t)
		return count(RSLOOP_PASSED, XDP_PASS);
	if (!t->running)
		return count(RSLOOP_STOPPED, XDP_DROP);

	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	saddr = ip->saddr;
	daddr = ip->daddr;
	sport = udp->source;
	dport = udp->dest;
	/* The RS is shorter than the RA: cut the frame's tail (never grown here). */
	grow = RSLOOP_FRAME_LEN - (int)(end - data);
	if (grow > 0)
		return count(RSLOOP_PASSED, XDP_PASS);
	if (grow < 0 && bpf_xdp_adjust_tail(ctx, grow))
		return count(RSLOOP_TAIL, XDP_DROP);

	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	udp = (void *)(ip + 1);
	p = (void *)(udp + 1);
	if ((void *)(p + RSLOOP_PAYLOAD_LEN) > end)
		return count(RSLOOP_TAIL, XDP_DROP);

	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	ip->saddr = daddr;
	ip->daddr = saddr;
	ip->tot_len = bpf_htons(TEREDO_IPV4_HDR_LEN + TEREDO_UDP_HDR_LEN + RSLOOP_PAYLOAD_LEN);
	ip->frag_off = 0;
	ip->ttl = RSLOOP_TTL;
	ip->check = 0;
	ip->check = csum_fold32(ipv4_hdr_sum(ip));
	udp->source = dport;
	udp->dest = sport;
	udp->len = bpf_htons(TEREDO_UDP_HDR_LEN + RSLOOP_PAYLOAD_LEN);
	udp->check = 0;
	/* The template around the nonce, which stays where the RA carried it. */
	__builtin_memcpy(p, t->payload, RSLOOP_NONCE_OFFSET);
	__builtin_memcpy(p + RSLOOP_NONCE_OFFSET + 8, t->payload + RSLOOP_NONCE_OFFSET + 8,
			 RSLOOP_PAYLOAD_LEN - RSLOOP_NONCE_OFFSET - 8);
	return count(RSLOOP_TURNED, XDP_TX);
}
