"""The control plane admitting new peers at a steady rate: how many per second
before it lags.

Method. An xdp-teredo client runs on `public` (a host on the internet, no NAT:
what is measured is the client, not a NAT). A generator on another internet host
(traffic.PeerBubbles) introduces new Teredo peers to it, each with one direct
bubble from an IPv4 address and port that its Teredo address embeds (384
addresses in turn, as new peers come from different NATs): the first packet a
peer sends to a node it wants to reach (RFC 4380 §2.8, §5.2.6). The data path
passes bubbles to the control plane, within the limits of its slow-path limiter,
and the control plane trusts such a source (§5.2.3) and installs it in the BPF
peer table; the client logs `peer_trusted` with a timestamp for each. The
admission latency of a peer is that timestamp minus the moment its bubble left
the generator (one clock: the same machine).

First the peer list is filled to its capacity (1024, Miredo's), so that every
measured admission also evicts the least recently active peer, as on a busy node.
Then steps of increasing rate, each `seconds` long, open loop (the generator never
waits for the client). A rate is sustained when at least 99% of its peers are
admitted and the 99th percentile of the admission latency stays under 100 ms: a
control plane slower than the offered rate builds a backlog that grows for the
whole step (and overflows the socket: counted from Udp RcvbufErrors), which shows
as latency far above that within a 2-second step. The answer is the highest
sustained rate; the rates double from step to step, then REFINE more steps at
geometric means narrow the gap between the last sustained and the first
overloaded one. A step whose generator could not keep its rate is marked so, and
does not count either way. A step in which the data path refused 1% or more of
the bubbles (its slow-path limiter) ends the ramp too, marked so: from there on
the limiter, not the control plane, sets the rate.

After the steps, one more run at twice the lowest overloaded rate is profiled
with py-spy, when installed: where the client's time goes when it cannot keep up.
Its admissions per second over that run are the saturated admission throughput.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xdp_teredo.lab import roles, traffic

from . import memory

HOST = "public"            # the client
GENERATOR = "relay"        # any internet host that plays no other part here
# Peers' mappings: the upper halves of the documentation ranges (no lab host uses
# them), routed to the generator on inet while this part runs, every UDP port
# from 1024 up. 384 addresses: the data path's per-source limit of the slow path
# (constants.SLOW_PATH_SOURCE_PPS) sees a share of the rate that stays under it
# up to the rates where the control plane lags; its global limit is reported.
SOURCE_NETS = ("192.0.2.128/25", "198.51.100.128/25", "203.0.113.128/25")
SOURCES = [str(a) for net in SOURCE_NETS for a in ipaddress.IPv4Network(net)]
CAPACITY = 1024            # the client's peer list (constants.PEER_LIST_MAX)
RATES = (250, 500, 1000, 2000, 4000, 8000, 16000, 32000)
# Steps between the highest sustained and the lowest overloaded rate, each at
# their geometric mean: the answer is known within a factor 2 ** (1 / 2 ** N).
REFINE = 2
MAX_P99 = 0.100            # seconds
MIN_ADMITTED = 0.99
DRAIN_QUIET = 1.0          # a step is over when nothing was admitted for this long
DRAIN_MAX = 20.0


def _ts(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class AdmissionLog:
    """The client's `peer_trusted` events, read incrementally from its log file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self.admitted: dict = {}   # IPv6Address -> wall time of the event

    def poll(self) -> int:
        """Read what was appended; returns how many admissions it held."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1       # a partly written last line waits
        self.offset += end
        found = 0
        for line in data[:end].splitlines():
            if b'"peer_trusted"' not in line:
                continue
            try:
                event = json.loads(line)
                self.admitted[ipaddress.IPv6Address(event["peer"])] = _ts(event["timestamp"])
                found += 1
            except (ValueError, KeyError):
                continue
        return found

    def wait(self, peers: list) -> None:
        """Until every one of `peers` is admitted, or nothing moved for DRAIN_QUIET."""
        start = last = time.monotonic()
        while time.monotonic() - start < DRAIN_MAX:
            if self.poll():
                last = time.monotonic()
            # The last ones first: cheap while the backlog is still draining.
            if all(p in self.admitted for p in peers[-50:]) and all(p in self.admitted for p in peers):
                return
            if time.monotonic() - last > DRAIN_QUIET:
                return
            time.sleep(0.05)


def _pct(data: list, p: float):
    if not data:
        return None
    data = sorted(data)
    return data[max(0, min(len(data) - 1, round(p / 100 * (len(data) - 1))))]


def _datapath_counters(lab) -> dict:
    """The client's data path verdicts (reason -> packets), over its control socket."""
    res = roles.cli(lab, HOST, "stats", "--json")
    try:
        return {k: v for k, v in json.loads(res.stdout).items() if isinstance(v, int)}
    except ValueError:
        return {}


