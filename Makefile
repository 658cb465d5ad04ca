# xdp-teredo. Everything runs as root on Debian/Ubuntu; see README.md.
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: demo fleet-demo lab-deps setup test test-unit test-bpf test-e2e test-deps clean bench-datapath gen-header bench man

setup:
	bash tools/setup.sh

lab-deps: setup
	bash tools/setup-lab-deps.sh

test-deps: setup
	bash tools/setup-test-deps.sh

# The README's first command: every Teredo role played by xdp-teredo in a lab of
# network namespaces, step by step; everything is removed again at the end.
demo: lab-deps
	$(PY) tools/demo.py

# A fleet of relays behind BGP anycast (BIRD) and ECMP; one is SIGKILLed and the
# demo prints `failover: N s`; docs/scaling.md. Everything is removed at the end.
fleet-demo: lab-deps
	$(PY) tools/fleet_demo.py $(FLEET_ARGS)

# The whole suite, every tier: unit (no root), bpf (BPF_PROG_TEST_RUN), e2e (namespaces).
# XDP_TEREDO_REQUIRE_ALL=1: here everything must run, so a test that would skip (no
# root, no bcc, no Miredo, a missing tool) fails with its reason (tests/conftest.py).
REQUIRE_ALL := XDP_TEREDO_REQUIRE_ALL=1

test: test-deps
	$(REQUIRE_ALL) $(PYTEST) tests

test-unit: setup
	$(PYTEST) tests/unit

test-bpf: test-deps
	$(REQUIRE_ALL) $(PYTEST) tests/bpf

test-e2e: test-deps
	$(REQUIRE_ALL) $(PYTEST) tests/e2e

# Not a test: xdp-teredo, Miredo and the plain path side by side, in the lab, plus
# BPF ns/packet, the relay at 100,000 peers, peer admission rate and memory;
# rewrites the generated part of docs/benchmarks.md and its plots (docs/img/).
bench: test-deps
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	bash tools/bench/setup-deps.sh $(PY)
	$(PY) -m tools.bench.run $(BENCH_ARGS)

# Not a test: ns per packet of the BPF programs (BPF_PROG_TEST_RUN); docs/benchmarks.md.
bench-datapath: setup
	$(PY) -m tools.bench.datapath $(BENCH_ARGS)

# Regenerate bpf/lib/shared.h from the Python source of truth (constants.py, layout.py).
gen-header:
	$(PY) tools/gen_shared_header.py

# Regenerate the man pages (docs/man/man1/) from the click help; tests/unit/test_man_pages.py
# fails when the committed ones differ.
man:
	$(PY) tools/gen_man.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
