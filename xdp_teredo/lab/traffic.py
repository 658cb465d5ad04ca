"""Traffic and cost measurements between lab hosts, for benchmarks.

Everything here measures; nothing asserts. iperf3 (Debian's) generates and
counts; CPU time comes from /proc (machine-wide, and per process tree for the
tunnel daemons); latency from the lab's ping probe. All traffic stays in the
lab's namespaces.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

from xdp_teredo.errors import RuntimeFailure

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_iperf_port = [5300]


def _next_port() -> int:
    _iperf_port[0] += 1
    return _iperf_port[0]


# ----------------------------------------------------------------- CPU time

def machine_cpu_seconds() -> float:
    """Busy CPU-seconds of the whole machine so far (all cores; idle/iowait excluded)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def _children() -> dict:
    kids: dict = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(pid))
    return kids


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    """utime+stime of these processes and all their descendants (Miredo forks
    a privileged helper; the tunnel work of every daemon counts)."""
    kids = _children()
    todo, seen, total = list(pids), set(), 0.0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(kids.get(pid, ()))
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(rest[11]) + int(rest[12])) / _CLK_TCK  # utime, stime
    return total


@dataclass
class CpuSample:
    machine: float
    daemons: dict  # label -> CPU-seconds of that daemon's process tree

    @classmethod
    def take(cls, daemons: dict) -> "CpuSample":
        return cls(machine_cpu_seconds(),
                   {label: tree_cpu_seconds(pids) for label, pids in daemons.items()})

    def since(self, before: "CpuSample") -> "CpuSample":
        return CpuSample(self.machine - before.machine,
                         {k: v - before.daemons.get(k, 0.0) for k, v in self.daemons.items()})


# ----------------------------------------------------------------- iperf3

@dataclass
class Flow:
    """One iperf3 run's outcome, from the receiver's counts."""

    kind: str                 # "udp" or "tcp"
    payload: int              # UDP payload bytes (0 for TCP)
    seconds: float
    sent_packets: int         # UDP datagrams the generator sent
    delivered_packets: int    # UDP datagrams the receiver got
    delivered_bps: float      # receiver's goodput, bits/s
    sender_cpu_pct: float     # iperf3's own CPU on the sending side
    cpu: Optional[CpuSample] = None

    @property
    def offered_pps(self) -> float:
        return self.sent_packets / self.seconds if self.seconds else 0.0

    @property
    def delivered_pps(self) -> float:
        return self.delivered_packets / self.seconds if self.seconds else 0.0

    @property
    def loss(self) -> float:
        return 1 - self.delivered_packets / self.sent_packets if self.sent_packets else 0.0

    def cpu_ns_per_packet(self, label: Optional[str] = None) -> Optional[float]:
        """CPU-ns per delivered packet: machine-wide, or one daemon's."""
        if not self.cpu or not self.delivered_packets:
            return None
        secs = self.cpu.machine if label is None else self.cpu.daemons.get(label)
        return None if secs is None else secs * 1e9 / self.delivered_packets


def iperf3(lab, src: str, dst: str, address, *, udp_payload: int = 0, seconds: float = 3.0,
           streams: int = 1, daemons: Optional[dict] = None) -> Flow:
    """Run iperf3 from host `src` to host `dst` (listening on `address`).

    udp_payload > 0: UDP with that payload size at unlimited offered rate (-b 0);
    0: one TCP stream per `streams`. daemons: label -> pids whose CPU to account.
    """
    port = _next_port()
    server = lab.spawn(dst, "iperf3", "-s", "-1", "-p", str(port), "-B", str(address),
                       log=f"iperf3-s-{dst}-{port}.log")
    _wait_listening(lab, dst, port)
    cmd = ["iperf3", "-c", str(address), "-p", str(port), "-t", str(seconds),
           "-P", str(streams), "--json"]
    if udp_payload:
        cmd += ["-u", "-b", "0", "-l", str(udp_payload)]
    before = CpuSample.take(daemons or {})
    res = lab.run(src, *cmd, check=False, timeout=seconds + 30)
    cpu = CpuSample.take(daemons or {}).since(before)
    server.stop(grace=1.0)
    try:
        end = json.loads(res.stdout)["end"]
    except (ValueError, KeyError) as err:
        raise RuntimeFailure(f"iperf3 {src}->{dst} failed: {res.stdout[-300:]} {res.stderr[-300:]}") from err
    if "error" in json.loads(res.stdout):
        raise RuntimeFailure(f"iperf3 {src}->{dst}: {json.loads(res.stdout)['error']}")
    recv = end["sum_received"]
    sender_cpu = end.get("cpu_utilization_percent", {}).get("host_total", 0.0)
    if udp_payload:
        sent = end["sum_sent"]["packets"] if end["sum_sent"].get("packets") else end["sum"]["packets"]
        delivered = int(recv["bytes"] // udp_payload)
        return Flow("udp", udp_payload, recv["seconds"], sent, delivered,
                    recv["bits_per_second"], sender_cpu, cpu)
    return Flow("tcp", 0, recv["seconds"], 0, 0, recv["bits_per_second"], sender_cpu, cpu)


def _wait_listening(lab, role: str, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.run(role, "ss", "-Hlnt", f"sport = :{port}", check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise RuntimeFailure(f"iperf3 server on {role}:{port} did not start")


# ----------------------------------------------------------------- latency

@dataclass
class Latency:
    sent: int
    received: int
    rtts_ms: list = field(default_factory=list)

    def percentile(self, p: float) -> Optional[float]:
        if not self.rtts_ms:
            return None
        data = sorted(self.rtts_ms)
        k = max(0, min(len(data) - 1, round(p / 100 * (len(data) - 1))))
        return data[k]


def ping_under_load(lab, src: str, dst: str, address, *, count: int = 200,
                    interval: float = 0.01, load_seconds: float = 4.0,
                    load_address=None) -> Latency:
    """Ping `address` from `src` while one TCP stream src->dst loads the same path."""
    port = _next_port()
    server = lab.spawn(dst, "iperf3", "-s", "-1", "-p", str(port), log=f"iperf3-load-{port}.log")
    _wait_listening(lab, dst, port)
    load = lab.spawn(src, "iperf3", "-c", str(load_address or address), "-p", str(port),
                     "-t", str(load_seconds), log=f"iperf3-load-c-{port}.log")
    time.sleep(0.5)  # let the TCP window open
    res = lab.ping(src, str(address), count=count, interval=interval,
                   deadline=min(load_seconds - 0.7, count * interval * 3))
    load.stop(grace=load_seconds)
    server.stop(grace=1.0)
    return Latency(res.sent, res.received, list(res.rtts_ms))


def summary(values: list) -> dict:
    """Median and spread (min, max) of repeated measurements."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
