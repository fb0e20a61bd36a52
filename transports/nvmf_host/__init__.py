"""NVMe/TCP host (initiator): sans-I/O queue pair, blocking controller, loop-driven qpair."""
