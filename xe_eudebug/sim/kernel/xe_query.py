"""DEVICE_QUERY (the driver's xe_query.c)."""

from __future__ import annotations

import errno as E
import os
import struct
from typing import TYPE_CHECKING

from ... import uapi as _uapi
from .xe_device_types import (
    DSS_COUNT, DSS_MASK_BYTES, ENGINES, EUS_PER_DSS, EU_MASK_BYTES, PAGE, QUERY_CONFIG,
    QUERY_ENGINES, QUERY_GT_LIST, QUERY_GT_TOPOLOGY, QUERY_HWCONFIG, QUERY_MEM_REGIONS,
    REVISION, VA_BITS, _cfg, _fail,
)

if TYPE_CHECKING:
    from .xe_device_types import Caller, DeviceFile


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
