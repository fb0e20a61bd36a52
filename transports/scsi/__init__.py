"""SCSI target core (SPC-4/SBC-3 emulation over a bdev IoChannel), sans-I/O."""

from .device import ScsiDevice
from .lun import ScsiLun
from .pr import PrResult, PrStore
from .task import ScsiTask

__all__ = ["PrResult", "PrStore", "ScsiDevice", "ScsiLun", "ScsiTask"]
