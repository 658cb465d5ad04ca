"""A relay fleet in the lab: several xdp-teredo relays behind BGP anycast and ECMP.

The demo lab's IPv4 internet, server and NATed clients (lab/topology.py), and on
the native side an IPv6 router, "core", in front of the relays and the native hosts:

    client1 -- nat1 ----------+                      +-- relay1 --+
    client2 -- nat2b -- nat2a-+-- inet (IPv4) -------+-- relay2 --+-- core --- v6host1
                   server ----+    | (IPv6 transit)  +-- relay3 --+   (BIRD)  v6host2
                                   +------------------------------------+

- each relayK: IPv4 side eth0 on inet (192.0.2.16K+4/28), IPv6 side eth1 on core
  (2001:db8:3:K::1/64); runs `xdp-teredo relay --announce-table 100` and BIRD,
  which announces 2001::/32 over BGP to core while the relay's route is in table
  100 (lab/bird.py, relay/announce.py);
- core: BIRD, one BGP session per relay, the kernel route 2001::/32 with one next
  hop per announcing relay (ECMP, hashed on the flow:
  net.ipv6.fib_multipath_hash_policy=1); its uplink to inet carries the server's
  IPv6 (the server forwards the clients' echo tests, §5.3.1);
- v6hostN: native IPv6 only, 2001:db8:1:N::2, ::3, ::4 (several destinations, so
  that the hash spreads several flows).

inet routes 2001::/32 and the native network to core, as the rest of an IPv6
internet would route them toward the fleet. Documentation ranges only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Optional

from xdp_teredo.errors import RuntimeFailure
from xdp_teredo.lab import bird, netns, probe, roles
from xdp_teredo.lab.topology import LAN, TEREDO_PREFIX, UPLINK, Host, Lab

ANNOUNCE_TABLE = 100
CLIENTS = ("client1", "client2")
NATIVE_ADDRESSES = 3            # per native host
CORE_UPLINK = "2001:db8:ff::/64"
NATIVE_NET = "2001:db8:1::/48"


def _relay_v4(k: int):
    """(relay address, inet's address) of relay k's /28, after the server's 192.0.2.0/28."""
    base = int(ipaddress.IPv4Address("192.0.2.0")) + 16 * k
    return ipaddress.IPv4Address(base + 4), ipaddress.IPv4Address(base + 14)


class FleetLab(Lab):
    """The server, the NATed clients and inet of Lab, plus core, `relays` relays and
    `natives` native hosts. Torn down like any Lab (every namespace is the lab's)."""

    def __init__(self, relays: int = 3, natives: int = 2, clients=CLIENTS, **kwargs):
        if not 2 <= relays <= 8:
            raise ValueError("a fleet has 2 to 8 relays")
        super().__init__(("server", *clients), **kwargs)
        self.relay_roles = [f"relay{k}" for k in range(1, relays + 1)]
        self.native_roles = [f"v6host{n}" for n in range(1, natives + 1)]
        self.clients = list(clients)

    def _build_more(self) -> None:
        inet = self["inet"]
        core = self._host("core", router6=True)
        netns.add_veth(core.netns, UPLINK, inet.netns, "to-core")
        core.uplink = UPLINK
        net = ipaddress.IPv6Network(CORE_UPLINK)
        inet_addr, core_addr = net[1], net[2]
        netns.add_address(inet.netns, "to-core", f"{inet_addr}/64")
        netns.add_address(core.netns, UPLINK, f"{core_addr}/64")
        core.ipv6, core.gateway6 = [core_addr], inet_addr
        netns.add_route(core.netns, "default", via=str(inet_addr))
        for prefix in (TEREDO_PREFIX, NATIVE_NET):
            netns.add_route(inet.netns, prefix, via=str(core_addr))
        # Hash on the flow (addresses, protocol, ports), as an operator would: the
        # flows spread, and one TCP connection stays on one relay (no reordering).
        netns.set_sysctl(core.netns, "net.ipv6.fib_multipath_hash_policy", 1)

        for n, role in enumerate(self.native_roles, 1):
            host = self._host(role)
            netns.add_veth(host.netns, UPLINK, core.netns, f"to-{role}")
            host.uplink = UPLINK
            netns.add_address(core.netns, f"to-{role}", f"2001:db8:1:{n}::1/64")
            host.ipv6 = [ipaddress.IPv6Address(f"2001:db8:1:{n}::{i}")
                         for i in range(2, 2 + NATIVE_ADDRESSES)]
            for addr in host.ipv6:
                netns.add_address(host.netns, UPLINK, f"{addr}/64")
            host.gateway6 = ipaddress.IPv6Address(f"2001:db8:1:{n}::1")
            netns.add_route(host.netns, "default", via=str(host.gateway6))

        for k, role in enumerate(self.relay_roles, 1):
            host = self._host(role, router6=True)
            addr4, gw4 = _relay_v4(k)
            netns.add_veth(host.netns, UPLINK, inet.netns, f"to-{role}")
            netns.add_veth(host.netns, LAN, core.netns, f"to-{role}")
            host.uplink, host.lan = UPLINK, LAN
            netns.add_address(inet.netns, f"to-{role}", f"{gw4}/28")
            netns.add_address(host.netns, UPLINK, f"{addr4}/28")
            netns.add_route(host.netns, "default", via=str(gw4))
            host.ipv4, host.gateway, host.public_ipv4 = [addr4], gw4, addr4
            addr6, gw6 = f"2001:db8:3:{k}::1", f"2001:db8:3:{k}::ff"
            netns.add_address(core.netns, f"to-{role}", f"{gw6}/64")
            netns.add_address(host.netns, LAN, f"{addr6}/64")
            netns.add_route(host.netns, "default", via=gw6)
            host.ipv6, host.gateway6 = [ipaddress.IPv6Address(addr6)], ipaddress.IPv6Address(gw6)
            # The far ends take XDP-redirected frames (GRO on), and IPv4 forwarding on
            # the uplink lets bpf_fib_lookup route the encapsulated packets: what a
            # relay run with --path xdp needs. Under auto the relays take tc on these
            # veths (datapath/redirect.py).
            self.run("inet", "ethtool", "-K", f"to-{role}", "gro", "on")
            self.run("core", "ethtool", "-K", f"to-{role}", "gro", "on")
            netns.set_sysctl(host.netns, f"net.ipv4.conf.{UPLINK}.forwarding", 1)

    def _host(self, role: str, *, router6: bool = False) -> Host:
        ns = self._new_ns(role)
        host = Host(role=role, netns=ns)
        self.hosts[role] = host
        if router6:
            netns.enable_forwarding(ns, ipv4=False, ipv6=True)
        return host

    def native_addresses(self) -> list:
        return [a for role in self.native_roles for a in self[role].ipv6]


# --- routing ----------------------------------------------------------------------


@dataclass
class Fleet:
    """What runs in a FleetLab: BIRDs, the server, the relays, the clients."""

    lab: FleetLab
    router: Optional[bird.Bird] = None
    birds: dict = field(default_factory=dict)      # relay role -> Bird
    relays: dict = field(default_factory=dict)     # relay role -> roles.Role
    clients: dict = field(default_factory=dict)    # client role -> roles.Role

    def start_routing(self) -> None:
        """BIRD on core and on every relay host; the sessions come up by themselves."""
        lab = self.lab
        sessions = [(role, f"2001:db8:3:{k}::ff", f"2001:db8:3:{k}::1")
                    for k, role in enumerate(lab.relay_roles, 1)]
        self.router = bird.start(lab, "core", bird.router_config("203.0.113.100", sessions))
        for k, role in enumerate(lab.relay_roles, 1):
            self.birds[role] = bird.start(lab, role, bird.relay_config(
                str(lab[role].ipv4[0]), f"2001:db8:3:{k}::1", f"2001:db8:3:{k}::ff",
                ANNOUNCE_TABLE))

    def wait_sessions(self, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while True:
            up = bird.established(self.lab, self.router)
            if len(up) == len(self.lab.relay_roles):
                return up
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"BGP sessions on core after {timeout:g} s: "
                                     f"{up or 'none'} established\n"
                                     + bird.birdc(self.lab, self.router, "show", "protocols",
                                                  check=False))
            time.sleep(0.2)

    def start_server(self) -> None:
        roles.start_server(self.lab, "xdp-teredo", "server")

    def start_relay(self, role: str) -> roles.Role:
        self.relays[role] = roles.start_relay(self.lab, "xdp-teredo", role,
                                              "--announce-table", str(ANNOUNCE_TABLE))
        return self.relays[role]

    def start_clients(self, impl: dict) -> None:
        server = self.lab["server"].ipv4[0]
        for role in self.lab.clients:
            self.clients[role] = roles.start_client(self.lab, impl.get(role, "xdp-teredo"),
                                                    role, server)

    # -- what the router does ------------------------------------------------------

    def next_hops(self) -> list:
        """The relays (their IPv6 addresses) core's kernel route 2001::/32 goes to."""
        out = self.lab.run("core", "ip", "-6", "route", "show", str(TEREDO_PREFIX)).stdout
        return sorted(set(re.findall(r"via ([0-9a-f:]+)", out)))

    def wait_next_hops(self, count: int, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while True:
            hops = self.next_hops()
            if len(hops) == count:
                return hops
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"core routes 2001::/32 via {hops or 'nothing'}, "
                                     f"not {count} relays, after {timeout:g} s")
            time.sleep(0.1)

    def relay_of(self, next_hop: str) -> str:
        for role in self.lab.relay_roles:
            if str(self.lab[role].ipv6[0]) == next_hop:
                return role
        raise KeyError(next_hop)

    # -- traffic -------------------------------------------------------------------

    def relay_counts(self, role: str) -> dict:
        """The relay's fast-path packets: {"encapsulated": n, "decapsulated": n}."""
        res = roles.cli(self.lab, role, "stats", "--json")
        if res.returncode != 0:
            raise RuntimeFailure(f"xdp-teredo stats in {role}: {res.stderr.strip()}")
        counters = json.loads(res.stdout)   # reason -> packets (daemon/render.py)
        return {name: int(counters.get(name, 0)) for name in ("encapsulated", "decapsulated")}

    def steady(self, duration: float, interval: float = 0.1) -> dict:
        """Start a steady ping from every client to every native address; a dict of
        client role -> BackgroundProcess whose output flows() reads."""
        dsts = [str(a) for a in self.lab.native_addresses()]
        return {role: self.lab.spawn(role, *probe.argv("steady", *dsts, "--duration", duration,
                                                       "--interval", interval),
                                     log=f"{role}-steady-{time.monotonic_ns()}.log")
                for role in self.lab.clients}

    def silence(self, role: str) -> float:
        """Relay host `role` falls silent, as a host that died without a word: core
        drops everything to and from it (BGP keepalives included), its links stay up.
        Only the BGP hold timer notices. The wall time."""
        now = time.time()
        for chain, direction in (("INPUT", "-i"), ("OUTPUT", "-o"), ("FORWARD", "-i"),
                                 ("FORWARD", "-o")):
            self.lab.run("core", "ip6tables", "-w", "-I", chain, direction, f"to-{role}",
                         "-j", "DROP")
        return now

    def kill(self, role: str) -> float:
        """SIGKILL the relay of `role` (a crash: no teardown of its own); the wall time."""
        proc = self.relays[role].process
        now = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return now


def flows(procs: dict, timeout: float = 60.0) -> list:
    """Wait for the steady pings; every flow as (client role, probe's flow dict)."""
    found = []
    for role, proc in procs.items():
        proc.wait(timeout=timeout)
        lines = proc.output().strip().splitlines()
        try:
            data = json.loads(lines[-1])
        except (IndexError, ValueError) as err:
            raise RuntimeFailure(f"steady ping in {role}: {proc.output()[-500:]}") from err
        found += [(role, flow) for flow in data["flows"]]
    return found


def outage(flow: dict, since: float) -> float:
    """Seconds from `since` until the flow answered again for good: the arrival of the
    first reply to a request sent after the last unanswered one. 0 if nothing sent
    from a second before `since` on was lost, or if the flow was back before `since`;
    infinite if it never answered again.

    The second before: a request in flight through a relay when it dies is lost
    by that death."""
    answered = {seq for seq, _t, _src in flow["replies"]}
    lost = [(t, seq) for seq, t in flow["sent"] if seq not in answered and t >= since - 1.0]
    if not lost:
        return 0.0
    last_lost_at = max(t for t, _ in lost)
    sent_at = {seq: t for seq, t in flow["sent"]}
    later = [t for seq, t, _src in flow["replies"] if sent_at.get(seq, 0) > last_lost_at]
    return max(0.0, min(later) - since) if later else float("inf")


def failover(all_flows: list, since: float) -> float:
    """The longest outage of any flow: how long until every flow worked again."""
    return max((outage(flow, since) for _role, flow in all_flows), default=0.0)


def slowest_reply(all_flows: list, since: float) -> float:
    """The longest round trip of a request sent from a second before `since` on: a
    reply held while a new relay bubbles its client is late, not lost."""
    rtts = []
    for _role, flow in all_flows:
        sent_at = {seq: t for seq, t in flow["sent"]}
        rtts += [t - sent_at[seq] for seq, t, _src in flow["replies"]
                 if sent_at.get(seq, 0) >= since - 1.0]
    return max(rtts, default=0.0)


def baseline_ok(all_flows: list, until: float) -> bool:
    """Every flow answered before `until` (the kill): the fleet carried them all."""
    return all(any(t < until for _seq, t, _src in flow["replies"]) for _role, flow in all_flows)
