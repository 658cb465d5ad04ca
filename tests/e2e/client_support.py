"""Driving `xdp-teredo attach` in the lab: shared by tests/e2e/test_client*.py.

Every client runs through the real entry point (`python -m xdp_teredo.cli`) inside
a lab namespace, as a lab process (so the lab stops it at teardown), with its JSON
log in the lab's workdir. Timers are shortened through the hidden options, so a
refresh happens every 2 s instead of every 30 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Callable, Optional

CLI = [sys.executable, "-m", "xdp_teredo.cli"]
# Short timers: refresh 2 s, an RS unanswered after 1 s (3 tries), 2 s offline
# before trying again, BPF activity read every second.
FAST = ["--refresh-interval", "2", "--qualification-timeout", "1", "--restart-delay", "2",
        "--sync-interval", "1"]
SERVER = "192.0.2.1"
# A client qualifies on its slow path at once; compiling the BPF programs takes
# ~8 s more before the fast path carries the traffic (fast_path_ready); two clients
# compiling at once on 2 cores take longer.
QUALIFY_TIMEOUT = 45.0
# Where XDP itself is what a test looks at: --xdp-mode auto takes tc on a veth
# (datapath/rxhook.py), so those tests force it.
XDP = ("--xdp-mode", "native")


def start_client(lab, role: str, *args: str, log: Optional[str] = None, wait: bool = True,
                 fast: bool = True, server: Optional[str] = SERVER):
    """Spawn `xdp-teredo attach eth0 [--server SERVER] ARGS` in `role`; wait for
    `qualified` and the fast path (wait_ready) unless wait=False."""
    cmd = [*CLI, "--log-format", "json", "attach", "eth0"]
    if server:
        cmd += ["--server", server]
    cmd += [*(FAST if fast else []), *args]
    proc = lab.spawn(role, *cmd, log=log or f"{role}-client.log")
    if wait:
        wait_ready(proc)
    return proc


def wait_ready(proc, timeout: float = QUALIFY_TIMEOUT) -> None:
    """Qualified, and the fast path carrying the traffic: the client qualifies on
    its slow path first and hands the peers over once the programs are loaded
    (client/handover.py), so a test that counts fast-path packets waits for both."""
    proc.wait_for_output(r'"event": "qualified"', timeout=timeout)
    proc.wait_for_output(r'"event": "fast_path_ready"', timeout=timeout)


def cli(lab, role: str, *args: str, check: bool = False, timeout: float = 30.0):
    """Run `xdp-teredo ARGS` in `role`; the CompletedProcess."""
    return lab.run(role, *CLI, *args, check=check, timeout=timeout)


def status(lab, role: str, *args: str):
    """(exit status, the JSON of `xdp-teredo status --json`, or None)."""
    res = cli(lab, role, "status", "--json", *args)
    try:
        return res.returncode, json.loads(res.stdout)
    except ValueError:
        return res.returncode, None


def query(lab, role: str, request: str, tunnel: str = "teredo"):
    """Ask the client's control socket directly (e.g. "stats", "counters")."""
    code = ("import json, sys; from xdp_teredo import client; "
            "print(json.dumps(client.query(sys.argv[1], sys.argv[2])))")
    res = lab.run(role, sys.executable, "-c", code, request, tunnel)
    return json.loads(res.stdout)


def packets(stats: dict) -> dict:
    return {k: v["packets"] for k, v in stats.items()}


def nbytes(stats: dict) -> dict:
    return {k: v["bytes"] for k, v in stats.items()}


def delta(before: dict, after: dict) -> dict:
    """Per key, after - before, for counter dicts (nested values ignored)."""
    return {k: after[k] - before.get(k, 0) for k in after
            if isinstance(after[k], int) and after[k] != before.get(k, 0)}


def events(proc, name: Optional[str] = None) -> list:
    """The JSON log lines of a client process (only event `name` if given)."""
    out = []
    for line in proc.output().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (name is None or record.get("event") == name):
            out.append(record)
    return out


