"""`make demo`: xdp-teredo in every Teredo role, in a lab of network namespaces.

A newcomer's walk-through: a client behind two NATs qualifies with our server,
its address is decoded, it reaches an IPv6-only host through our relay and
another client directly, a short throughput run, then what status, peers and
stats show. Everything runs in namespaces this script creates and removes again
(also after a failure); nothing leaves the machine. Exit 0 only if every step
worked.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from xdp_teredo.errors import TeredoError
from xdp_teredo.lab import Lab, roles, traffic

SERVER_HOST, RELAY_HOST = "server", "relay"
CLIENT, OTHER, NATIVE = "client2", "client1", "v6host"


class Demo:
    def __init__(self, steps: int, verbose: bool):
        self.n, self.steps, self.verbose = 0, steps, verbose

    def step(self, title: str) -> None:
        self.n += 1
        print(f"\n[{self.n}/{self.steps}] {title}", flush=True)

    @staticmethod
    def say(text: str = "") -> None:
        for line in text.splitlines() or [""]:
            print(f"      {line}", flush=True)

    def command(self, lab, host: str, *args: str) -> str:
        """Show and run `xdp-teredo ARGS` in `host`, as a user would type it there."""
        self.say(f"$ ip netns exec {lab[host].netns} xdp-teredo {' '.join(args)}")
        res = roles.cli(lab, host, *args)
        out = (res.stdout + res.stderr).rstrip()
        self.say(out)
        if res.returncode not in (0,):
            raise TeredoError(f"`xdp-teredo {' '.join(args)}` in {host} exited {res.returncode}")
        return res.stdout

    def failed(self, lab, err: Exception) -> int:
        """Say which step failed and the tail of each process's log, remove the lab
        whatever happens while reporting (a closed stdout, say); exit status 1."""
        try:
            print(f"\nFAILED at step {self.n}: {err}", file=sys.stderr)
            if self.verbose:
                traceback.print_exc()
            for proc in getattr(lab, "_procs", []):
                tail = "\n".join(proc.output().splitlines()[-8:])
                if tail:
                    print(f"--- {proc!r}\n{tail}", file=sys.stderr)
        finally:
            lab.close()
        return 1


def _ping(demo: Demo, lab, src: str, dst, what: str, count: int = 5) -> None:
    demo.say(f"$ ping {dst}    ({what}, from {src})")
    res = lab.ping(src, str(dst), count=count, deadline=15, interval=0.2)
    if not res.ok:
        raise TeredoError(f"ping {dst} from {src}: {res.received}/{res.sent} replies")
    rtts = sorted(res.rtts_ms)
    demo.say(f"{res.received}/{res.sent} replies from {', '.join(sorted(set(res.replies_from)))}; "
             f"rtt min/median/max {rtts[0]:.2f}/{rtts[len(rtts) // 2]:.2f}/{rtts[-1]:.2f} ms")


def run(args) -> int:
    demo = Demo(steps=11, verbose=args.verbose)
    print("xdp-teredo demo: Teredo (RFC 4380) with the packet path in XDP and tc.\n"
          "Every role below is played by xdp-teredo, in network namespaces on this machine.")
    t0 = time.monotonic()
    lab = Lab()
    try:
        demo.step("Build the lab: a small IPv4 internet with NATs, a server, a relay, an IPv6-only host")
        lab.build()
        for role in ("server", "relay", "v6host", "public", "nat1", "client1", "nat2a", "nat2b", "client2"):
            h = lab[role]
            addrs = ", ".join(str(a) for a in (h.ipv4 + h.ipv6))
            demo.say(f"{role:<8} {addrs}")
        demo.say("client1 sits behind one NAT (198.51.100.1); client2 behind two (10.2.0.2, then 198.51.100.17).")

        demo.step(f"Start our Teredo server on '{SERVER_HOST}' (two consecutive addresses, UDP 3544)")
        demo.say(f"$ xdp-teredo server --bind {lab[SERVER_HOST].ipv4[0]}")
        roles.start_server(lab, "xdp-teredo", SERVER_HOST)
        demo.say(f"listening on {lab[SERVER_HOST].ipv4[0]}:3544 and {lab[SERVER_HOST].ipv4[1]}:3544")

        demo.step(f"Start our relay on '{RELAY_HOST}': 2001::/32 <-> the native IPv6 network")
        # Its devices are veths: --path auto takes tc there (XDP on a veth costs its
        # peer GSO), and `status` says so; on a NIC with native XDP it takes XDP.
        demo.say("$ xdp-teredo relay --ipv4-iface eth0 --ipv6-iface eth1")
        roles.start_relay(lab, "xdp-teredo", RELAY_HOST)
        demo.command(lab, RELAY_HOST, "status")

        server = lab[SERVER_HOST].ipv4[0]
        demo.step(f"'{CLIENT}', behind two NATs, attaches: qualification with the server")
        demo.say(f"$ xdp-teredo attach eth0 --server {server}")
        client = roles.start_client(lab, "xdp-teredo", CLIENT, server)
        demo.say(f"qualified in {client.qualified_s:.1f} s: {client.address}; the BPF programs "
                 f"compiled meanwhile and carry the traffic since {client.fast_path_s:.1f} s")

        demo.step("What the Teredo address says (RFC 4380 §4)")
        demo.command(lab, CLIENT, "decode", str(client.address))
        demo.say(f"client2 is 10.2.1.2 on its LAN; the internet sees it as {lab[CLIENT].public_ipv4}, "
                 "its outer NAT, and the address carries that mapping.")

        demo.step(f"ping6 the IPv6-only host {lab[NATIVE].ipv6[0]} through the relay")
        _ping(demo, lab, CLIENT, lab[NATIVE].ipv6[0], "native IPv6, via the relay")

        demo.step(f"'{OTHER}' attaches too; client2 pings it directly, NAT to NAT")
        # It is about to receive iperf3's connection: its inbound guard (stateful by
        # default, docs/security.md) lets only --allow'ed ports take new connections.
        demo.say(f"$ xdp-teredo attach eth0 --server {server} {' '.join(traffic.ALLOW_IPERF)}")
        other = roles.start_client(lab, "xdp-teredo", OTHER, server, *traffic.ALLOW_IPERF)
        demo.say(f"{OTHER}: {other.address}")
        _ping(demo, lab, CLIENT, other.address, "Teredo to Teredo, after bubbles")

        demo.step(f"A short throughput run: one TCP stream {CLIENT} -> {OTHER}, 3 s (iperf3)")
        flow = traffic.iperf3(lab, CLIENT, OTHER, other.address, seconds=3)
        demo.say(f"{flow.delivered_bps / 1e6:,.0f} Mbit/s over Teredo, through two NATs and one more")

        demo.step(f"What {CLIENT}'s client says: status, peers, data path counters")
        demo.command(lab, CLIENT, "status")
        demo.command(lab, CLIENT, "peers")
        demo.command(lab, CLIENT, "stats")

        demo.step(f"What the relay on '{RELAY_HOST}' says: its peers and its counters")
        demo.command(lab, RELAY_HOST, "peers")
        demo.command(lab, RELAY_HOST, "stats")

        demo.step("Tear down")
    except (TeredoError, OSError) as err:
        return demo.failed(lab, err)
    except KeyboardInterrupt:
        lab.close()
        return 130
    except BaseException:
        lab.close()
        raise
    lab.close()
    demo.say(f"namespaces, processes, programs removed; the machine is as it was. ({time.monotonic() - t0:.0f} s)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
