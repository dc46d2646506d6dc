"""The simulated GPU hardware: engines, their command streamers and EU threads.

A pure model: no sockets, no driver state.  The driver side (`sim/kernel/xe_exec.py`) hands an
engine a job (a ring of commands and an `AddressSpace` view of the queue's VM) and gets back a `JobResult`
(completed, faulted, failed on a bad command, or stopped).  Memory is reached only through the
`AddressSpace` interface.
"""

from .engine import (AddressSpace, CommandStreamer, Context, EngineInfo, GpuFault, JobResult,
                     ENGINE_MMIO_BASE)
from .gt import EuArray, Topology
from ...isa import mi  # the command formats live with the ISA (a low layer)

__all__ = ["AddressSpace", "CommandStreamer", "Context", "EngineInfo", "GpuFault", "JobResult",
           "ENGINE_MMIO_BASE", "EuArray", "Topology", "mi"]
