"""GEM buffer objects (the driver's xe_bo.c, DRM core's GEM_CLOSE)."""

from __future__ import annotations

import errno as E
import os
import time
from typing import TYPE_CHECKING

from ... import uapi as _uapi
from .xe_device_types import (
    CPU_CACHING_WB, CPU_CACHING_WC, GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM, GEM_CREATE_FLAG_SCANOUT,
    GEM_FLAGS, MMAP_OFFSET_FLAG_PCI_BARRIER, PAGE, PCI_BARRIER_MMAP_OFFSET, _fail, _lowest_free,
)
from .xe_query import _phys_mem

_GEM_CLOSE = _uapi.layout(_uapi.drm_gem_close, "handle")
_GEM_CREATE = _uapi.layout(_uapi.drm_xe_gem_create, "extensions", "size", "placement", "flags", "vm_id", "handle",
                           "cpu_caching")
_GEM_CREATE_PAD = _uapi.layout(_uapi.drm_xe_gem_create, "pad")
_GEM_CREATE_RESERVED = _uapi.layout(_uapi.drm_xe_gem_create, "reserved")
_GEM_CREATE_HANDLE = _uapi.layout(_uapi.drm_xe_gem_create, "handle")
_MMAP_OFFSET = _uapi.layout(_uapi.drm_xe_gem_mmap_offset)
_MMAP_OFFSET_OFFSET = _uapi.layout(_uapi.drm_xe_gem_mmap_offset, "offset")

if TYPE_CHECKING:
    from .xe_device_types import Caller, DeviceFile
    from .xe_vm import Vm


class Bo:
    def __init__(self, file: DeviceFile, size: int, memfd: int, vm: "Vm | None") -> None:
        self.file = file
        self.size = size
        self.memfd = memfd
        self.vm = vm
        self.mmap_offset = 0
        self.handle_open = True
        self.refs = 0                              # VMAs backed by it
        self.cpu_caching = CPU_CACHING_WB
        self.placement = 1                         # GEM_CREATE's placement mask
        self.region = 0                            # memory region it lives in (0: system memory)


class XeBoMixin:
    """The `Kernel` methods of xe_bo.py (mixed into `Kernel` in xe_device.py)."""

    def _gem_close(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        handle = _GEM_CLOSE.unpack_from(k)[0]
        with self._lock:
            bo = file.bos.pop(handle, None)
            if bo is None:
                raise _fail(E.EINVAL, "DRM_IOCTL_GEM_CLOSE: unknown handle")
            bo.handle_open = False
            self._bo_put(bo)
        return 0

    def _bo_put(self, bo: Bo) -> None:
        if not bo.handle_open and bo.refs == 0 and bo.memfd >= 0:
            used = bo.file.device.region_used
            used[bo.region] = max(0, used[bo.region] - bo.size)
            # Closed a little later: an mmap served concurrently may still be sending it.
            self._dead_fds.append((time.monotonic(), bo.memfd))
            bo.memfd = -1
        self._reap_fds()

    def _gem_create(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, size, placement, flags, vm_id, handle, caching = _GEM_CREATE.unpack_from(k)
        pad = _GEM_CREATE_PAD.unpack_from(k, _GEM_CREATE_PAD.offset)
        r0, r1 = _GEM_CREATE_RESERVED.unpack_from(k, _GEM_CREATE_RESERVED.offset)
        if ext:
            raise _fail(E.EINVAL, "GEM_CREATE: extensions are not modelled")
        if any(pad) or r0 or r1:
            raise _fail(E.EINVAL, "GEM_CREATE: pad/reserved")
        dev = file.device
        if not placement or placement & ~dev.mem_region_mask:
            raise _fail(E.EINVAL, f"GEM_CREATE: placement {placement:#x} (regions {dev.mem_region_mask:#x})")
        if flags & ~GEM_FLAGS:
            raise _fail(E.EINVAL, "GEM_CREATE: flags")
        if handle:
            raise _fail(E.EINVAL, "GEM_CREATE: handle must be 0")
        if not size or size & (PAGE - 1):
            raise _fail(E.EINVAL, "GEM_CREATE: size")
        vram = bool(placement & ~1)
        if flags & GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM and not vram:
            raise _fail(E.EINVAL, "GEM_CREATE: NEEDS_VISIBLE_VRAM without a VRAM placement")
        if not caching or caching > CPU_CACHING_WC:
            raise _fail(E.EINVAL, "GEM_CREATE: cpu_caching")
        if vram and caching == CPU_CACHING_WB:
            raise _fail(E.EINVAL, "GEM_CREATE: VRAM placement with WB caching")
        if flags & GEM_CREATE_FLAG_SCANOUT and caching == CPU_CACHING_WB:
            raise _fail(E.EINVAL, "GEM_CREATE: scanout with WB caching")
        with self._lock:
            vm = None
            if vm_id:
                vm = file.vms.get(vm_id)
                if vm is None:
                    raise _fail(E.ENOENT, "GEM_CREATE: vm_id")
            # VRAM first (the tiles' regions in order), system memory as the fallback
            region = -1
            for inst in range(1, len(dev.region_used)):
                if placement >> inst & 1 and dev.region_used[inst] + size <= dev.vram_size:
                    region = inst
                    break
            if region < 0 and placement & 1 and size <= _phys_mem():
                region = 0
            if region < 0:
                raise _fail(E.ENOMEM, f"GEM_CREATE: {size} bytes do not fit in placement {placement:#x}")
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
            bo = file.bos[h] = Bo(file, size, memfd, vm)
            bo.cpu_caching, bo.placement, bo.region = caching, placement, region
            dev.region_used[region] += size
            _GEM_CREATE_HANDLE.pack_into(k, _GEM_CREATE_HANDLE.offset, h)
            self._reap_fds()
        return 0

    def _gem_mmap_offset(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, handle, flags, _off, r0, r1 = _MMAP_OFFSET.unpack_from(k)
        if ext or r0 or r1:
            raise _fail(E.EINVAL, "GEM_MMAP_OFFSET: extensions/reserved")
        if flags & ~MMAP_OFFSET_FLAG_PCI_BARRIER:
            raise _fail(E.EINVAL, "GEM_MMAP_OFFSET: flags")
        if flags:
            if handle:
                raise _fail(E.EINVAL, "GEM_MMAP_OFFSET: PCI barrier with a handle")
            _MMAP_OFFSET_OFFSET.pack_into(k, _MMAP_OFFSET_OFFSET.offset, PCI_BARRIER_MMAP_OFFSET)
            return 0
        with self._lock:
            bo = file.bos.get(handle)
            if bo is None:
                raise _fail(E.ENOENT, "GEM_MMAP_OFFSET: handle")
            if not bo.mmap_offset:
                dev = file.device
                bo.mmap_offset = dev.next_mmap_offset
                dev.next_mmap_offset += bo.size
            _MMAP_OFFSET_OFFSET.pack_into(k, _MMAP_OFFSET_OFFSET.offset, bo.mmap_offset)
        return 0
