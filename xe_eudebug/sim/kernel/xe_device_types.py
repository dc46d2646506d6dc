"""Shared ground of the driver model (the driver's xe_device_types.h and the DRM core's
file): ABI constants from the uapi layer, the error type, the caller interface, devices, DRM
files, handle maps and the small helpers every part uses.
"""

from __future__ import annotations

import ctypes
import errno as E
import heapq
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

from ... import uapi as _uapi
from .. import procmem
from ..config import DISCRETE_DEVICE_ID

if TYPE_CHECKING:
    from .xe_bo import Bo
    from .xe_debug_metadata import Metadata
    from .xe_device import Kernel
    from .xe_eudebug import Connection
    from .xe_exec_queue import ExecQueue
    from .xe_vm import Vm

# ------------------------------------------------------------------------------------------------
# ABI facts: every number comes from the uapi layer (and so from the active uapi generation);
# the short local names keep the model readable.

DRM_IOCTL_BASE = _uapi.DRM_IOCTL_BASE
DRM_COMMAND_BASE = _uapi.DRM_COMMAND_BASE
DRM_COMMAND_END = 0xA0

DRM_IOCTL_VERSION = _uapi.DRM_IOCTL_VERSION
DRM_IOCTL_GEM_CLOSE = _uapi.DRM_IOCTL_GEM_CLOSE
DRM_IOCTL_XE_DEVICE_QUERY = _uapi.DRM_IOCTL_XE_DEVICE_QUERY
DRM_IOCTL_XE_GEM_CREATE = _uapi.DRM_IOCTL_XE_GEM_CREATE
DRM_IOCTL_XE_GEM_MMAP_OFFSET = _uapi.DRM_IOCTL_XE_GEM_MMAP_OFFSET
DRM_IOCTL_XE_VM_CREATE = _uapi.DRM_IOCTL_XE_VM_CREATE
DRM_IOCTL_XE_VM_DESTROY = _uapi.DRM_IOCTL_XE_VM_DESTROY
DRM_IOCTL_XE_VM_BIND = _uapi.DRM_IOCTL_XE_VM_BIND
DRM_IOCTL_XE_EXEC_QUEUE_CREATE = _uapi.DRM_IOCTL_XE_EXEC_QUEUE_CREATE
DRM_IOCTL_XE_EXEC_QUEUE_DESTROY = _uapi.DRM_IOCTL_XE_EXEC_QUEUE_DESTROY
DRM_IOCTL_XE_EXEC = _uapi.DRM_IOCTL_XE_EXEC
DRM_IOCTL_XE_WAIT_USER_FENCE = _uapi.DRM_IOCTL_XE_WAIT_USER_FENCE
DRM_IOCTL_XE_EUDEBUG_CONNECT = _uapi.DRM_IOCTL_XE_EUDEBUG_CONNECT
DRM_IOCTL_XE_DEBUG_METADATA_CREATE = _uapi.DRM_IOCTL_XE_DEBUG_METADATA_CREATE
DRM_IOCTL_XE_DEBUG_METADATA_DESTROY = _uapi.DRM_IOCTL_XE_DEBUG_METADATA_DESTROY

DRM_XE_EUDEBUG_IOCTL_READ_EVENT = _uapi.DRM_XE_EUDEBUG_IOCTL_READ_EVENT
DRM_XE_EUDEBUG_IOCTL_VM_OPEN = _uapi.DRM_XE_EUDEBUG_IOCTL_VM_OPEN
DRM_XE_EUDEBUG_IOCTL_EU_CONTROL = _uapi.DRM_XE_EUDEBUG_IOCTL_EU_CONTROL
DRM_XE_EUDEBUG_IOCTL_READ_METADATA = _uapi.DRM_XE_EUDEBUG_IOCTL_READ_METADATA
DRM_XE_EUDEBUG_IOCTL_ACK_EVENT = _uapi.DRM_XE_EUDEBUG_IOCTL_ACK_EVENT