def _datapath_drops(before: dict, after: dict) -> dict:
    """Reasons of kind "drop" that moved: a data path that refuses bubbles (a rate
    limit, a guard) would be measured instead of the control plane otherwise."""
    from xdp_teredo.datapath.layout import Kind, Reason

    drop = {r.key for r in Reason if r.kind == Kind.DROP}
    return {k: after[k] - before.get(k, 0) for k in after
            if k in drop and after[k] != before.get(k, 0)}


def _step(lab, gen, log: AdmissionLog, pid: int, rate: float, seconds: float) -> dict:
    count = max(1, int(rate * seconds))
    counters0 = _datapath_counters(lab)
    drops0 = traffic.udp_rcvbuf_errors(lab, HOST)
    cpu0, wall0 = traffic.tree_cpu_seconds([pid]), time.monotonic()
    sent = gen.send(count, rate)
    log.wait(sent.peers)
    cpu = traffic.tree_cpu_seconds([pid]) - cpu0
    counters1 = _datapath_counters(lab)
    latencies = [log.admitted[p] - t for p, t in zip(sent.peers, sent.times) if p in log.admitted]
    admitted = len(latencies)
    last = max((log.admitted[p] for p in sent.peers if p in log.admitted), default=None)
    # Busy from the first bubble to the last admission (the quiet wait that ends
    # a step is not work); the client's CPU in that time, as a share of one core.
    busy = (last - sent.times[0]) if last and last > sent.times[0] else time.monotonic() - wall0
    out = {
        "rate": rate, "sent": count, "send_rate": sent.rate, "admitted": admitted,
        "admitted_share": admitted / count,
        "p50_ms": 1000 * _pct(latencies, 50) if latencies else None,
        "p99_ms": 1000 * _pct(latencies, 99) if latencies else None,
        "max_ms": 1000 * max(latencies) if latencies else None,
        "socket_drops": traffic.udp_rcvbuf_errors(lab, HOST) - drops0,
        "bubbles_passed": counters1.get("rx_bubble", 0) - counters0.get("rx_bubble", 0),
        "datapath_drops": _datapath_drops(counters0, counters1),
        "client_cpu_share": cpu / busy if busy > 0 else None,
        # Admissions per second from the first bubble to the last admission.
        "admitted_per_s": admitted / (last - sent.times[0]) if last and last > sent.times[0] else None,
        "generator_kept_rate": sent.rate >= 0.95 * rate or count < 100,
    }
    out["datapath_limited"] = sum(out["datapath_drops"].values()) >= 0.01 * count
    out["sustained"] = bool(out["generator_kept_rate"] and out["admitted_share"] >= MIN_ADMITTED
                            and out["p99_ms"] is not None and out["p99_ms"] <= 1000 * MAX_P99)
    return out


def _py_spy() -> str:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else (shutil.which("py-spy") or "")


