"""ns per packet of each BPF program, through BPF_PROG_TEST_RUN (not a test).

    make bench-datapath     # or: .venv/bin/python -m tools.bench.datapath [--rounds 7] [--relay]

The client's programs (bpf/client.c), kernel-timed around the program run:
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

The relay's programs (bpf/relay.c) are timed the same way, with two sizes of peer
table, so that the cost of the peer lookup at 100,000 entries is seen without any
traffic around it. They forward: their verdicts depend on the kernel's fib, which
bpf_fib_lookup reads in the network namespace of the calling thread. So the runs
happen in a thread inside a throwaway namespace that holds a relay's two devices
(as tests/bpf/test_relay.py builds it): up0 (IPv4 side, default gateway with a
permanent neighbour) and lan0 (native IPv6, a host with a permanent neighbour).
Both directions are timed with the same 104-byte ICMPv6 echo: a Teredo client's
packet to the native host (decapsulate) and the host's packet back (encapsulate),
through XDP and through tc.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import secrets
import statistics
import struct
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from xdp_teredo.datapath import ClientDatapath, Config, PeerEntry, kheaders, now_ns, testrun  # noqa: E402
from xdp_teredo.datapath.maps import delta  # noqa: E402
from xdp_teredo.datapath.relay import RelayDatapath  # noqa: E402
from xdp_teredo.lab.traffic import in_netns  # noqa: E402

from tools.bench.synthetic import SyntheticPeers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RELAY_IPV4, RELAY_PORT = "192.0.2.20", 3544
GW4, GW4_MAC = "192.0.2.30", "02:00:00:00:00:1e"
UP0_MAC, LAN0_MAC = "02:00:00:00:00:14", "02:00:00:00:01:01"
HOST, HOST_MAC = "2001:db8:1::2", "02:00:00:00:01:02"
SERVER = "192.0.2.1"
CLIENT_IPV4, CLIENT_PORT = "198.51.100.1", 40000
# The peer table's capacity for both sizes: the relay needs --max-peers above
# 100,000 for the large one (its default is 65,536).
PEER_MAX = 131072
TABLE_SIZES = (10, 100_000)
# How many different clients the "in turn" cases send to (spread over the table).
SPREAD_PEERS = 1024

TC_ACT_REDIRECT, XDP_REDIRECT = 7, 4


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


def client_programs(rounds: int = 7, runs: int = 3000, repeat: int = 200000) -> dict:
    """Compile, check that each case takes the path it names, then time it.

    {"machine": str, "rows": [{"program", "method", "ns", "min", "max"}], "seconds": float};
    ns is the median of the round medians, min/max their spread. `make bench`
    puts the rows in docs/benchmarks.md.
    """
    sys.path.insert(0, os.path.join(ROOT, "tests", "bpf"))
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


def _sh(*cmd, ns=None):
    full = (["ip", "netns", "exec", ns] if ns else []) + [str(c) for c in cmd]
    return subprocess.run(full, check=True, capture_output=True, text=True)


class _RelayNetns:
    """Namespace R with up0 and lan0 (veths whose peers live in R-p)."""

    def __init__(self):
        tag = secrets.token_hex(3)
        self.name, self.peer = f"xt-bdp-{tag}", f"xt-bdp-{tag}-p"

    def __enter__(self):
        _sh("ip", "netns", "add", self.name)
        _sh("ip", "netns", "add", self.peer)
        try:
            r = self.name
            _sh("sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", ns=r)
            _sh("sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0", ns=r)
            _sh("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1", ns=r)
            for name, mac in (("up0", UP0_MAC), ("lan0", LAN0_MAC)):
                _sh("ip", "link", "add", name, "address", mac, "type", "veth", "peer", "name",
                    name + "p", "netns", self.peer, ns=r)
                _sh("ip", "link", "set", name + "p", "up", ns=self.peer)
                _sh("ip", "link", "set", name, "up", ns=r)
            _sh("sysctl", "-q", "-w", "net.ipv4.conf.up0.forwarding=1", ns=r)
            for cmd in (["ip", "addr", "add", f"{RELAY_IPV4}/28", "dev", "up0"],
                        ["ip", "addr", "add", "2001:db8:3::1/64", "dev", "up0", "nodad"],
                        ["ip", "addr", "add", "2001:db8:1::1/64", "dev", "lan0", "nodad"],
                        ["ip", "route", "add", "default", "via", GW4],
                        ["ip", "-6", "route", "add", "default", "via", "2001:db8:3::ff"],
                        ["ip", "neigh", "add", GW4, "lladdr", GW4_MAC, "dev", "up0", "nud", "permanent"],
                        ["ip", "neigh", "add", HOST, "lladdr", HOST_MAC, "dev", "lan0", "nud", "permanent"]):
                _sh(*cmd, ns=r)
            self.up0 = int(_sh("cat", "/sys/class/net/up0/ifindex", ns=r).stdout)
            self.lan0 = int(_sh("cat", "/sys/class/net/lan0/ifindex", ns=r).stdout)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for ns in (self.name, self.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _looped(run, runs: int) -> float:
    return statistics.median(run().duration_ns for _ in range(runs))


def relay_programs(rounds: int = 5, runs: int = 2000, sizes=TABLE_SIZES) -> dict:
    """ns per packet of xdp_teredo_relay and tc_teredo_relay, both directions, with
    each table size; rows like client_programs' plus "table"."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "bpf"))
    import packets as P

    client = P.teredo_address(SERVER, CLIENT_IPV4, CLIENT_PORT)
    inner_out = P.inner_ipv6(client, HOST, b"x" * 56)       # client -> native host
    inner_back = P.inner_ipv6(HOST, client, b"x" * 56)      # native host -> client
    from_client = P.teredo_frame(inner_out, src=CLIENT_IPV4, dst=RELAY_IPV4, sport=CLIENT_PORT,
                                 dport=RELAY_PORT)
    from_client = bytes.fromhex(UP0_MAC.replace(":", "")) + from_client[6:]
    native = (bytes.fromhex(LAN0_MAC.replace(":", "")) + bytes.fromhex(HOST_MAC.replace(":", ""))
              + b"\x86\xdd" + inner_back)

    started = time.time()
    with _RelayNetns() as net:
        prog = RelayDatapath.compile(peer_max=PEER_MAX)
        try:
            def skb_ctx(dev: int, frame: bytes) -> bytes:
                # struct __sk_buff: ingress_ifindex @36, ifindex @40, wire_len @160.
                ctx = bytearray(192)
                struct.pack_into("=II", ctx, 36, dev, dev)
                struct.pack_into("=I", ctx, 160, len(frame))
                return bytes(ctx)

            def xdp(frame, dev):
                return lambda: testrun.run_xdp(prog.fd("xdp"), frame, ingress_ifindex=dev)

            def tc(frame, dev):
                ctx = skb_ctx(dev, frame)
                return lambda: testrun.run(prog.fd("tc"), frame, ctx_in=ctx, ctx_out_size=192)

            # Native packets to many peers in turn: with a big table their entries
            # are spread over memory the caches do not hold, as with real traffic
            # to many clients (the one-client cases always hit a hot entry).
            spread = {"frames": [native]}
            turn = itertools.count()

            def many(hook):
                def run():
                    frames = spread["frames"]
                    frame = frames[next(turn) % len(frames)]
                    if hook == "xdp":
                        return testrun.run_xdp(prog.fd("xdp"), frame, ingress_ifindex=net.lan0)
                    return testrun.run(prog.fd("tc"), frame, ctx_in=skb_ctx(net.lan0, frame),
                                       ctx_out_size=192)
                return run

            def spread_frames(table) -> list:
                keys = [client.packed] + table.present
                step = max(1, len(keys) // SPREAD_PEERS)
                return [native[:38] + key + native[54:] for key in keys[::step][:SPREAD_PEERS]]

            cases = [
                ("xdp_teredo_relay, decapsulate (client to native)", xdp(from_client, net.up0),
                 "decapsulated", XDP_REDIRECT),
                ("xdp_teredo_relay, encapsulate (native to client)", xdp(native, net.lan0),
                 "encapsulated", XDP_REDIRECT),
                ("tc_teredo_relay, decapsulate (client to native)", tc(from_client, net.up0),
                 "decapsulated", TC_ACT_REDIRECT),
                ("tc_teredo_relay, encapsulate (native to client)", tc(native, net.lan0),
                 "encapsulated", TC_ACT_REDIRECT),
                (f"xdp_teredo_relay, encapsulate, to up to {SPREAD_PEERS} clients in turn",
                 many("xdp"), "encapsulated", XDP_REDIRECT),
                (f"tc_teredo_relay, encapsulate, to up to {SPREAD_PEERS} clients in turn",
                 many("tc"), "encapsulated", TC_ACT_REDIRECT),
            ]

            def body():
                prog.reset()
                prog.config.write(Config(local_ipv4=RELAY_IPV4, local_port=RELAY_PORT,
                                         nic_ifindex=net.up0, tun_ifindex=1, relay=True,
                                         learn_peers=False, l2_len=14))
                prog.egress.set([net.up0, net.lan0])
                # The client stays fresh for the whole run (a last_rx ahead of the
                # clock counts as fresh: tx_peer_verdict).
                prog.peers.put(PeerEntry(address=client, mapped_ipv4=CLIENT_IPV4,
                                         mapped_port=CLIENT_PORT, last_rx_ns=now_ns() + 3600 * 10**9))
                for name, run, reason, action in cases:
                    before = prog.stats()[reason]["packets"]
                    result = run()
                    if result.retval != action or prog.stats()[reason]["packets"] != before + 1:
                        raise AssertionError(f"{name}: retval {result.retval}, "
                                             f"not counted as {reason}")
                timings = {(name, size): [] for name, *_ in cases for size in sizes}
                counts, active = {}, {}
                table = SyntheticPeers(prog.peers.map, keep=[client])
                for rnd in range(rounds):
                    # ABBA: each size goes first as often, and the table is
                    # filled or emptied only once per round.
                    order = list(sizes) if rnd % 2 == 0 else list(reversed(sizes))
                    for size in order:
                        counts[size] = table.resize(size)
                        spread["frames"] = spread_frames(table)
                        active[size] = len(spread["frames"])
                        before = prog.stats()
                        for name, run, _, _ in cases:
                            timings[(name, size)].append(_looped(run, runs))
                        # Every run took the path its case names (no stale or
                        # evicted synthetic peer turned a case into a slow-path one).
                        moved = delta(before, prog.stats())
                        if set(moved) != {"decapsulated", "encapsulated"}:
                            raise AssertionError(f"unexpected verdicts with {size} peers: {moved}")
                table.clear()
                return timings, counts, active

            timings, counts, active = in_netns(net.name, body)
        finally:
            prog.close()
    rows = []
    for (name, size), medians in timings.items():
        rows.append({"program": name, "method": "looped", "table": size, "entries": counts[size],
                     "active": active[size] if "in turn" in name else 1,
                     "ns": statistics.median(medians), "min": min(medians), "max": max(medians)})
    rows.sort(key=lambda r: (r["program"], r["table"]))
    return {"rows": rows, "rounds": rounds, "runs": runs, "peer_max": PEER_MAX,
            "seconds": time.time() - started}


def measure(rounds: int, runs: int, repeat: int) -> dict:
    """Both roles' programs, for tools/bench/run.py."""
    return {"client": client_programs(rounds, runs, repeat),
            "relay": relay_programs(rounds, runs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3000, help="single runs per round")
    parser.add_argument("--repeat", type=int, default=200000, help="kernel loop length per round")
    parser.add_argument("--relay", action="store_true",
                        help="the relay's programs too (a throwaway namespace; 10 and 100,000 peers)")
    args = parser.parse_args(argv)

    result = client_programs(args.rounds, args.runs, args.repeat)
    print(f"machine: {result['machine']}")
    print(f"rounds: {args.rounds}; looped = median of {args.runs} runs with repeat=1; "
          f"repeat = one run with repeat={args.repeat}")
    print(f"{'program':<38} {'method':<7} {'ns/pkt':>8} {'spread (round medians)':>24}")
    for row in result["rows"]:
        spread = f"{row['min']:.0f} .. {row['max']:.0f}"
        print(f"{row['program']:<38} {row['method']:<7} {row['ns']:>8.0f} {spread:>24}")
    print(f"({result['seconds']:.1f} s)")
    if args.relay:
        relay = relay_programs(args.rounds, args.runs)
        print(f"{'relay program':<62} {'peers':>7} {'ns/pkt':>8} {'spread':>12}")
        for row in relay["rows"]:
            spread = f"{row['min']:.0f} .. {row['max']:.0f}"
            print(f"{row['program']:<62} {row['table']:>7} {row['ns']:>8.0f} {spread:>12}")
        print(f"({relay['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
