"""Everything that touches BPF: loader, maps, statistics, BPF_PROG_TEST_RUN."""
