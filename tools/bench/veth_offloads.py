"""Not a test: what our client's "finish checksums on a veth" costs (docs/client.md).

Two of our clients (client1 behind nat1, public) over Teredo, TCP with iperf3,
in the same run, alternating:
  - as the product runs: each client turned its veth NIC's tx checksum offload
    off (xdp_teredo/net/offloads.py), so the veth finishes checksums and segments;
  - the offloads turned back on under the running clients (`ethtool -K eth0 tx on`),
    which ours<->ours survives (our decapsulation keeps the offload state) and a
    userspace peer does not.
Prints Mbit/s per round and the ratio of the medians.

    .venv/bin/python -m tools.bench.veth_offloads [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import statistics

from xdp_teredo.lab import roles, traffic
from xdp_teredo.lab.topology import Lab


def _tx(lab, host: str, state: str) -> None:
    lab.run(host, "ethtool", "-K", lab[host].uplink, "tx", state)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    results = {"product (veth tx off)": [], "veth offloads on": []}
    with Lab({"server", "client1", "public"}) as lab:
        roles.start_server(lab, "xdp-teredo")
        server = lab["server"].ipv4[0]
        roles.start_client(lab, "xdp-teredo", "client1", server)
        peer = roles.start_client(lab, "xdp-teredo", "public", server, *traffic.ALLOW_IPERF)
        lab.ping("client1", peer.address, count=3, deadline=10)
        for _ in range(args.rounds):
            for label, state in (("product (veth tx off)", "off"), ("veth offloads on", "on")):
                for host in ("client1", "public"):
                    _tx(lab, host, state)
                flow = traffic.iperf3(lab, "client1", "public", peer.address,
                                      seconds=args.seconds)
                results[label].append(flow.delivered_bps / 1e6)
                print(f"{label:24s} {flow.delivered_bps / 1e6:9.1f} Mbit/s", flush=True)
        for host in ("client1", "public"):
            _tx(lab, host, "off")  # as the clients left it: they turn it on at exit
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in med.items():
        print(f"median {k:24s} {v:9.1f} Mbit/s")
    print(f"ratio product / offloads on: {med['product (veth tx off)'] / med['veth offloads on']:.2f}")


if __name__ == "__main__":
    main()
