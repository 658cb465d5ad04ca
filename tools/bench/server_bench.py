"""The Teredo server: answered Router Solicitations per second, and legitimate
clients kept qualified under a flood; ours in XDP, the Python server (--xdp-mode
off) and miredo-server, in one run, on the same lab. And BPF ns per RS.

Method.
- Load: xdp_teredo.lab.flood ("rs": an RS with a random nonce, as a client sends
  it) on GENERATOR (an internet host of the lab that plays no other part here),
  from SOURCES addresses of 198.18.0.0/15 (RFC 2544's benchmarking range, global
  unicast for Teredo, routed back to the generator on inet while this part runs),
  BATCH datagrams per sendmmsg(2) call. The last step runs GENERATORS processes
  flat out: on this lab the generator, not our server, is then the limit (the
  report says so when every RS was answered). Why not more: a sender's system
  call carries its datagram through the whole lab in softirq on its own core
  (veth -> inet's forwarding -> the server's device), so on two cores the senders
  pay for the path, not just for sending. The kernel's live-frames XDP generator
  (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES) makes 1.4-1.8M frames/s
  here, but over a veth most of them are lost before the next hop's IP layer
  (docs/kernel-notes.md), so it is not used.
- Answered RS/s: the RAs that come back to the generator, counted (and dropped)
  by a firewall rule there, per second, at each offered rate of RATES; the
  figure is the highest over the steps. The servers run without their rate limits
  here (ours: --source-pps/--global-pps/--xdp-ra-pps off; miredo-server has none),
  so that what is measured is how fast each can answer, not its policy.
- Flood: the servers with their default limits; FLOOD_PPS of RSs from the
  generator's sources for `seconds`, while CLIENTS legitimate clients behind the
  lab's NATs (client1, client2) each send an RS every second with a fresh nonce
  and wait for the RA echoing it. A client is lost when three RSs in a row get no
  answer (RFC 4380 §5.2.1: three tries, then the client is offline).
- BPF ns per RS: the server's program on Miredo's RS through BPF_PROG_TEST_RUN
  (single runs, kernel-timed, median), as tools/bench/datapath.py times the others;
  and per forwarded bubble (§5.3.1), in a throwaway namespace whose route and
  neighbour give bpf_fib_lookup its next hop.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time

from xdp_teredo.lab import flood as flood_gen, miredo
from xdp_teredo.teredo.packet import internet_checksum

GENERATOR = "relay"
NET = "198.18.0.0/15"
SOURCES = 4096
RATES = (25_000, 50_000, 100_000, 0)   # 0: as fast as GENERATORS processes go
GENERATORS = 2
BATCH = 64
FLOOD_PPS = 100_000
CLIENT_HOSTS = ("client1", "client2")
CLIENTS_PER_HOST = 4
IMPLS = ("xdp-teredo", "python", "miredo")
CLI = [sys.executable, "-m", "xdp_teredo.cli"]
UNLIMITED = ("--source-pps", "1e9", "--source-bps", "1e12", "--global-pps", "0",
             "--global-bps", "0", "--xdp-ra-pps", "0")

PROBE = r"""
import json, os, select, socket, sys, time
from xdp_teredo.teredo import constants, encap, icmpv6
server, seconds = sys.argv[1], float(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 0))
sent, answered = [], set()
start = time.monotonic(); nxt = start
while time.monotonic() < start + seconds + 2:
    now = time.monotonic()
    if now >= nxt and now < start + seconds:
        nonce = os.urandom(8)
        rs = icmpv6.build_router_solicitation(constants.LINK_LOCAL_RESTRICTED, source_link_layer=bytes(14))
        sock.sendto(encap.build_udp_payload(rs, auth=encap.AuthHeader(nonce=nonce)), (server, 3544))
        sent.append((now, nonce)); nxt += 1.0
    if select.select([sock], [], [], 0.05)[0]:
        data, _ = sock.recvfrom(2048)
        try:
            got = encap.parse_udp_payload(data)
        except Exception:
            continue
        if got.auth is not None:
            answered.add(got.auth.nonce)
ok = [n in answered for _, n in sent]
run = worst = 0
for x in ok:
    run = 0 if x else run + 1
    worst = max(worst, run)
