/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The inbound guard (docs/security.md): with the "stateful" policy, IPv6 that
 * arrives over Teredo comes in only when it belongs to a conversation the host
 * started (a flow, recorded by the egress program when the host's own packet
 * left), goes to a port the operator allowed, or is ICMPv6 that IPv6 needs
 * (RFC 4890 §4.3.1). Everything else is dropped here, before the stack sees it,
 * and before the receive path learns its sender as a peer.
 *
 * The rules are xdp_teredo/teredo/guard.py's, which decides the same for the
 * slow path and against which tests/bpf/test_guard.py checks this code packet for
 * packet. This header holds the guard's parser and its two decisions (both
 * units include it, after their map block):
 *   guard_inbound(c, ip6, now)   receive: GUARD_PASS or a TEREDO_R_GUARD_* reason
 *   guard_outbound(c, ip6, now)  transmit: record or refresh the packet's flow
 * c is a cursor just after the fixed IPv6 header (parse_ipv6's); now is the
 * packet's datapath_now() (lib/clock.h).
 */
#ifndef TEREDO_GUARD_H
#define TEREDO_GUARD_H

#include <linux/in.h>
#include <linux/in6.h>
#include <linux/icmpv6.h>
#include <linux/ipv6.h>

#include "clock.h"
#include "parse.h"

/* Extension headers walked to find the transport header (guard.EXT_MAX). */
#define GUARD_EXT_MAX 4
/* Bytes after the IPv6 header the guard reads in the usual case: a few extension
 * headers and a TCP header, or an ICMPv6 error's invoking IPv6 header and its
 * first 8 bytes. tc programs pull this much into the linear area first. */
#define GUARD_PEEK 128
/* "Nothing against it": the caller goes on (no reason is negative). */
#define GUARD_PASS (-1)

/* RFC 9293 §3.1: control bits, byte 13 of the TCP header. */
#define GUARD_TCP_FIN 0x01
#define GUARD_TCP_SYN 0x02
#define GUARD_TCP_RST 0x04

/* The maps (guard_config, guard_flows, guard_fragments, guard_allow) are the
 * unit's: it defines their accessors (lib/maps.h) before including this. */

/* What the guard reads in one packet. */
struct guard_view {
	struct teredo_flow_key key;	/* the packet's flow, as the host sees it */
	struct teredo_flow_key related;	/* ICMPv6 error: the flow of the invoking packet */
	__be32 frag_id;
	__u16 frag_offset;		/* 8-byte units; non-zero: a later fragment */
	__u8 fragment;			/* a fragment header was seen */
	__u8 more_fragments;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 has_related;
};

static __always_inline int guard_is_extension(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
	       nh == IPPROTO_AH || nh == IPPROTO_FRAGMENT;
}

/* The two ports of a TCP or UDP header at p, into local/remote as the host sees them. */
static __always_inline void guard_ports(const __u8 *p, int inbound, struct teredo_flow_key *key)
{
	__builtin_memcpy(inbound ? &key->remote_port : &key->local_port, p, 2);
	__builtin_memcpy(inbound ? &key->local_port : &key->remote_port, p + 2, 2);
}

/* RFC 4443 §3: an error carries the start of the packet that caused it, which the
 * host sent: its flow, keyed as it was recorded on the way out. Only the fixed
 * header and the first 8 transport bytes are read. */
static __always_inline void guard_invoking(void *at, void *end, struct guard_view *g)
{
	struct ipv6hdr *inv = at;
	__u8 *l4 = (void *)(inv + 1);

	if ((void *)(l4 + 8) > end)
		return;
	__builtin_memcpy(g->related.local, &inv->saddr, 16);
	__builtin_memcpy(g->related.remote, &inv->daddr, 16);
	g->related.proto = inv->nexthdr;
	if (inv->nexthdr == IPPROTO_TCP || inv->nexthdr == IPPROTO_UDP)
		guard_ports(l4, 0, &g->related);
	else if (inv->nexthdr == IPPROTO_ICMPV6 && l4[0] == ICMPV6_ECHO_REQUEST)
		__builtin_memcpy(&g->related.local_port, l4 + 4, 2);
	g->has_related = 1;
}

/*
 * Walk the extension headers (RFC 8200 §4) and read the transport header. 0, or
 * TEREDO_R_GUARD_UNPARSED when the packet ends (or the linear data does) before
 * what the guard needs: with a default-deny policy, what cannot be checked stays
 * out. inbound: local is the destination (receive) or the source (transmit).
 */
static __always_inline int guard_parse(struct cursor *c, struct ipv6hdr *ip6, int inbound,
				       struct guard_view *g)
{
	__u8 nh = ip6->nexthdr;
	__u32 size;
	__u16 word;
	__u8 *p;
	int i;

	__builtin_memcpy(g->key.local, inbound ? &ip6->daddr : &ip6->saddr, 16);
	__builtin_memcpy(g->key.remote, inbound ? &ip6->saddr : &ip6->daddr, 16);
#pragma unroll
	for (i = 0; i < GUARD_EXT_MAX; i++) {
		p = c->pos;
		if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
		    nh == IPPROTO_AH) {
			if ((void *)(p + 2) > c->end)
				return TEREDO_R_GUARD_UNPARSED;
			/* Length in 8-byte units after the first 8; AH (RFC 4302 §2.2):
			 * in 4-byte units, minus 2. */
			size = nh == IPPROTO_AH ? ((__u32)p[1] + 2) * 4 : ((__u32)p[1] + 1) * 8;
			if ((void *)p + size > c->end)
				return TEREDO_R_GUARD_UNPARSED;
			nh = p[0];
			c->pos = (void *)p + size;
		} else if (nh == IPPROTO_FRAGMENT) {
			if ((void *)(p + 8) > c->end)
				return TEREDO_R_GUARD_UNPARSED;
			word = ((__u16)p[2] << 8) | p[3];
			g->fragment = 1;
			g->frag_offset = word >> 3;
			g->more_fragments = word & 1;
			__builtin_memcpy(&g->frag_id, p + 4, 4);
			nh = p[0];
			c->pos = p + 8;
			if (g->frag_offset)
				break;
		} else {
			break;
		}
	}
	g->key.proto = nh;
	/* RFC 8200 §4.5: a later fragment carries no transport header. */
	if (g->fragment && g->frag_offset)
		return 0;
	if (guard_is_extension(nh))
		return TEREDO_R_GUARD_UNPARSED;

	p = c->pos;
	if (nh == IPPROTO_TCP) {
		if ((void *)(p + 14) > c->end)
			return TEREDO_R_GUARD_UNPARSED;
		guard_ports(p, inbound, &g->key);
		g->tcp_flags = p[13];
	} else if (nh == IPPROTO_UDP) {
		if ((void *)(p + TEREDO_UDP_HDR_LEN) > c->end)
			return TEREDO_R_GUARD_UNPARSED;
		guard_ports(p, inbound, &g->key);
	} else if (nh == IPPROTO_ICMPV6) {
		/* RFC 4443 §2.1: type, code, checksum and 4 bytes every message has. */
		if ((void *)(p + 8) > c->end)
			return TEREDO_R_GUARD_UNPARSED;
		g->icmp_type = p[0];
		if (p[0] == ICMPV6_ECHO_REQUEST || p[0] == ICMPV6_ECHO_REPLY)
			__builtin_memcpy(&g->key.local_port, p + 4, 2); /* the identifier */
		else if (p[0] == ICMPV6_DEST_UNREACH || p[0] == ICMPV6_TIME_EXCEED ||
			 p[0] == ICMPV6_PARAMPROB)
			guard_invoking(p + 8, c->end, g);
	}
	return 0;
}

