"""DEVICE_QUERY (the driver's xe_query.c)."""

from __future__ import annotations

import ctypes
import errno as E
import os
from typing import TYPE_CHECKING

from ... import uapi as _uapi
from .xe_device_types import (
    CAP_PERFMON, CAP_SYS_ADMIN, DSS_COUNT, DSS_MASK_BYTES, ENGINES, EUS_PER_DSS, EU_MASK_BYTES,
    GT_TYPE_MAIN, MEM_CLASS_SYSMEM, MEM_CLASS_VRAM, PAGE, QUERY_CONFIG, QUERY_CONFIG_FLAG_HAS_VRAM,
    QUERY_ENGINES, QUERY_GT_LIST, QUERY_GT_TOPOLOGY, QUERY_HWCONFIG, QUERY_MEM_REGIONS,
    REVISION, VA_BITS, _fail, _has_cap, _proc_status,
)

if TYPE_CHECKING:
    from .xe_device_types import Caller, Device, DeviceFile


_DEVICE_QUERY = _uapi.layout(_uapi.drm_xe_device_query)
_DEVICE_QUERY_SIZE = _uapi.layout(_uapi.drm_xe_device_query, "size")

_PHYS: list[int] = []


def _phys_mem() -> int:
    if not _PHYS:
        try:
            _PHYS.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            _PHYS.append(16 << 30)
    return _PHYS[0]


class XeQueryMixin:
    """The `Kernel` methods of xe_query.py (mixed into `Kernel` in xe_device.py)."""

    # -- xe: queries and BOs ------------------------------------------------------------------------------
    def _query_data(self, query: int, dev: Device | None = None, perfmon: bool = False) -> bytes | None:
        """The answer to `query` on device `dev` (device 0 when None); `perfmon`: the caller is
        perfmon_capable() and sees the regions' used figures."""
        if dev is None:
            dev = self.devices[0]                  # type: ignore[attr-defined]
        if query == QUERY_ENGINES:
            out = bytes(_uapi.drm_xe_query_engines(num_engines=len(ENGINES) * dev.gt_count))
            for gt in range(dev.gt_count):
                for cls, inst in ENGINES:
                    out += bytes(_uapi.drm_xe_engine(instance=_uapi.drm_xe_engine_class_instance(
                        engine_class=cls, engine_instance=inst, gt_id=gt)))
            return out
        if query == QUERY_MEM_REGIONS:
            used = dev.region_used if perfmon else [0] * len(dev.region_used)
            out = bytes(_uapi.drm_xe_query_mem_regions(num_mem_regions=len(dev.region_used)))
            out += bytes(_uapi.drm_xe_mem_region(mem_class=MEM_CLASS_SYSMEM, instance=0, min_page_size=PAGE,
                                                 total_size=_phys_mem(), used=used[0]))
            for inst in range(1, len(dev.region_used)):
                # all of VRAM is CPU-visible (a resizable BAR as large as VRAM)
                out += bytes(_uapi.drm_xe_mem_region(mem_class=MEM_CLASS_VRAM, instance=inst, min_page_size=PAGE,
                                                     total_size=dev.vram_size, used=used[inst],
                                                     cpu_visible_size=dev.vram_size, cpu_visible_used=used[inst]))
            return out
        if query == QUERY_CONFIG:
            flags = QUERY_CONFIG_FLAG_HAS_VRAM if dev.discrete else 0
            info = (dev.device_id | REVISION << 16, flags, PAGE, VA_BITS, 2)
            return bytes(_uapi.drm_xe_query_config(num_params=len(info))) + bytes((ctypes.c_uint64 * len(info))(*info))
        if query == QUERY_GT_LIST:
            major, minor, rev = dev.graphics_ip
            out = bytes(_uapi.drm_xe_query_gt_list(num_gt=dev.gt_count))
            for gt in range(dev.gt_count):
                tile = gt
                near = 1 << dev.vram_region(tile) if dev.discrete else 1
                far = dev.mem_region_mask ^ near
                out += bytes(_uapi.drm_xe_gt(type=GT_TYPE_MAIN, tile_id=tile, gt_id=gt, reference_clock=19_200_000,
                                             near_mem_regions=near, far_mem_regions=far,
                                             ip_ver_major=major, ip_ver_minor=minor, ip_ver_rev=rev))
            return out
        if query == QUERY_HWCONFIG:
            return b""  # no GuC hwconfig table: a valid, empty answer
        if query == QUERY_GT_TOPOLOGY:
            # per GT: geometry and compute DSS masks, then the EU-per-DSS mask (Xe2: SIMD16);
            # the kernel omits L3_BANK when it cannot read it, and so does the model
            dss = (1 << DSS_COUNT) - 1
            eus = (1 << EUS_PER_DSS) - 1
            out = b""
            for gt in range(dev.gt_count):
                for kind, mask, size in ((_uapi.DRM_XE_TOPO_DSS_GEOMETRY, dss, DSS_MASK_BYTES),
                                         (_uapi.DRM_XE_TOPO_DSS_COMPUTE, dss, DSS_MASK_BYTES),
                                         (_uapi.DRM_XE_TOPO_SIMD16_EU_PER_DSS, eus, EU_MASK_BYTES)):
                    out += bytes(_uapi.drm_xe_query_topology_mask(gt_id=gt, type=kind, num_bytes=size))
                    out += mask.to_bytes(size, "little")
            return out
        return None

    def _device_query(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, query, size, data, r0, r1 = _DEVICE_QUERY.unpack_from(k)
        if ext or r0 or r1:
            raise _fail(E.EINVAL, "DEVICE_QUERY: extensions/reserved")
        perfmon = False
        if query == QUERY_MEM_REGIONS:
            status = _proc_status(int(caller.pid)) or {}
            perfmon = _has_cap(status, CAP_PERFMON) or _has_cap(status, CAP_SYS_ADMIN)
        with self._lock:
            payload = self._query_data(query, file.device, perfmon)
        if payload is None:
            raise _fail(E.EINVAL, f"DEVICE_QUERY: query {query} not modelled")
        if size == 0:
            _DEVICE_QUERY_SIZE.pack_into(k, _DEVICE_QUERY_SIZE.offset, len(payload))
            return 0
        if size != len(payload):
            raise _fail(E.EINVAL, "DEVICE_QUERY: size mismatch")
        caller.write(data, payload)
        return 0