print(json.dumps({"sent": len(ok), "answered": sum(ok), "worst_run_unanswered": worst,
                  "lost": worst >= 3}))
"""


def _test_run_frame(ip: bytes) -> bytes:
    """An IPv4 datagram from flood_gen.datagram (header checksum left to the raw
    socket) as an Ethernet frame a test run takes: the checksum filled in."""
    ip = bytearray(ip)
    ip[10:12] = b"\0\0"
    ip[10:12] = internet_checksum(ip[:20]).to_bytes(2, "big")
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + bytes(ip)


def _gen(lab, server: str, rate: float, seconds: float) -> dict:
    """RSs at `rate` per second (0: flat out, GENERATORS processes) for `seconds`."""
    procs = GENERATORS if rate == 0 else 1
    runs = [lab.spawn(GENERATOR, *flood_gen.argv("rs", "--to", f"{server}:3544", "--from-net", NET,
                                              "--sources", SOURCES // procs, "--seed", 4380 + i,
                                              "--rate", rate / procs, "--count", 10 ** 9,
                                              "--duration", seconds, "--pool", 1,
                                              "--batch", BATCH),
                      log=f"bench-rs-flood-{i}.log") for i in range(procs)]
    out = []
    for p in runs:
        p.wait(timeout=seconds + 60)
        out.append(json.loads(p.output().strip().splitlines()[-1]))
    took = max(o["seconds"] for o in out)
    sent = sum(o["sent"] for o in out)
    return {"sent": sent, "seconds": took, "pps": round(sent / took)}


def _answered(lab) -> int:
    out = lab.run(GENERATOR, "iptables", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n").stdout
    for line in out.splitlines():
        if "spt:3544" in line:
            return int(line.split()[0])
    return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (miredo-server
    does its work in a child). Their own, not the kernel's softirq work for them:
    for our server in XDP that is the program, timed apart (bpf_cost)."""
    parents, stats = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
            stats[int(entry)] = (int(fields[11]) + int(fields[12]))
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(stats.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def _start(lab, impl: str, *extra: str):
    primary = str(lab["server"].ipv4[0])
    if impl == "miredo":
        srv = miredo.start_server(lab, "server")
        return srv.stop, srv.process
    mode = ["--xdp-mode", "off"] if impl == "python" else []
    proc = lab.spawn("server", *CLI, "--log-format", "json", "server", "--bind", primary,
                     *mode, *extra, log=f"bench-server-{impl}.log")
    proc.wait_for_output(r'"event": "server_started"', timeout=60)
    if not mode:
        # It answers from Python at once; XDP follows once compiled.
        proc.wait_for_output(r'"event": "(server_fast_path_ready|server_xdp_unavailable)"',
                             timeout=60)
    return proc.stop, proc


def _status(lab) -> dict:
    return json.loads(lab.run("server", *CLI, "server", "--status").stdout)


def capacity(lab, impl: str, seconds: float) -> dict:
    stop, proc = _start(lab, impl, *UNLIMITED)
    steps = []
    try:
        xdp = _status(lab).get("xdp") if impl != "miredo" else None
        for rate in RATES:
            before, cpu = _answered(lab), _cpu_s(proc.pid)
            gen = _gen(lab, str(lab["server"].ipv4[0]), rate, seconds)
            time.sleep(0.5)  # the last answers on their way
            got = _answered(lab) - before
            cpu = _cpu_s(proc.pid) - cpu
            steps.append({"offered_pps": gen["pps"], "answered": got,
                          "answered_pps": round(got / gen["seconds"]), "sent": gen["sent"],
                          "daemon_cpu_s": round(cpu, 3),
                          "daemon_cpu_us_per_ra": round(1e6 * cpu / got, 2) if got else None})
            print(f"  {impl}: offered {gen['pps']}/s, answered {got / gen['seconds']:.0f}/s",
                  file=sys.stderr, flush=True)
    finally:
        stop()
    best = max(steps, key=lambda st: st["answered_pps"])
    return {"steps": steps, "answered_pps": best["answered_pps"],
            "daemon_cpu_us_per_ra": best["daemon_cpu_us_per_ra"], "xdp": xdp}


def flood(lab, impl: str, seconds: float) -> dict:
    stop, proc = _start(lab, impl)
    server = str(lab["server"].ipv4[0])
    try:
        probes = [lab.spawn(host, sys.executable, "-c", PROBE, server, str(seconds),
                            log=f"bench-probe-{impl}-{host}-{i}.log")
                  for host in CLIENT_HOSTS for i in range(CLIENTS_PER_HOST)]
        time.sleep(0.5)
        gen = _gen(lab, server, FLOOD_PPS, seconds)
        results = []
        for p in probes:
            p.wait(timeout=seconds + 30)
            results.append(json.loads(p.output().strip().splitlines()[-1]))
        status = _status(lab) if impl != "miredo" else None
    finally:
        stop()
    return {"flood_pps": gen["pps"], "clients": len(results),
            "kept": sum(not r["lost"] for r in results),
            "rs_answered_pct": round(100 * sum(r["answered"] for r in results)
                                     / max(1, sum(r["sent"] for r in results)), 1),
            "probes": results,
            "xdp_counters": (status or {}).get("xdp", {}).get("counters")}


def bpf_cost(runs: int = 20000) -> dict:
    from xdp_teredo.datapath.server import RaLimits, ServerDatapath, server_config
    from xdp_teredo.teredo import constants, encap, icmpv6
    from xdp_teredo.teredo.ratelimit import Limits, RateLimiter
    from xdp_teredo.teredo.server_policy import ServerPolicy

    from . import datapath

    policy = ServerPolicy("192.0.2.1", "192.0.2.2", limiter=RateLimiter(Limits(1e9, 1e12)))
    prog = ServerDatapath.compile()
    try:
        # Miredo's RS (authentication header, a 16-byte option), from 198.18.0.1.
        rs_ = icmpv6.build_router_solicitation(constants.LINK_LOCAL_RESTRICTED,
                                               source_link_layer=bytes(14))
        payload = encap.build_udp_payload(rs_, auth=encap.AuthHeader(nonce=bytes(8)))
        ip = flood_gen.datagram((ipaddress.IPv4Address("198.18.0.1"), 40000),
                                (ipaddress.IPv4Address("192.0.2.1"), 3544), payload, 1)
        rs = _test_run_frame(ip)
        out = {}
        for label, limits in (("no limits", RaLimits(0, 1)),
                              ("default limits", RaLimits(17.5, 70, 1_000_000, 1_000_000))):
            prog.reset()
            prog.configure(server_config(policy, limits))
            first = datapath.looped(prog.fd("xdp"), bytes(rs), 1, True)
            out[label] = {"ns_per_rs": datapath.looped(prog.fd("xdp"), bytes(rs), runs, True),
                          "first_ns": first}
        prog.reset()
        prog.configure(server_config(policy, RaLimits(0, 1)))
        out["forwarded bubble"] = {"ns_per_forward": _forward_cost(prog, runs)}
        counts = {k: v["packets"] for k, v in prog.stats().items() if v["packets"]}
        return {**out, "verdicts": counts}
    finally:
        prog.close()


def _forward_cost(prog, runs: int) -> float:
    """Median ns of the program forwarding a bubble between two clients of ours,
    run in a namespace where 192.0.2.1/24 sits on a veth whose default route has
    a permanent neighbour (bpf_fib_lookup answers SUCCESS on the same device)."""
    import ctypes
    import subprocess
    import threading
    import uuid

    from xdp_teredo.datapath import testrun
    from xdp_teredo.teredo.address import TeredoAddress
    from xdp_teredo.teredo.packet import build_bubble

    ns = f"xt-fwdbench-{uuid.uuid4().hex[:6]}"

    def sh(*cmd):
        subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True)

    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        sh("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
        for dev in ("up0", "up0p"):
            sh("ip", "link", "set", dev, "up")
        sh("ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
        sh("ip", "route", "add", "default", "via", "192.0.2.30")
        sh("ip", "neigh", "add", "192.0.2.30", "lladdr", "02:00:00:00:00:1e", "dev", "up0",
           "nud", "permanent")
        sh("sysctl", "-q", "-w", "net.ipv4.conf.up0.forwarding=1")
        ifindex = int(subprocess.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/up0/ifindex"],
                                     check=True, capture_output=True, text=True).stdout)
        sender = TeredoAddress.build("192.0.2.1", "198.51.100.9", 40000).ipv6
        target = TeredoAddress.build("192.0.2.1", "203.0.113.7", 50000).ipv6
        ip = flood_gen.datagram((ipaddress.IPv4Address("198.51.100.9"), 40000),
                                (ipaddress.IPv4Address("192.0.2.1"), 3544),
                                build_bubble(sender, target), 1)
        frame = _test_run_frame(ip)
        result = {}

        def body():  # bpf_fib_lookup answers from the calling thread's namespace
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, 0x40000000) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            durations = []
            for _ in range(runs):
                got = testrun.run_xdp(prog.fd("xdp"), frame, ingress_ifindex=ifindex)
                durations.append(got.duration_ns)
            result["last"] = got.retval
            result["ns"] = sorted(durations)[len(durations) // 2]

        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        if result.get("last") != 3:  # XDP_TX
            raise RuntimeError(f"the bubble was not forwarded (XDP action {result.get('last')})")
        return float(result["ns"])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def measure(lab, seconds: float = 2.0) -> dict:
    gen_ip = lab[GENERATOR].ipv4[0]
    lab.run("inet", "ip", "route", "add", NET, "via", str(gen_ip))
    lab.run(GENERATOR, "iptables", "-t", "raw", "-I", "PREROUTING", "-p", "udp", "--sport",
            "3544", "-j", "DROP")
    results = {"rates": list(RATES), "sources": SOURCES, "flood_pps": FLOOD_PPS,
               "seconds": seconds, "capacity": {}, "flood": {}}
    try:
        results["bpf"] = bpf_cost()
        for impl in IMPLS:
            print(f"server capacity: {impl}", file=sys.stderr, flush=True)
            results["capacity"][impl] = capacity(lab, impl, seconds)
        for impl in IMPLS:
            print(f"server flood: {impl}", file=sys.stderr, flush=True)
            results["flood"][impl] = flood(lab, impl, max(seconds, 10.0))
    finally:
        lab.run(GENERATOR, "iptables", "-t", "raw", "-D", "PREROUTING", "-p", "udp", "--sport",
                "3544", "-j", "DROP", check=False)
        lab.run("inet", "ip", "route", "del", NET, "via", str(gen_ip), check=False)
    return results


def generator_bound(results: dict, impl: str) -> bool:
    """Every RS of the flat-out step answered: the generator was the limit."""
    last = results["capacity"][impl]["steps"][-1]
    return last["answered"] >= 0.99 * last["sent"]


def summary(results: dict) -> str:
    cap, fl = results["capacity"], results["flood"]
    lines = ["| server | answered RS/s (best step) | daemon CPU per RA | clients kept under "
             f"{results['flood_pps'] // 1000}k RS/s | their RSs answered |",
             "|---|---|---|---|---|"]
    names = {"xdp-teredo": "xdp-teredo (XDP)", "python": "xdp-teredo (--xdp-mode off)",
             "miredo": "miredo-server 1.2.6"}
    for impl in IMPLS:
        c, f = cap.get(impl), fl.get(impl)
        bound = " (all offered: generator-bound)" if generator_bound(results, impl) else ""
        per = c.get("daemon_cpu_us_per_ra")
        lines.append(f"| {names[impl]} | {c['answered_pps']:,}{bound} | "
                     + (f"{per:g} µs | " if per is not None else "- | ")
                     + f"{f['kept']}/{f['clients']} | {f['rs_answered_pct']}% |")
    bpf = results.get("bpf", {})
    lines.append("")
    lines.append("BPF cost per RS (BPF_PROG_TEST_RUN, median of single runs): "
                 + ", ".join(f"{k}: {v['ns_per_rs']:.0f} ns" for k, v in bpf.items()
                             if isinstance(v, dict) and "ns_per_rs" in v)
                 + "; per forwarded bubble: "
                 + ", ".join(f"{v['ns_per_forward']:.0f} ns" for v in bpf.values()
                             if isinstance(v, dict) and "ns_per_forward" in v))
    return "\n".join(lines)


if __name__ == "__main__":
    from xdp_teredo.lab import Lab

    from . import setups

    with Lab(setups.HOSTS) as lab:
        setups.prepare_lab(lab)
        res = measure(lab)
    print(json.dumps(res, indent=1))
    print(summary(res))