/* Nanoseconds a flow in this state lives after its last packet; 0 = dead. If
 * chains, not switches: clang makes a jump table of a dense switch, which BPF
 * cannot load. */
static __always_inline __u64 guard_timeout(const struct teredo_guard_config *gc, __u32 state)
{
	if (state == TEREDO_FLOW_TCP_ESTABLISHED)
		return gc->tcp_established_ns;
	if (state == TEREDO_FLOW_TCP_HANDSHAKE)
		return gc->tcp_handshake_ns;
	if (state == TEREDO_FLOW_TCP_CLOSING)
		return gc->tcp_closing_ns;
	if (state == TEREDO_FLOW_TCP_CLOSED)
		return gc->tcp_closed_ns;
	if (state == TEREDO_FLOW_UDP)
		return gc->udp_ns;
	if (state == TEREDO_FLOW_UDP_REPLIED)
		return gc->udp_replied_ns;
	if (state == TEREDO_FLOW_ICMP_ECHO)
		return gc->icmp_echo_ns;
	if (state == TEREDO_FLOW_OTHER)
		return gc->other_ns;
	return 0;
}

/* The flow if it exists and has not timed out (a timed-out one is removed). A
 * seen_ns ahead of now was written on another CPU a moment ago: alive. */
static __always_inline struct teredo_flow *guard_alive(struct teredo_flow_key *key,
						       const struct teredo_guard_config *gc, __u64 now)
{
	struct teredo_flow *flow = guard_flows_lookup(key);

	if (!flow)
		return NULL;
	if (flow->seen_ns < now && now - flow->seen_ns > guard_timeout(gc, flow->state)) {
		guard_flows_delete(key);
		return NULL;
	}
	return flow;
}

