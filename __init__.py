"""blockfabric: a user-space NVMe-oF and iSCSI target built as a multiprocess actor engine."""

__version__ = "0.1.0"