# event types and flags
EV_NONE = _uapi.DRM_XE_EUDEBUG_EVENT_NONE
EV_READ = _uapi.DRM_XE_EUDEBUG_EVENT_READ
EV_OPEN = _uapi.DRM_XE_EUDEBUG_EVENT_OPEN
EV_VM = _uapi.DRM_XE_EUDEBUG_EVENT_VM
EV_EXEC_QUEUE = _uapi.DRM_XE_EUDEBUG_EVENT_EXEC_QUEUE
EV_EU_ATTENTION = _uapi.DRM_XE_EUDEBUG_EVENT_EU_ATTENTION
EV_VM_BIND = _uapi.DRM_XE_EUDEBUG_EVENT_VM_BIND
EV_VM_BIND_OP = _uapi.DRM_XE_EUDEBUG_EVENT_VM_BIND_OP
EV_VM_BIND_UFENCE = _uapi.DRM_XE_EUDEBUG_EVENT_VM_BIND_UFENCE
EV_METADATA = _uapi.DRM_XE_EUDEBUG_EVENT_METADATA
EV_VM_BIND_OP_METADATA = _uapi.DRM_XE_EUDEBUG_EVENT_VM_BIND_OP_METADATA
EV_PAGEFAULT = _uapi.DRM_XE_EUDEBUG_EVENT_PAGEFAULT
EV_MAX = max(_uapi.GENERATION.event_type.values())
F_CREATE = _uapi.DRM_XE_EUDEBUG_EVENT_CREATE
F_DESTROY = _uapi.DRM_XE_EUDEBUG_EVENT_DESTROY
F_STATE_CHANGE = _uapi.DRM_XE_EUDEBUG_EVENT_STATE_CHANGE
F_NEED_ACK = _uapi.DRM_XE_EUDEBUG_EVENT_NEED_ACK
VM_BIND_FLAG_UFENCE = _uapi.DRM_XE_EUDEBUG_EVENT_VM_BIND_FLAG_UFENCE
EVENT_HEADER = _uapi.layout(_uapi.drm_xe_eudebug_event)


def _event_payload(ev: type) -> _uapi.Layout:
    """The layout of an event struct's fields after its header (`base`)."""
    return _uapi.layout(ev, *(name for name, *_ in ev._fields_ if name != "base"))


# event payloads, as the model packs them behind EVENT_HEADER
EV_CLIENT_PAYLOAD = _event_payload(_uapi.drm_xe_eudebug_event_client)
EV_VM_PAYLOAD = _event_payload(_uapi.drm_xe_eudebug_event_vm)
EV_EXEC_QUEUE_PAYLOAD = _event_payload(_uapi.drm_xe_eudebug_event_exec_queue)
EV_VM_BIND_PAYLOAD = _event_payload(_uapi.drm_xe_eudebug_event_vm_bind)
EV_VM_BIND_OP_PAYLOAD = _event_payload(_uapi.drm_xe_eudebug_event_vm_bind_op)
EV_VM_BIND_UFENCE_PAYLOAD = _event_payload(_uapi.drm_xe_eudebug_event_vm_bind_ufence)
EV_METADATA_PAYLOAD = _event_payload(_uapi.drm_xe_eudebug_event_metadata)
EV_VM_BIND_OP_METADATA_PAYLOAD = _event_payload(_uapi.drm_xe_eudebug_event_vm_bind_op_metadata)
# user extensions: the common header and its size
USER_EXTENSION = _uapi.layout(_uapi.drm_xe_user_extension)
USER_EXTENSION_SIZE = ctypes.sizeof(_uapi.drm_xe_user_extension)

EUDEBUG_VERSION = _uapi.DRM_XE_EUDEBUG_VERSION
VM_SYNC_MAX_TIMEOUT_NSECS = _uapi.DRM_XE_EUDEBUG_VM_SYNC_MAX_TIMEOUT_NSECS
EU_CONTROL_INTERRUPT_ALL = _uapi.DRM_XE_EUDEBUG_EU_CONTROL_CMD_INTERRUPT_ALL
EU_CONTROL_STOPPED = _uapi.DRM_XE_EUDEBUG_EU_CONTROL_CMD_STOPPED
EU_CONTROL_RESUME = _uapi.DRM_XE_EUDEBUG_EU_CONTROL_CMD_RESUME

