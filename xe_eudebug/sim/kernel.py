"""The kernel model of the simulated Xe driver: state, ioctl semantics, events and errnos.

This module is a pure model of the Xe driver's eudebug-relevant behaviour as described in
``shared/spec/kernel-behaviour.md``: no sockets, no processes.  ``sim/server.py`` hosts it and
calls it from one thread per client connection; every caller memory access goes through the
`Caller` the server passes in (copy_from_user / copy_to_user).

Concurrency: one kernel-wide re-entrant lock protects all state.  Every blocking wait (READ_EVENT,
a producer on a full fifo, WAIT_USER_FENCE, the device-wide discovery gate) is a
``threading.Condition`` on that lock with a timeout.  Caller memory is read before the lock is
taken and written after it is released where the kernel's check order allows, so a slow caller
never holds up the rest of the simulated driver.

What is modelled and what is not is listed in ``docs/simulator-model.md``.
"""

from __future__ import annotations

import errno as E
import heapq
import logging
import os
import struct
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Protocol

from .. import uapi as _uapi
from . import procmem, xe_sync
from .drm_syncobj import DrmSyncobj, signaled_stub, wait_fences
from .xe_exec import XeExec

log = logging.getLogger(__name__)

__all__ = ["KernelError", "Caller", "Kernel", "File", "DeviceFile", "DebuggerFile", "VmFile"]

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
EVENT_HEADER = struct.Struct("<IHHQQ")

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


class _DefaultConfig:
    devices = 1
    read_event_timeout = 5.0
    fifo_timeout = 25.0
    fifo_retry = 1.0
    fifo_capacity = 64
    enable_default = False
    job_timeout_ms = 5000                  # a job of a non-LR exec queue (xe_hw_engine.c default)
    device_id = DEVICE_ID
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
    def __init__(self, index: int, enabled: bool) -> None:
        self.index = index
        self.enabled = enabled
        self.files: list[DeviceFile] = []          # DRM files in open order
        self.conns: list[Connection] = []          # attached connections
        self.attach_count = 0
        self.readers = 0                           # discovery gate (rw semaphore)
        self.writer = False
        self.writers_waiting = 0
        self.next_mmap_offset = MMAP_OFFSET_START


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
        self.syncobjs: dict[int, Any] = {}         # drm_syncobj handles (sim/drm_syncobj.py)


class Bo:
    def __init__(self, file: DeviceFile, size: int, memfd: int, vm: "Vm | None") -> None:
        self.file = file
        self.size = size
        self.memfd = memfd
        self.vm = vm
        self.mmap_offset = 0
        self.handle_open = True
        self.refs = 0                              # VMAs backed by it


class Vma:
    __slots__ = ("start", "end", "kind", "bo", "offset", "attach", "task")

    def __init__(self, start: int, end: int, kind: str, bo: Bo | None, offset: int,
                 attach: list[tuple[int, int]], task: "procmem.Task | None" = None) -> None:
        self.task = task                           # userptr: the binder's process (its memory)
        self.start = start
        self.end = end
        self.kind = kind                           # "bo", "userptr" or "null"
        self.bo = bo
        self.offset = offset                       # BO offset or userptr address of `start`
        self.attach = attach                       # [(metadata id, cookie)]


class Vm:
    def __init__(self, file: DeviceFile, vm_id: int, flags: int) -> None:
        self.file = file
        self.id = vm_id
        self.flags = flags
        self.lr = bool(flags & VM_CREATE_LR_MODE)
        self.fault = bool(flags & VM_CREATE_FAULT_MODE)
        self.vmas: list[Vma] = []                  # sorted by start, non-overlapping
        self.alive = True
        self.preempt_queues = 0


class Lrc:
    def __init__(self, queue: "ExecQueue", index: int) -> None:
        self.queue = queue
        self.index = index


class ExecQueue:
    def __init__(self, file: DeviceFile, qid: int, vm: Vm, engine_class: int, width: int,
                 debuggable: bool) -> None:
        self.file = file
        self.id = qid
        self.vm = vm
        self.engine_class = engine_class
        self.width = width
        self.debuggable = debuggable
        self.lrcs = [Lrc(self, i) for i in range(width)]
        self.alive = True


class Metadata:
    def __init__(self, file: DeviceFile, md_id: int, md_type: int, data: bytes) -> None:
        self.file = file
        self.id = md_id
        self.type = md_type
        self.data = data
        self.alive = True


class UserFence:
    __slots__ = ("task", "addr", "value")

    def __init__(self, task: "procmem.Task", addr: int, value: int) -> None:
        self.task = task                           # the binder, held as a task (never a bare pid)
        self.addr = addr
        self.value = value


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


class Connection:
    def __init__(self, kernel: "Kernel", device: Device, target: int) -> None:
        self.device = device
        self.target = target
        self.target_task = procmem.task_of(target)  # the debuggee, held as a task
        self.status = 1                            # 1 attached; 0 or -errno detached
        self.fifo: deque[bytes] = deque()
        self.cv = threading.Condition(kernel._lock)
        self.discovery_done = False
        self.seqno = 0
        self.clients = HandleMap()
        self.vms = HandleMap()
        self.queues = HandleMap()
        self.lrcs = HandleMap()
        self.metadata = HandleMap()
        self.fences: dict[int, UserFence] = {}
        self.file: DebuggerFile | None = None

    def next_seqno(self) -> int:
        self.seqno += 1
        return self.seqno


class DebuggerFile(File):
    """The anonymous file CONNECT returns ([xe_eudebug]): not close-on-exec, blocking."""

    kind = "debugger"
    cloexec = False

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn
        self.index = conn.device.index


class VmFile(File):
    """The file VM_OPEN returns ([xe_eudebug.vm]): close-on-exec, read-write."""

    kind = "vm"
    cloexec = True

    def __init__(self, conn: Connection, vm: Vm, client_handle: int, vm_handle: int, timeout: int) -> None:
        super().__init__()
        self.conn = conn
        self.vm = vm
        self.client_handle = client_handle
        self.vm_handle = vm_handle
        self.timeout_ns = timeout
        self.pos = 0
        self.index = conn.device.index


# ------------------------------------------------------------------------------------------------
# helpers

def _event(etype: int, flags: int, seqno: int, payload: bytes) -> bytes:
    return EVENT_HEADER.pack(EVENT_HEADER.size + len(payload), etype, flags, seqno, 0) + payload


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
            base = caller.read(addr, 16)
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
        addr = struct.unpack_from("<Q", ext, 0)[0]
        depth += 1
    return out, 0


def _check_base(base: bytes) -> int:
    _next, name, pad = struct.unpack_from("<QII", base, 0)
    if pad or name >= 1:
        return E.EINVAL
    return 0


# ------------------------------------------------------------------------------------------------
# The kernel

