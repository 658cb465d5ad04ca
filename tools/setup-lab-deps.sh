#!/bin/bash
# What the namespace lab needs (make demo, make test, make bench): NAT, conntrack,
# traffic, offload switches.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root "the lab"
apt_ensure iptables nftables conntrack iperf3 ethtool procps psmisc bird2 miniupnpd-nftables
# bird2: the fleet lab's routers (make fleet-demo). Debian's package enables bird.service;
# apt_ensure keeps it from starting, and the lab runs its own BIRDs in namespaces.
# miniupnpd-nftables: the UPnP IGD of the lab's "upnp" NAT (lab/upnp.py). Only the
# daemon: the `miniupnpd` package would add a service and debconf questions, and
# the iptables build needs the legacy tables this kernel lacks.