/* A flow's state after a packet from the other end (guard._answered). */
static __always_inline __u32 guard_answered(__u32 state, __u8 proto, __u8 tcp_flags)
{
	if (proto == IPPROTO_UDP)
		return TEREDO_FLOW_UDP_REPLIED;
	if (proto == IPPROTO_TCP) {
		if (tcp_flags & GUARD_TCP_RST)
			return TEREDO_FLOW_TCP_CLOSED;
		if ((tcp_flags & GUARD_TCP_FIN) && state != TEREDO_FLOW_TCP_CLOSED)
			return TEREDO_FLOW_TCP_CLOSING;
	}
	return state;
}

/* A TCP flow's state after a segment of ours (guard._sent_tcp); 0: record nothing. */
static __always_inline __u32 guard_sent_tcp(__u32 state, __u8 flags)
{
	if (flags & GUARD_TCP_RST)
		return state ? TEREDO_FLOW_TCP_CLOSED : 0; /* an RST answering nothing opens nothing */
	if (flags & GUARD_TCP_FIN)
		return state == TEREDO_FLOW_TCP_CLOSED ? TEREDO_FLOW_TCP_CLOSED : TEREDO_FLOW_TCP_CLOSING;
	if (flags & GUARD_TCP_SYN)
		return TEREDO_FLOW_TCP_HANDSHAKE;
	if (state == TEREDO_FLOW_TCP_CLOSING || state == TEREDO_FLOW_TCP_CLOSED)
		return state; /* the last ACKs of a close do not reopen it */
	return TEREDO_FLOW_TCP_ESTABLISHED;
}

static __always_inline int guard_allowed(__u8 proto, __be16 port)
{
	struct teredo_allow_key key = { .proto = proto, .port = port };
	struct teredo_allow *hits = guard_allow_lookup(&key);

	if (!hits)
		return 0;
	__sync_fetch_and_add(&hits->packets, 1);
	return 1;
}

static __always_inline void guard_fragment_key(const struct guard_view *g,
					       struct teredo_fragment_key *fk)
{
	__builtin_memcpy(fk->local, g->key.local, 16);
	__builtin_memcpy(fk->remote, g->key.remote, 16);
	fk->identification = g->frag_id;
}

/* RFC 4890 §4.3.1: what IPv6 cannot do without, from anywhere or about our flows. */
static __always_inline int guard_icmpv6(struct guard_view *g, const struct teredo_guard_config *gc,
					__u64 now)
{
	__u8 type = g->icmp_type;

	if (type == ICMPV6_PKT_TOOBIG)
		return GUARD_PASS; /* path MTU discovery must work, whatever the flow */
	if (type == ICMPV6_DEST_UNREACH || type == ICMPV6_TIME_EXCEED || type == ICMPV6_PARAMPROB) {
		if (g->has_related && guard_alive(&g->related, gc, now))
			return GUARD_PASS;
		return TEREDO_R_GUARD_ICMPV6;
	}
	/* Ping keeps working both ways. Replies pass without a flow too: the direct
	 * connectivity test's request (RFC 4380 §5.2.9) goes out through the server, so
	 * a relay never sees it, yet must let the reply through to its client. */
	if (type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY)
		return GUARD_PASS;
	return TEREDO_R_GUARD_ICMPV6; /* informational types a host needs from no one afar */
}

