"""The device and its files (the driver's xe_device.c and the DRM core's ioctl dispatch).

`Kernel` is the simulated Xe driver: one class assembled from one mixin per driver file, so every
handler keeps its name (and a subclass can override any of them).  The ioctl tables live here.
"""

from __future__ import annotations

import errno as E
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from ... import uapi as _uapi
from .. import procmem
from .drm_syncobj import DrmSyncobj
from .xe_exec import XeExec
from .xe_device_types import (
    WaitQueue,
    DRIVER_DATE, DRIVER_DESC, DRIVER_NAME, DRIVER_VERSION, DRM_IOCTL_BASE, DRM_IOCTL_GEM_CLOSE,
    DRM_IOCTL_VERSION, DRM_IOCTL_XE_DEBUG_METADATA_CREATE, DRM_IOCTL_XE_DEBUG_METADATA_DESTROY,
    DRM_IOCTL_XE_DEVICE_QUERY, DRM_IOCTL_XE_EUDEBUG_CONNECT, DRM_IOCTL_XE_EXEC,
    DRM_IOCTL_XE_EXEC_QUEUE_CREATE, DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, DRM_IOCTL_XE_GEM_CREATE,
    DRM_IOCTL_XE_GEM_MMAP_OFFSET, DRM_IOCTL_XE_VM_BIND, DRM_IOCTL_XE_VM_CREATE,
    DRM_IOCTL_XE_VM_DESTROY, DRM_IOCTL_XE_WAIT_USER_FENCE, DRM_XE_EUDEBUG_IOCTL_ACK_EVENT,
    DRM_XE_EUDEBUG_IOCTL_EU_CONTROL, DRM_XE_EUDEBUG_IOCTL_READ_EVENT,
    DRM_XE_EUDEBUG_IOCTL_READ_METADATA, DRM_XE_EUDEBUG_IOCTL_VM_OPEN, Device, DeviceFile,
    KernelError, PAGE, POLLERR, POLLHUP, POLLIN, POLLOUT, POLLRDNORM, POLLWRNORM,
    _DefaultConfig, _cfg, _fail,
)
from .xe_bo import XeBoMixin
from .xe_debug_metadata import XeDebugMetadataMixin
from .xe_eudebug import DebuggerFile, XeEudebugMixin
from .xe_eudebug_vm import VmFile, VmGenerations, XeEudebugVmMixin
from .xe_exec_queue import XeExecQueueMixin
from .xe_eudebug_hw import XeEudebugHwMixin
from .xe_gt_pagefault import XeGtPagefaultMixin
from .xe_query import XeQueryMixin
from .xe_sysfs import XeSysfsMixin
from .xe_vm import XeVmMixin
from .xe_wait_user_fence import XeWaitUserFenceMixin

if TYPE_CHECKING:
    from .xe_device_types import Caller, File


# ------------------------------------------------------------------------------------------------
# The kernel

class Kernel(XeBoMixin, XeQueryMixin, XeVmMixin, XeWaitUserFenceMixin,
             XeExecQueueMixin, XeDebugMetadataMixin, XeEudebugMixin, XeEudebugVmMixin,
             XeEudebugHwMixin, XeGtPagefaultMixin, XeSysfsMixin):
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
        self._gate_cv = WaitQueue(self)
        self._fence_cv = WaitQueue(self)
        self._fence_gen = 0
        self._pending_fence_writes: dict[procmem.Task, list[tuple[int, bytes]]] = {}
        self._dead_fds: deque[tuple[float, int]] = deque()
        self._vm_gens = VmGenerations()            # VM generation counters of read grants
        enabled = bool(_cfg(self.config, "enable_default"))
        self.devices = [Device(i, enabled, self.config) for i in range(int(_cfg(self.config, "devices")))]
        self.on_poll_change: Callable[[File], None] = lambda file: None
        self.might_sleep: Callable[[], None] = lambda: None  # set by the server (see WaitQueue)
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
        self._eudebug_hw_init()
        self._pagefault_init()
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
            if dev.enabled != previous:
                self._eudebug_hw_enable(dev, dev.enabled)
            return previous

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
        v = _uapi.drm_version.from_buffer(k)
        v.version_major, v.version_minor, v.version_patchlevel = DRIVER_VERSION
        err = 0
        for len_field, ptr_field, value in (("name_len", "name", DRIVER_NAME), ("date_len", "date", DRIVER_DATE),
                                            ("desc_len", "desc", DRIVER_DESC)):
            buf_len, ptr = getattr(v, len_field), getattr(v, ptr_field)
            n = min(len(value), buf_len)
            setattr(v, len_field, len(value))
            if n and ptr and not err:
                try:
                    caller.write(ptr, value[:n])
                except KernelError as exc:
                    err = exc.errno
        if err:
            raise _fail(err, "DRM_IOCTL_VERSION")
        return 0

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
            self._vm_gens.close()

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
