"""Start-up: from the command to an IPv6 address, and to the fast path (issue 13).

Each implementation's client is started STARTS times in client1 (behind one NAT),
against one miredo-server (the server is not what is measured), with a peer
already running in client2 (our client; it answers pings over Teredo). A small
watcher runs inside client1's namespace (so `ip netns exec` costs nobody
anything) and:
  1. notes t0 and starts the client itself;
  2. polls the tunnel over netlink every 5 ms: `address_s` is when a 2001::/32
     address is on it;
  3. then pings the peer every 20 ms, and for our client asks the control socket
     for the data path's counters every 20 ms: `fast_path_s` is when the tc
     program has encapsulated a packet and a packet was decapsulated by the fast
     path, i.e. the first packets carried without Python (Miredo has no fast
     path: none);
  4. stops the client (SIGTERM) and waits for it.
The table reports the median of the STARTS runs, and each run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Optional

from xdp_teredo.lab import miredo, roles

STARTS = 5
HOST, PEER_HOST = "client1", "client2"

# Runs inside the namespace: argv = [json config]. Prints one JSON line.
WATCHER = r'''
import ipaddress, json, os, signal, subprocess, sys, time
from pyroute2 import IPRoute
cfg = json.loads(sys.argv[1])
prefix = ipaddress.IPv6Network("2001::/32")

def address():
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=cfg["tunnel"])
        if not idx:
            return None
        for a in ipr.get_addr(family=10, index=idx[0]):
            value = ipaddress.IPv6Address(a.get_attr("IFA_ADDRESS"))
            if value in prefix:
                return value
    return None

def fast_counts():
    from xdp_teredo import client
    try:
        stats = client.query("stats", cfg["tunnel"], timeout=1.0)
    except Exception:
        return None
    def n(key):
        value = stats.get(key) if isinstance(stats, dict) else None
        return value.get("packets", 0) if isinstance(value, dict) else 0
    return n("encapsulated"), n("decapsulated")

out = {"address_s": None, "fast_path_s": None}
log = open(cfg["log"], "ab")
t0 = time.monotonic()
proc = subprocess.Popen(cfg["cmd"], stdout=log, stderr=subprocess.STDOUT, env=cfg.get("env"),
                        cwd=cfg.get("cwd"))
ping = None
try:
    deadline = t0 + cfg["timeout"]
    while time.monotonic() < deadline and proc.poll() is None:
        if address() is not None:
            out["address_s"] = time.monotonic() - t0
            break
        time.sleep(0.005)
    if out["address_s"] is not None and cfg["peer"]:
        ping = subprocess.Popen([sys.executable, "-m", "xdp_teredo.lab.probe", "ping",
                                 cfg["peer"], "--count", "1000000", "--interval", "0.02",
                                 "--deadline", str(cfg["timeout"])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if cfg["fast_path"]:
            while time.monotonic() < deadline and proc.poll() is None:
                got = fast_counts()
                if got is not None and got[0] > 0 and got[1] > 0:
                    out["fast_path_s"] = time.monotonic() - t0
                    break
                time.sleep(0.02)
finally:
    if ping is not None:
        ping.terminate(); ping.wait()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill(); proc.wait()
    out["exit"] = proc.returncode
print(json.dumps(out))
'''


def _commands(lab, impl: str, server, run: int, code_dir: Optional[str]) -> dict:
    if impl == "miredo":
        conf = miredo._write_conf(lab, f"miredo-startup-{run}.conf", [
            "RelayType client", "InterfaceName teredo", f"ServerAddress {server}",
            f"ServerAddress2 {server + 1}"])
        return {"cmd": ["miredo", "-f", "-c", conf, "-p",
                        str(lab.workdir / f"miredo-startup-{run}.pid")],
                "fast_path": False}
    cmd = [*roles.CLI, "--log-format", "json", "attach", lab[HOST].uplink,
           "--server", str(server)]
    env, cwd = None, None
    if code_dir:
        # Another checkout's client (the "before" column): its package first
        # (`python -m` puts the working directory first on the path: that too).
        env, cwd = dict(os.environ, PYTHONPATH=code_dir), code_dir
    return {"cmd": cmd, "fast_path": True, "env": env, "cwd": cwd}


def start_once(lab, impl: str, server, peer: str, run: int,
               code_dir: Optional[str] = None, timeout: float = 90.0) -> dict:
    got = _commands(lab, impl, server, run, code_dir)
    cfg = {"tunnel": "teredo", "peer": peer, "timeout": timeout,
           "log": str(lab.workdir / f"startup-{impl}-{run}.log"), **got}
    res = lab.run(HOST, sys.executable, "-c", WATCHER, json.dumps(cfg), timeout=timeout + 60)
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(lab, starts: int = STARTS, impls=("miredo", "xdp-teredo"),
            code_dirs: Optional[dict] = None) -> dict:
    """{label: {"runs": [...], "address_s": median, "fast_path_s": median}}.
    code_dirs: extra labels -> checkout of xdp-teredo to start instead (a "before")."""
    server = miredo.start_server(lab, "server")
    peer = roles.start_client(lab, "xdp-teredo", PEER_HOST, server.primary)
    labels = [(impl, impl, None) for impl in impls]
    labels += [(label, "xdp-teredo", path) for label, path in (code_dirs or {}).items()]
    out = {}
    try:
        # Interleaved, so that the machine's drift hits every implementation alike.
        for run in range(starts):
            for label, impl, code_dir in labels:
                print(f"startup {run + 1}/{starts}: {label}", file=sys.stderr, flush=True)
                one = start_once(lab, impl, server.primary, str(peer.address), run, code_dir)
                out.setdefault(label, {"runs": []})["runs"].append(one)
    finally:
        peer.stop()
        server.stop()
    for label, got in out.items():
        for key in ("address_s", "fast_path_s"):
            values = [r[key] for r in got["runs"] if r.get(key) is not None]
            got[key] = statistics.median(values) if len(values) == len(got["runs"]) else None
    return out


def main(argv=None) -> int:
    """`python -m tools.bench.startup [--before DIR]`: this part alone, in its own lab."""
    import argparse

    from xdp_teredo.lab import Lab

    from . import setups

    ap = argparse.ArgumentParser(prog="python -m tools.bench.startup")
    ap.add_argument("--starts", type=int, default=STARTS)
    ap.add_argument("--before", help="another checkout of xdp-teredo, measured as 'before'")
    ap.add_argument("--out", default="bench-results/startup.json")
    args = ap.parse_args(argv)
    with Lab(setups.HOSTS) as lab:
        setups.prepare_lab(lab)
        result = measure(lab, args.starts,
                         code_dirs={"xdp-teredo (before)": args.before} if args.before else None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: {"address_s": v["address_s"], "fast_path_s": v["fast_path_s"]}
                      for k, v in result.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
