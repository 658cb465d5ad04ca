"""`xdp-teredo check` on the real machine: everything attach needs is here (CI is root)."""

import json
import os
import subprocess
import sys



def test_check_passes_after_setup(require_bcc):
    exe = os.path.join(os.path.dirname(sys.executable), "xdp-teredo")
    res = subprocess.run([exe, "check", "--json"], capture_output=True, text=True, timeout=120)
    data = json.loads(res.stdout)
    failed = [c for c in data["checks"] if not c["ok"]]
    assert res.returncode == 0 and not failed, failed
    names = {c["name"] for c in data["checks"]}
    assert {"kernel", "bcc", "bpffs", "tun", "veth", "clsact", "kernel headers"} <= names
    # The probe namespace is gone again.
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "xt-check-" not in left
