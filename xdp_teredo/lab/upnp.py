"""miniupnpd (Debian's miniupnpd-nftables 2.3) as the UPnP IGD of a lab NAT box.

A NAT host of kind "upnp" (netns.NAT_KINDS) runs one, the way lab/miredo.py runs
Miredo: in the foreground (`-d`), config and pid file in the lab's workdir, a
process of the lab, so the lab stops it at teardown even when a test failed.

What was checked on this machine (kernel 6.18, Debian 12):
- miniupnpd-iptables links the legacy iptables library (libip4tc), which this
  kernel has no tables for; the nftables build works.
- Its nftables backend only adds rules to chains that exist: the ruleset below
  is what Debian's nft_init.sh would make (the script itself needs a helper the
  package does not ship), in its own table so that it never meets the lab's
  MASQUERADE (iptables-nft, table ip nat). The forward chain accepts: the box
  stays the symmetric NAT it is; miniupnpd only adds DNAT rules for mappings.
- miniupnpd refuses every port mapping when its WAN address is in a reserved
  range (`ext_ip` too), and the lab's public addresses are documentation ranges
  (RFC 5737). With `ext_perform_stun` it believes a STUN server that sees its
  address unchanged on four ports: lab/stun.py. That is also why the box does not
  MASQUERADE its own traffic (netns.masquerade): a home router's own address
  needs no translation, and a randomised port would read as "symmetric NAT".
  Behind a second NAT the STUN test fails and miniupnpd maps nothing, as a real
  one would: the lab puts the IGD on single NATs (docs/interop.md).
"""

from __future__ import annotations

import re
import sys
import time
import uuid
from dataclasses import dataclass

from xdp_teredo.errors import RuntimeFailure
from xdp_teredo.lab.netns import BackgroundProcess

MINIUPNPD = "miniupnpd"
# The HTTP port of the description and the SOAP control URLs (SSDP answers say it).
HTTP_PORT = 5000
TABLE = "miniupnpd"
# Where the lab's STUN server runs: the router of the lab's internet.
STUN_HOST, STUN_PORT = "inet", 3478
START_TIMEOUT = 5.0
_POLL = 0.1

_RULESET = """
table inet {table} {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
"""

# What one DNAT rule of a mapping looks like in `nft list chain`.
_DNAT = re.compile(r"@nh,72,8 0x11 th dport (\d+) dnat ip to ([0-9.]+):(\d+)")


@dataclass
class Igd:
    """A running miniupnpd on NAT host `role`: `lan_address` is where it listens."""

    role: str
    lan_address: str
    external: str
    process: BackgroundProcess
    lab: object

    def udp_mappings(self) -> list:
        """The UDP port mappings in the box's ruleset now: (external port,
        internal address, internal port), as miniupnpd put them there."""
        out = self.lab.run(self.role, "nft", "list", "chain", "inet", TABLE,
                           "prerouting_miniupnpd").stdout
        return [(int(m.group(1)), m.group(2), int(m.group(3))) for m in _DNAT.finditer(out)]

    def stop(self) -> None:
        self.process.stop()


def start_stun(lab) -> None:
    """The lab's STUN server (lab/stun.py) on inet, once per lab, on every address:
    a NAT box reaches it at its own gateway."""
    if getattr(lab, "_stun", None) is None:
        lab._stun = lab.spawn(STUN_HOST, sys.executable, "-m", "xdp_teredo.lab.stun",
                              "0.0.0.0", STUN_PORT, log="stun-inet.log")
        lab._stun.wait_for_output("listening", timeout=START_TIMEOUT)


def start_igd(lab, role: str, *, uplink: str, lan: str,
              timeout: float = START_TIMEOUT) -> Igd:
    """Start miniupnpd on NAT host `role`: WAN its `uplink` device, listening on its
    `lan` side. Returns once its HTTP port is bound."""
    host = lab[role]
    shown = lab.run(role, "ip", "-4", "-o", "addr", "show", "dev", lan).stdout
    m = re.search(r"inet ([0-9.]+)/", shown)
    if m is None:
        raise RuntimeFailure(f"{role} has no IPv4 address on {lan} for the IGD to listen on")
    lan_address = m.group(1)
    lab.run(role, "nft", "-f", "-", input=_RULESET.format(table=TABLE))
    start_stun(lab)
    stun = (host.gateway, STUN_PORT)
    conf = lab.workdir / f"miniupnpd-{role}.conf"
    conf.write_text("\n".join([
        f"ext_ifname={uplink}",
        # Its address is a documentation one: ask the lab's STUN server (module doc).
        "ext_perform_stun=yes",
        f"ext_stun_host={stun[0]}",
        f"ext_stun_port={stun[1]}",
        f"listening_ip={lan}",
        f"http_port={HTTP_PORT}",
        "enable_natpmp=no",
        "enable_upnp=yes",
        "secure_mode=yes",          # a host maps only to itself
        "system_uptime=no",
        "notify_interval=60",
        "clean_ruleset_interval=0",
        f"uuid={uuid.uuid4()}",
        f"upnp_table_name={TABLE}",
        f"upnp_nat_table_name={TABLE}",
        "upnp_forward_chain=miniupnpd",
        "upnp_nat_chain=prerouting_miniupnpd",
        "upnp_nat_postrouting_chain=postrouting_miniupnpd",
        f"lease_file={lab.workdir / f'miniupnpd-{role}.leases'}",
        "allow 1024-65535 0.0.0.0/0 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
        "",
    ]))
    pidfile = lab.workdir / f"miniupnpd-{role}.pid"
    proc = lab.spawn(role, MINIUPNPD, "-d", "-f", str(conf), "-P", str(pidfile),
                     log=f"miniupnpd-{role}.log")
    deadline = time.monotonic() + timeout
    while True:
        out = lab.run(role, "ss", "-H", "-t", "-l", "-n").stdout
        if f":{HTTP_PORT} " in out:   # miniupnpd binds the wildcard address
            break
        if not proc.alive():
            raise RuntimeFailure(f"miniupnpd on {role} exited {proc.stop()}; log:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"miniupnpd on {role}: not listening after {timeout:g} s; "
                                 f"log:\n{proc.output()}")
        time.sleep(_POLL)
    return Igd(role=role, lan_address=lan_address, external=str(host.ipv4[0]),
               process=proc, lab=lab)
