#!/bin/bash
# What the namespace lab needs (make demo, make test, make bench): NAT, conntrack,
# traffic, offload switches.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root "the lab"
apt_ensure iptables nftables conntrack iperf3 ethtool procps psmisc
