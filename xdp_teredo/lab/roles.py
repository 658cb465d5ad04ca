"""Teredo roles in a Lab, played by xdp-teredo or by Miredo.

The demo (`make demo`), the lab tool (tools/lab.py) and the benchmark start
roles through these functions, so that "which implementation plays the server,
the relay, each client" is one word per role. Every role runs as a lab process:
the lab stops it on teardown, also after a failure.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from dataclasses import dataclass
from typing import Optional

from xdp_teredo.errors import RuntimeFailure, UsageError
from xdp_teredo.lab import miredo

IMPLEMENTATIONS = ("xdp-teredo", "miredo")
CLI = [sys.executable, "-m", "xdp_teredo.cli"]
# Compiling the BPF programs takes a few seconds; two at once on 2 cores longer.
START_TIMEOUT = 60.0


@dataclass
class Role:
    """A running role: who plays it, where, its process and (clients) its address."""

    name: str                      # "server", "relay", "client"
    host: str                      # lab role (namespace)
    impl: str                      # "xdp-teredo" or "miredo"
    process: object                # netns.BackgroundProcess
    address: Optional[ipaddress.IPv6Address] = None
    # Our client: seconds from the command to `qualified` and to `fast_path_ready`.
    qualified_s: Optional[float] = None
    fast_path_s: Optional[float] = None

    def stop(self) -> None:
        self.process.stop()


def _check(impl: str) -> None:
    if impl not in IMPLEMENTATIONS:
        raise UsageError(f"unknown implementation {impl!r}; one of {', '.join(IMPLEMENTATIONS)}")


def cli(lab, host: str, *args: str, check: bool = False, timeout: float = 30.0):
    """Run `xdp-teredo ARGS` in `host` (a subprocess.CompletedProcess)."""
    return lab.run(host, *CLI, *args, check=check, timeout=timeout)


def start_server(lab, impl: str, host: str = "server") -> Role:
    _check(impl)
    if impl == "miredo":
        srv = miredo.start_server(lab, host)
        return Role("server", host, impl, srv.process)
    primary = lab[host].ipv4[0]
    proc = lab.spawn(host, *CLI, "--log-format", "json", "server", "--bind", str(primary),
                     log=f"{host}-xdp-teredo-server.log")
    proc.wait_for_output(r'"event": "server_started"', timeout=START_TIMEOUT)
    # It answers from Python at once; XDP follows once compiled (the benchmark's
    # server runs as it does in service).
    proc.wait_for_output(r'"event": "(server_fast_path_ready|server_xdp_unavailable)"',
                         timeout=START_TIMEOUT)
    return Role("server", host, impl, proc)


def start_relay(lab, impl: str, host: str = "relay", *args: str) -> Role:
    _check(impl)
    if impl == "miredo":
        rel = miredo.start_relay(lab, host)
        return Role("relay", host, impl, rel.process)
    h = lab[host]
    proc = lab.spawn(host, *CLI, "--log-format", "json", "relay", "--ipv4-iface", h.uplink,
                     "--ipv6-iface", h.lan, *args, log=f"{host}-xdp-teredo-relay.log")
    proc.wait_for_output(r'"event": "relay_started"', timeout=START_TIMEOUT)
    return Role("relay", host, impl, proc)


def start_client(lab, impl: str, host: str, server, *args: str) -> Role:
    """A client in `host` qualified with `server` (a numeric IPv4), its fast path on."""
    _check(impl)
    server = str(server)
    if impl == "miredo":
        cl = miredo.start_client(lab, host, server)
        return Role("client", host, impl, cl.process, cl.address)
    started = time.monotonic()
    proc = lab.spawn(host, *CLI, "--log-format", "json", "attach", lab[host].uplink,
                     "--server", server, *args, log=f"{host}-xdp-teredo-client.log")
    proc.wait_for_output(r'"event": "qualified"', timeout=START_TIMEOUT)
    qualified_s = time.monotonic() - started
    # Qualified on the slow path first; the fast path follows once the programs
    # are loaded (client/handover.py): what the demo and the benchmark measure.
    proc.wait_for_output(r'"event": "fast_path_ready"', timeout=START_TIMEOUT)
    fast_path_s = time.monotonic() - started
    res = cli(lab, host, "status", "--json")
    try:
        info = json.loads(res.stdout)
    except ValueError as err:
        raise RuntimeFailure(f"status in {host}: {res.stderr.strip()}") from err
    return Role("client", host, impl, proc, ipaddress.IPv6Address(info["address"]),
                qualified_s=qualified_s, fast_path_s=fast_path_s)