def profile_summary(raw: str, top: int = 10) -> dict:
    """py-spy's raw (collapsed) stacks -> the functions with the most samples,
    inclusive (anywhere on the stack below the event loop) and self (on top)."""
    inclusive, own, total = {}, {}, 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + os.path.basename(f.split(" (")[1].split(":")[0]) + ")"
                  if " (" in f else f for f in stack.split(";")]
        # What is above the event loop (click, main, run, serve) is on every
        # stack and says nothing.
        loop = max((i for i, f in enumerate(frames) if f.split(" (")[0].endswith(".serve")),
                   default=-1)
        frames = frames[loop + 1:] or frames[-1:]
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n

    def ranked(table):
        return [{"function": k, "share": v / total} for k, v in
                sorted(table.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "inclusive": ranked(inclusive), "self": ranked(own)}


def measure(lab, *, seconds: float = 2.0, rates=RATES, profile: bool = True) -> dict:
    server = roles.start_server(lab, "xdp-teredo")
    client = roles.start_client(lab, "xdp-teredo", HOST, lab["server"].ipv4[0])
    out = {"rates": list(rates), "seconds": seconds, "capacity": CAPACITY, "steps": [],
           "memory": {}, "profile": None}
    gen = None
    generator = lab[GENERATOR].ipv4[0]
    for net in SOURCE_NETS:
        lab.run("inet", "ip", "route", "add", net, "via", str(generator))
    try:
        pid = client.process.pid
        status = json.loads(roles.cli(lab, HOST, "status", "--json").stdout)
        local_ip, local_port = status["local"].rsplit(":", 1)
        out["memory"]["idle"] = memory.snapshot([pid])
        gen = traffic.PeerBubbles(lab, GENERATOR, SOURCES, lab["server"].ipv4[0], local_ip,
                                  int(local_port), status["address"])
        log = AdmissionLog(client.process.log_path)
        log.poll()
        fill = _step(lab, gen, log, pid, 1000, CAPACITY / 1000)
        out["fill"] = fill
        out["memory"]["full"] = memory.snapshot([pid])
        def step_at(rate):
            print(f"admission: {rate} new peers/s for {seconds:g} s", file=sys.stderr, flush=True)
            step = _step(lab, gen, log, pid, rate, seconds)
            out["steps"].append(step)
            return step

        overloaded = limited = None
        for rate in rates:
            step = step_at(rate)
            if step["datapath_limited"]:
                limited = rate
                break
            if not step["sustained"] and step["generator_kept_rate"]:
                overloaded = rate
                break
        sustained = [s["rate"] for s in out["steps"] if s["sustained"]]
        if overloaded and sustained:
            low = max(sustained)
            for _ in range(REFINE):
                mid = round((low * overloaded) ** 0.5)
                step = step_at(mid)
                if step["sustained"]:
                    low = mid
                elif step["datapath_limited"]:
                    break
                else:
                    overloaded = mid
        sustained = [s["rate"] for s in out["steps"] if s["sustained"]]
        out["max_sustained"] = max(sustained) if sustained else None
        out["first_overloaded"] = overloaded
        out["first_datapath_limited"] = limited
        spy = _py_spy()
        if profile and spy:
            # Well past the knee, so that the client is busy all along.
            rate = 2 * (overloaded or limited or max(rates))
            with tempfile.TemporaryDirectory() as tmp:
                dest = os.path.join(tmp, "admission.txt")
                rec = subprocess.Popen([spy, "record", "--pid", str(pid), "--duration",
                                        str(int(seconds) + 1), "--rate", "250", "--nonblocking",
                                        "--format", "raw", "--output", dest],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(0.5)  # attached before the flood starts
                step = _step(lab, gen, log, pid, rate, seconds)
                try:
                    _, err = rec.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    rec.kill()
                    _, err = rec.communicate()
                raw = Path(dest).read_text() if os.path.exists(dest) else ""
                out["profile"] = {"rate": rate, "step": step, **profile_summary(raw)}
                if not raw:
                    out["profile"]["error"] = err.decode(errors="replace")[-300:]
        elif profile:
            out["profile"] = {"error": "py-spy is not installed (pip install py-spy)"}
        out["memory"]["end"] = memory.snapshot([pid])
        out["peers_end"] = json.loads(roles.cli(lab, HOST, "status", "--json").stdout).get("peers")
    finally:
        if gen is not None:
            gen.close()
        client.stop()
        server.stop()
        for net in SOURCE_NETS:
            lab.run("inet", "ip", "route", "del", net, "via", str(generator), check=False)
    return out
