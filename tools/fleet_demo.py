"""`make fleet-demo`: a fleet of xdp-teredo relays behind BGP anycast and ECMP, and
what happens when one of them crashes.

In a lab of network namespaces (xdp_teredo/lab/fleet.py): BIRD on an IPv6 router
learns 2001::/32 over BGP from every relay host, whose own BIRD announces it while
the relay's route is in its announcement table (`xdp-teredo relay --announce-table`);
the router spreads flows over the relays by ECMP. Two Teredo clients behind NATs
ping six native addresses (twelve flows), the counters show which relays carried
them; then the busiest relay is SIGKILLed in the middle of a steady ping, and the
demo prints `failover: N s`, the time until every flow answered again.

Exit 0 only if every step worked, the traffic was seen on at least two relays and
the failover took at most --max-failover seconds. Everything is removed at the end,
also after a failure or Ctrl-C; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from demo import Demo  # tools/demo.py: the same step-by-step output as `make demo`

from xdp_teredo.errors import TeredoError
from xdp_teredo.lab import bird, fleet, roles

STEADY_BEFORE = 3.0     # seconds of steady ping before the kill
STEADY_AFTER = 9.0      # and after it: enough to see a 5 s failover end


def _spread(demo: Demo, fl: fleet.Fleet, roles_: list) -> dict:
    counts = {role: fl.relay_counts(role) for role in roles_}
    for role, c in counts.items():
        demo.say(f"{role:<7} ({fl.lab[role].ipv4[0]}, {fl.lab[role].ipv6[0]}): "
                 f"encapsulated {c['encapsulated']:>5}  decapsulated {c['decapsulated']:>5}")
    return counts


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def run(args) -> int:
    demo = Demo(steps=9, verbose=args.verbose)
    print("xdp-teredo fleet demo: several relays announce 2001::/32 over BGP (BIRD), a router\n"
          "spreads the flows by ECMP, one relay is killed and the others take its flows.")
    t0 = time.monotonic()
    lab = fleet.FleetLab(relays=args.relays)
    fl = fleet.Fleet(lab)
    signal.signal(signal.SIGTERM, _interrupt)   # SIGTERM ends in Ctrl-C's teardown
    try:
        demo.step(f"Build the lab: IPv4 internet, NATed clients, a server, {args.relays} relays, "
                  "an IPv6 router 'core', native hosts")
        lab.build()
        for role in ("server", *lab.relay_roles, "core", *lab.native_roles, *lab.clients):
            h = lab[role]
            demo.say(f"{role:<8} {', '.join(str(a) for a in h.ipv4 + h.ipv6)}")
        demo.say("client1 sits behind one NAT, client2 behind two; the relays' IPv6 sides and "
                 "the native hosts hang off core.")

        demo.step("Start BIRD 2 on core and on every relay host (BGP: keepalive 1 s, hold 3 s)")
        fl.start_routing()
        demo.say(f"$ bird -f -c {fl.birds[lab.relay_roles[0]].config}    (relay1; excerpt)")
        conf = fl.birds[lab.relay_roles[0]].config.read_text().splitlines()
        start = next(i for i, line in enumerate(conf) if line.startswith("protocol kernel"))
        demo.say("\n".join(conf[start:start + 6]))
        demo.say("core: one BGP session per relay; `protocol kernel { merge paths on; ... }`: ECMP.")

        demo.step("Start our Teredo server, then each relay with --announce-table "
                  f"{fleet.ANNOUNCE_TABLE}")
        fl.start_server()
        for role in lab.relay_roles:
            t = time.monotonic()
            fl.start_relay(role)
            demo.say(f"{role}: $ xdp-teredo relay --ipv4-iface eth0 --ipv6-iface eth1 "
                     f"--announce-table {fleet.ANNOUNCE_TABLE}    (relaying after "
                     f"{time.monotonic() - t:.1f} s)")
        demo.say(f"$ ip -6 route show table {fleet.ANNOUNCE_TABLE}    (on relay1)")
        demo.say(lab.run("relay1", "ip", "-6", "route", "show", "table",
                         str(fleet.ANNOUNCE_TABLE)).stdout.rstrip())

        demo.step("core learns 2001::/32 from every relay and installs one ECMP route")
        fl.wait_sessions()
        hops = fl.wait_next_hops(len(lab.relay_roles))
        demo.say("$ birdc show protocols    (on core)")
        demo.say(bird.birdc(lab, fl.router, "show", "protocols").rstrip())
        demo.say("$ birdc show route    (on core)")
        demo.say(bird.birdc(lab, fl.router, "show", "route").rstrip())
        demo.say("$ ip -6 route show 2001::/32    (on core)")
        demo.say(lab.run("core", "ip", "-6", "route", "show", "2001::/32").stdout.rstrip())
        demo.say(f"{len(hops)} next hops; net.ipv6.fib_multipath_hash_policy=1 hashes on the flow.")

        demo.step("The clients attach: qualification with the server, through their NATs")
        impls = {"client1": args.client1, "client2": args.client2}
        fl.start_clients(impls)
        for role, client in fl.clients.items():
            demo.say(f"{role} ({client.impl}): {client.address}")

        natives = lab.native_addresses()
        flows_n = len(natives) * len(lab.clients)
        demo.step(f"Traffic: every client pings every native address ({flows_n} flows), "
                  f"{STEADY_BEFORE:g} s")
        fleet.flows(fl.steady(STEADY_BEFORE))
        counts = _spread(demo, fl, lab.relay_roles)
        busy = [r for r, c in counts.items() if c["encapsulated"] + c["decapsulated"] > 0]
        demo.say(f"traffic seen on {len(busy)} of {len(lab.relay_roles)} relays: {', '.join(busy)}")
        if len(busy) < 2:
            raise TeredoError(f"traffic on {len(busy)} relay(s); the fleet should spread it")

        victim = max(counts, key=lambda r: counts[r]["encapsulated"])
        what = "SIGKILL" if args.how == "kill" else "Silence"
        demo.step(f"{what} {victim} (the busiest) during a steady ping every 0.1 s on every flow")
        procs = fl.steady(STEADY_BEFORE + args.after)
        time.sleep(STEADY_BEFORE)
        if args.how == "kill":
            pid = fl.relays[victim].process.pid
            killed_at = fl.kill(victim)
            demo.say(f"$ kill -KILL {pid}    ({victim}'s xdp-teredo relay)")
        else:
            killed_at = fl.silence(victim)
            demo.say(f"core now drops everything to and from {victim} (ip6tables): a host "
                     "that died without a word; only the BGP hold timer (3 s) notices")
        fl.wait_next_hops(len(lab.relay_roles) - 1, timeout=10)
        demo.say(f"core withdrew {victim}'s path {time.time() - killed_at:.2f} s after the "
                 f"{'kill' if args.how == 'kill' else 'silence began'} (at most this: polled)")
        all_flows = fleet.flows(procs)
        if not fleet.baseline_ok(all_flows, killed_at):
            raise TeredoError("not every flow answered before the kill")
        affected = sum(1 for _r, f in all_flows if fleet.outage(f, killed_at) > 0)
        took = fleet.failover(all_flows, killed_at)
        demo.say(f"{affected} of {len(all_flows)} flows lost replies; the last one answered "
                 f"again {took:.2f} s after the {args.how}; slowest reply after it "
                 f"{fleet.slowest_reply(all_flows, killed_at) * 1000:.0f} ms")
        print(f"failover: {took:.2f} s", flush=True)
        if took > args.max_failover:
            raise TeredoError(f"failover {took:.2f} s > {args.max_failover:g} s")

        demo.step("After: the routes without the dead relay, and who carries the flows")
        demo.say("$ birdc show route    (on core)")
        demo.say(bird.birdc(lab, fl.router, "show", "route").rstrip())
        demo.say("$ ip -6 route show 2001::/32    (on core)")
        demo.say(lab.run("core", "ip", "-6", "route", "show", "2001::/32").stdout.rstrip())
        if args.how == "kill":
            demo.say(f"$ ip -6 route show table {fleet.ANNOUNCE_TABLE}    (on {victim}: gone "
                     "with its tun, removed by the kernel)")
            demo.say(lab.run(victim, "ip", "-6", "route", "show", "table",
                             str(fleet.ANNOUNCE_TABLE)).stdout.rstrip() or "(empty)")
        _spread(demo, fl, [r for r in lab.relay_roles if r != victim or args.how != "kill"])

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
    demo.say(f"namespaces, processes, programs removed; the machine is as it was. "
             f"({time.monotonic() - t0:.0f} s)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make fleet-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--relays", type=int, default=3, choices=range(2, 9), metavar="N",
                    help="relays in the fleet (2-8; default 3)")
    ap.add_argument("--client1", choices=roles.IMPLEMENTATIONS, default="xdp-teredo",
                    help="who plays client1 (behind one NAT)")
    ap.add_argument("--client2", choices=roles.IMPLEMENTATIONS, default="xdp-teredo",
                    help="who plays client2 (behind two NATs)")
    ap.add_argument("--how", choices=("kill", "silence"), default="kill",
                    help="kill: SIGKILL the relay process (default); silence: the relay host "
                         "stops answering (core drops its packets), only BGP's hold timer tells")
    ap.add_argument("--after", type=float, default=STEADY_AFTER, metavar="S",
                    help=f"seconds of steady ping after the kill (default {STEADY_AFTER:g})")
    ap.add_argument("--max-failover", type=float, default=5.0, metavar="S",
                    help="fail if the flows take longer than this to work again (default 5)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
