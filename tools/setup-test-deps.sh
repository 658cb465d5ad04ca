#!/bin/bash
# What only the tests need, on top of the lab's: captures, and Miredo as the
# reference peer. miredo's own service must not start on this host: apt_ensure
# blocks it while installing, and we make sure no miredo daemon runs afterwards.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root "make test"
bash "$(dirname "$0")/setup-lab-deps.sh"
apt_ensure tcpdump tshark miredo miredo-server
if pgrep -x miredo >/dev/null && [ -z "${XDP_TEREDO_KEEP_MIREDO:-}" ]; then
    # Started by its package before our guard existed: it would talk to public servers.
    systemctl stop miredo 2>/dev/null || /etc/init.d/miredo stop 2>/dev/null || pkill -x miredo || true
    say "stopped the host's miredo service"
fi
systemctl disable miredo 2>/dev/null >/dev/null || true