# xe uapi values
CLASS_RENDER = _uapi.DRM_XE_ENGINE_CLASS_RENDER
CLASS_COPY = _uapi.DRM_XE_ENGINE_CLASS_COPY
CLASS_VIDEO_DECODE = _uapi.DRM_XE_ENGINE_CLASS_VIDEO_DECODE
CLASS_VIDEO_ENHANCE = _uapi.DRM_XE_ENGINE_CLASS_VIDEO_ENHANCE
CLASS_COMPUTE = _uapi.DRM_XE_ENGINE_CLASS_COMPUTE
CLASS_VM_BIND = _uapi.DRM_XE_ENGINE_CLASS_VM_BIND
VM_CREATE_SCRATCH_PAGE = _uapi.DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE
VM_CREATE_LR_MODE = _uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE
VM_CREATE_FAULT_MODE = _uapi.DRM_XE_VM_CREATE_FLAG_FAULT_MODE
OP_MAP = _uapi.DRM_XE_VM_BIND_OP_MAP
OP_UNMAP = _uapi.DRM_XE_VM_BIND_OP_UNMAP
OP_MAP_USERPTR = _uapi.DRM_XE_VM_BIND_OP_MAP_USERPTR
OP_UNMAP_ALL = _uapi.DRM_XE_VM_BIND_OP_UNMAP_ALL
OP_PREFETCH = _uapi.DRM_XE_VM_BIND_OP_PREFETCH
BIND_FLAG_READONLY = _uapi.DRM_XE_VM_BIND_FLAG_READONLY
BIND_FLAG_IMMEDIATE = _uapi.DRM_XE_VM_BIND_FLAG_IMMEDIATE
BIND_FLAG_NULL = _uapi.DRM_XE_VM_BIND_FLAG_NULL
BIND_FLAG_DUMPABLE = _uapi.DRM_XE_VM_BIND_FLAG_DUMPABLE
BIND_SUPPORTED_FLAGS = BIND_FLAG_READONLY | BIND_FLAG_IMMEDIATE | BIND_FLAG_NULL | BIND_FLAG_DUMPABLE
SYNC_SYNCOBJ = _uapi.DRM_XE_SYNC_TYPE_SYNCOBJ
SYNC_TIMELINE_SYNCOBJ = _uapi.DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ
SYNC_USER_FENCE = _uapi.DRM_XE_SYNC_TYPE_USER_FENCE
SYNC_FLAG_SIGNAL = _uapi.DRM_XE_SYNC_FLAG_SIGNAL
UFENCE_FLAG_ABSTIME = _uapi.DRM_XE_UFENCE_WAIT_FLAG_ABSTIME
UFENCE_OPS = _uapi.DRM_XE_UFENCE_WAIT_OP_LTE + 1
GEM_CREATE_FLAG_SCANOUT = _uapi.DRM_XE_GEM_CREATE_FLAG_SCANOUT
GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM = _uapi.DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM
GEM_FLAGS = _uapi.DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING | GEM_CREATE_FLAG_SCANOUT | GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM
CPU_CACHING_WB = _uapi.DRM_XE_GEM_CPU_CACHING_WB
CPU_CACHING_WC = _uapi.DRM_XE_GEM_CPU_CACHING_WC
MMAP_OFFSET_FLAG_PCI_BARRIER = _uapi.DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER
PCI_BARRIER_MMAP_OFFSET = 0x50 << 12
QUERY_CONFIG_FLAG_HAS_VRAM = _uapi.DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM
MEM_CLASS_SYSMEM = _uapi.DRM_XE_MEM_REGION_CLASS_SYSMEM
MEM_CLASS_VRAM = _uapi.DRM_XE_MEM_REGION_CLASS_VRAM
GT_TYPE_MAIN = _uapi.DRM_XE_QUERY_GT_TYPE_MAIN
QUERY_ENGINES = _uapi.DRM_XE_DEVICE_QUERY_ENGINES
QUERY_MEM_REGIONS = _uapi.DRM_XE_DEVICE_QUERY_MEM_REGIONS
QUERY_CONFIG = _uapi.DRM_XE_DEVICE_QUERY_CONFIG
QUERY_GT_LIST = _uapi.DRM_XE_DEVICE_QUERY_GT_LIST
QUERY_HWCONFIG = _uapi.DRM_XE_DEVICE_QUERY_HWCONFIG
QUERY_GT_TOPOLOGY = _uapi.DRM_XE_DEVICE_QUERY_GT_TOPOLOGY
EQ_EXT_SET_PROPERTY = _uapi.DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY
EQ_PROP_PRIORITY = _uapi.DRM_XE_EXEC_QUEUE_SET_PROPERTY_PRIORITY
EQ_PROP_TIMESLICE = _uapi.DRM_XE_EXEC_QUEUE_SET_PROPERTY_TIMESLICE
EQ_PROP_EUDEBUG = _uapi.DRM_XE_EXEC_QUEUE_SET_PROPERTY_EUDEBUG
EQ_PROP_COUNT = max(EQ_PROP_PRIORITY, EQ_PROP_TIMESLICE, EQ_PROP_EUDEBUG) + 1
EUDEBUG_FLAG_ENABLE = _uapi.DRM_XE_EXEC_QUEUE_EUDEBUG_FLAG_ENABLE
ATTACH_DEBUG = _uapi.XE_VM_BIND_OP_EXTENSIONS_ATTACH_DEBUG
METADATA_NUM = _uapi.WORK_IN_PROGRESS_DRM_XE_DEBUG_METADATA_NUM

