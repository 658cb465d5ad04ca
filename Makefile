# xdp-teredo. Everything runs as root on Debian/Ubuntu; see README.md.
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: setup test test-unit test-bpf test-e2e test-deps clean bench-datapath gen-header

setup:
	bash tools/setup.sh

test-deps: setup
	bash tools/setup-test-deps.sh

# The whole suite, every tier: unit (no root), bpf (BPF_PROG_TEST_RUN), e2e (namespaces).
test: test-deps
	$(PYTEST) tests

test-unit: setup
	$(PYTEST) tests/unit

test-bpf: test-deps
	$(PYTEST) tests/bpf

test-e2e: test-deps
	$(PYTEST) tests/e2e

# Not a test: ns per packet of the BPF programs (BPF_PROG_TEST_RUN); docs/benchmarks.md.
bench-datapath: setup
	$(PY) tools/bench_datapath.py

# Regenerate bpf/teredo_shared.h from the Python source of truth (constants.py, layout.py).
gen-header:
	$(PY) tools/gen_shared_header.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
