"""Helpers for the reliability tests (docs/reliability.md): restarts
(tests/e2e/test_client_restart.py, tests/bpf/test_adopt.py), faults
(test_client_faults.py) and hostile input (test_hostile*.py).

- `another_build(dest)` makes "the next version" of the data path: a copy of bpf/
  whose every entry point does one more thing (one instruction that does nothing),
  so each program's code, and so its kernel tag, differs from the installed one
  while it behaves the same. Adopting it exercises the replace path of
  ClientDatapath.adopt.
- `start_client` starts `attach` with environment variables set.
- `PINGER`: an ICMPv6 echo every INTERVAL for SECONDS, reporting exactly which were
  lost and when (lab.ping's probe stops at the first N replies).
- `Usage.of(pid)`: a process's CPU time and resident memory, for before/after.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from xdp_teredo.datapath.client import PROGRAMS
from xdp_teredo.datapath.source import bpf_dir

# `int NAME(struct ... *ctx)` then a line with the opening brace, as bpf/*.c write them.
# What goes in after the brace: one instruction that changes nothing.
_NOTHING = '\t{ int upgrade; asm volatile("%0 = 0" : "=r"(upgrade)); }\n'

_ENTRY = r"(\nint ({names})\((?:struct xdp_md|struct __sk_buff) \*\w+\)\n\{{\n)"


def another_build(dest) -> str:
    """A copy of bpf/ under `dest` with every entry point's code changed; its path."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(bpf_dir(), dest)
    source = dest / "client.c"
    names = "|".join(func for func, _ in PROGRAMS.values())
    text, count = re.subn(_ENTRY.format(names=names), lambda m: m.group(1) + _NOTHING,
                          source.read_text())
    if count != len(PROGRAMS):
        raise AssertionError(f"found {count} of {len(PROGRAMS)} entry points in {source}")
    source.write_text(text)
    return str(dest)


def start_client(lab, role: str, *args: str, log: str, env: dict = None, server: str = None):
    """`xdp-teredo attach eth0 --server SERVER` with the short timers, as
    client_support.start_client, with environment variables set (XDP_TEREDO_BPF_DIR,
    XDP_TEREDO_PIN_ROOT); not waited for."""
    from tests.e2e import client_support as cs

    prefix = ["env", *(f"{k}={v}" for k, v in (env or {}).items())] if env else []
    cmd = [*prefix, *cs.CLI, "--log-format", "json", "attach", "eth0",
           "--server", server or cs.SERVER, *cs.FAST, *args]
    return lab.spawn(role, *cmd, log=log)


# An echo every INTERVAL for SECONDS to DST; one JSON line at the start and one at the
# end: how many were sent and answered, when (seconds after the start) each lost one
# was sent, and the largest round trip. An echo the kernel refused to send (no route:
# the sender went offline) counts as lost, and the errors are told by name and time.
PINGER = r"""
import json, os, select, socket, struct, sys, time
dst, interval, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
ident, sent_at, rtts, errors = os.getpid() & 0xFFFF, {}, [], {}
start = time.monotonic()
next_send, seq = start, 0
stop_sending = start + seconds
print(json.dumps({"event": "started"}), flush=True)
while True:
    now = time.monotonic()
    if now >= next_send and now < stop_sending:
        sent_at[seq & 0xFFFF] = now
        try:
            s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, seq & 0xFFFF) + b"pinger.." * 8,
                     (dst, 0))
        except OSError as err:
            errors.setdefault(os.strerror(err.errno or 0), []).append(round(now - start, 3))
        seq += 1
        next_send += interval
    if now >= stop_sending + 2.0:
        break
    wait = max(0.0, min(next_send, stop_sending + 2.0) - time.monotonic())
    if select.select([s], [], [], wait)[0]:
        data = s.recv(2048)
        kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[:8])
        if kind == 129 and rid == ident and rseq in sent_at:
            rtts.append(time.monotonic() - sent_at.pop(rseq))
lost = sorted(round(t - start, 3) for t in sent_at.values())
print(json.dumps({"sent": seq, "received": len(rtts), "lost_at_s": lost,
                  "max_rtt_ms": round(max(rtts) * 1000, 2) if rtts else None,
                  "send_errors": {e: [t[0], t[-1], len(t)] for e, t in errors.items()}}),
      flush=True)
"""


def start_pinger(lab, role: str, dst: str, *, interval: float, seconds: float, log: str):
    """PINGER in `role`, started (its first line seen); read it with `pinger_result`."""
    import sys

    proc = lab.spawn(role, sys.executable, "-c", PINGER, str(dst), str(interval), str(seconds),
                     log=log)
    proc.wait_for_output('"started"', timeout=10)
    return proc


def pinger_result(proc, timeout: float) -> dict:
    import json

    proc.wait(timeout=timeout)
    lines = proc.output().strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"the pinger ended without its summary: {lines[-5:]}") from None


class Usage:
    """CPU seconds (user + system) and resident memory of a process, at one moment."""

    def __init__(self, pid: int, cpu_s: float, rss_kb: int, at: float):
        self.pid, self.cpu_s, self.rss_kb, self.at = pid, cpu_s, rss_kb, at

    @classmethod
    def of(cls, pid: int) -> "Usage":
        import os
        import time

        with open(f"/proc/{pid}/stat") as f:
            # Fields after the command name (which may hold spaces), from 3 on.
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks   # utime, stime
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return cls(pid, cpu, rss, time.monotonic())

    def since(self, before: "Usage") -> dict:
        wall = self.at - before.at
        return {"cpu_s": round(self.cpu_s - before.cpu_s, 3), "wall_s": round(wall, 3),
                "cpu_share": round((self.cpu_s - before.cpu_s) / wall, 3) if wall else None,
                "rss_kb_before": before.rss_kb, "rss_kb_after": self.rss_kb,
                "rss_kb_growth": self.rss_kb - before.rss_kb}
