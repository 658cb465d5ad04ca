#!/bin/bash
# What only `make bench` needs, on top of the tests': the profilers behind the
# report's "what is in the way" (perf for the kernel's side, py-spy for the
# daemons'). matplotlib (the plots) comes with the package's `bench` extra.
# Without them the benchmark still runs and says that it has no profile.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
require_root "make bench"
apt_ensure linux-perf
VENV_PY="${1:-.venv/bin/python}"
"$VENV_PY" -m pip install -q --disable-pip-version-check py-spy
