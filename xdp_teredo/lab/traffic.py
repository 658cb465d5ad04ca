"""Traffic and cost measurements between lab hosts, for benchmarks.

Everything here measures; nothing asserts. iperf3 (Debian's) generates and
counts; CPU time comes from /proc (machine-wide, and per process tree for the
tunnel daemons); latency from the lab's ping probe; memory from /proc (resident
set of the daemons, and the kernel's own accounting of each BPF map and program a
daemon holds, from the fdinfo of its descriptors: no bpftool needed). New Teredo
peers at a steady rate come from PeerBubbles, a raw-socket generator. All
traffic stays in the lab's namespaces.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import socket
import statistics
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from xdp_teredo.errors import RuntimeFailure

_CLK_TCK = os.sysconf("SC_CLK_TCK")
# iperf3 servers listen on the next port of this range for each run, round and
# round (a long `make bench` runs hundreds), so that ALLOW_IPERF always covers it.
_IPERF_PORTS = (5301, 5800)
_iperf_port = [_IPERF_PORTS[0] - 1]


def _next_port() -> int:
    first, last = _IPERF_PORTS
    _iperf_port[0] = first + (_iperf_port[0] + 1 - first) % (last - first + 1)
    return _iperf_port[0]


# What an xdp-teredo client that runs iperf3 servers opens: its inbound guard is
# stateful by default (docs/security.md), and each run listens on the next port.
ALLOW_IPERF = ("--allow", f"tcp/{_IPERF_PORTS[0]}-{_IPERF_PORTS[1]}",
               "--allow", f"udp/{_IPERF_PORTS[0]}-{_IPERF_PORTS[1]}")


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
        return self._per(self.delivered_packets, label)

    def cpu_ns_per_offered(self, label: Optional[str] = None) -> Optional[float]:
        """CPU-ns per offered (sent) packet. Per delivered packet, a lossy path is
        charged the work of the packets it dropped on top of its own; per offered
        packet it is not. The two columns together tell the costs apart."""
        return self._per(self.sent_packets, label)

    def _per(self, packets: int, label: Optional[str]) -> Optional[float]:
        if not self.cpu or not packets:
            return None
        secs = self.cpu.machine if label is None else self.cpu.daemons.get(label)
        return None if secs is None else secs * 1e9 / packets


def iperf3(lab, src: str, dst: str, address, *, udp_payload: int = 0, seconds: float = 3.0,
           streams: int = 1, daemons: Optional[dict] = None, reverse: bool = False) -> Flow:
    """Run iperf3 from host `src` to host `dst` (listening on `address`).

    udp_payload > 0: UDP with that payload size at unlimited offered rate (-b 0);
    0: one TCP stream per `streams`. daemons: label -> pids whose CPU to account.
    reverse: the data flows dst -> src (iperf3 -R; src still opens the
    connection, so it may sit behind a NAT).
    """
    port = _next_port()
    server = lab.spawn(dst, "iperf3", "-s", "-1", "-p", str(port), "-B", str(address),
                       log=f"iperf3-s-{dst}-{port}.log")
    _wait_listening(lab, dst, port)
    cmd = ["iperf3", "-c", str(address), "-p", str(port), "-t", str(seconds),
           "-P", str(streams), "--json"]
    if udp_payload:
        cmd += ["-u", "-b", "0", "-l", str(udp_payload)]
    if reverse:
        cmd.append("-R")
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


# ----------------------------------------------------------------- namespaces

_CLONE_NEWNET = 0x40000000


def in_netns(netns_name: str, fn: Callable):
    """fn() in a thread that entered the lab namespace `netns_name`.

    Network namespaces are per thread: what fn creates (a socket) stays in that
    namespace after the thread ends, so the caller can use it from any thread.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    result: dict = {}

    def body():
        try:
            fd = os.open(f"/run/netns/{netns_name}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns_name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            result["error"] = err

    thread = threading.Thread(target=body, name=f"in-{netns_name}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


# ----------------------------------------------------------------- memory

def _tree(pids: Iterable[int]) -> List[int]:
    kids = _children()
    todo, seen = list(pids), []
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(kids.get(pid, ()))
    return seen


def rss_bytes(pids: Iterable[int], kind: str = "VmRSS") -> int:
    """Resident memory of these processes and their descendants, in bytes: kind
    "VmRSS" (all of it), "RssAnon" (the process's own: heap, stacks) or "RssFile"
    (mapped files, shared libraries first: shared with every process mapping the
    same file, and reclaimable). Memory the kernel holds for BPF maps is in none
    of them: see bpf_objects()."""
    total = 0
    for pid in _tree(pids):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(kind + ":"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


@dataclass
class BpfObject:
    """A BPF map or program a process holds a descriptor of, as its fdinfo says.

    memlock is the kernel's account of the object's memory (for maps, since 6.4,
    bpf_map_memory_usage(): a preallocated hash or LRU map costs its whole
    capacity, however few entries it holds). run_time_ns / run_cnt move only while
    run-time statistics are enabled (BpfRunStats).
    """

    kind: str                  # "map" or "prog"
    id: int
    memlock: int
    fields: Dict[str, str]

    @property
    def run_cnt(self) -> int:
        return int(self.fields.get("run_cnt", 0))

    @property
    def run_time_ns(self) -> int:
        return int(self.fields.get("run_time_ns", 0))

    @property
    def max_entries(self) -> int:
        return int(self.fields.get("max_entries", 0))


def bpf_objects(pids: Iterable[int]) -> List[BpfObject]:
    """The BPF maps and programs held by these processes (and descendants), each once."""
    seen: Dict[Tuple[str, int], BpfObject] = {}
    for pid in _tree(pids):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            kind = {"anon_inode:bpf-map": "map", "anon_inode:bpf-prog": "prog"}.get(target)
            if kind is None:
                continue
            fields = {}
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    for line in f:
                        key, _, value = line.partition(":")
                        fields[key.strip()] = value.strip()
            except OSError:
                continue
            ident = int(fields.get(f"{kind}_id", 0))
            seen.setdefault((kind, ident), BpfObject(kind, ident, int(fields.get("memlock", 0)), fields))
    return list(seen.values())


def _bpf_lib():
    from xdp_teredo.datapath import libbpf

    handle = libbpf.lib()
    handle.bpf_map_get_fd_by_id.argtypes = [ctypes.c_uint32]
    handle.bpf_enable_stats.argtypes = [ctypes.c_int]
    return libbpf, handle


def open_map(map_id: int):
    """A MapFd (owned: close it) on a map some process holds, by id (as root)."""
    libbpf, handle = _bpf_lib()
    fd = libbpf._check(handle.bpf_map_get_fd_by_id(map_id), f"bpf_map_get_fd_by_id {map_id}")
    return libbpf.MapFd(fd, owned=True)


def map_names(objects: Iterable[BpfObject]) -> Dict[int, str]:
    """map id -> the map's name (bpf_map_info; fdinfo does not carry it)."""
    names = {}
    for obj in objects:
        if obj.kind != "map":
            continue
        try:
            m = open_map(obj.id)
        except OSError:
            continue
        try:
            names[obj.id] = m.name
        finally:
            m.close()
    return names


_BPF_STATS_RUN_TIME = 0


class BpfRunStats:
    """Kernel run-time statistics of every BPF program while this is open
    (BPF_ENABLE_STATS: the kernel counts run_cnt and run_time_ns, at the price
    of two clock reads per program run; closing the descriptor stops it, and
    other holders keep their own: kernel.bpf_stats_enabled is not touched)."""

    def __init__(self):
        self.fd = -1

    def __enter__(self) -> "BpfRunStats":
        libbpf, handle = _bpf_lib()
        self.fd = libbpf._check(handle.bpf_enable_stats(_BPF_STATS_RUN_TIME), "bpf_enable_stats")
        return self

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def prog_runs(pids: Iterable[int]) -> Dict[str, Tuple[int, int]]:
    """program name -> (run_cnt, run_time_ns) of the programs these processes hold."""
    from xdp_teredo.datapath import libbpf

    out = {}
    for obj in bpf_objects(pids):
        if obj.kind == "prog":
            try:
                name = libbpf.prog_name(obj.id)
            except OSError:
                name = f"prog{obj.id}"
            cnt, ns = out.get(name, (0, 0))
            out[name] = (cnt + obj.run_cnt, ns + obj.run_time_ns)
    return out


def udp_rcvbuf_errors(lab, role: str) -> int:
    """Datagrams the kernel dropped in `role` because a socket's receive buffer was
    full (/proc/net/snmp, Udp: RcvbufErrors): a daemon that does not keep up."""
    lines = [l.split() for l in lab.run(role, "cat", "/proc/net/snmp").stdout.splitlines()
             if l.startswith("Udp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("RcvbufErrors")])


# ----------------------------------------------------------------- new peers

_IPV4_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")


@dataclass
class Sent:
    """What PeerBubbles.send did: the peers (in order) and when each bubble left."""

    peers: List[ipaddress.IPv6Address]
    times: List[float]          # time.time() of each send
    seconds: float              # first to last send

    @property
    def rate(self) -> float:
        return (len(self.peers) - 1) / self.seconds if self.seconds > 0 and len(self.peers) > 1 else 0.0


class PeerBubbles:
    """New Teredo peers introducing themselves to a node, at a steady rate.

    Each peer is a distinct (IPv4 address, UDP port) sent from the generator host,
    and its Teredo address embeds exactly that mapping (RFC 4380 §4), so each sends
    what a real peer's first packet to a cone node is: a direct bubble (§2.8) from
    its mapped address, which the receiver trusts because the source embeds the UDP
    source (§5.2.3). Bubbles always go to the control plane (the data path passes
    them), so this measures the control plane's admission of peers. Consecutive
    peers take the source addresses in turn, as new peers come from different
    NATs, so that a per-source limit of the receiver sees rate / len(sources).
    Raw IPv4 (IP_HDRINCL) from a socket made inside the generator's namespace, so
    one process speaks for any number of peers (the sources need routes back to
    the generator only where the network checks them); UDP checksum 0 is legal over
    IPv4 (RFC 768).
    """

    def __init__(self, lab, role: str, sources: Iterable, server, target_ip, target_port: int,
                 target_address, first_port: int = 1024):
        self.sources = [ipaddress.IPv4Address(str(a)) for a in sources]
        self.server = ipaddress.IPv4Address(str(server))
        self.target_ip = ipaddress.IPv4Address(str(target_ip))
        self.target_port = int(target_port)
        self.target_address = ipaddress.IPv6Address(str(target_address))
        self._next = 0
        self._first_port = first_port
        self._ports = 65536 - first_port
        self.sock = in_netns(lab[role].netns,
                             lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))

    def close(self) -> None:
        self.sock.close()

    @property
    def capacity(self) -> int:
        """How many distinct peers this generator can still introduce."""
        return len(self.sources) * self._ports - self._next

    def _packet(self, index: int) -> Tuple[ipaddress.IPv6Address, bytes]:
        from xdp_teredo.teredo.packet import build_bubble
        from xdp_teredo.teredo.address import TeredoAddress

        ip = self.sources[index % len(self.sources)]
        port = self._first_port + index // len(self.sources)
        peer = TeredoAddress(server=self.server, flags=0, port=port, client=ip).ipv6
        bubble = build_bubble(peer, self.target_address)
        # Length, identification and header checksum are filled in by the kernel.
        header = _IPV4_UDP.pack(0x45, 0, 0, 0, 0, 64, socket.IPPROTO_UDP, 0, ip.packed,
                                self.target_ip.packed, port, self.target_port, 8 + len(bubble), 0)
        return peer, header + bubble

    def send(self, count: int, rate: float) -> Sent:
        """`count` new peers, one bubble each, paced at `rate` per second (open
        loop: the sender never waits for the receiver)."""
        if count > self.capacity:
            raise RuntimeFailure(f"only {self.capacity} more distinct peers available")
        built = [self._packet(self._next + i) for i in range(count)]
        self._next += count
        dest = (str(self.target_ip), 0)
        times: List[float] = []
        start = time.time()
        sent = 0
        while sent < count:
            due = min(count, int((time.time() - start) * rate) + 1)
            now = time.time()
            while sent < due:
                self.sock.sendto(built[sent][1], dest)
                times.append(now)
                sent += 1
            if sent < count:
                # Sleep until the next one is due; bursts stay within ~1 ms.
                time.sleep(max(0.0, start + sent / rate - time.time()))
        return Sent([p for p, _ in built], times, times[-1] - times[0] if times else 0.0)
