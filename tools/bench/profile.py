"""Where the time goes on the path of the issue's throughput targets.

The targets compare xdp-teredo with Miredo and with the plain path on the p2p
path at 1200-byte UDP (and one TCP stream). When one is missed, the report says
what is in the way; this is the evidence, taken apart from the comparison's own
measurements (profiling slows everything down a little, and the BPF run-time
statistics cost xdp-teredo two clock reads per program run: never during the
comparison itself):

- a system-wide sampling profile (`perf record -a`, Debian's linux-perf) while the
  plain path and then xdp-teredo carry 1200-byte UDP: the share of samples per
  command (everything the machine did), and per symbol within the path's own
  commands (iperf3, in whose time the softirqs of the whole veth/NAT chain run,
  and the softirq threads); BPF programs show up as bpf_prog_<tag>_<name>
  (net.core.bpf_jit_kallsyms=1), and their total share is given;
- the kernel's run-time statistics of xdp-teredo's programs during the same flow:
  runs per delivered packet and nanoseconds per run, in the live path.

Everything on the machine is sampled (the two cores are shared by every lab host
and whatever else runs): the per-command split shows what was not ours.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time

from xdp_teredo.lab import traffic

from . import setups

PAYLOAD = 1200
PATH = "p2p"
_LINE = re.compile(r"^\s*([\d.]+)%\s+(.*\S)\s*$")


# The commands that carry the path: the generator and the receiver (the whole
# veth/NAT/stack chain runs in softirq on their time) and the softirq threads.
PATH_COMMANDS = ["iperf3"] + [f"ksoftirqd/{cpu}" for cpu in range(os.cpu_count() or 1)]


def _report(data: str, sort: str, comms=None) -> list:
    cmd = ["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio", "-q",
           "-g", "none", "--percent-limit", "0.1"]
    if comms:
        # Shares of the path's own samples, not of everything the machine did.
        cmd += ["--comms", ",".join(comms), "--percentage", "relative"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    rows = []
    for line in res.stdout.splitlines():
        m = _LINE.match(line)
        if m:
            rows.append({"name": re.sub(r"^\[[k.]\]\s+", "", m.group(2)), "share": float(m.group(1)) / 100})
    return rows


def _profile_flow(lab, ep, seconds: float, streams: int, top: int) -> dict:
    """perf record during one UDP flow; the xdp-teredo programs' live statistics."""
    pids = [p for pids in ep.daemons.values() for p in pids]
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        with traffic.BpfRunStats():
            progs0 = traffic.prog_runs(pids)
            rec = subprocess.Popen(["perf", "record", "-a", "-F", "997", "-o", data, "--",
                                    "sleep", str(seconds)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            flow = traffic.iperf3(lab, ep.src, ep.dst, ep.address, udp_payload=PAYLOAD,
                                  seconds=seconds, streams=streams, daemons=ep.daemons)
            rec.wait(timeout=seconds + 30)
            progs1 = traffic.prog_runs(pids)
        programs = {}
        for name, (cnt, ns) in progs1.items():
            c0, n0 = progs0.get(name, (0, 0))
            if cnt > c0:
                programs[name] = {"runs_per_packet": (cnt - c0) / max(1, flow.delivered_packets),
                                  "ns_per_run": (ns - n0) / (cnt - c0)}
        symbols = _report(data, "sym", PATH_COMMANDS)
        return {"delivered_pps": flow.delivered_pps, "loss": flow.loss,
                "cpu_ns_per_pkt": flow.cpu_ns_per_packet(),
                "by_command": _report(data, "comm")[:top], "by_symbol": symbols[:top],
                "bpf_share": sum(r["share"] for r in symbols if r["name"].startswith("bpf_prog_")),
                "programs": programs}


def measure(lab, *, seconds: float, streams: int, top: int = 12) -> dict:
    if not shutil.which("perf"):
        return {"error": "perf is not installed (Debian: linux-perf; tools/bench/setup-deps.sh)"}
    out = {"path": PATH, "payload": PAYLOAD, "seconds": seconds}
    for impl in ("plain", "xdp-teredo"):
        ep = setups.IMPLEMENTATIONS[impl](lab, PATH)
        try:
            out[impl] = _profile_flow(lab, ep, seconds, streams, top)
        finally:
            ep.teardown()
    return out
