"""The lab tool: the demo's small internet, with each Teredo role played by
xdp-teredo or by Miredo, kept up until you press Ctrl-C (or for --hold seconds).

    .venv/bin/python tools/lab.py --server miredo --client1 xdp-teredo --client2 miredo

prints every host's namespace and addresses, so that you can step in with
`ip netns exec NAMESPACE bash` (and `xdp-teredo status`, `ping`, `tcpdump` ...).
Everything is torn down at the end, also after a failure or a signal.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from xdp_teredo.errors import TeredoError
from xdp_teredo.lab import Lab, roles

CHOICES = roles.IMPLEMENTATIONS + ("none",)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tools/lab.py", description=__doc__.splitlines()[0])
    ap.add_argument("--server", choices=CHOICES, default="xdp-teredo")
    ap.add_argument("--relay", choices=CHOICES, default="xdp-teredo")
    ap.add_argument("--client1", choices=CHOICES, default="xdp-teredo", help="behind one NAT")
    ap.add_argument("--client2", choices=CHOICES, default="xdp-teredo", help="behind two NATs")
    ap.add_argument("--public", choices=CHOICES, default="none", help="a client on the internet")
    ap.add_argument("--hold", type=float, default=None, metavar="SECONDS",
                    help="tear down after this long instead of waiting for Ctrl-C")
    args = ap.parse_args(argv)
    if args.server == "none" and any(getattr(args, c) != "none" for c in ("client1", "client2", "public")):
        ap.error("clients need a server (--server xdp-teredo or miredo)")

    def stop(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with Lab(workdir=None, keep_workdir=True) as lab:
        try:
            server = lab["server"].ipv4[0]
            if args.server != "none":
                roles.start_server(lab, args.server)
            if args.relay != "none":
                roles.start_relay(lab, args.relay)
            clients = {}
            for host in ("client1", "client2", "public"):
                impl = getattr(args, host)
                if impl != "none":
                    clients[host] = roles.start_client(lab, impl, host, server)
        except TeredoError as err:
            print(f"lab: error: {err} (logs in {lab.workdir})", file=sys.stderr)
            return 1
        print(f"lab {lab.id} is up (logs in {lab.workdir}):")
        played = {"server": args.server, "relay": args.relay,
                  **{h: getattr(args, h) for h in ("client1", "client2", "public")}}
        for role, host in lab.hosts.items():
            addrs = ", ".join(str(a) for a in host.ipv4 + host.ipv6)
            who = played.get(role, "")
            teredo = f"  teredo {clients[role].address}" if role in clients else ""
            print(f"  {role:<8} {host.netns:<18} {addrs}{teredo}  {'' if who in ('', 'none') else who}")
        print("step in with: ip netns exec NAMESPACE bash; Ctrl-C tears the lab down")
        try:
            if args.hold is not None:
                time.sleep(args.hold)
            else:
                signal.pause()
        except KeyboardInterrupt:
            pass
        print("tearing down ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
