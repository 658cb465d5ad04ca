"""`make bench`: xdp-teredo against Miredo and the plain IPv4 path (docs/benchmarks.md)."""