# device limits and shape
PAGE = 4096
VA_BITS = 48
VM_SIZE = 1 << VA_BITS
MAX_USER_EXTENSIONS = 16
HW_ENGINE_MAX_INSTANCE = 9
PAT_ENTRIES = 32
TASK_SIZE = 0x00007FFFFFFFF000
INT_MAX = 0x7FFFFFFF
LONG_MAX = (1 << 63) - 1
MAX_VECTOR_BYTES = 64 << 20            # larger vector_of_binds / sync arrays: ENOMEM
MAX_METADATA_LEN = 1 << 31             # kvmalloc refuses >= 2 GiB: ENOMEM
VM_ACCESS_CHUNK = 64 << 20
DSS_COUNT = 8
EU_BITMASK_SIZE = 8 * DSS_COUNT
DEVICE_ID, REVISION = 0x64A0, 4
EUS_PER_DSS = 8                        # Xe2: SIMD16 EUs per DSS, 8 threads each (EU_BITMASK_SIZE)
DSS_MASK_BYTES = 16                    # sizeof(xe_dss_mask_t): 96 fuse bits in unsigned longs
EU_MASK_BYTES = 8                      # sizeof(xe_eu_mask_t): 32 fuse bits in an unsigned long
ENGINES = ((CLASS_RENDER, 0), (CLASS_COPY, 0), (CLASS_COMPUTE, 0), (CLASS_COMPUTE, 1))
MMAP_OFFSET_START = 0x100000 << 12     # DRM_FILE_PAGE_OFFSET_START
# Graphics IP (major, minor, rev) from GMD_ID: Lunar Lake's Xe2_LPG 20.04, Battlemage's Xe2_HPG 20.01
GRAPHICS_IP_INTEGRATED = (20, 4, 0)
GRAPHICS_IP_DISCRETE = (20, 1, 0)
# Xe2's PAT table (xe_pat.c): coherency of each index; 0 = a reserved entry the table omits (the
# kernel's "hw reserved": EINVAL), 1 = XE_COH_NONE, 2 = XE_COH_AT_LEAST_1WAY.  Graphics 20.01
# (Battlemage) uses only the first 28 entries (Wa_16023588340: CLOS3 disabled).
PAT_COH_RESERVED, PAT_COH_NONE, PAT_COH_1WAY = 0, 1, 2
XE2_PAT_COH = (1, 2, 2, 1, 2, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1,
               0, 0, 0, 0, 1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 2, 2)
