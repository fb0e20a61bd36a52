"""Fibre Channel: the FC-NVMe LLD plug-in point and the software loopback LLD."""
