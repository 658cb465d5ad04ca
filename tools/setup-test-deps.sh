#!/bin/bash
# What only the tests need, on top of the lab's: captures, gcc (the layout test
# compiles a C program against bpf/teredo_shared.h), and Miredo as the reference
# peer, which the tests run in their own network namespaces only.
#
# A Miredo the user runs is none of our business: it is never stopped, restarted
# or disabled here. apt_ensure forbids services to start while it installs
# (policy-rc.d), so installing miredo starts nothing; what the packages did
# enable for the next boot, on a host where WE installed them, is disabled, and
# recorded in $RECORD so that it can be undone (systemctl enable ...).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root "make test"
bash "$(dirname "$0")/setup-lab-deps.sh"

RECORD=/var/lib/xdp-teredo/setup-test-deps.log
declare -A service=([miredo]=miredo [miredo-server]=miredo-server)
installed_before=()
for pkg in "${!service[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        && installed_before+=("$pkg")
done
running_before=$(pgrep -x miredo || true; pgrep -x miredo-server || true)

apt_ensure gcc libc6-dev tcpdump tshark miredo miredo-server

for pkg in "${!service[@]}"; do
    [[ " ${installed_before[*]} " == *" $pkg "* ]] && continue   # the user's: untouched
    unit=${service[$pkg]}
    if command -v systemctl >/dev/null && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
        systemctl disable --quiet "$unit" 2>/dev/null || true
        mkdir -p "$(dirname "$RECORD")"
        echo "$(date -Is) installed $pkg and disabled $unit (enabled by its package)" >> "$RECORD"
        say "installed $pkg for the tests; disabled $unit at boot (recorded in $RECORD)"
    fi
    # policy-rc.d forbade the start; if a policy of the host's own let it start
    # anyway, it is the install that started it: stop that one, by its unit.
    for pid in $(pgrep -x "$pkg" || true); do
        if ! grep -qx "$pid" <<<"$running_before"; then
            systemctl stop "$unit" 2>/dev/null || /etc/init.d/"$unit" stop 2>/dev/null || true
            mkdir -p "$(dirname "$RECORD")"
            echo "$(date -Is) stopped $unit, started by our install of $pkg (pid $pid)" >> "$RECORD"
            say "stopped $unit: our install of $pkg started it"
            break
        fi
    done
done