def wait_until(what: str, probe: Callable[[], object], timeout: float = 20.0,
               interval: float = 0.2, proc=None):
    """Poll probe() until truthy; AssertionError (with the client's log) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            tail = "\n".join(proc.output().splitlines()[-25:]) if proc is not None else ""
            raise AssertionError(f"{what}: not within {timeout:g} s\n{tail}")
        time.sleep(interval)


def leftovers(lab, role: str, tunnel: str = "teredo") -> dict:
    """What a client could leave in `role`: tun, XDP, tc filters, control socket, and
    (its NIC being a veth) its checksum veth (net/csum_veth.py)."""
    links = lab.run(role, "ip", "-d", "link", "show").stdout
    xdp = lab.run(role, "ip", "link", "show", "dev", "eth0").stdout
    filters = {}
    for dev, parent in (("eth0", "ingress"), ("eth0", "egress")):
        res = lab.run(role, "tc", "filter", "show", "dev", dev, parent, check=False)
        filters[f"{dev} {parent}"] = res.stdout.strip()
    sockets = lab.run(role, "ss", "-x", "-l", "-n").stdout
    return {
        "tunnel": re.search(rf"^\d+: {re.escape(tunnel)}[:@]", links, re.M) is not None,
        "xdp": "prog/xdp" in xdp,   # native and generic alike
        "filters": {k: v for k, v in filters.items() if v},
        "control_socket": f"@xdp-teredo-tunnel-{tunnel}" in sockets,
        "csum_veth": re.search(rf"^\d+: {re.escape(tunnel[:11])}-ck0@", links, re.M) is not None,
    }


NOTHING_LEFT = {"tunnel": False, "xdp": False, "filters": {}, "control_socket": False,
                "csum_veth": False}


class WorldReadableDir:
    """A directory the unprivileged client (nobody) can read and execute from: hooks
    live here (pytest's tmp_path is root's, mode 0700)."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="xdp-teredo-test-")
        os.chmod(self.path, 0o755)

    def script(self, name: str, text: str) -> str:
        path = os.path.join(self.path, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
        return path

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# A hook that prints its environment, one "hook VAR=value" per variable: the client
# logs each line as a hook_output event.
ENV_HOOK = """#!/bin/sh
for v in STATE ADDRESS LLADDRESS MTU IFACE IFINDEX OLD_STATE OLD_ADDRESS OLD_LLADDRESS OLD_MTU; do
  eval "echo \\"$v=\\${$v-}\\""
done
echo "UID=$(id -u)"
echo "---"
"""


def hook_runs(proc) -> list:
    """Each hook run as a dict of the variables ENV_HOOK printed, in order."""
    runs, current = [], {}
    for record in events(proc, "hook_output"):
        line = record.get("line", "")
        if line == "---":
            runs.append(current)
            current = {}
        elif "=" in line:
            key, _, value = line.partition("=")
            current[key] = value
    return runs


# The receiving end of tcp_transfer: one connection, read to EOF, answer with what
# arrived (count and SHA-256), which the sender compares with what it sent.
TCP_SINK = r"""
import hashlib, json, socket, sys
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("::", int(sys.argv[1])))
srv.listen(1)
print("listening", flush=True)
conn, peer = srv.accept()
conn.settimeout(30)
digest, count = hashlib.sha256(), 0
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    digest.update(chunk)
    count += len(chunk)
conn.sendall(json.dumps({"bytes": count, "sha256": digest.hexdigest(), "from": peer[0]}).encode())
conn.close()
"""

TCP_SOURCE = r"""
import hashlib, json, random, socket, sys, time
address, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = random.Random(size).randbytes(size)
sock = socket.create_connection((address, port), timeout=20)
started = time.monotonic()
sock.sendall(data)
sock.shutdown(socket.SHUT_WR)
answer = json.loads(sock.makefile().read())
answer.update(sent=size, sent_sha256=hashlib.sha256(data).hexdigest(),
              seconds=round(time.monotonic() - started, 3))
print(json.dumps(answer))
"""


def tcp_transfer(lab, sender: str, receiver: str, address, *, nbytes: int = 4_000_000,
                 port: int = 5201) -> dict:
    """Send `nbytes` over TCP from host `sender` to `address` (host `receiver`'s);
    AssertionError unless every byte arrived intact. The sender's report."""
    sink = lab.spawn(receiver, sys.executable, "-c", TCP_SINK, str(port),
                     log=f"tcp-sink-{receiver}-{port}.log")
    sink.wait_for_output("listening", timeout=10)
    res = lab.run(sender, sys.executable, "-c", TCP_SOURCE, str(address), str(port),
                  str(nbytes), check=False, timeout=60)
    sink.stop()
    assert res.returncode == 0, (res.stderr[-1500:], sink.output()[-500:])
    report = json.loads(res.stdout)
    assert (report["bytes"], report["sha256"]) == (nbytes, report["sent_sha256"]), report
    return report
