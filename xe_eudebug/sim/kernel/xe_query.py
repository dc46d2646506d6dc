"""DEVICE_QUERY (the driver's xe_query.c)."""

from __future__ import annotations

import ctypes
import errno as E
import os
from typing import TYPE_CHECKING

from ... import uapi as _uapi
from .xe_device_types import (
    DSS_COUNT, DSS_MASK_BYTES, ENGINES, EUS_PER_DSS, EU_MASK_BYTES, PAGE, QUERY_CONFIG,
    QUERY_ENGINES, QUERY_GT_LIST, QUERY_GT_TOPOLOGY, QUERY_HWCONFIG, QUERY_MEM_REGIONS,
    REVISION, VA_BITS, _cfg, _fail,
)

if TYPE_CHECKING:
    from .xe_device_types import Caller, DeviceFile


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
    def _query_data(self, query: int) -> bytes | None:
        if query == QUERY_ENGINES:
            out = bytes(_uapi.drm_xe_query_engines(num_engines=len(ENGINES)))
            for cls, inst in ENGINES:
                out += bytes(_uapi.drm_xe_engine(
                    instance=_uapi.drm_xe_engine_class_instance(engine_class=cls, engine_instance=inst)))
            return out
        if query == QUERY_MEM_REGIONS:
            total = _phys_mem()
            return (bytes(_uapi.drm_xe_query_mem_regions(num_mem_regions=1))
                    + bytes(_uapi.drm_xe_mem_region(mem_class=_uapi.DRM_XE_MEM_REGION_CLASS_SYSMEM, instance=0,
                                                    min_page_size=PAGE, total_size=total)))
        if query == QUERY_CONFIG:
            info = (int(_cfg(self.config, "device_id")) | REVISION << 16, 0, PAGE, VA_BITS, 2)
            return bytes(_uapi.drm_xe_query_config(num_params=len(info))) + bytes((ctypes.c_uint64 * len(info))(*info))
        if query == QUERY_GT_LIST:
            gt = _uapi.drm_xe_gt(type=_uapi.DRM_XE_QUERY_GT_TYPE_MAIN, tile_id=0, gt_id=0, reference_clock=19_200_000,
                                 near_mem_regions=1, far_mem_regions=0, ip_ver_major=20, ip_ver_minor=4, ip_ver_rev=0)
            return bytes(_uapi.drm_xe_query_gt_list(num_gt=1)) + bytes(gt)
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
                out += bytes(_uapi.drm_xe_query_topology_mask(gt_id=0, type=kind, num_bytes=size))
                out += mask.to_bytes(size, "little")
            return out
        return None

    def _device_query(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, query, size, data, r0, r1 = _DEVICE_QUERY.unpack_from(k)
        if ext or r0 or r1:
            raise _fail(E.EINVAL, "DEVICE_QUERY: extensions/reserved")
        payload = self._query_data(query)
        if payload is None:
            raise _fail(E.EINVAL, f"DEVICE_QUERY: query {query} not modelled")
        if size == 0:
            _DEVICE_QUERY_SIZE.pack_into(k, _DEVICE_QUERY_SIZE.offset, len(payload))
            return 0
        if size != len(payload):
            raise _fail(E.EINVAL, "DEVICE_QUERY: size mismatch")
        caller.write(data, payload)
        return 0
