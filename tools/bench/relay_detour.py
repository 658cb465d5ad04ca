"""Not a test: a same-host Miredo client through our relay in tc mode (docs/relay.md).

Miredo's client (client1, behind nat1) sends with its UDP checksums pending, as a
veth leaves them; our relay, in tc mode (the lab as built: its veth peers take no
XDP-redirected frames), sends those packets round its checksum veth and
decapsulates them on the way back (`relay_csum_detour`). TCP with iperf3 from
client1 to v6host, alternating our relay and Miredo's in one run; prints Mbit/s per
round, the medians, and our relay's counters of the last round.

    .venv/bin/python -m tools.bench.relay_detour [--rounds 2] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics

from xdp_teredo.lab import miredo, roles, traffic
from xdp_teredo.lab.topology import Lab


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    results = {"xdp-teredo relay (tc)": [], "miredo relay": []}
    counters = {}
    with Lab({"server", "client1", "relay", "v6host"}) as lab:
        server = miredo.start_server(lab, "server")
        client = miredo.start_client(lab, "client1", server)
        v6host = lab["v6host"].ipv6[0]
        for _ in range(args.rounds):
            for label in results:
                if label.startswith("xdp"):
                    relay = roles.start_relay(lab, "xdp-teredo")
                else:
                    relay = miredo.start_relay(lab, "relay")
                for _ in range(20):
                    if lab.ping("client1", v6host, count=3, deadline=3, interval=0.2).ok:
                        break
                flow = traffic.iperf3(lab, "client1", "v6host", v6host, seconds=args.seconds)
                results[label].append(flow.delivered_bps / 1e6)
                print(f"{label:24s} {flow.delivered_bps / 1e6:9.1f} Mbit/s", flush=True)
                if label.startswith("xdp"):
                    res = roles.cli(lab, "relay", "stats", "--json")
                    stats = json.loads(res.stdout) if res.stdout.strip() else {}
                    counters = {k: stats.get(k) for k in ("decapsulated", "relay_csum_detour",
                                                           "relay_offload_pending", "encapsulated")}
                relay.stop() if hasattr(relay, "stop") else relay.process.stop()
        client.stop()
    for k, v in results.items():
        print(f"median {k:24s} {statistics.median(v):9.1f} Mbit/s")
    print("our relay's counters, last round:", counters)


if __name__ == "__main__":
    main()
