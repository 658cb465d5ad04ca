"""`make bench`: everything issue 6 measures, in one run, into docs/benchmarks.md.

Parts, in this order (each can be left out with --skip, or run alone with --only):
  datapath     ns per packet of every BPF program (BPF_PROG_TEST_RUN): the client's
               (tools/bench/datapath.py) and the relay's, with 10 and 100,000 peers
               (datapath.py). No lab: runs first, on a machine at rest.
  compare      every implementation on every path, interleaved: round r runs the
               implementations in a rotated order, so that the machine's drift
               (thermal, other load) hits all of them alike; each round stands an
               implementation up, measures everything on it, and tears it down.
               The lab's offloads as the kernel sets them: the headline table.
  compare-offloads-off
               the same comparison with every lab veth's transmit offloads off
               (tx-checksumming, hence TSO), for every implementation alike
               (lab_offloads.py), fewer rounds and 1200-byte UDP only: the
               second table. The veths are set back afterwards.
  host-traffic plain IPv4 TCP and UDP of a lab host through its NIC, our client
               attached there (its default receive hook, and native XDP) or not,
               interleaved (host_traffic.py).
  profile      perf and the BPF run-time statistics on the p2p path (profile.py).
  relay-table  the relay with 100,000 peers versus 10 (relay_scale.py).
  admission    new peers per second before the control plane lags (admission.py).
  server       answered Router Solicitations per second (a closed loop: lab/rsloop.py)
               and legitimate clients kept under a 100k/s flood: our server in XDP,
               ours with --xdp-mode off, miredo-server; BPF ns per RS (server_bench.py).
  startup      the command -> a Teredo address, and -> the fast path carrying the
               traffic: our client and Miredo's, 5 starts each (startup.py).
Memory (resident set of every daemon, kernel memory of its BPF maps) is taken
along the way: after each comparison round, and idle/full in the last two parts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from xdp_teredo.lab import Lab, traffic

from . import (admission, datapath, host_traffic, lab_offloads, memory, profile, relay_scale,
               report, server_bench, setups, startup)

UDP_SIZES = (64, 512, 1200)
OFFLOADS_OFF_SIZES = (1200,)
PARTS = ("datapath", "compare", "compare-offloads-off", "host-traffic", "profile", "relay-table",
         "admission", "server", "startup")


def measure(lab, ep: setups.Endpoint, seconds: float, streams: int, sizes=UDP_SIZES) -> dict:
    out = {"udp": {}, "tcp": None, "latency": None}
    for size in sizes:
        flow = traffic.iperf3(lab, ep.src, ep.dst, ep.address, udp_payload=size,
                              seconds=seconds, streams=streams, daemons=ep.daemons)
        out["udp"][size] = {
            "offered_pps": flow.offered_pps, "delivered_pps": flow.delivered_pps,
            "loss": flow.loss, "sender_cpu_pct": flow.sender_cpu_pct,
            "cpu_ns_per_pkt": flow.cpu_ns_per_packet(),
            "cpu_ns_per_offered": flow.cpu_ns_per_offered(),
            "daemon_cpu_ns_per_pkt": {k: flow.cpu_ns_per_packet(k) for k in ep.daemons},
        }
    tcp = traffic.iperf3(lab, ep.src, ep.dst, ep.address, seconds=seconds, daemons=ep.daemons)
    out["tcp"] = {"bps": tcp.delivered_bps, "cpu_s": tcp.cpu.machine if tcp.cpu else None}
    # The other way (dst -> src, iperf3 -R: src still connects, from behind its NAT):
    # through a relay, the download, what its clients mostly do.
    tcp = traffic.iperf3(lab, ep.src, ep.dst, ep.address, seconds=seconds, daemons=ep.daemons,
                         reverse=True)
    out["tcp_reverse"] = {"bps": tcp.delivered_bps, "cpu_s": tcp.cpu.machine if tcp.cpu else None}
    lat = traffic.ping_under_load(lab, ep.src, ep.dst, ep.address, load_seconds=seconds + 1)
    out["latency"] = {"p50_ms": lat.percentile(50), "p99_ms": lat.percentile(99),
                      "sent": lat.sent, "received": lat.received}
    # After the traffic: what each daemon holds once it has carried it.
    out["memory"] = {label: memory.snapshot(pids) for label, pids in ep.daemons.items()}
    return out


def compare(lab, args, impls, paths, *, repeats=None, sizes=UDP_SIZES, before_round=None) -> list:
    """before_round(): called before each implementation's round (the offloads-off
    table sets the veths again there)."""
    runs = []
    repeats = args.repeats if repeats is None else repeats
    for rnd in range(repeats):
        order = impls[rnd % len(impls):] + impls[:rnd % len(impls)]
        for impl in order:
            for path in paths:
                print(f"round {rnd + 1}/{repeats}: {impl} {path}", file=sys.stderr, flush=True)
                if before_round:
                    before_round()
                ep = setups.IMPLEMENTATIONS[impl](lab, path)
                try:
                    m = measure(lab, ep, args.seconds, args.streams, sizes)
                finally:
                    ep.teardown()
                runs.append({"round": rnd, "impl": impl, "path": path, **m})
    return runs


def compare_offloads_off(lab, args, impls, paths) -> dict:
    """The comparison again with every lab veth's tx offloads off (lab_offloads.py)."""
    devices = lab_offloads.veths(lab)
    before = {(d["host"], d["iface"]): d.get("tx-checksumming")
              for d in (dict(host=h, iface=i, **lab_offloads.features(lab, h, i))
                        for h, i in devices)}
    applied = {}

    def off():
        applied["devices"] = lab_offloads.apply(lab, devices, "off")

    try:
        runs = compare(lab, args, impls, paths, repeats=args.offloads_off_repeats,
                       sizes=OFFLOADS_OFF_SIZES, before_round=off)
    finally:
        for (host, iface), tx in before.items():
            lab.run(host, "ethtool", "-K", iface, "tx", "on" if tx == "on" else "off",
                    check=False)
    return {"runs": runs, "devices": applied.get("devices", []),
            "sizes": list(OFFLOADS_OFF_SIZES), "repeats": args.offloads_off_repeats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make bench", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the comparison")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each flow")
    ap.add_argument("--streams", type=int, default=2,
                    help="parallel UDP streams, so that one generator is not the limit")
    ap.add_argument("--impl", action="append", choices=sorted(setups.IMPLEMENTATIONS))
    ap.add_argument("--path", action="append", choices=sorted(setups.PATHS))
    ap.add_argument("--skip", action="append", choices=PARTS, default=[], help="leave a part out")
    ap.add_argument("--only", action="append", choices=PARTS, help="run only these parts")
    ap.add_argument("--offloads-off-repeats", type=int, default=3,
                    help="rounds of the comparison with the lab's veth offloads off")
    ap.add_argument("--host-repeats", type=int, default=5,
                    help="rounds of the host-traffic part (each variant once per round)")
    ap.add_argument("--host-no-native", action="store_true",
                    help="host-traffic: leave out the --xdp-mode native variant")
    ap.add_argument("--baseline", help="an earlier run's results.json to compare the BPF ns per "
                    "packet and the offloads-off ratios with (default: tools/bench/baseline.json, "
                    "the last published run)")
    ap.add_argument("--dp-rounds", type=int, default=5, help="rounds of the BPF micro-benchmarks")
    ap.add_argument("--dp-runs", type=int, default=2000, help="single runs per round")
    ap.add_argument("--dp-repeat", type=int, default=100000, help="kernel loop length per round")
    ap.add_argument("--table-repeats", type=int, default=6,
                    help="rounds of the relay table part (even: each size goes first as often)")
    ap.add_argument("--admission-seconds", type=float, default=2.0, help="length of each rate step")
    ap.add_argument("--server-seconds", type=float, default=2.0,
                    help="length of each rate step of the server part")
    ap.add_argument("--starts", type=int, default=startup.STARTS,
                    help="starts of each client in the start-up part (the median is reported)")
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--no-docs", action="store_true",
                    help="leave docs/benchmarks.md and docs/img alone (report in OUT only)")
    args = ap.parse_args(argv)
    if args.baseline and not report.load_baseline(args.baseline):
        ap.error(f"--baseline {args.baseline}: not a results.json of make bench")
    impls = args.impl or list(setups.IMPLEMENTATIONS)
    paths = args.path or list(setups.PATHS)
    parts = [p for p in PARTS if p in (args.only or PARTS) and p not in args.skip]
    # Only a run of everything replaces the published figures: a run of one part
    # would otherwise wipe the others' tables from docs/benchmarks.md.
    complete = (parts == list(PARTS) and sorted(impls) == sorted(setups.IMPLEMENTATIONS)
                and sorted(paths) == sorted(setups.PATHS))
    docs = complete and not args.no_docs

    started = time.monotonic()
    given = sys.argv[1:] if argv is None else list(argv)
    results = {"machine": report.machine(), "config": vars(args), "parts": parts,
               "complete": complete,
               "command": "make bench" + (f" BENCH_ARGS='{' '.join(given)}'" if given else ""),
               "runs": [], "durations": {}}

    def timed(part, fn):
        t0 = time.monotonic()
        print(f"== {part}", file=sys.stderr, flush=True)
        value = fn()
        results["durations"][part] = time.monotonic() - t0
        return value

    if "datapath" in parts:
        results["datapath"] = timed("datapath", lambda: datapath.measure(
            args.dp_rounds, args.dp_runs, args.dp_repeat))
    lab_parts = [p for p in parts if p != "datapath"]
    if lab_parts:
        with Lab(setups.HOSTS) as lab:
            setups.prepare_lab(lab)
            if "compare" in parts:
                results["runs"] = timed("compare", lambda: compare(lab, args, impls, paths))
            if "compare-offloads-off" in parts:
                results["offloads_off"] = timed("compare-offloads-off", lambda: compare_offloads_off(
                    lab, args, impls, paths))
            if "host-traffic" in parts:
                results["host_traffic"] = timed("host-traffic", lambda: host_traffic.measure(
                    lab, repeats=args.host_repeats, seconds=args.seconds, streams=args.streams,
                    native=not args.host_no_native))
            if "profile" in parts:
                results["profile"] = timed("profile", lambda: profile.measure(
                    lab, seconds=args.seconds, streams=args.streams))
            if "relay-table" in parts:
                results["relay_table"] = timed("relay-table", lambda: relay_scale.measure(
                    lab, repeats=args.table_repeats, seconds=args.seconds,
                    streams=args.streams))
            if "admission" in parts:
                results["admission"] = timed("admission", lambda: admission.measure(
                    lab, seconds=args.admission_seconds))
            if "server" in parts:
                results["server"] = timed("server", lambda: server_bench.measure(
                    lab, seconds=args.server_seconds))
            if "startup" in parts:
                results["startup"] = timed("startup", lambda: startup.measure(
                    lab, starts=args.starts))
    results["durations"]["total"] = time.monotonic() - started
    results["baseline"] = report.load_baseline(args.baseline)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    report.write(results, out, docs=docs)
    where = "docs/benchmarks.md and " if docs else ""
    print(f"make bench: {results['durations']['total']:.0f} s; results in {where}{out}/"
          + ("" if docs or args.no_docs else " (a partial run: docs/ left as they were)"),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
