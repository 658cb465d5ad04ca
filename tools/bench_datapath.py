#!/usr/bin/env python3
"""Micro-benchmark of the data path programs through BPF_PROG_TEST_RUN (not a test).

    make bench-datapath            # or: .venv/bin/python tools/bench_datapath.py [--rounds 7]

Measures ns per packet, as timed by the kernel around the program run, for:
- trivial XDP_PASS and TC_ACT_OK programs compiled in the same run (the floor);
- xdp_teredo_rx on host traffic (not for us: what everyone else pays);
- xdp_teredo_rx decapsulating, tc_teredo_rx (tc-only) decapsulating;
- tc_teredo_tx encapsulating.
Programs that change the packet cannot use the kernel's repeat loop (the context is
reused: a decapsulated frame would be decapsulated again, a tc encap returns
-EALREADY from the second repeat on), so they run with repeat=1 in a loop and
each run's kernel-measured duration counts; that includes one ktime_get_ns() pair,
which the trivial programs measured the same way show. Programs that leave the
packet alone are also timed with the kernel's own loop (repeat=N), which amortizes
the timer. Each measurement is repeated in rounds: the table gives the median of
the round medians and their spread (min..max).
"""

import argparse
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "bpf"))

from xdp_teredo.datapath import Config, ClientDatapath, PeerEntry, kheaders, now_ns, testrun  # noqa: E402

TRIVIAL = r"""
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>
int trivial_xdp(struct xdp_md *ctx) { return XDP_PASS; }
int trivial_tc(struct __sk_buff *skb) { return TC_ACT_OK; }
"""


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}"


def looped(fd: int, frame: bytes, runs: int, xdp: bool, setup=None) -> float:
    """Median of `runs` single runs (repeat=1), kernel-timed, in ns."""
    durations = []
    for _ in range(runs):
        if setup:
            setup()
        result = testrun.run_xdp(fd, frame) if xdp else testrun.run(fd, frame)
        durations.append(result.duration_ns)
    return statistics.median(durations)


def batched(fd: int, frame: bytes, repeat: int, xdp: bool) -> float:
    result = testrun.run_xdp(fd, frame, repeat=repeat) if xdp else testrun.run(fd, frame, repeat=repeat)
    return float(result.duration_ns)


def measure(rounds: int = 7, runs: int = 3000, repeat: int = 200000) -> dict:
    """Compile, check that each case takes the path it names, then time it.

    {"machine": str, "rows": [{"program", "method", "ns", "min", "max"}], "seconds": float};
    ns is the median of the round medians, min/max their spread. `make bench`
    (tools/bench/datapath.py) calls this and puts the rows in docs/benchmarks.md.
    """
    import packets as P  # tests/bpf/packets.py: the same packets the tests use
    from bcc import BPF

    kheaders.export()
    prog = ClientDatapath.compile()
    trivial = BPF(text=TRIVIAL)
    try:
        t_xdp = trivial.load_func(b"trivial_xdp", BPF.XDP).fd
        t_tc = trivial.load_func(b"trivial_tc", BPF.SCHED_CLS).fd

        prog.reset()
        prog.config.write(Config(local_ipv4=P.LOCAL_IPV4, local_port=P.LOCAL_PORT, teredo_address=P.OUR_ADDRESS,
                                 nic_ifindex=2, tun_ifindex=3, l2_len=14, learn_peers=False))
        prog.peers.put(PeerEntry(address=P.PEER_ADDRESS, mapped_ipv4=P.PEER_IPV4, mapped_port=P.PEER_PORT,
                                 last_rx_ns=now_ns() + 3600 * 10**9))  # stays fresh for the whole run
        inner = P.inner_ipv6(P.PEER_ADDRESS, P.OUR_ADDRESS, b"x" * 56)           # a 104-byte echo request
        teredo = P.teredo_frame(inner)
        host = P.teredo_frame(inner, dport=P.LOCAL_PORT + 1)                      # UDP, not our port
        outgoing = P.ipv6_frame(P.inner_ipv6(P.OUR_ADDRESS, P.PEER_ADDRESS, b"x" * 56))

        cases = [
            ("trivial XDP_PASS", "looped", lambda: looped(t_xdp, teredo, runs, True)),
            ("trivial XDP_PASS", "repeat", lambda: batched(t_xdp, teredo, repeat, True)),
            ("trivial TC_ACT_OK", "looped", lambda: looped(t_tc, outgoing, runs, False)),
            ("xdp_teredo_rx, host traffic (pass)", "looped", lambda: looped(prog.fd("xdp_rx"), host, runs, True)),
            ("xdp_teredo_rx, host traffic (pass)", "repeat", lambda: batched(prog.fd("xdp_rx"), host, repeat, True)),
            ("xdp_teredo_rx, decapsulate", "looped", lambda: looped(prog.fd("xdp_rx"), teredo, runs, True)),
            ("tc_teredo_rx, decapsulate (tc-only)", "looped", lambda: looped(prog.fd("tc_rx"), teredo, runs, False)),
            ("tc_teredo_tx, encapsulate", "looped", lambda: looped(prog.fd("tc_tx"), outgoing, runs, False)),
        ]
        # Check that each case does what it says before timing it.
        before = prog.stats()
        for fd, frame, xdp, reason in ((prog.fd("xdp_rx"), host, True, "rx_not_teredo"),
                                       (prog.fd("xdp_rx"), teredo, True, "decapsulated"),
                                       (prog.fd("tc_rx"), teredo, False, "decapsulated"),
                                       (prog.fd("tc_tx"), outgoing, False, "encapsulated")):
            n = before[reason]["packets"]
            (testrun.run_xdp if xdp else testrun.run)(fd, frame)
            before = prog.stats()
            assert before[reason]["packets"] == n + 1, reason

        started = time.time()
        rows = []
        for name, method, timed in cases:
            medians = [timed() for _ in range(rounds)]
            rows.append({"program": name, "method": method, "ns": statistics.median(medians),
                         "min": min(medians), "max": max(medians)})
        return {"machine": machine(), "rows": rows, "seconds": time.time() - started,
                "rounds": rounds, "runs": runs, "repeat": repeat}
    finally:
        trivial.cleanup()
        prog.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3000, help="single runs per round")
    parser.add_argument("--repeat", type=int, default=200000, help="kernel loop length per round")
    args = parser.parse_args(argv)

    result = measure(args.rounds, args.runs, args.repeat)
    print(f"machine: {result['machine']}")
    print(f"rounds: {args.rounds}; looped = median of {args.runs} runs with repeat=1; "
          f"repeat = one run with repeat={args.repeat}")
    print(f"{'program':<38} {'method':<7} {'ns/pkt':>8} {'spread (round medians)':>24}")
    for row in result["rows"]:
        spread = f"{row['min']:.0f} .. {row['max']:.0f}"
        print(f"{row['program']:<38} {row['method']:<7} {row['ns']:>8.0f} {spread:>24}")
    print(f"({result['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
