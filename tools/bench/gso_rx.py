"""Not a test: receiving in big packets (issue 13), measured side by side.

Two of our clients (client1 behind nat1, public) and our relay (client1 ->
v6host), TCP with iperf3, one stream, rounds alternating so that the machine's
noise falls on every variant alike:
  - p2p client1 -> public, public's receive hook per `--xdp-mode` (off: tc,
    auto: tc on a veth, native: XDP), with the senders' veth offloads as the
    product leaves them (tx checksum off: segments on the wire) and turned back on
    (TSO kept: super-packets arrive, as with the transmit side's checksum detour);
  - relay client1 -> v6host, the same two offload states at client1;
  - the host's plain IPv4 TCP client1 -> public through public's NIC, with no
    client at public, and with it attached (tc hook, XDP hook).
Per variant: the median Mbit/s, and from the receiver's counters the average
bytes per decapsulated packet (a super-packet is tens of KB; a segment 1322).

    .venv/bin/python -m tools.bench.gso_rx [--rounds 3] [--seconds 4] [--only p2p,relay,host]
"""

from __future__ import annotations

import argparse
import json
import statistics

from xdp_teredo.lab import roles, traffic
from xdp_teredo.lab.topology import Lab

MODES = ("off", "auto", "native")


def _tx(lab, host: str, state: str) -> None:
    lab.run(host, "ethtool", "-K", lab[host].uplink, "tx", state)


def _stats(lab, host: str) -> dict:
    res = roles.cli(lab, host, "stats", "--json")
    shown = json.loads(res.stdout)
    return {"packets": shown.get("decapsulated", 0), "bytes": shown["bytes"].get("decapsulated", 0)}


def _flow(lab, src, dst, address, seconds, counted_at=None) -> tuple:
    before = _stats(lab, counted_at) if counted_at else None
    flow = traffic.iperf3(lab, src, dst, address, seconds=seconds)
    per_packet = None
    if counted_at:
        after = _stats(lab, counted_at)
        packets = after["packets"] - before["packets"]
        per_packet = (after["bytes"] - before["bytes"]) / packets if packets else None
    return flow.delivered_bps / 1e6, per_packet


def _record(results: dict, label: str, mbps: float, per_packet) -> None:
    results.setdefault(label, []).append((mbps, per_packet))
    extra = f"  {per_packet:8.0f} B/decap" if per_packet else ""
    print(f"{label:44s} {mbps:9.1f} Mbit/s{extra}", flush=True)


def p2p(lab, args, results) -> None:
    server = lab["server"].ipv4[0]
    for mode in MODES:
        c1 = roles.start_client(lab, "xdp-teredo", "client1", server, "--xdp-mode", mode)
        peer = roles.start_client(lab, "xdp-teredo", "public", server, "--xdp-mode", mode,
                                  *traffic.ALLOW_IPERF)
        try:
            lab.ping("client1", peer.address, count=3, deadline=10)
            for _ in range(args.rounds):
                for state in ("off", "on"):
                    _tx(lab, "client1", state)
                    mbps, pp = _flow(lab, "client1", "public", peer.address, args.seconds, "public")
                    _record(results, f"p2p --xdp-mode {mode}, sender tx {state}", mbps, pp)
            _tx(lab, "client1", "off")  # as the client left it: it turns it on at exit
        finally:
            peer.stop()
            c1.stop()


def relay(lab, args, results) -> None:
    server = lab["server"].ipv4[0]
    rel = roles.start_relay(lab, "xdp-teredo", "relay")
    # It runs the iperf3 server of the way back: its ports open in its inbound guard.
    c1 = roles.start_client(lab, "xdp-teredo", "client1", server, *traffic.ALLOW_IPERF)
    try:
        target = lab["v6host"].ipv6[0]
        lab.ping("client1", target, count=3, deadline=10)
        for _ in range(args.rounds):
            for state in ("off", "on"):
                _tx(lab, "client1", state)
                mbps, pp = _flow(lab, "client1", "v6host", target, args.seconds, "relay")
                _record(results, f"relay client1->v6host, sender tx {state}", mbps, pp)
            mbps, _ = _flow(lab, "v6host", "client1", c1.address, args.seconds)
            _record(results, "relay v6host->client1", mbps, None)
        _tx(lab, "client1", "off")
    finally:
        c1.stop()
        rel.stop()


def host(lab, args, results) -> None:
    server = lab["server"].ipv4[0]
    address = lab["public"].ipv4[0]
    for _ in range(args.rounds):
        _record(results, "host TCP to public, nothing attached",
                _flow(lab, "client1", "public", address, args.seconds)[0], None)
        for mode, hook in (("off", "tc"), ("native", "xdp")):
            peer = roles.start_client(lab, "xdp-teredo", "public", server, "--xdp-mode", mode)
            try:
                _record(results, f"host TCP to public, client attached ({hook})",
                        _flow(lab, "client1", "public", address, args.seconds)[0], None)
            finally:
                peer.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--only", default="p2p,relay,host")
    args = ap.parse_args()
    parts = args.only.split(",")
    results: dict = {}
    with Lab({"server", "relay", "client1", "public", "v6host"}) as lab:
        roles.start_server(lab, "xdp-teredo")
        for name, fn in (("p2p", p2p), ("relay", relay), ("host", host)):
            if name in parts:
                fn(lab, args, results)
    print("\nmedians:")
    for label, runs in results.items():
        mbps = statistics.median(r[0] for r in runs)
        pps = [r[1] for r in runs if r[1]]
        extra = f"  {statistics.median(pps):8.0f} B/decap" if pps else ""
        print(f"{label:44s} {mbps:9.1f} Mbit/s{extra}")


if __name__ == "__main__":
    main()
