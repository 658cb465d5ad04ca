"""A network-namespace lab for end-to-end tests, demos and benchmarks.

netns:    primitives (namespaces, veth, addresses, routes, sysctl, NAT,
          conntrack, background processes), each a visible shell command.
topology: Lab, the small internet of namespaces (NATs, Teredo server host,
          relay host, IPv6-only host) that builds and always tears down.
miredo:   Miredo's server, client and relay as reference peers inside a Lab.
probe:    ping / UDP probes run inside namespaces (`python -m xdp_teredo.lab.probe`).

Everything here needs root and stays inside namespaces the lab created.
"""

from xdp_teredo.lab.topology import ROLES, Host, Lab, PingResult

__all__ = ["ROLES", "Host", "Lab", "PingResult"]