PAT_ENTRIES_20_01 = 28
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
DRIVER_NAME, DRIVER_DATE, DRIVER_DESC = b"xe", b"20201103", b"Intel Xe2 Graphics"
DRIVER_VERSION = (1, 1, 0)

POLLIN, POLLOUT, POLLERR, POLLHUP, POLLRDNORM, POLLWRNORM = 0x1, 0x4, 0x8, 0x10, 0x40, 0x100
CAP_SYS_PTRACE = 19
CAP_SYS_NICE = 23


class _Reading:
    """Context of `Kernel._reading` (a plain class: it runs on every ioctl of a DRM file)."""

    __slots__ = ("kernel", "dev")

    def __init__(self, kernel: "Kernel", dev: Device) -> None:
        self.kernel = kernel
        self.dev = dev

    def __enter__(self) -> None:
        kernel = self.kernel
        kernel._lock.acquire()
        try:
            kernel._gate_read(self.dev)
        except BaseException:
            kernel._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        kernel = self.kernel
        try:
            kernel._gate_read_done(self.dev)
        finally:
            kernel._lock.release()


class KernelError(Exception):
    """An ioctl or file operation failed with `errno`; `copy_back` is what DRM still copies to
    the argument struct (device ioctls copy their struct back even on failure)."""

    def __init__(self, errno: int, copy_back: bytes | None = None, what: str | None = None) -> None:
        super().__init__(errno, f"{what}: {os.strerror(errno)}" if what else os.strerror(errno))
        self.errno = errno
        self.copy_back = copy_back


def _fail(errno: int, what: str | None = None) -> KernelError:
    return KernelError(errno, None, what)


class Caller(Protocol):
    """The process blocked in a call (server.py implements it)."""

    pid: int

    def read(self, addr: int, size: int) -> bytes: ...        # raises KernelError(EFAULT)

    def write(self, addr: int, data: bytes) -> None: ...      # raises KernelError(EFAULT)

    # Optional: write(addr, data) as the last act of the call, done by the caller's side while
    # the call returns (a fault then fails the call with EFAULT, the model's state as if the copy
    # had been attempted).  `addr` is the call's arg_addr.  Callers without it get write().
    # def write_on_return(self, addr: int, data: bytes) -> None: ...

    # Optional: instead of sleeping on `cv` until `deadline` (time.monotonic()), a blocking
    # READ_EVENT calls park(cv, deadline), which does not return: the server runs the call again
    # from the start when cv is notified or the deadline passes, with `deadline` set on the
    # caller of that run (so the timeout counts from the first start).
    # def park(self, cv: WaitQueue, deadline: float) -> NoReturn: ...
    # deadline: float | None


class _DefaultConfig:
    devices = 1
    read_event_timeout = 5.0
    fifo_timeout = 25.0
    fifo_retry = 1.0
    fifo_capacity = 64
    enable_default = False
    job_timeout_ms = 5000                  # a job of a non-LR exec queue (xe_hw_engine.c default)
    device_id = DEVICE_ID
    discrete = False                       # integrated (Lunar Lake): system memory only
    tiles = 1
    vram_size = 12 << 30                   # per tile, when discrete
    # Appendix A fidelity switches: reproduce kernel quirks the simulator avoids by default.
    fidelity_lrc_truncation = False        # EXEC_QUEUE copies only `width` bytes of lrc_handle[]
    fidelity_nonlr_discovery_abort = False  # a non-LR VM with mappings stops discovery (ENOENT)


def _cfg(config: Any, name: str) -> Any:
    return getattr(config, name, getattr(_DefaultConfig, name))


# ------------------------------------------------------------------------------------------------
# Objects

class File:
    """A simulated open file; `kind` is "device", "debugger" or "vm"."""

    kind = "file"
    cloexec = True

    def __init__(self) -> None:
        self.released = False