/*
 * Receive: may this IPv6 packet (header at ip6, c just after it) come in? A
 * matching flow is refreshed; an admitted first fragment is remembered so that
 * the rest of its packet follows it in (guard.inbound).
 */
static __always_inline int guard_inbound(struct cursor *c, struct ipv6hdr *ip6, __u64 now)
{
	const struct teredo_guard_config *gc = guard_config_get();
	struct teredo_fragment_key fk = {};
	struct guard_view g = {};
	struct teredo_flow *flow;
	__u64 *seen;
	int verdict;

	if (!gc || gc->policy != TEREDO_GUARD_STATEFUL)
		return GUARD_PASS;
	if (guard_parse(c, ip6, 1, &g))
		return TEREDO_R_GUARD_UNPARSED;
	if (g.fragment && g.frag_offset) {
		guard_fragment_key(&g, &fk);
		seen = guard_fragments_lookup(&fk);
		if (seen && (*seen >= now || now - *seen <= gc->fragment_ns))
			return GUARD_PASS;
		return TEREDO_R_GUARD_FRAGMENT;
	}

	if (g.key.proto == IPPROTO_ICMPV6) {
		verdict = guard_icmpv6(&g, gc, now);
	} else {
		verdict = TEREDO_R_GUARD_UNSOLICITED;
		flow = guard_alive(&g.key, gc, now);
		if (flow) {
			flow->seen_ns = now;
			flow->state = guard_answered(flow->state, g.key.proto, g.tcp_flags);
			verdict = GUARD_PASS;
		} else if ((g.key.proto == IPPROTO_TCP || g.key.proto == IPPROTO_UDP) &&
			   guard_allowed(g.key.proto, g.key.local_port)) {
			verdict = GUARD_PASS;
		}
	}
	if (verdict == GUARD_PASS && g.fragment && g.more_fragments) {
		guard_fragment_key(&g, &fk);
		guard_fragments_update(&fk, &now);
	}
	return verdict;
}

/* Transmit: record or refresh the flow of a packet the host sends (guard.outbound). */
static __always_inline void guard_outbound(struct cursor *c, struct ipv6hdr *ip6, __u64 now)
{
	const struct teredo_guard_config *gc = guard_config_get();
	struct teredo_flow fresh = {};
	struct guard_view g = {};
	struct teredo_flow *flow;
	__u32 state;

	if (!gc || gc->policy != TEREDO_GUARD_STATEFUL)
		return;
	if (guard_parse(c, ip6, 0, &g) || (g.fragment && g.frag_offset))
		return;
	if (g.key.proto == IPPROTO_ICMPV6) {
		/* Errors and replies answer something: they start nothing. */
		if (g.icmp_type != ICMPV6_ECHO_REQUEST)
			return;
		fresh.seen_ns = now;
		fresh.state = TEREDO_FLOW_ICMP_ECHO;
		guard_flows_update(&g.key, &fresh);
		return;
	}
	flow = guard_alive(&g.key, gc, now);
	if (g.key.proto == IPPROTO_TCP) {
		state = guard_sent_tcp(flow ? flow->state : 0, g.tcp_flags);
		if (!state)
			return;
	} else if (g.key.proto == IPPROTO_UDP) {
		state = flow ? flow->state : TEREDO_FLOW_UDP;
	} else {
		state = TEREDO_FLOW_OTHER;
	}
	if (flow) {
		flow->seen_ns = now;
		flow->state = state;
		return;
	}
	fresh.seen_ns = now;
	fresh.state = state;
	guard_flows_update(&g.key, &fresh);
}

#endif /* TEREDO_GUARD_H */
