"""Not a test: what our client costs a veth NIC's offloads (issue 13, docs/client.md
"Checksums over a veth").

In one lab, client1 (behind nat1) and public, both veth NICs with the offloads the
kernel gives them, alternating per round:
  - plain IPv4 TCP from client1 to public (iperf3), no client running;
  - our clients attached on both: the same plain IPv4 TCP through the same NIC, and
    Teredo TCP from client1 to public's Teredo address.
Prints Mbit/s per round, the medians, and the ratio plain attached / plain not
attached (issue 13 asks >= 0.95). Which client runs is whatever `xdp_teredo` this
Python imports: run it with PYTHONPATH set to another tree's copy to measure that
tree (the before/after numbers in docs/client.md were taken so).

    .venv/bin/python -m tools.bench.veth_offloads [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import statistics

from xdp_teredo.lab import roles, traffic
from xdp_teredo.lab.topology import Lab

LABELS = ("plain, not attached", "plain, attached", "teredo, ours <-> ours")


def _offloads(lab, host: str) -> str:
    out = lab.run(host, "ethtool", "-k", lab[host].uplink).stdout
    keep = ("tx-checksumming", "tcp-segmentation-offload")
    return ", ".join(line.strip() for line in out.splitlines() if line.split(":")[0] in keep)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    results = {label: [] for label in LABELS}

    def record(label: str, flow) -> None:
        results[label].append(flow.delivered_bps / 1e6)
        print(f"{label:24s} {flow.delivered_bps / 1e6:9.1f} Mbit/s", flush=True)

    with Lab({"server", "client1", "public"}) as lab:
        srv = roles.start_server(lab, "xdp-teredo")
        server = lab["server"].ipv4[0]
        public_ipv4 = lab["public"].ipv4[0]
        for _ in range(args.rounds):
            record(LABELS[0], traffic.iperf3(lab, "client1", "public", public_ipv4,
                                             seconds=args.seconds))
            ours = roles.start_client(lab, "xdp-teredo", "client1", server)
            peer = roles.start_client(lab, "xdp-teredo", "public", server, *traffic.ALLOW_IPERF)
            try:
                print(f"  client1 eth0 while attached: {_offloads(lab, 'client1')}", flush=True)
                lab.ping("client1", peer.address, count=3, deadline=10)
                record(LABELS[1], traffic.iperf3(lab, "client1", "public", public_ipv4,
                                                 seconds=args.seconds))
                record(LABELS[2], traffic.iperf3(lab, "client1", "public", peer.address,
                                                 seconds=args.seconds))
            finally:
                ours.stop()
                peer.stop()
        srv.stop()
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in med.items():
        print(f"median {k:24s} {v:9.1f} Mbit/s")
    print(f"ratio plain attached / not attached: {med[LABELS[1]] / med[LABELS[0]]:.2f}")
    print(f"ratio teredo / plain not attached:   {med[LABELS[2]] / med[LABELS[0]]:.2f}")


if __name__ == "__main__":
    main()