class Device:
    def __init__(self, index: int, enabled: bool, config: Any = None) -> None:
        self.index = index
        self.enabled = enabled
        self.discrete = bool(_cfg(config, "discrete"))
        # the configured PCI id, else the shape's own (Lunar Lake or Battlemage)
        self.device_id = int(getattr(config, "device_id", 0) or (DISCRETE_DEVICE_ID if self.discrete else DEVICE_ID))
        self.tiles = int(_cfg(config, "tiles"))
        self.vram_size = int(_cfg(config, "vram_size")) if self.discrete else 0
        # bytes held per memory region (instance 0: system memory, n: VRAM of tile n-1)
        self.region_used = [0] * (1 + (self.tiles if self.discrete else 0))
        # engine-class scheduling properties per GT (sysfs tileN/gtN/engines/<class>/)
        self.sched_props: dict[tuple[int, int], dict[str, int]] = {}
        self.files: list[DeviceFile] = []          # DRM files in open order
        self.conns: list[Connection] = []          # attached connections
        self.attach_count = 0
        self.readers = 0                           # discovery gate (rw semaphore)
        self.writer = False
        self.writers_waiting = 0
        # A writer's release grants the gate to every reader waiting then, ahead of the writers
        # queued meanwhile (as the kernel's rw_semaphore wakes its waiting readers): a stream of
        # CONNECTs, each queueing a discovery, must not starve the clients' ioctls.
        self.gate_gen = 0                          # writer releases so far
        self.readers_waiting = 0
        self.readers_granted = 0                   # waiting readers the last release let in
        self.next_mmap_offset = MMAP_OFFSET_START

    # -- shape ------------------------------------------------------------------------------------
    @property
    def gt_count(self) -> int:
        """Main GTs: one per tile, GT n on tile n (no media GT is modelled)."""
        return self.tiles

    @property
    def mem_region_mask(self) -> int:
        """The placements GEM_CREATE accepts: bit 0 system memory, bit n+1 VRAM of tile n."""
        return (1 << len(self.region_used)) - 1

    def vram_region(self, tile: int) -> int:
        """Region instance of tile `tile`'s VRAM (its bit in placement masks), or 0 (none)."""
        return tile + 1 if self.discrete else 0

    @property
    def graphics_ip(self) -> tuple[int, int, int]:
        return GRAPHICS_IP_DISCRETE if self.discrete else GRAPHICS_IP_INTEGRATED

    @property
    def pat_entries(self) -> int:
        return PAT_ENTRIES_20_01 if self.graphics_ip[:2] == (20, 1) else PAT_ENTRIES


class DeviceFile(File):
    """One open of the xe device (a DRM file; the debugger's "client")."""

    kind = "device"

    def __init__(self, device: Device, owner: int) -> None:
        super().__init__()
        self.device = device
        self.index = device.index
        self.owner = owner                         # opener's thread group
        self.owner_task = procmem.task_of(owner)   # ... held as a task, never as a bare pid
        self.vms: dict[int, Vm] = {}
        self.queues: dict[int, ExecQueue] = {}
        self.bos: dict[int, Bo] = {}
        self.metadata: dict[int, Metadata] = {}
        self.syncobjs: dict[int, Any] = {}         # drm_syncobj handles (kernel/drm_syncobj.py)


class HandleMap:
    """Debugger handles of one object type: lowest free integer >= 1, reused after removal."""

    def __init__(self) -> None:
        self.by_obj: dict[int, int] = {}
        self.by_handle: dict[int, Any] = {}
        self.free: list[int] = []
        self.next = 1

    def find(self, obj: Any) -> int | None:
        return self.by_obj.get(id(obj))

    def add(self, obj: Any) -> int | None:
        """New handle, or None when the object already has one."""
        if id(obj) in self.by_obj:
            return None
        if self.free:
            h = heapq.heappop(self.free)
        else:
            if self.next >= INT_MAX:
                raise _fail(E.ENOSPC, "handle map full")
            h = self.next
            self.next += 1
        self.by_obj[id(obj)] = h
        self.by_handle[h] = obj
        return h

    def remove(self, obj: Any) -> int | None:
        h = self.by_obj.pop(id(obj), None)
        if h is not None:
            del self.by_handle[h]
            heapq.heappush(self.free, h)
        return h

    def lookup(self, handle: int) -> Any:
        h = handle & 0xFFFFFFFF                    # debugger ioctls use the low 32 bits
        return self.by_handle.get(h) if h else None


