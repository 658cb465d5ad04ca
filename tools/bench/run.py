"""Run the comparison: every implementation on every path, interleaved.

Round r runs the implementations in a rotated order, so that the machine's drift
(thermal, other load) hits all of them alike; each round stands an
implementation up, measures everything on it, and tears it down.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from xdp_teredo.lab import Lab, traffic

from . import report, setups

UDP_SIZES = (64, 512, 1200)


def measure(lab, ep: setups.Endpoint, seconds: float, streams: int) -> dict:
    out = {"udp": {}, "tcp": None, "latency": None}
    for size in UDP_SIZES:
        flow = traffic.iperf3(lab, ep.src, ep.dst, ep.address, udp_payload=size,
                              seconds=seconds, streams=streams, daemons=ep.daemons)
        out["udp"][size] = {
            "offered_pps": flow.offered_pps, "delivered_pps": flow.delivered_pps,
            "loss": flow.loss, "sender_cpu_pct": flow.sender_cpu_pct,
            "cpu_ns_per_pkt": flow.cpu_ns_per_packet(),
            "daemon_cpu_ns_per_pkt": {k: flow.cpu_ns_per_packet(k) for k in ep.daemons},
        }
    tcp = traffic.iperf3(lab, ep.src, ep.dst, ep.address, seconds=seconds, daemons=ep.daemons)
    out["tcp"] = {"bps": tcp.delivered_bps, "cpu_s": tcp.cpu.machine if tcp.cpu else None}
    lat = traffic.ping_under_load(lab, ep.src, ep.dst, ep.address, load_seconds=seconds + 1)
    out["latency"] = {"p50_ms": lat.percentile(50), "p99_ms": lat.percentile(99),
                      "sent": lat.sent, "received": lat.received}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make bench")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--streams", type=int, default=2,
                    help="parallel UDP streams, so that one generator is not the limit")
    ap.add_argument("--impl", action="append", choices=sorted(setups.IMPLEMENTATIONS))
    ap.add_argument("--path", action="append", choices=sorted(setups.PATHS))
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args(argv)
    impls = args.impl or list(setups.IMPLEMENTATIONS)
    paths = args.path or list(setups.PATHS)

    results = {"machine": report.machine(), "config": vars(args), "runs": []}
    with Lab(setups.HOSTS) as lab:
        setups.prepare_lab(lab)
        for rnd in range(args.repeats):
            order = impls[rnd % len(impls):] + impls[:rnd % len(impls)]
            for impl in order:
                for path in paths:
                    print(f"round {rnd + 1}/{args.repeats}: {impl} {path}", file=sys.stderr, flush=True)
                    ep = setups.IMPLEMENTATIONS[impl](lab, path)
                    try:
                        m = measure(lab, ep, args.seconds, args.streams)
                    finally:
                        ep.teardown()
                    results["runs"].append({"round": rnd, "impl": impl, "path": path, **m})
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report.write(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
