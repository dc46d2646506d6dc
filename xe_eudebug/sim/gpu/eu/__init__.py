"""An interpreter for one Xe2 EU thread over `xe_eudebug.isa` (see docs/eu-isa.md).

It imports only `xe_eudebug.isa` (a low layer like `uapi`); the engine gives it memory through
the narrow `EuMemory` interface.
"""

from .memory import EuMemory, FlatMemory, Surface
from .thread import (CR0_BREAKPOINT_SUPPRESS, CR0_EXC_BREAKPOINT, CR0_EXC_ILLEGAL,
                     CR0_ILLEGAL_ENABLE, CR0_MASTER_EXCEPTION, EuThread, Fault, Stop)

__all__ = ["EuMemory", "FlatMemory", "Surface", "CR0_BREAKPOINT_SUPPRESS", "CR0_EXC_BREAKPOINT",
           "CR0_EXC_ILLEGAL", "CR0_ILLEGAL_ENABLE", "CR0_MASTER_EXCEPTION", "EuThread", "Fault",
           "Stop"]