class Kernel:
    """The simulated Xe driver (see module docstring).  `config`: a SimConfig or any object with
    devices, read_event_timeout, fifo_timeout, fifo_retry, enable_default (and fifo_capacity)."""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else _DefaultConfig()
        self._lock = threading.RLock()
        # Threads blocked in _queue on a full fifo (the server does not make later calls wait
        # for a release blocked there: in the kernel that close(2) has not returned yet).
        self.fifo_waiters: set[int] = set()
        # Threads waiting for a discovery to end before they enter the device (the same kind of
        # wait for a release: a debugger's READ_EVENT may be what lets that discovery finish).
        self.gate_waiters: set[int] = set()
        self._gate_cv = threading.Condition(self._lock)
        self._fence_cv = threading.Condition(self._lock)
        self._fence_gen = 0
        self._pending_fence_writes: dict[procmem.Task, list[tuple[int, bytes]]] = {}
        self._dead_fds: deque[tuple[float, int]] = deque()
        enabled = bool(_cfg(self.config, "enable_default"))
        self.devices = [Device(i, enabled) for i in range(int(_cfg(self.config, "devices")))]
        self.on_poll_change: Callable[[File], None] = lambda file: None
        self._drm_table: dict[int, tuple[int, Callable[..., Any]]] = {
            0x00: (DRM_IOCTL_VERSION, self._version),
            0x09: (DRM_IOCTL_GEM_CLOSE, self._gem_close),
            0x40: (DRM_IOCTL_XE_DEVICE_QUERY, self._device_query),
            0x41: (DRM_IOCTL_XE_GEM_CREATE, self._gem_create),
            0x42: (DRM_IOCTL_XE_GEM_MMAP_OFFSET, self._gem_mmap_offset),
            0x43: (DRM_IOCTL_XE_VM_CREATE, self._vm_create),
            0x44: (DRM_IOCTL_XE_VM_DESTROY, self._vm_destroy),
            0x45: (DRM_IOCTL_XE_VM_BIND, self._vm_bind),
            0x46: (DRM_IOCTL_XE_EXEC_QUEUE_CREATE, self._exec_queue_create),
            0x47: (DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, self._exec_queue_destroy),
            0x49: (DRM_IOCTL_XE_EXEC, self._exec),
            0x4A: (DRM_IOCTL_XE_WAIT_USER_FENCE, self._wait_user_fence),
            0x4E: (DRM_IOCTL_XE_EUDEBUG_CONNECT, self._connect),
            0x4F: (DRM_IOCTL_XE_DEBUG_METADATA_CREATE, self._metadata_create),
            0x50: (DRM_IOCTL_XE_DEBUG_METADATA_DESTROY, self._metadata_destroy),
        }
        self.syncobj = DrmSyncobj(self._lock, self._fence_cv, self._fences_written)
        self._drm_table.update(self.syncobj.table())
        self.xe_exec = XeExec(self)
        self._debugger_table: dict[int, Callable[..., Any]] = {
            DRM_XE_EUDEBUG_IOCTL_READ_EVENT: self._read_event,
            DRM_XE_EUDEBUG_IOCTL_VM_OPEN: self._vm_open,
            DRM_XE_EUDEBUG_IOCTL_EU_CONTROL: self._eu_control,
            DRM_XE_EUDEBUG_IOCTL_READ_METADATA: self._read_metadata,
            DRM_XE_EUDEBUG_IOCTL_ACK_EVENT: self._ack_event,
        }

    # -- public entry points --------------------------------------------------------------------
    def open_device(self, index: int, caller: Caller) -> DeviceFile:
        if not isinstance(index, int) or not 0 <= index < len(self.devices):
            raise _fail(E.ENODEV, "open")
        dev = self.devices[index]
        with self._reading(dev):
            file = DeviceFile(dev, int(caller.pid))   # first: it may fail (no pidfd: EMFILE)
            dev.files.append(file)
            conn = self._conn_for(file)
            if conn is not None:
                self._client_event(conn, file, True)
        return file

    def ioctl(self, file: File, caller: Caller, request: int,
              arg: bytes | None) -> tuple[int | File, bytes]:
        """`arg`: the _IOC_SIZE(request) bytes of the argument struct, or None when the caller
        could not read them (EFAULT where the kernel would copy them, after the request checks)."""
        request &= 0xFFFFFFFF
        if file.released:
            raise _fail(E.EBADF)
        if isinstance(file, DeviceFile):
            return self._drm_ioctl(file, caller, request, arg)
        if isinstance(file, DebuggerFile):
            handler = self._debugger_table.get(request)
            conn = file.conn
            if request != DRM_XE_EUDEBUG_IOCTL_READ_EVENT:
                with self._lock:
                    if not conn.discovery_done:
                        raise _fail(E.EBUSY, "eudebug ioctl during discovery")
            if handler is None:
                raise _fail(E.EINVAL, f"unknown eudebug ioctl {request:#x}")
            if arg is None and request != DRM_XE_EUDEBUG_IOCTL_READ_EVENT:
                raise _fail(E.EFAULT, f"eudebug ioctl {request:#x}: argument")
            return handler(conn, caller, bytes(arg or b""))
        raise _fail(E.ENOTTY)

    def read(self, file: File, caller: Caller, size: int) -> bytes:
        if isinstance(file, VmFile):
            with self._lock:
                pos = file.pos
            data = self._vm_access(file, pos, size, None)
            with self._lock:
                file.pos = pos + len(data)
            return data
        if isinstance(file, DebuggerFile):
            raise _fail(E.EINVAL, "read on a debugger fd")
        raise _fail(E.EAGAIN, "read on a DRM file (no DRM events are modelled)")

    def pread(self, file: File, caller: Caller, size: int, offset: int) -> bytes:
        if isinstance(file, VmFile):
            return self._vm_access(file, offset, size, None)
        if isinstance(file, DebuggerFile):
            raise _fail(E.EINVAL, "pread on a debugger fd")
        raise _fail(E.ESPIPE)

    def pwrite(self, file: File, caller: Caller, data: bytes, offset: int) -> int:
        if isinstance(file, VmFile):
            return len(self._vm_access(file, offset, len(data), bytes(data)))
        if isinstance(file, DebuggerFile):
            raise _fail(E.EBADF, "write on a read-only debugger fd")
        raise _fail(E.EINVAL)

    def lseek(self, file: File, caller: Caller, offset: int, whence: int) -> int:
        if isinstance(file, DebuggerFile):
            raise _fail(E.ESPIPE)
        if isinstance(file, DeviceFile):
            return 0                               # noop_llseek
        assert isinstance(file, VmFile)
        with self._lock:
            if whence == os.SEEK_SET:
                new = offset
            elif whence == os.SEEK_CUR:
                new = file.pos + offset
            elif whence == os.SEEK_END:
                new = offset                       # size 0
            elif whence in (3, 4):                 # SEEK_DATA / SEEK_HOLE past size 0
                raise _fail(E.ENXIO)
            else:
                raise _fail(E.EINVAL)
            if new < 0 or new > (1 << 63) - 1:
                raise _fail(E.EINVAL)
            file.pos = new
            return new

    def fsync(self, file: File, caller: Caller) -> int:
        if isinstance(file, VmFile):
            return 0
        raise _fail(E.EINVAL)

    def mmap_bo(self, file: File, offset: int, length: int) -> tuple[int, int]:
        if not isinstance(file, DeviceFile):
            raise _fail(E.ENODEV)
        with self._lock:
            for bo in file.bos.values():
                if bo.mmap_offset and bo.mmap_offset == offset:
                    if length <= 0 or (length + PAGE - 1) // PAGE * PAGE > bo.size:
                        raise _fail(E.EINVAL, "mmap length beyond the BO")
                    return bo.memfd, 0
            for other in file.device.files:
                if other is not file and any(b.mmap_offset == offset for b in other.bos.values()):
                    raise _fail(E.EACCES)
            raise _fail(E.EINVAL, "no BO at that mmap offset")

    def poll(self, file: File) -> int:
        if isinstance(file, DebuggerFile):
            conn = file.conn
            with self._lock:
                mask = POLLIN if conn.fifo else 0
                if conn.status <= 0:
                    mask |= POLLHUP
                    if conn.status < 0:
                        mask |= POLLERR
                return mask
        if isinstance(file, VmFile):
            return POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM
        return 0

    def release(self, file: File) -> None:
        with self._lock:
            if file.released:
                return
            file.released = True
            if isinstance(file, DeviceFile):
                self._release_device_file(file)
            elif isinstance(file, DebuggerFile):
                self._detach(file.conn, 0)
            self._reap_fds()

    def get_enabled(self, index: int) -> bool:
        if not 0 <= index < len(self.devices):
            raise _fail(E.ENODEV)
        with self._lock:
            return self.devices[index].enabled

    def set_enabled(self, index: int, value: bool) -> bool:
        if not 0 <= index < len(self.devices):
            raise _fail(E.ENODEV)
        dev = self.devices[index]
        with self._reading(dev):
            previous = dev.enabled
            if previous and not value and dev.conns:
                raise _fail(E.EBUSY, "enable_eudebug: a debugger is attached")
            dev.enabled = bool(value)
            return previous

    # -- discovery gate --------------------------------------------------------------------------
    def _gate_read(self, dev: Device) -> None:
        if dev.writer or dev.writers_waiting:
            me = threading.get_ident()
            self.gate_waiters.add(me)
            try:
                while dev.writer or dev.writers_waiting:
                    self._gate_cv.wait()
            finally:
                self.gate_waiters.discard(me)
        dev.readers += 1

    def _gate_read_done(self, dev: Device) -> None:
        dev.readers -= 1
        if dev.readers == 0:
            self._gate_cv.notify_all()

    def _reading(self, dev: Device) -> "_Reading":
        """The kernel lock plus the device's discovery gate for reading (§2.3)."""
        return _Reading(self, dev)

    # -- events ------------------------------------------------------------------------------------
    def _poll_changed(self, conn: Connection) -> None:
        if conn.file is not None:
            try:
                self.on_poll_change(conn.file)
            except Exception:  # pragma: no cover - a broken callback must not break the model
                log.exception("on_poll_change failed")

    def _queue(self, conn: Connection, event: bytes) -> bool:
        """Insert one event; blocks while the fifo is full (fifo_retry slices, fifo_timeout total,
        then the event is dropped and the connection detached with ETIMEDOUT)."""
        if conn.status != 1:
            return False
        capacity = int(_cfg(self.config, "fifo_capacity"))
        if len(conn.fifo) >= capacity:
            limit = float(_cfg(self.config, "fifo_timeout"))
            retry = max(float(_cfg(self.config, "fifo_retry")), 0.001)
            deadline = time.monotonic() + limit
            me = threading.get_ident()
            self.fifo_waiters.add(me)
            try:
                while len(conn.fifo) >= capacity:
                    if conn.status != 1:
                        return False
                    left = deadline - time.monotonic()
                    if left <= 0:
                        log.info("event fifo stayed full for %.1f s: detaching with ETIMEDOUT", limit)
                        self._detach(conn, -E.ETIMEDOUT)
                        return False
                    conn.cv.wait(min(retry, left))
            finally:
                self.fifo_waiters.discard(me)
            if conn.status != 1:
                return False
        conn.fifo.append(event)
        conn.cv.notify_all()
        self._poll_changed(conn)
        return True

    def _emit(self, conn: Connection, etype: int, flags: int, payload: bytes, seqno: int | None = None) -> bool:
        if conn.status != 1:
            return False
        if seqno is None:
            seqno = conn.next_seqno()
        return self._queue(conn, _event(etype, flags, seqno, payload))

    def _detach(self, conn: Connection, status: int) -> None:
        if conn.status != 1:
            return
        conn.status = status
        if conn in conn.device.conns:
            conn.device.conns.remove(conn)
        fences = list(conn.fences.values())
        conn.fences.clear()
        for fence in fences:
            self._signal_fence(fence)
        conn.cv.notify_all()
        self._gate_cv.notify_all()
        self._poll_changed(conn)

    def _conn_for(self, file: DeviceFile) -> Connection | None:
        """The attached connection, with discovery complete, debugging the file's opener."""
        for conn in file.device.conns:
            if conn.target_task is file.owner_task and conn.discovery_done:
                return conn
        return None

    def _client_event(self, conn: Connection, file: DeviceFile, create: bool) -> bool:
        if create:
            h = conn.clients.add(file)
            if h is None:
                return True
            return self._emit(conn, EV_OPEN, F_CREATE, struct.pack("<Q", h))
        h = conn.clients.find(file)
        if h is None or conn.status != 1:
            return True
        seqno = conn.next_seqno()
        conn.clients.remove(file)
        return self._emit(conn, EV_OPEN, F_DESTROY, struct.pack("<Q", h), seqno)

    def _vm_event(self, conn: Connection, vm: Vm, create: bool) -> bool:
        ch = conn.clients.find(vm.file)
        if ch is None:
            self._detach(conn, -E.ENOENT)
            return False
        if create:
            h = conn.vms.add(vm)
            if h is None:
                return True
            return self._emit(conn, EV_VM, F_CREATE, struct.pack("<QQ", ch, h))
        h = conn.vms.find(vm)
        if h is None or conn.status != 1:
            return True
        seqno = conn.next_seqno()
        conn.vms.remove(vm)
        return self._emit(conn, EV_VM, F_DESTROY, struct.pack("<QQ", ch, h), seqno)

    def _queue_event(self, conn: Connection, q: ExecQueue, create: bool) -> bool:
        ch = conn.clients.find(q.file)
        vh = conn.vms.find(q.vm)
        if ch is None or vh is None:
            self._detach(conn, -E.ENOENT)
            return False
        if create:
            h = conn.queues.add(q)
            if h is None:
                return True
            lrcs = [conn.lrcs.add(lrc) or conn.lrcs.find(lrc) or 0 for lrc in q.lrcs]
            flags = F_CREATE
        else:
            h = conn.queues.find(q)
            if h is None or conn.status != 1:
                return True
            lrcs = [conn.lrcs.find(lrc) or 0 for lrc in q.lrcs]
            conn.queues.remove(q)
            for lrc in q.lrcs:
                conn.lrcs.remove(lrc)
            flags = F_DESTROY
        handles = struct.pack(f"<{q.width}Q", *lrcs)
        if _cfg(self.config, "fidelity_lrc_truncation"):
            handles = handles[:q.width].ljust(8 * q.width, b"\0")
        payload = struct.pack("<QQQII", ch, vh, h, q.engine_class, q.width) + handles
        return self._emit(conn, EV_EXEC_QUEUE, flags, payload)

    def _metadata_event(self, conn: Connection, md: Metadata, create: bool) -> bool:
        ch = conn.clients.find(md.file)
        if ch is None:
            self._detach(conn, -E.ENOENT)
            return False
        if create:
            h = conn.metadata.add(md)
            if h is None:
                return True
            flags = F_CREATE
            seqno = None
        else:
            h = conn.metadata.find(md)
            if h is None or conn.status != 1:
                return True
            seqno = conn.next_seqno()
            conn.metadata.remove(md)
            flags = F_DESTROY
        return self._emit(conn, EV_METADATA, flags, struct.pack("<QQQQ", ch, h, md.type, len(md.data)), seqno)

    # -- fences --------------------------------------------------------------------------------------
    def _signal_fence(self, fence: UserFence) -> None:
        """Write a user fence's value into its process (lock held)."""
        data = struct.pack("<Q", fence.value)
        try:
            fence.task.write(fence.addr, data)     # ESRCH once the binder has exited: dropped
        except OSError as exc:
            if exc.errno == E.EPERM:
                # Not permitted to reach that process directly: its next wait applies it.
                self._pending_fence_writes.setdefault(fence.task, []).append((fence.addr, data))
            else:
                log.debug("user fence write to pid %d at %#x failed: %s", fence.task.pid, fence.addr, exc)
        self._fence_gen += 1
        self._fence_cv.notify_all()

    def _fences_written(self) -> None:
        with self._lock:
            self._fence_gen += 1
            self._fence_cv.notify_all()

    # -- DRM dispatcher --------------------------------------------------------------------------------
    def _drm_ioctl(self, file: DeviceFile, caller: Caller, request: int,
                   arg: bytes | None) -> tuple[int | File, bytes]:
        if (request >> 8) & 0xFF != DRM_IOCTL_BASE:
            raise _fail(E.ENOTTY)
        nr = request & 0xFF
        entry = self._drm_table.get(nr)
        if entry is None:
            raise _fail(E.EINVAL, f"DRM ioctl nr {nr:#x} not modelled")
        drv_cmd, handler = entry
        size = (request >> 16) & 0x3FFF
        direction = request >> 30
        drv_size = (drv_cmd >> 16) & 0x3FFF
        drv_dir = drv_cmd >> 30
        in_size = size if direction & drv_dir & 1 else 0
        out_size = size if direction & drv_dir & 2 else 0
        ksize = max(in_size, out_size, drv_size)
        if arg is None and in_size:
            raise _fail(E.EFAULT, f"DRM ioctl nr {nr:#x}: argument")
        kbuf = bytearray(ksize)
        kbuf[:in_size] = bytes(arg or b"")[:in_size].ljust(in_size, b"\0")
        try:
            result = handler(file, caller, kbuf)
        except KernelError as exc:
            if out_size:
                exc.copy_back = bytes(kbuf[:out_size])
            raise
        return (0 if result is None else result), bytes(kbuf[:out_size])

    # -- DRM core ---------------------------------------------------------------------------------------
    def _version(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        struct.pack_into("<iii", k, 0, *DRIVER_VERSION)
        err = 0
        for off, value in ((16, DRIVER_NAME), (32, DRIVER_DATE), (48, DRIVER_DESC)):
            buf_len, ptr = struct.unpack_from("<QQ", k, off)
            n = min(len(value), buf_len)
            struct.pack_into("<Q", k, off, len(value))
            if n and ptr and not err:
                try:
                    caller.write(ptr, value[:n])
                except KernelError as exc:
                    err = exc.errno
        if err:
            raise _fail(err, "DRM_IOCTL_VERSION")
        return 0

    def _gem_close(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        handle = struct.unpack_from("<I", k, 0)[0]
        with self._lock:
            bo = file.bos.pop(handle, None)
            if bo is None:
                raise _fail(E.EINVAL, "DRM_IOCTL_GEM_CLOSE: unknown handle")
            bo.handle_open = False
            self._bo_put(bo)
        return 0

    def _bo_put(self, bo: Bo) -> None:
        if not bo.handle_open and bo.refs == 0 and bo.memfd >= 0:
            # Closed a little later: an mmap served concurrently may still be sending it.
            self._dead_fds.append((time.monotonic(), bo.memfd))
            bo.memfd = -1
        self._reap_fds()

    def _reap_fds(self, force: bool = False) -> None:
        now = time.monotonic()
        while self._dead_fds and (force or now - self._dead_fds[0][0] > 2.0):
            _t, fd = self._dead_fds.popleft()
            try:
                os.close(fd)
            except OSError:
                pass

    def housekeeping(self) -> None:
        """Periodic work of an idle model (the server calls it a few times a second): close the
        memfds of freed BOs once no mmap can still be sending them."""
        if self._dead_fds:
            with self._lock:
                self._reap_fds()

    def close(self) -> None:
        """Free every memfd the model holds (server shutdown)."""
        with self._lock:
            for dev in self.devices:
                for f in dev.files:
                    for q in f.queues.values():
                        self.xe_exec.kill(q)       # running jobs stop at their next check
                    for bo in f.bos.values():
                        bo.handle_open = False
                        bo.refs = 0
                        self._bo_put(bo)
            self._reap_fds(force=True)

    # -- xe: queries and BOs ------------------------------------------------------------------------------
    def _query_data(self, query: int) -> bytes | None:
        if query == QUERY_ENGINES:
            out = struct.pack("<II", len(ENGINES), 0)
            for cls, inst in ENGINES:
                out += struct.pack("<HHHH", cls, inst, 0, 0) + bytes(24)
            return out
        if query == QUERY_MEM_REGIONS:
            total = _phys_mem()
            return struct.pack("<II", 1, 0) + struct.pack("<HHIQQQQ", 0, 0, PAGE, total, 0, 0, 0) + bytes(48)
        if query == QUERY_CONFIG:
            info = (int(_cfg(self.config, "device_id")) | REVISION << 16, 0, PAGE, VA_BITS, 2)
            return struct.pack("<II", len(info), 0) + struct.pack(f"<{len(info)}Q", *info)
        if query == QUERY_GT_LIST:
            gt = struct.pack("<HHH6sIQQHHHH", 0, 0, 0, b"", 19_200_000, 1, 0, 20, 4, 0, 0) + bytes(56)
            return struct.pack("<II", 1, 0) + gt
        if query == QUERY_HWCONFIG:
            return b""  # no GuC hwconfig table: a valid, empty answer
        if query == QUERY_GT_TOPOLOGY:
            # one GT: geometry and compute DSS masks, then the EU-per-DSS mask (Xe2: SIMD16);
            # the kernel omits L3_BANK when it cannot read it, and so does the model
            dss = (1 << DSS_COUNT) - 1
            eus = (1 << EUS_PER_DSS) - 1
            out = b""
            for kind, mask, size in ((_uapi.DRM_XE_TOPO_DSS_GEOMETRY, dss, DSS_MASK_BYTES),
                                     (_uapi.DRM_XE_TOPO_DSS_COMPUTE, dss, DSS_MASK_BYTES),
                                     (_uapi.DRM_XE_TOPO_SIMD16_EU_PER_DSS, eus, EU_MASK_BYTES)):
                out += struct.pack("<HHI", 0, kind, size) + mask.to_bytes(size, "little")
            return out
        return None

    def _device_query(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, query, size, data, r0, r1 = struct.unpack_from("<QIIQQQ", k, 0)
        if ext or r0 or r1:
            raise _fail(E.EINVAL, "DEVICE_QUERY: extensions/reserved")
        payload = self._query_data(query)
        if payload is None:
            raise _fail(E.EINVAL, f"DEVICE_QUERY: query {query} not modelled")
        if size == 0:
            struct.pack_into("<I", k, 12, len(payload))
            return 0
        if size != len(payload):
            raise _fail(E.EINVAL, "DEVICE_QUERY: size mismatch")
        caller.write(data, payload)
        return 0

    def _gem_create(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, size, placement, flags, vm_id, handle, caching = struct.unpack_from("<QQIIIIH", k, 0)
        pad = k[34:40]
        r0, r1 = struct.unpack_from("<QQ", k, 40)
        if ext:
            raise _fail(E.EINVAL, "GEM_CREATE: extensions are not modelled")
        if any(pad) or r0 or r1:
            raise _fail(E.EINVAL, "GEM_CREATE: pad/reserved")
        if not placement or placement & ~1:
            raise _fail(E.EINVAL, "GEM_CREATE: placement (system memory only)")
        if flags & ~GEM_FLAGS:
            raise _fail(E.EINVAL, "GEM_CREATE: flags")
        if handle:
            raise _fail(E.EINVAL, "GEM_CREATE: handle must be 0")
        if not size or size & (PAGE - 1):
            raise _fail(E.EINVAL, "GEM_CREATE: size")
        if flags & GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM:
            raise _fail(E.EINVAL, "GEM_CREATE: NEEDS_VISIBLE_VRAM without VRAM")
        if not caching or caching > CPU_CACHING_WC:
            raise _fail(E.EINVAL, "GEM_CREATE: cpu_caching")
        if flags & GEM_CREATE_FLAG_SCANOUT and caching == CPU_CACHING_WB:
            raise _fail(E.EINVAL, "GEM_CREATE: scanout with WB caching")
        with self._lock:
            vm = None
            if vm_id:
                vm = file.vms.get(vm_id)
                if vm is None:
                    raise _fail(E.ENOENT, "GEM_CREATE: vm_id")
            if size > _phys_mem():
                raise _fail(E.ENOMEM, "GEM_CREATE: larger than system memory")
            try:
                memfd = os.memfd_create(f"xe-bo-{file.index}", os.MFD_CLOEXEC)
            except OSError as exc:
                raise _fail(exc.errno or E.ENOMEM, "GEM_CREATE") from None
            try:
                os.ftruncate(memfd, size)
            except OSError:
                os.close(memfd)
                raise _fail(E.ENOMEM, "GEM_CREATE") from None
            h = _lowest_free(file.bos)
            file.bos[h] = Bo(file, size, memfd, vm)
            struct.pack_into("<I", k, 28, h)
            self._reap_fds()
        return 0

    def _gem_mmap_offset(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, handle, flags, _off, r0, r1 = struct.unpack_from("<QIIQQQ", k, 0)
        if ext or r0 or r1:
            raise _fail(E.EINVAL, "GEM_MMAP_OFFSET: extensions/reserved")
        if flags & ~MMAP_OFFSET_FLAG_PCI_BARRIER:
            raise _fail(E.EINVAL, "GEM_MMAP_OFFSET: flags")
        if flags:
            if handle:
                raise _fail(E.EINVAL, "GEM_MMAP_OFFSET: PCI barrier with a handle")
            struct.pack_into("<Q", k, 16, PCI_BARRIER_MMAP_OFFSET)
            return 0
        with self._lock:
            bo = file.bos.get(handle)
            if bo is None:
                raise _fail(E.ENOENT, "GEM_MMAP_OFFSET: handle")
            if not bo.mmap_offset:
                dev = file.device
                bo.mmap_offset = dev.next_mmap_offset
                dev.next_mmap_offset += bo.size
            struct.pack_into("<Q", k, 16, bo.mmap_offset)
        return 0

    # -- xe: VMs ------------------------------------------------------------------------------------------
    def _vm_create(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, flags, _vm_id, r0, r1 = struct.unpack_from("<QIIQQ", k, 0)
        if ext or r0 or r1:
            raise _fail(E.EINVAL, "VM_CREATE: extensions/reserved")
        if flags & ~(VM_CREATE_SCRATCH_PAGE | VM_CREATE_LR_MODE | VM_CREATE_FAULT_MODE):
            raise _fail(E.EINVAL, "VM_CREATE: flags")
        if flags & VM_CREATE_SCRATCH_PAGE and flags & VM_CREATE_FAULT_MODE:
            raise _fail(E.EINVAL, "VM_CREATE: scratch page with fault mode")
        if flags & VM_CREATE_FAULT_MODE and not flags & VM_CREATE_LR_MODE:
            raise _fail(E.EINVAL, "VM_CREATE: fault mode needs LR mode")
        dev = file.device
        with self._reading(dev):
            vm_id = _lowest_free(file.vms)
            vm = Vm(file, vm_id, flags)
            file.vms[vm_id] = vm
            struct.pack_into("<I", k, 12, vm_id)
            conn = self._conn_for(file)
            if conn is not None and vm.lr:
                self._vm_event(conn, vm, True)
        return 0

    def _vm_destroy(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        vm_id, pad, r0, r1 = struct.unpack_from("<IIQQ", k, 0)
        if pad or r0 or r1:
            raise _fail(E.EINVAL, "VM_DESTROY: pad/reserved")
        dev = file.device
        with self._reading(dev):
            vm = file.vms.get(vm_id)
            if vm is None:
                raise _fail(E.ENOENT, "VM_DESTROY: vm_id")
            if vm.preempt_queues:
                raise _fail(E.EBUSY, "VM_DESTROY: exec queues still attached")
            conn = self._conn_for(file)
            if conn is not None and vm.lr:
                self._vm_event(conn, vm, False)
            del file.vms[vm_id]
            self._vm_teardown(vm)
        return 0

    def _vm_teardown(self, vm: Vm) -> None:
        vm.alive = False
        for vma in vm.vmas:
            if vma.bo is not None:
                vma.bo.refs -= 1
                self._bo_put(vma.bo)
        vm.vmas = []

    # -- xe: VM_BIND -----------------------------------------------------------------------------------------
    def _vm_bind(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, vm_id, q_id, pad, num_binds = struct.unpack_from("<QIIII", k, 0)
        pad2, num_syncs, syncs_ptr, r0, r1 = struct.unpack_from("<IIQQQ", k, 104)
        if ext or pad or pad2 or r0 or r1:
            raise _fail(E.EINVAL, "VM_BIND: extensions/pad/reserved")
        # copy_from_user of the ops (before the lock: the caller is blocked in this call)
        if num_binds > 1:
            vector = struct.unpack_from("<Q", k, 24)[0]
            if num_binds * 80 > MAX_VECTOR_BYTES:
                raise _fail(E.ENOMEM, "VM_BIND: num_binds")
            raw = caller.read(vector, num_binds * 80)
            ops_raw = [raw[i * 80:(i + 1) * 80] for i in range(num_binds)]
        elif num_binds == 1:
            ops_raw = [bytes(k[24:104])]
        else:
            ops_raw = []
        ops = []
        for raw_op in ops_raw:
            (op_ext, obj, pat, op_pad, obj_offset, rng, addr, op, flags, region,
             op_pad2) = struct.unpack_from("<QIHHQQQIIII", raw_op, 0)
            chain: tuple[list[bytes], int] = ([], 0)
            if op_ext:
                chain = _read_chain(caller, op_ext, 48, _check_base)
            ops.append((obj, pat, obj_offset, rng, addr, op, flags, region, chain))
        # syncs: read as the kernel parses them, stopping at the first unreadable one
        syncs_raw: list[bytes] = []
        sync_fault = 0
        if num_syncs:
            if num_syncs * 48 > MAX_VECTOR_BYTES:
                sync_fault = E.ENOMEM
            else:
                for i in range(num_syncs):
                    try:
                        syncs_raw.append(caller.read(syncs_ptr + i * 48, 48))
                    except KernelError as exc:
                        sync_fault = exc.errno
                        break
        fence_write: tuple[int, bytes] | None = None
        with self._lock:                           # a bind is applied after its in-fences signal
            wait_fences(self._lock, self._fence_cv, xe_sync.in_fences(file, syncs_raw))
        dev = file.device
        with self._reading(dev):
            fence_write = self._vm_bind_locked(file, caller, vm_id, q_id, num_binds, ops,
                                               num_syncs, syncs_raw, sync_fault)
        if fence_write is not None:
            try:
                caller.write(*fence_write)
            except KernelError:
                log.debug("user fence address %#x not writable", fence_write[0])
            self._fences_written()
        return 0

    def _vm_bind_locked(self, file: DeviceFile, caller: Caller, vm_id: int, q_id: int, num_binds: int,
                        ops: list[tuple], num_syncs: int, syncs_raw: list[bytes],
                        sync_fault: int) -> tuple[int, bytes] | None:
        # per-op argument checks (vm_bind_ioctl_check_args)
        attach_lists: list[list[tuple[int, int]]] = []
        for obj, pat, obj_offset, rng, addr, op, flags, region, (exts, chain_err) in ops:
            is_null = bool(flags & BIND_FLAG_NULL)
            if pat >= PAT_ENTRIES:
                raise _fail(E.EINVAL, "VM_BIND: pat_index")
            if (op > OP_PREFETCH or flags & ~BIND_SUPPORTED_FLAGS or (obj and is_null)
                    or (obj_offset and is_null) or (op != OP_MAP and is_null)
                    or (not obj and op == OP_MAP and not is_null) or (not obj and op == OP_UNMAP_ALL)
                    or (addr and op == OP_UNMAP_ALL) or (rng and op == OP_UNMAP_ALL)
                    or (obj and op == OP_MAP_USERPTR) or (obj and op == OP_PREFETCH)
                    or (region and op != OP_PREFETCH) or region != 0 or (obj and op == OP_UNMAP)):
                raise _fail(E.EINVAL, "VM_BIND: op/flags/obj combination")
            if obj_offset & (PAGE - 1) or addr & (PAGE - 1) or rng & (PAGE - 1) or (not rng and op != OP_UNMAP_ALL):
                raise _fail(E.EINVAL, "VM_BIND: alignment/range")
            attach: list[tuple[int, int]] = []
            for ext in exts:
                md_id, ext_flags, cookie = struct.unpack_from("<QQQ", ext, 16)
                if op not in (OP_MAP, OP_MAP_USERPTR) or ext_flags:
                    raise _fail(E.EINVAL, "VM_BIND: ATTACH_DEBUG op/flags")
                md = file.metadata.get(md_id & 0xFFFFFFFF)
                if md is None:
                    raise _fail(E.ENOENT, "VM_BIND: ATTACH_DEBUG metadata_id")
                attach.append((md.id, cookie))
            if chain_err:
                raise _fail(chain_err, "VM_BIND: extension chain")
            attach_lists.append(attach)
        if q_id:
            q = file.queues.get(q_id)
            if q is None:
                raise _fail(E.ENOENT, "VM_BIND: exec_queue_id")
            if q.engine_class != CLASS_VM_BIND:
                raise _fail(E.EINVAL, "VM_BIND: not a bind queue")
        vm = file.vms.get(vm_id)
        if vm is None:
            raise _fail(E.EINVAL, "VM_BIND: vm_id")
        if not vm.alive:
            raise _fail(E.ENOENT, "VM_BIND: vm closed")
        for _obj, _pat, _off, rng, addr, _op, *_rest in ops:
            if rng > VM_SIZE or addr > VM_SIZE - rng:
                raise _fail(E.EINVAL, "VM_BIND: range beyond the VM")
        bos: list[Bo | None] = []
        for obj, _pat, obj_offset, rng, _addr, op, *_rest in ops:
            bo = None
            if obj:
                bo = file.bos.get(obj)
                if bo is None:
                    raise _fail(E.ENOENT, "VM_BIND: obj")
                if rng > bo.size or obj_offset > bo.size - rng:
                    raise _fail(E.EINVAL, "VM_BIND: range beyond the BO")
                if bo.vm is not None and bo.vm is not vm:
                    raise _fail(E.EINVAL, "VM_BIND: BO private to another VM")
            bos.append(bo)
        # bind start: the VM_BIND seqno is drawn now (before the syncs are parsed)
        conn = self._conn_for(file) if vm.lr else None
        bind_seqno = conn.next_seqno() if conn is not None else 0
        fence: UserFence | None = None
        out_syncs: list[xe_sync.SyncEntry] = []
        for raw in syncs_raw:                      # xe_sync_entry_parse, one entry at a time
            _s_ext, s_type, s_flags, s_addr, s_value, s_r0, s_r1 = struct.unpack_from("<QIIQQQQ", raw, 0)
            if s_flags & ~SYNC_FLAG_SIGNAL or s_r0 or s_r1:
                raise _fail(E.EINVAL, "VM_BIND: sync flags/reserved")
            if s_type in (SYNC_SYNCOBJ, SYNC_TIMELINE_SYNCOBJ):
                if s_flags & SYNC_FLAG_SIGNAL and vm.lr:
                    raise _fail(E.EOPNOTSUPP, "VM_BIND: dma-fence sync on an LR VM")
                if s_type == SYNC_SYNCOBJ and s_addr >> 32:
                    raise _fail(E.EINVAL, "VM_BIND: syncobj handle")
                if s_type == SYNC_TIMELINE_SYNCOBJ and not s_value:
                    raise _fail(E.EINVAL, "VM_BIND: timeline point 0")
                out_syncs.append(xe_sync.parse(file, raw, lr=vm.lr, what="VM_BIND"))
                continue
            if s_type != SYNC_USER_FENCE:
                raise _fail(E.EINVAL, "VM_BIND: sync type")
            if num_binds == 0:
                raise _fail(E.EOPNOTSUPP, "VM_BIND: user fence on a bind without ops")
            if not s_flags & SYNC_FLAG_SIGNAL:
                raise _fail(E.EOPNOTSUPP, "VM_BIND: user fence without SIGNAL")
            if s_addr & 7:
                raise _fail(E.EINVAL, "VM_BIND: user fence address alignment")
            if not _access_ok(s_addr, 8):
                raise _fail(E.EFAULT, "VM_BIND: user fence address")
            if fence is not None:
                raise _fail(E.EINVAL, "VM_BIND: more than one user fence")
            fence = UserFence(procmem.task_of(int(caller.pid)), s_addr, s_value)
        if sync_fault:
            raise _fail(sync_fault, "VM_BIND: syncs")
        if out_syncs:                              # binds complete at once: signalled now
            done = signaled_stub()
            for entry in out_syncs:
                xe_sync.signal(entry, done)
            self._fences_written()
        if num_binds == 0:
            return self._fence_now(fence)          # "nothing to do": fences signalled, success
        # execute the ops
        binder = procmem.task_of(int(caller.pid)) if any(o[5] == OP_MAP_USERPTR for o in ops) else None
        did_something = False
        op_events: list[tuple[int, int, int, list[tuple[int, int]]]] = []  # (flags, addr, range, attach)
        for (obj, _pat, obj_offset, rng, addr, op, flags, _region, _c), bo, attach in zip(ops, bos, attach_lists):
            if op == OP_MAP or op == OP_MAP_USERPTR:
                self._unmap_range(vm, addr, addr + rng)
                kind = "null" if flags & BIND_FLAG_NULL else ("userptr" if op == OP_MAP_USERPTR else "bo")
                # a userptr maps the binder's memory, whoever opened the DRM file
                task = binder if kind == "userptr" else None
                self._insert_vma(vm, Vma(addr, addr + rng, kind, bo, obj_offset, list(attach), task))
                if bo is not None:
                    bo.refs += 1
                did_something = True
                op_events.append((F_CREATE, addr, rng, attach))
            elif op == OP_UNMAP:
                did_something |= self._unmap_range(vm, addr, addr + rng)
                op_events.append((F_DESTROY, addr, rng, []))
            elif op == OP_UNMAP_ALL:
                removed = [v for v in vm.vmas if v.bo is bo]
                for v in removed:
                    self._unmap_range(vm, v.start, v.end)
                did_something |= bool(removed)
                op_events.append((F_DESTROY, 0, 0, []))
            else:  # PREFETCH: no state change, no event
                did_something |= any(v.start < addr + rng and v.end > addr for v in vm.vmas)
        if not did_something:
            return self._fence_now(fence)
        if conn is None or conn.status != 1:
            return self._fence_now(fence)
        vh = conn.vms.find(vm)
        ch = conn.clients.find(file)
        if vh is None or ch is None:
            self._detach(conn, -E.ENOENT)
            return self._fence_now(fence)
        events: list[bytes] = []
        for ev_flags, addr, rng, attach in op_events:
            op_seqno = conn.next_seqno()
            events.append(_event(EV_VM_BIND_OP, ev_flags, op_seqno,
                                 struct.pack("<QQQQ", bind_seqno, len(attach), addr, rng)))
            for md_id, cookie in attach:
                md = file.metadata.get(md_id)
                mh = conn.metadata.find(md) if md is not None else None
                events.append(_event(EV_VM_BIND_OP_METADATA, F_CREATE, conn.next_seqno(),
                                     struct.pack("<QQQ", op_seqno, mh or 0, cookie)))
        if op_events:
            bind = _event(EV_VM_BIND, F_STATE_CHANGE, bind_seqno,
                          struct.pack("<QQII", ch, vh, VM_BIND_FLAG_UFENCE if fence else 0, len(op_events)))
            for ev in [bind] + events:
                if not self._queue(conn, ev):
                    return self._fence_now(fence)
        if fence is None:
            return None
        useqno = conn.next_seqno()
        if conn.status == 1 and self._queue(conn, _event(EV_VM_BIND_UFENCE, F_CREATE | F_NEED_ACK, useqno,
                                                         struct.pack("<Q", bind_seqno))):
            if conn.status == 1:
                conn.fences[useqno] = fence
                return None
        return self._fence_now(fence)

    @staticmethod
    def _fence_now(fence: UserFence | None) -> tuple[int, bytes] | None:
        return None if fence is None else (fence.addr, struct.pack("<Q", fence.value))

    @staticmethod
    def _insert_vma(vm: Vm, vma: Vma) -> None:
        i = 0
        while i < len(vm.vmas) and vm.vmas[i].start < vma.start:
            i += 1
        vm.vmas.insert(i, vma)

    def _unmap_range(self, vm: Vm, start: int, end: int) -> bool:
        """Remove [start, end) from the VM, splitting VMAs that straddle it."""
        out: list[Vma] = []
        changed = False
        for v in vm.vmas:
            if v.end <= start or v.start >= end:
                out.append(v)
                continue
            changed = True
            if v.start < start:
                out.append(Vma(v.start, start, v.kind, v.bo, v.offset, list(v.attach), v.task))
                if v.bo is not None:
                    v.bo.refs += 1
            if v.end > end:
                out.append(Vma(end, v.end, v.kind, v.bo, v.offset + (end - v.start) if v.kind != "null" else 0,
                               list(v.attach), v.task))
                if v.bo is not None:
                    v.bo.refs += 1
            if v.bo is not None:
                v.bo.refs -= 1
                self._bo_put(v.bo)
        out.sort(key=lambda v: v.start)
        vm.vmas = out
        return changed

    # -- xe: WAIT_USER_FENCE -------------------------------------------------------------------------
    def _wait_user_fence(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, addr, op, flags, pad, value, mask, timeout, q_id, pad2 = struct.unpack_from("<QQHHIQQqII", k, 0)
        r0, r1 = struct.unpack_from("<QQ", k, 56)
        if ext:
            raise _fail(E.EINVAL, "WAIT_USER_FENCE: extensions")
        if flags & ~UFENCE_FLAG_ABSTIME:
            raise _fail(E.EINVAL, "WAIT_USER_FENCE: flags")
        if op >= UFENCE_OPS:
            raise _fail(E.EINVAL, "WAIT_USER_FENCE: op")
        if pad or pad2 or r0 or r1:
            raise _fail(E.EINVAL, "WAIT_USER_FENCE: pad/reserved")
        if addr & 7:
            raise _fail(E.EINVAL, "WAIT_USER_FENCE: address alignment")
        wq = None
        if q_id:
            with self._lock:
                wq = file.queues.get(q_id)
                if wq is None:
                    raise _fail(E.ENOENT, "WAIT_USER_FENCE: exec_queue_id")
        start = time.monotonic_ns()
        if timeout < 0:                            # wait "forever" (MAX_SCHEDULE_TIMEOUT)
            deadline: int | None = None
            timeout = LONG_MAX
            struct.pack_into("<q", k, 40, timeout)
        elif flags & UFENCE_FLAG_ABSTIME:
            deadline = timeout                     # CLOCK_MONOTONIC nanoseconds
        else:
            deadline = start + timeout
        want = value & mask
        err = 0
        me = procmem.task_of(int(caller.pid))
        while True:
            with self._lock:
                gen = self._fence_gen
                pending = self._pending_fence_writes.pop(me, None)
            for p_addr, data in pending or ():
                try:
                    caller.write(p_addr, data)
                except KernelError:
                    pass
            try:
                current = struct.unpack("<Q", caller.read(addr, 8))[0] & mask
            except KernelError:
                err = E.EFAULT
                break
            if ((op == 0 and current == want) or (op == 1 and current != want) or (op == 2 and current > want)
                    or (op == 3 and current >= want) or (op == 4 and current < want)
                    or (op == 5 and current <= want)):
                break
            if wq is not None and self.xe_exec.reset_status(wq):
                err = E.EIO                        # the exec queue was reset (banned)
                break
            now = time.monotonic_ns()
            if deadline is not None and now >= deadline:
                err = E.ETIME
                break
            wait = CALLER_CHECK if deadline is None else min(CALLER_CHECK, (deadline - now) / 1e9)
            if _caller_gone(caller):               # killed while it sleeps: the call ends now
                err = E.EINTR
                break
            with self._lock:
                if self._fence_gen == gen and not self._pending_fence_writes.get(me):
                    self._fence_cv.wait(wait)
        if not flags & UFENCE_FLAG_ABSTIME:
            left = max(0, timeout - (time.monotonic_ns() - start))
            struct.pack_into("<q", k, 40, left)
        if err:
            raise _fail(err, "WAIT_USER_FENCE")
        return 0

    # -- xe: exec queues ------------------------------------------------------------------------------
    def _exec_queue_create(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, width, num_pl, vm_id, flags, _qid, inst_ptr, r0, r1 = struct.unpack_from("<QHHIIIQQQ", k, 0)
        if flags or r0 or r1:
            raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: flags/reserved")
        n = width * num_pl
        if not n or n > HW_ENGINE_MAX_INSTANCE:
            raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: width * num_placements")
        raw = caller.read(inst_ptr, n * 8)
        eci = [struct.unpack_from("<HHHH", raw, i * 8) for i in range(n)]
        if eci[0][2] != 0:
            raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: gt_id")
        cls = eci[0][0]
        if cls == CLASS_VM_BIND:
            if width != 1 or num_pl != 1 or eci[0][1] != 0:
                raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: bind queue shape")
        else:
            # placements x width: every instance exists, one class, parallel instances consecutive
            for c, inst, gt, _pad in eci:
                if c != cls or gt != 0 or (c, inst) not in ENGINES:
                    raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: engine instance")
            for p in range(num_pl):
                insts = [eci[w * num_pl + p][1] for w in range(width)]
                if width > 1 and insts != list(range(insts[0], insts[0] + width)):
                    raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: parallel placement")
        chain: tuple[list[bytes], int] = ([], 0)
        if ext:
            chain = _read_chain(caller, ext, 48, _check_base)
        is_root = _has_cap(_proc_status(int(caller.pid)) or {}, CAP_SYS_NICE)
        dev = file.device
        with self._reading(dev):
            vm = file.vms.get(vm_id)
            if vm is None or not vm.alive:
                raise _fail(E.ENOENT, "EXEC_QUEUE_CREATE: vm_id")
            debuggable = False
            for e in chain[0]:
                prop, e_pad, value, e_r0, e_r1 = struct.unpack_from("<IIQQQ", e, 16)
                if prop >= EQ_PROP_COUNT or e_pad or e_r0 or e_r1:
                    raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: set_property")
                if prop == EQ_PROP_PRIORITY:
                    if value > 2:
                        raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: priority")
                    if value == 2 and not is_root:
                        raise _fail(E.EPERM, "EXEC_QUEUE_CREATE: high priority")
                elif prop == EQ_PROP_TIMESLICE:
                    pass
                elif prop == EQ_PROP_EUDEBUG:
                    if cls not in (CLASS_RENDER, CLASS_COMPUTE):
                        raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: EUDEBUG on a non render/compute queue")
                    if value & ~EUDEBUG_FLAG_ENABLE:
                        raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: EUDEBUG flags")
                    if not vm.lr:
                        raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: EUDEBUG needs an LR VM")
                    if not value & EUDEBUG_FLAG_ENABLE:
                        raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: EUDEBUG value 0")
                    if not dev.enabled:
                        raise _fail(E.EPERM, "EXEC_QUEUE_CREATE: debugging disabled")
                    debuggable = True
                else:
                    raise _fail(E.EINVAL, f"EXEC_QUEUE_CREATE: property {prop} not supported")
            if chain[1]:
                raise _fail(chain[1], "EXEC_QUEUE_CREATE: extension chain")
            qid = _lowest_free(file.queues)
            q = ExecQueue(file, qid, vm, cls, width, debuggable)
            q.engine_instance = eci[0][1]          # type: ignore[attr-defined]
            file.queues[qid] = q
            if vm.lr and not vm.fault and cls != CLASS_VM_BIND:
                vm.preempt_queues += 1
            struct.pack_into("<I", k, 20, qid)
            conn = self._conn_for(file)
            if conn is not None and debuggable:
                self._queue_event(conn, q, True)
        return 0

    def _exec_queue_destroy(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        qid, pad, r0, r1 = struct.unpack_from("<IIQQ", k, 0)
        if pad or r0 or r1:
            raise _fail(E.EINVAL, "EXEC_QUEUE_DESTROY: pad/reserved")
        dev = file.device
        with self._reading(dev):
            q = file.queues.get(qid)
            if q is None:
                raise _fail(E.ENOENT, "EXEC_QUEUE_DESTROY: exec_queue_id")
            conn = self._conn_for(file)
            if conn is not None and q.debuggable:
                self._queue_event(conn, q, False)
            del file.queues[qid]
            q.alive = False
            self.xe_exec.kill(q)
            if q.vm.lr and not q.vm.fault and q.engine_class != CLASS_VM_BIND:
                q.vm.preempt_queues -= 1
        return 0

    def _exec(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        return self.xe_exec.ioctl(file, caller, k)

    # -- debug metadata ----------------------------------------------------------------------------
    def _metadata_create(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, md_type, user_addr, length = struct.unpack_from("<QQQQ", k, 0)
        dev = file.device
        with self._reading(dev):                   # the discovery gate comes first
            pass
        if ext:
            raise _fail(E.EINVAL, "DEBUG_METADATA_CREATE: extensions")
        if md_type >= METADATA_NUM:
            raise _fail(E.EINVAL, "DEBUG_METADATA_CREATE: type")
        if not user_addr or not length:
            raise _fail(E.EINVAL, "DEBUG_METADATA_CREATE: user_addr/len")
        if not _access_ok(user_addr, length):
            raise _fail(E.EFAULT, "DEBUG_METADATA_CREATE: user range")
        if length >= MAX_METADATA_LEN:
            raise _fail(E.ENOMEM, "DEBUG_METADATA_CREATE: len")
        data = caller.read(user_addr, length)
        with self._reading(dev):
            md_id = _lowest_free(file.metadata)
            md = Metadata(file, md_id, md_type, data)
            file.metadata[md_id] = md
            struct.pack_into("<I", k, 32, md_id)
            conn = self._conn_for(file)
            if conn is not None:
                self._metadata_event(conn, md, True)
        return 0

    def _metadata_destroy(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, md_id = struct.unpack_from("<QI", k, 0)
        dev = file.device
        with self._reading(dev):
            if ext:
                raise _fail(E.EINVAL, "DEBUG_METADATA_DESTROY: extensions")
            md = file.metadata.get(md_id)
            if md is None:
                raise _fail(E.ENOENT, "DEBUG_METADATA_DESTROY: metadata_id")
            conn = self._conn_for(file)
            if conn is not None:
                self._metadata_event(conn, md, False)
            del file.metadata[md_id]
            md.alive = False
        return 0

    # -- CONNECT and discovery ---------------------------------------------------------------------
    def _connect(self, file: DeviceFile, caller: Caller, k: bytearray) -> DebuggerFile:
        dev = file.device
        with self._reading(dev):
            if not dev.enabled:
                raise _fail(E.ENODEV, "EUDEBUG_CONNECT: debugging disabled")
            ext, pid, flags, version = struct.unpack_from("<QQII", k, 0)
            if ext:
                raise _fail(E.EINVAL, "EUDEBUG_CONNECT: extensions")
            if pid == 0:
                raise _fail(E.EINVAL, "EUDEBUG_CONNECT: pid 0")
            if flags:
                raise _fail(E.EINVAL, "EUDEBUG_CONNECT: flags")
            if version not in (0, EUDEBUG_VERSION):
                raise _fail(E.EINVAL, "EUDEBUG_CONNECT: version")
            struct.pack_into("<I", k, 20, EUDEBUG_VERSION)
            pid32 = pid & 0xFFFFFFFF
            if pid32 & 0x80000000:
                raise _fail(E.ENOENT, "EUDEBUG_CONNECT: no such process")
            target_status = _proc_status(pid32)
            tgid = _ids(target_status, "Tgid") if target_status else []
            if not tgid:
                raise _fail(E.ENOENT, "EUDEBUG_CONNECT: no such process")
            target = tgid[0]
            if not self._may_access(int(caller.pid), target, target_status or {}):
                raise _fail(E.EACCES, "EUDEBUG_CONNECT: no ptrace access")
            ttask = procmem.task_of(target)
            if ttask.fd < 0:                      # gone since its status was read (a zombie is
                raise _fail(E.ENOENT, "EUDEBUG_CONNECT: no such process")  # still there)
            if any(c.target_task is ttask for c in dev.conns):
                raise _fail(E.EBUSY, "EUDEBUG_CONNECT: target already debugged")
            conn = Connection(self, dev, target)
            dfile = DebuggerFile(conn)
            conn.file = dfile
            dev.conns.append(conn)
            dev.attach_count += 1
            dev.writers_waiting += 1          # discovery runs before any other resource change
        worker = threading.Thread(target=self._discovery, args=(conn,), daemon=True,
                                  name=f"xe-eudebug-discovery-{dev.index}")
        try:
            worker.start()
        except RuntimeError:
            with self._lock:                      # undo the attach: nothing was reported yet
                dev.writers_waiting -= 1
                dev.conns.remove(conn)
                conn.status = -E.ENOMEM
                self._gate_cv.notify_all()
            raise _fail(E.ENOMEM, "EUDEBUG_CONNECT: no discovery worker") from None
        return dfile

    @staticmethod
    def _may_access(caller_pid: int, target: int, tstatus: dict[str, str]) -> bool:
        cstatus = _proc_status(caller_pid)
        if cstatus is None:
            return False
        ctgid = _ids(cstatus, "Tgid")
        if ctgid and ctgid[0] == target:
            return True
        cu, cg = _ids(cstatus, "Uid"), _ids(cstatus, "Gid")
        tu, tg = _ids(tstatus, "Uid"), _ids(tstatus, "Gid")
        privileged = _has_cap(cstatus, CAP_SYS_PTRACE)
        same_ids = bool(cu and cg and len(tu) >= 3 and len(tg) >= 3
                        and all(x == cu[0] for x in tu[:3]) and all(x == cg[0] for x in tg[:3]))
        if not same_ids and not privileged:
            return False
        # ptrace refuses a target that is not dumpable (setuid programs, prctl(PR_SET_DUMPABLE, 0),
        # a changed uid) unless the caller has CAP_SYS_PTRACE.
        return privileged or _dumpable(target, tstatus)

    def _discovery(self, conn: Connection) -> None:
        dev = conn.device
        with self._lock:
            while dev.writer or dev.readers:
                self._gate_cv.wait()
            dev.writers_waiting -= 1
            dev.writer = True
            try:
                self._replay(conn)
            except Exception:  # pragma: no cover - a model bug must not wedge the device
                log.exception("discovery failed")
            finally:
                dev.writer = False
                conn.discovery_done = True
                self._gate_cv.notify_all()
                conn.cv.notify_all()

    def _replay(self, conn: Connection) -> None:
        for file in list(conn.device.files):
            if conn.status != 1:
                return
            if file.released or file.owner_task is not conn.target_task:
                continue
            if not self._client_event(conn, file, True):
                return
            for md_id in sorted(file.metadata):
                if not self._metadata_event(conn, file.metadata[md_id], True):
                    return
            for vm_id in sorted(file.vms):
                vm = file.vms[vm_id]
                if not vm.lr:
                    if vm.vmas and _cfg(self.config, "fidelity_nonlr_discovery_abort"):
                        return                     # the bind replay finds no VM handle: stop
                    continue
                if not self._vm_event(conn, vm, True):
                    return
                if vm.vmas and not self._replay_binds(conn, file, vm):
                    return
            for qid in sorted(file.queues):
                q = file.queues[qid]
                if q.debuggable and not self._queue_event(conn, q, True):
                    return

    def _replay_binds(self, conn: Connection, file: DeviceFile, vm: Vm) -> bool:
        ch, vh = conn.clients.find(file), conn.vms.find(vm)
        bind_seqno = conn.next_seqno()
        if not self._queue(conn, _event(EV_VM_BIND, F_STATE_CHANGE, bind_seqno,
                                        struct.pack("<QQII", ch, vh, 0, len(vm.vmas)))):
            return False
        for vma in vm.vmas:
            op_seqno = conn.next_seqno()
            if not self._queue(conn, _event(EV_VM_BIND_OP, F_CREATE, op_seqno,
                                            struct.pack("<QQQQ", bind_seqno, len(vma.attach), vma.start,
                                                        vma.end - vma.start))):
                return False
            for md_id, cookie in vma.attach:
                md = file.metadata.get(md_id)
                mh = conn.metadata.find(md) if md is not None else None
                if mh is None:
                    self._detach(conn, -E.ENOENT)  # the mapping names destroyed metadata
                    return False
                if not self._emit(conn, EV_VM_BIND_OP_METADATA, F_CREATE, struct.pack("<QQQ", op_seqno, mh, cookie)):
                    return False
        return True

    # -- DRM file release ---------------------------------------------------------------------------
    def _release_device_file(self, file: DeviceFile) -> None:
        dev = file.device
        with self._reading(dev):
            for conn in list(dev.conns):
                if conn.target_task is file.owner_task and conn.discovery_done:
                    self._client_event(conn, file, False)
            if file in dev.files:
                dev.files.remove(file)
            for vm in file.vms.values():
                self._vm_teardown(vm)
            for q in file.queues.values():
                q.alive = False
                self.xe_exec.kill(q)
            file.syncobjs = {}
            for md in file.metadata.values():
                md.alive = False
            for bo in file.bos.values():
                bo.handle_open = False
                self._bo_put(bo)
            file.vms, file.queues, file.metadata, file.bos = {}, {}, {}, {}

    # -- debugger fd ioctls ------------------------------------------------------------------------------
    def _read_event(self, conn: Connection, caller: Caller, arg: bytes) -> tuple[int, bytes]:
        addr = int(getattr(caller, "arg_addr", 0) or 0)
        hdr = caller.read(addr, EVENT_HEADER.size)
        length, etype, flags, _seqno, reserved = EVENT_HEADER.unpack(hdr)
        if etype == EV_NONE or etype > EV_MAX or etype != EV_READ:
            raise _fail(E.EINVAL, "READ_EVENT: type")
        if length < EVENT_HEADER.size:
            raise _fail(E.EINVAL, "READ_EVENT: len")
        if flags or reserved:
            raise _fail(E.EINVAL, "READ_EVENT: flags/reserved")
        nonblock = bool(getattr(caller, "nonblock", False))
        with self._lock:
            if not nonblock and not conn.fifo and conn.status == 1:
                deadline = time.monotonic() + float(_cfg(self.config, "read_event_timeout"))
                while not conn.fifo and conn.status == 1:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    conn.cv.wait(min(left, CALLER_CHECK))
                    if _caller_gone(caller):       # killed while it sleeps: the call ends now
                        raise _fail(E.EINTR, "READ_EVENT: caller killed")
            if conn.fifo:
                head = conn.fifo[0]
                need = len(head)
                if length < need:
                    event = None
                else:
                    event = conn.fifo.popleft()
                    conn.cv.notify_all()           # room for blocked producers
                    self._poll_changed(conn)
            elif conn.status != 1:
                raise _fail(E.ENOTCONN, "READ_EVENT: detached")
            elif nonblock:
                raise _fail(E.EAGAIN, "READ_EVENT")
            else:
                raise _fail(E.ENOENT, "READ_EVENT: timed out")
        if event is None:
            caller.write(addr, struct.pack("<I", need))
            raise _fail(E.EMSGSIZE, "READ_EVENT: buffer too small")
        # A fault here loses the event, as in the kernel; nothing follows the copy.
        write = getattr(caller, "write_on_return", None) or caller.write
        write(addr, event)
        return 0, b""

    def _ack_event(self, conn: Connection, caller: Caller, arg: bytes) -> tuple[int, bytes]:
        _type, flags, seqno = struct.unpack_from("<IIQ", arg, 0)
        if flags:
            raise _fail(E.EINVAL, "ACK_EVENT: flags")
        with self._lock:
            if conn.status != 1:
                raise _fail(E.ENOTCONN, "ACK_EVENT: detached")
            fence = conn.fences.pop(seqno, None)
            if fence is None:
                raise _fail(E.EINVAL, "ACK_EVENT: seqno not tracked")
            self._signal_fence(fence)
        return 0, b""

    def _vm_open(self, conn: Connection, caller: Caller, arg: bytes) -> tuple[File, bytes]:
        _ext, ch, vh, flags, timeout = struct.unpack_from("<QQQQQ", arg, 0)
        if flags:
            raise _fail(E.EINVAL, "VM_OPEN: flags")
        if timeout > VM_SYNC_MAX_TIMEOUT_NSECS:
            raise _fail(E.EINVAL, "VM_OPEN: timeout_ns")
        with self._lock:
            if conn.status != 1:
                raise _fail(E.ENOTCONN, "VM_OPEN: detached")
            client = conn.clients.lookup(ch)
            if client is None or client.released:
                raise _fail(E.EINVAL, "VM_OPEN: client_handle")
            vm = conn.vms.lookup(vh)
            if vm is None or not vm.alive:
                raise _fail(E.EINVAL, "VM_OPEN: vm_handle")
            return VmFile(conn, vm, ch & 0xFFFFFFFF, vh & 0xFFFFFFFF, timeout), b""

    def _read_metadata(self, conn: Connection, caller: Caller, arg: bytes) -> tuple[int, bytes]:
        ch, mh, flags, reserved, ptr, size = struct.unpack_from("<QQIIQQ", arg, 0)
        if flags:
            raise _fail(E.EINVAL, "READ_METADATA: flags")
        if not _access_ok(ptr, size):
            raise _fail(E.EFAULT, "READ_METADATA: user range")
        with self._lock:
            if conn.status != 1:
                raise _fail(E.ENOTCONN, "READ_METADATA: detached")
            client = conn.clients.lookup(ch)
            if client is None or client.released:
                raise _fail(E.EINVAL, "READ_METADATA: client_handle")
            md = conn.metadata.lookup(mh)
            if md is None or not md.alive:
                raise _fail(E.EINVAL, "READ_METADATA: metadata_handle")
            data = md.data
        if size and size < len(data):
            raise _fail(E.EINVAL, "READ_METADATA: size smaller than the metadata")
        if size:
            caller.write(ptr, data)
        return 0, struct.pack("<QQIIQQ", ch, mh, flags, reserved, ptr, len(data))

    def _eu_control(self, conn: Connection, caller: Caller, arg: bytes) -> tuple[int, bytes]:
        ch, cmd, flags, _seqno, qh, lh, _reserved, bsize, bptr = struct.unpack_from("<QIIQQQIIQ", arg, 0)
        if flags:
            raise _fail(E.EINVAL, "EU_CONTROL: flags")
        if not _access_ok(bptr, bsize):
            raise _fail(E.EFAULT, "EU_CONTROL: bitmask range")
        with self._lock:
            client = conn.clients.lookup(ch)
            if client is None or client.released:
                raise _fail(E.EINVAL, "EU_CONTROL: client_handle")
            if conn.status != 1:
                raise _fail(E.ENOTCONN, "EU_CONTROL: detached")
            if bsize % 4:
                raise _fail(E.EINVAL, "EU_CONTROL: bitmask_size")
            q = conn.queues.lookup(qh)
            if q is None or not q.alive or not q.debuggable or q.vm.file is not client:
                raise _fail(E.EINVAL, "EU_CONTROL: exec_queue_handle")
            lrc = conn.lrcs.lookup(lh)
            if lrc is None or not lrc.queue.alive:
                raise _fail(E.EINVAL, "EU_CONTROL: lrc_handle")
        effective = min(bsize, EU_BITMASK_SIZE)
        if effective:
            caller.read(bptr, effective)
        # No EU threads run in the simulator: there is never a running run-alone context.
        if cmd == EU_CONTROL_INTERRUPT_ALL:
            if bsize:
                raise _fail(E.EINVAL, "EU_CONTROL: INTERRUPT_ALL with a bitmask")
            raise _fail(E.EINVAL, "EU_CONTROL: INTERRUPT_ALL: no such engine running (no EU model)")
        if cmd in (EU_CONTROL_STOPPED, EU_CONTROL_RESUME):
            raise _fail(E.ENOENT, "EU_CONTROL: no running context (no EU model)")
        raise _fail(E.EINVAL, "EU_CONTROL: cmd")

    # -- vm fd -------------------------------------------------------------------------------------
    def _vm_access(self, file: VmFile, offset: int, count: int, data: bytes | None) -> bytes:
        """pread (data None) or pwrite of `count` bytes at GPU VA `offset` (§6.2).  Returns the
        bytes read, or for a write the prefix of `data` written."""
        if offset < 0:
            raise _fail(E.EINVAL, "vm access: negative offset")
        with self._lock:
            conn = file.conn
            vm = conn.vms.lookup(file.vm_handle)
            if vm is not file.vm or not vm.alive:
                raise _fail(E.EINVAL, "vm access: VM handle no longer valid")
            if count <= 0:
                return b""
            out: list[bytes] = []
            done = 0
            pos = offset
            err = 0
            while done < count:
                vma = next((v for v in vm.vmas if v.start <= pos < v.end), None)
                if vma is None or vma.kind == "null":
                    err = E.EINVAL
                    break
                n = min(count - done, vma.end - pos, VM_ACCESS_CHUNK)
                off = vma.offset + (pos - vma.start)
                try:
                    if vma.kind == "bo":
                        assert vma.bo is not None
                        if data is None:
                            chunk = os.pread(vma.bo.memfd, n, off)
                            chunk = chunk.ljust(n, b"\0")
                            out.append(chunk)
                        else:
                            os.pwrite(vma.bo.memfd, data[done:done + n], off)
                    else:
                        # the binder's memory, reached only while that process lives
                        task = vma.task if vma.task is not None else vm.file.owner_task
                        if data is None:
                            out.append(task.read(off, n))
                        else:
                            task.write(off, data[done:done + n])
                except OSError as exc:
                    err = E.EFAULT if exc.errno in (E.EFAULT, E.ESRCH, E.EPERM) else (exc.errno or E.EIO)
                    break
                done += n
                pos += n
            if done == 0 and err:
                raise _fail(err, "vm access")
            return b"".join(out) if data is None else data[:done]


_PHYS: list[int] = []


def _phys_mem() -> int:
    if not _PHYS:
        try:
            _PHYS.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            _PHYS.append(16 << 30)
    return _PHYS[0]
