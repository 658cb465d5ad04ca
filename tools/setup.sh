#!/bin/bash
# `make setup`: everything running xdp-teredo needs, idempotent, as root on Debian/Ubuntu.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
require_root "make setup"

# bcc and its Python module come from the OS (python3-bpfcc); never from PyPI.
apt_ensure python3 python3-venv python3-pip python3-bpfcc iproute2 ethtool kmod
bash tools/kernel-headers.sh

if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
    mount -t bpf bpf /sys/fs/bpf && say "mounted bpffs on /sys/fs/bpf"
fi

# The venv comes from the system interpreter (the one python3-bpfcc installed into),
# whatever python3 is first on PATH, and sees its site packages for bcc.
SYSPY=/usr/bin/python3
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
    rm -rf .venv
    "$SYSPY" -m venv --system-site-packages .venv
    say "created .venv from $SYSPY"
fi
stamp=.venv/.xdp-teredo-installed
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
say "ready: $(pwd)/.venv/bin/xdp-teredo (try: .venv/bin/xdp-teredo check)"