def _access_ok(addr: int, size: int) -> bool:
    return 0 <= addr and 0 <= size and addr + size <= TASK_SIZE


def _lowest_free(used: Iterable[int]) -> int:
    taken = set(used)
    n = 1
    while n in taken:
        n += 1
    return n


def _proc_status(pid: int) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError as exc:
        if exc.errno in (E.EMFILE, E.ENFILE, E.ENOMEM):
            raise _fail(exc.errno, "reading process credentials") from None
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


CALLER_CHECK = 0.2  # seconds between checks, in a sleeping call, whether its caller is gone


class WaitQueue(threading.Condition):
    """A condition on the kernel lock whose sleeps are announced first, as kernel code calls
    might_sleep() before it blocks: `kernel.might_sleep()` (set by the server) lets the server's
    event loop go on in another thread while this one sleeps."""

    def __init__(self, kernel: Any) -> None:
        super().__init__(kernel._lock)
        self._kernel = kernel
        self._callbacks: list[Callable[[], None]] = []

    def wait(self, timeout: float | None = None) -> bool:
        self._kernel.might_sleep()
        return super().wait(timeout)

    def when_notified(self, callback: Callable[[], None]) -> None:
        """Call `callback` (once, lock held) at the next notify: a call parked by the server
        instead of sleeping here is continued from it (see Caller.park)."""
        self._callbacks.append(callback)

    def notify(self, n: int = 1) -> None:  # notify_all() calls notify() too
        super().notify(n)
        if self._callbacks:
            callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                callback()


def _caller_gone(caller: Caller) -> bool:
    """Whether the process blocked in a call has died (callers that cannot tell: never)."""
    gone = getattr(caller, "gone", None)
    return bool(gone is not None and gone())


def _dumpable(pid: int, status: dict[str, str]) -> bool:
    """Whether process `pid` is dumpable: proc shows the files (not the directory) of a process
    that is not as owned by root, whatever its effective ids (task_dump_owner)."""
    try:
        st = os.stat(f"/proc/{pid}/stat")
    except OSError:
        return False
    uids, gids = _ids(status, "Uid"), _ids(status, "Gid")
    if len(uids) < 2 or len(gids) < 2:
        return False
    return (st.st_uid, st.st_gid) == (uids[1], gids[1])


def _ids(status: dict[str, str], key: str) -> list[int]:
    try:
        return [int(x) for x in status.get(key, "").split()]
    except ValueError:
        return []


def _has_cap(status: dict[str, str], cap: int) -> bool:
    try:
        return bool(int(status.get("CapEff", "0"), 16) >> cap & 1)
    except ValueError:
        return False


def _read_chain(caller: Caller, first: int, ext_size: int,
                check: Callable[[bytes], int]) -> tuple[list[bytes], int]:
    """Read a user extension chain the way the kernel walks it.

    Returns the extensions read and validated before the first failure and that failure's
    errno (0 when the whole chain is good).  `check(base16)` validates a base header (errno or 0).
    At most MAX_USER_EXTENSIONS are followed; one more is E2BIG.
    """
    out: list[bytes] = []
    addr = first
    depth = 0
    while addr:
        if depth >= MAX_USER_EXTENSIONS:
            return out, E.E2BIG
        try:
            base = caller.read(addr, USER_EXTENSION_SIZE)
        except KernelError as exc:
            return out, exc.errno
        err = check(base)
        if err:
            return out, err
        try:
            ext = caller.read(addr, ext_size)
        except KernelError as exc:
            return out, exc.errno
        out.append(ext)
        addr = USER_EXTENSION.unpack_from(ext)[0]
        depth += 1
    return out, 0


def _check_base(base: bytes) -> int:
    _next, name, pad = USER_EXTENSION.unpack_from(base)
    if pad or name >= 1:
        return E.EINVAL
    return 0
