"""The simulated Xe driver, split as the driver is split (one module per driver file).

- `xe_device_types`: ABI constants, `KernelError`, the `Caller` interface, devices, DRM files
- `xe_device`: `Kernel` (one class assembled from the mixins below) and the ioctl tables
- `xe_bo` (GEM), `xe_query` (DEVICE_QUERY), `xe_vm` (VMs and binds), `xe_exec_queue`,
  `xe_exec` (EXEC and jobs), `xe_sync` (sync entries), `drm_syncobj` (the DRM core's syncobjs),
  `xe_wait_user_fence`, `xe_debug_metadata`, `xe_eudebug` (connection, event fifo, discovery),
  `xe_eudebug_vm` (the debugger's VM file)

A pure model of the Xe driver's eudebug-relevant behaviour as described in
``shared/spec/kernel-behaviour.md``: no sockets, no processes.  ``sim/server.py`` hosts it and
calls it from its event loop's threads; every caller memory access goes through the `Caller` the
server passes in (copy_from_user / copy_to_user).

Concurrency: one kernel-wide re-entrant lock protects all state.  Every blocking wait (READ_EVENT,
a producer on a full fifo, WAIT_USER_FENCE, the device-wide discovery gate) is a `WaitQueue`
(a ``threading.Condition`` on that lock that calls ``kernel.might_sleep()`` before it sleeps,
so the server's event loop goes on in another thread) with a timeout.  Caller memory is read before the lock is
taken and written after it is released where the kernel's check order allows, so a slow caller
never holds up the rest of the simulated driver.

Every name the former single module ``sim/kernel.py`` defined is re-exported here.  What is
modelled and what is not is listed in ``docs/simulator-model.md``.
"""

from __future__ import annotations

from .xe_device_types import *  # noqa: F401,F403
from .xe_device_types import (  # noqa: F401
    _DefaultConfig, _Reading, _access_ok, _caller_gone, _cfg, _check_base, _dumpable, _fail,
    _has_cap, _ids, _lowest_free, _proc_status, _read_chain,
)
from .xe_bo import Bo  # noqa: F401
from .xe_query import _PHYS, _phys_mem  # noqa: F401
from .xe_vm import Vma, Vm  # noqa: F401
from .xe_wait_user_fence import UserFence  # noqa: F401
from .xe_exec_queue import Lrc, ExecQueue  # noqa: F401
from .xe_debug_metadata import Metadata  # noqa: F401
from .xe_eudebug import Connection, DebuggerFile, _event  # noqa: F401
from .xe_eudebug_vm import VmFile  # noqa: F401
from .xe_device import Kernel  # noqa: F401

__all__ = ["KernelError", "Caller", "Kernel", "File", "DeviceFile", "DebuggerFile", "VmFile"]
