"""Helpers of the execution tests: a DRM client in this process that binds BOs, writes batches,
runs them with DRM_IOCTL_XE_EXEC and waits on user fences and syncobjs (raw ioctls only)."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time
from typing import Any

from xe_eudebug import ioctl as seam
from xe_eudebug import uapi as U
from xe_eudebug.device import open_device
from xe_eudebug.isa import mi

from waiting import wait_for

LR = U.DRM_XE_VM_CREATE_FLAG_LR_MODE
FAULT = U.DRM_XE_VM_CREATE_FLAG_FAULT_MODE
RENDER, COPY, COMPUTE = U.DRM_XE_ENGINE_CLASS_RENDER, U.DRM_XE_ENGINE_CLASS_COPY, U.DRM_XE_ENGINE_CLASS_COMPUTE
BO_SIZE = 0x10000
NSEC = 1_000_000_000
START_TIMEOUT_S = 30.0  # seconds a submitted job may take to start on a loaded machine

MI_NOOP = mi.mi(mi.MI_NOOP)
MI_BATCH_BUFFER_END = mi.mi(mi.MI_BATCH_BUFFER_END)
MI_ARB_CHECK = mi.mi(mi.MI_ARB_CHECK)
CS_GPR = [0x600 + 8 * i for i in range(16)]


def sdi(addr: int, *values: int) -> list[int]:
    """MI_STORE_DATA_IMM of dwords `values` at `addr`."""
    return [mi.mi(mi.MI_STORE_DATA_IMM, 3 + len(values)), addr & 0xFFFFFFFF, addr >> 32, *values]


def lri(reg: int, value: int) -> list[int]:
    return [mi.mi(mi.MI_LOAD_REGISTER_IMM, 3, mi.MI_LRI_LRM_CS_MMIO), reg, value]


def lrm(reg: int, addr: int) -> list[int]:
    return [mi.mi(mi.MI_LOAD_REGISTER_MEM, 4, mi.MI_LRI_LRM_CS_MMIO), reg, addr & 0xFFFFFFFF, addr >> 32]


def srm(reg: int, addr: int) -> list[int]:
    return [mi.mi(mi.MI_STORE_REGISTER_MEM, 4, mi.MI_LRI_LRM_CS_MMIO), reg, addr & 0xFFFFFFFF, addr >> 32]


def lrr(src: int, dst: int) -> list[int]:
    return [mi.mi(mi.MI_LOAD_REGISTER_REG, 3, mi.MI_LRR_SOURCE_CS_MMIO | mi.MI_LRR_DEST_CS_MMIO), src, dst]


def bbs(addr: int, second_level: bool = False) -> list[int]:
    flags = mi.MI_BBS_PPGTT | (mi.MI_BBS_SECOND_LEVEL if second_level else 0)
    return [mi.mi(mi.MI_BATCH_BUFFER_START, 3, flags), addr & 0xFFFFFFFF, addr >> 32]


def spin(batch: int, mark: int) -> bytes:
    """A batch for GPU address `batch` that stores 1 at `mark` (so that the test sees it run:
    EXEC returns once the job is queued) and then jumps to itself forever."""
    return pack(sdi(mark, 1), MI_ARB_CHECK, bbs(batch + 16))


def semaphore_wait(addr: int, value: int, compare: int = mi.SAD_EQUAL_SDD) -> list[int]:
    header = mi.mi(mi.MI_SEMAPHORE_WAIT, 4, compare << mi.MI_SEMAPHORE_COMPARE_SHIFT | 1 << 15)
    return [header, value, addr & 0xFFFFFFFF, addr >> 32]


def pack(*parts: Any) -> bytes:
    dwords: list[int] = []
    for p in parts:
        dwords.extend([p] if isinstance(p, int) else p)
    return struct.pack(f"<{len(dwords)}I", *dwords)


class GpuClient:
    """One DRM client of the device under test; everything it creates is freed by `close`."""

    def __init__(self, device: str | None = None, fd: int | None = None) -> None:
        self.fd = open_device(device) if fd is None else fd
        self.keep: list[Any] = []
        self.maps: dict[int, Any] = {}

    def close(self) -> None:
        for m in self.maps.values():
            try:
                m.close()
            except (BufferError, ValueError):
                pass
        self.maps.clear()
        os.close(self.fd)

    def __enter__(self) -> "GpuClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- objects ------------------------------------------------------------------------------------
    def vm(self, flags: int = LR) -> int:
        arg = U.drm_xe_vm_create(flags=flags)
        seam.ioctl(self.fd, U.DRM_IOCTL_XE_VM_CREATE, arg)
        return int(arg.vm_id)

    def bo(self, size: int = BO_SIZE) -> int:
        arg = U.drm_xe_gem_create(size=size, placement=1, cpu_caching=U.DRM_XE_GEM_CPU_CACHING_WB)
        seam.ioctl(self.fd, U.DRM_IOCTL_XE_GEM_CREATE, arg)
        return int(arg.handle)

    def map(self, bo: int, size: int = BO_SIZE) -> Any:
        if bo not in self.maps:
            arg = U.drm_xe_gem_mmap_offset(handle=bo)
            seam.ioctl(self.fd, U.DRM_IOCTL_XE_GEM_MMAP_OFFSET, arg)
            self.maps[bo] = seam.mmap(self.fd, size, int(arg.offset))
        return self.maps[bo]

    def write(self, bo: int, offset: int, data: bytes) -> None:
        self.map(bo)[offset:offset + len(data)] = data

    def read32(self, bo: int, offset: int) -> int:
        return struct.unpack("<I", bytes(self.map(bo)[offset:offset + 4]))[0]

    def read64(self, bo: int, offset: int) -> int:
        return struct.unpack("<Q", bytes(self.map(bo)[offset:offset + 8]))[0]

    def wait_started(self, bo: int, offset: int, what: str) -> None:
        """Wait for the started mark of a `spin` batch, the dword at `offset` of `bo`."""
        assert wait_for(lambda: self.read32(bo, offset), START_TIMEOUT_S), \
            f"{what} did not start in {START_TIMEOUT_S} s"

    def bind(self, vm: int, bo: int, addr: int, size: int = BO_SIZE, syncs: list[Any] | None = None,
             *, op: int = U.DRM_XE_VM_BIND_OP_MAP, userptr: int = 0, flags: int = 0) -> None:
        """Map `bo` (or `userptr` with OP_MAP_USERPTR, or nothing with the NULL flag) at `addr`
        and wait until the bind is complete (a user fence)."""
        cell = ctypes.c_uint64(0)
        fence = user_fence(ctypes.addressof(cell), 1)
        all_syncs = [fence] + list(syncs or [])
        arr = (U.drm_xe_sync * len(all_syncs))(*all_syncs)
        arg = U.drm_xe_vm_bind(vm_id=vm, num_binds=1, num_syncs=len(all_syncs), syncs=ctypes.addressof(arr))
        arg.bind.op = op
        arg.bind.obj = bo
        arg.bind.pat_index = 2                   # Xe2's write-back, coherent index
        arg.bind.flags = flags
        if userptr:
            arg.bind.userptr = userptr
        arg.bind.addr = addr
        arg.bind.range = size
        seam.ioctl(self.fd, U.DRM_IOCTL_XE_VM_BIND, arg)
        assert self.wait_ufence(ctypes.addressof(cell), 1, 10 * NSEC) == 0

    def queue(self, vm: int, engine_class: int = RENDER, instance: int = 0, gt: int = 0) -> int:
        eci = U.drm_xe_engine_class_instance(engine_class=engine_class, engine_instance=instance, gt_id=gt)
        self.keep.append(eci)
        arg = U.drm_xe_exec_queue_create(width=1, num_placements=1, vm_id=vm,
                                         instances=ctypes.addressof(eci))
        seam.ioctl(self.fd, U.DRM_IOCTL_XE_EXEC_QUEUE_CREATE, arg)
        return int(arg.exec_queue_id)

    def queue_destroy(self, q: int) -> None:
        seam.ioctl(self.fd, U.DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, U.drm_xe_exec_queue_destroy(exec_queue_id=q))

    # -- execution ----------------------------------------------------------------------------------
    def exec(self, q: int, address: int, syncs: list[Any] = (), *, nbb: int = 1, **fields: int) -> int:
        """DRM_IOCTL_XE_EXEC; 0 or -errno."""
        arr = (U.drm_xe_sync * max(1, len(syncs)))(*syncs)
        self.keep.append(arr)
        arg = U.drm_xe_exec(exec_queue_id=q, num_syncs=len(syncs), syncs=ctypes.addressof(arr) if syncs else 0,
                            address=address, num_batch_buffer=nbb)
        for name, value in fields.items():
            setattr(arg, name, value)
        return seam.try_ioctl(self.fd, U.DRM_IOCTL_XE_EXEC, arg)

    def wait_ufence(self, addr: int, value: int, timeout_ns: int, queue: int = 0) -> int:
        arg = U.drm_xe_wait_user_fence(addr=addr, op=U.DRM_XE_UFENCE_WAIT_OP_EQ, value=value,
                                       mask=0xFFFFFFFFFFFFFFFF, timeout=timeout_ns, exec_queue_id=queue)
        return seam.try_ioctl(self.fd, U.DRM_IOCTL_XE_WAIT_USER_FENCE, arg)

    def bo_addr(self, bo: int, offset: int = 0) -> int:
        """CPU address of a BO's mapping (user fence waits on exec fences read it)."""
        m = self.map(bo)
        return ctypes.addressof(ctypes.c_char.from_buffer(m)) + offset

    # -- syncobjs -------------------------------------------------------------------------------------
    def syncobj(self, flags: int = 0) -> int:
        arg = U.drm_syncobj_create(flags=flags)
        seam.ioctl(self.fd, U.DRM_IOCTL_SYNCOBJ_CREATE, arg)
        return int(arg.handle)

    def syncobj_wait(self, handles: list[int], timeout_ns: int, flags: int = 0) -> tuple[int, int]:
        """(0 or -errno, first_signaled); `timeout_ns` relative, converted to absolute."""
        arr = (ctypes.c_uint32 * len(handles))(*handles)
        arg = U.drm_syncobj_wait(handles=ctypes.addressof(arr), count_handles=len(handles), flags=flags,
                                 timeout_nsec=time.monotonic_ns() + timeout_ns)
        ret = seam.try_ioctl(self.fd, U.DRM_IOCTL_SYNCOBJ_WAIT, arg)
        return ret, int(arg.first_signaled)

    def timeline_wait(self, handles: list[int], points: list[int], timeout_ns: int, flags: int = 0) -> int:
        h = (ctypes.c_uint32 * len(handles))(*handles)
        p = (ctypes.c_uint64 * len(points))(*points)
        arg = U.drm_syncobj_timeline_wait(handles=ctypes.addressof(h), points=ctypes.addressof(p),
                                          count_handles=len(handles), flags=flags,
                                          timeout_nsec=time.monotonic_ns() + timeout_ns)
        return seam.try_ioctl(self.fd, U.DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT, arg)

    def syncobj_array(self, request: int, handles: list[int], **fields: int) -> int:
        arr = (ctypes.c_uint32 * max(1, len(handles)))(*handles)
        arg = U.drm_syncobj_array(handles=ctypes.addressof(arr), count_handles=len(handles), **fields)
        return seam.try_ioctl(self.fd, request, arg)

    def timeline_array(self, request: int, handles: list[int], points: list[int], flags: int = 0) -> tuple[int, list[int]]:
        h = (ctypes.c_uint32 * max(1, len(handles)))(*handles)
        p = (ctypes.c_uint64 * max(1, len(points)))(*points)
        arg = U.drm_syncobj_timeline_array(handles=ctypes.addressof(h), points=ctypes.addressof(p),
                                           count_handles=len(handles), flags=flags)
        ret = seam.try_ioctl(self.fd, request, arg)
        return ret, list(p)[:len(points)]


def user_fence(addr: int, value: int) -> Any:
    return U.drm_xe_sync(type=U.DRM_XE_SYNC_TYPE_USER_FENCE, flags=U.DRM_XE_SYNC_FLAG_SIGNAL,
                         addr=addr, timeline_value=value)


def syncobj_sync(handle: int, signal: bool = True, point: int = 0) -> Any:
    kind = U.DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ if point else U.DRM_XE_SYNC_TYPE_SYNCOBJ
    return U.drm_xe_sync(type=kind, flags=U.DRM_XE_SYNC_FLAG_SIGNAL if signal else 0,
                         handle=handle, timeline_value=point)


ERR = {name: -getattr(errno, name) for name in ("EINVAL", "ENOENT", "EFAULT", "EOPNOTSUPP", "ETIME",
                                                "ECANCELED", "EIO")}
