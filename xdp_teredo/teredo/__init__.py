"""Pure Teredo protocol: addresses, packets, qualification, peers. No I/O, no root."""
