/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The data path's clock, read once per packet and handed to whatever needs it
 * (the guard's flows, a peer's freshness and activity).
 *
 * CLOCK_MONOTONIC as of the last timer tick (bpf_ktime_get_coarse_ns, Linux 5.11):
 * the base time.monotonic_ns() reads in the control plane, behind it by at most a
 * tick (1 to 10 ms with HZ 1000 to 100). Every time it feeds is counted in seconds
 * (peer and flow timeouts, docs/datapath.md "Time base"), and a stamp the control
 * plane wrote a moment ago may be ahead of it: callers take one ahead of `now` as
 * fresh. A precise read (bpf_ktime_get_ns) reads the TSC: 20 to 30 ns a call in our
 * guests (perf during 1200-byte UDP between two clients), and the client's receive
 * and transmit paths each took two (guard, peer). The slow-path and server rate
 * limits (lib/limit.h, server.c) keep the precise clock: their intervals are
 * microseconds.
 */
#ifndef TEREDO_CLOCK_H
#define TEREDO_CLOCK_H

static __always_inline __u64 datapath_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

#endif /* TEREDO_CLOCK_H */
