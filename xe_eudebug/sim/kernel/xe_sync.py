"""Sync entries of EXEC and VM_BIND (the driver's xe_sync.c): parse, add dependencies, signal.

`parse` follows xe_sync_entry_parse check by check.  An in-sync (no SIGNAL flag) contributes the
syncobj's fence (or a timeline point's) as a dependency; an out-sync is signalled with the job's
fence: a binary syncobj gets it as its fence, a timeline syncobj gets a new point.  EXEC user
fences are GPU virtual addresses in the queue's VM, written by the engine at the end of the job.
"""

from __future__ import annotations

import ctypes
import errno as E
from dataclasses import dataclass
from typing import Any

from ... import uapi as _uapi
from .drm_syncobj import DmaFence, Syncobj

__all__ = ["SyncEntry", "parse", "signal", "SYNC_SIZE"]

SYNC_SYNCOBJ = _uapi.DRM_XE_SYNC_TYPE_SYNCOBJ
SYNC_TIMELINE_SYNCOBJ = _uapi.DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ
SYNC_USER_FENCE = _uapi.DRM_XE_SYNC_TYPE_USER_FENCE
SYNC_FLAG_SIGNAL = _uapi.DRM_XE_SYNC_FLAG_SIGNAL
SYNC_SIZE = ctypes.sizeof(_uapi.drm_xe_sync)


@dataclass
class SyncEntry:
    type: int
    flags: int
    addr: int                       # user fence address; syncobj handle in the low 32 bits
    value: int                      # timeline point / user fence value
    syncobj: Syncobj | None = None
    fence: DmaFence | None = None   # in-fence (dependency)

    @property
    def signal(self) -> bool:
        return bool(self.flags & SYNC_FLAG_SIGNAL)

    @property
    def is_ufence(self) -> bool:
        return self.type == SYNC_USER_FENCE


def _fail(errno: int, what: str) -> Exception:
    from .xe_device_types import KernelError
    return KernelError(errno, None, what)


def parse(file: Any, raw: bytes, *, lr: bool, what: str) -> SyncEntry:
    """One drm_xe_sync as xe_sync_entry_parse checks it (kernel lock held).  User fences are left
    to the caller (VM_BIND and EXEC treat them differently)."""
    sync = _uapi.drm_xe_sync.from_buffer_copy(raw)
    s_type, flags, addr, value = sync.type, sync.flags, sync.addr, sync.timeline_value
    if flags & ~SYNC_FLAG_SIGNAL or any(sync.reserved):
        raise _fail(E.EINVAL, f"{what}: sync flags/reserved")
    entry = SyncEntry(s_type, flags, addr, value)
    if s_type in (SYNC_SYNCOBJ, SYNC_TIMELINE_SYNCOBJ):
        if entry.signal and lr:
            raise _fail(E.EOPNOTSUPP, f"{what}: dma-fence sync on an LR VM")
        if addr >> 32:
            raise _fail(E.EINVAL, f"{what}: syncobj handle {addr:#x}")
        if s_type == SYNC_TIMELINE_SYNCOBJ and not value:
            raise _fail(E.EINVAL, f"{what}: timeline point 0")
        obj = file.syncobjs.get(addr & 0xFFFFFFFF)
        if obj is None:
            raise _fail(E.ENOENT, f"{what}: syncobj handle {addr & 0xFFFFFFFF}")
        entry.syncobj = obj
        if not entry.signal:
            if obj.fence is None:
                raise _fail(E.EINVAL, f"{what}: in-syncobj {addr & 0xFFFFFFFF} has no fence")
            point = value if s_type == SYNC_TIMELINE_SYNCOBJ else 0
            if point and obj.point_state(point) == "missing":
                raise _fail(E.EINVAL, f"{what}: timeline point {point} not submitted")
            entry.fence = _point_fence(obj, point)
        return entry
    if s_type == SYNC_USER_FENCE:
        if not entry.signal:
            raise _fail(E.EOPNOTSUPP, f"{what}: user fence without SIGNAL")
        if addr & 7:
            raise _fail(E.EINVAL, f"{what}: user fence address alignment")
        return entry
    raise _fail(E.EINVAL, f"{what}: sync type {s_type}")


def _point_fence(obj: Syncobj, point: int) -> DmaFence:
    """A fence that is signalled when `point` of `obj` is (a snapshot: later links do not count)."""
    if obj.chain is None:
        assert obj.fence is not None
        return obj.fence
    cut = len(obj.chain) - 1
    if point:
        cut = next(i for i, (p, _f) in enumerate(obj.chain) if p >= point)
    links = [f for _p, f in obj.chain[:cut + 1]]
    return _Joined(links)


class _Joined(DmaFence):
    """Signalled when every fence in it is (dma_fence_array wait-all)."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[DmaFence]) -> None:
        super().__init__()
        self.parts = parts

    @property  # type: ignore[override]
    def signaled(self) -> bool:
        return all(p.signaled for p in self.parts)

    @signaled.setter
    def signaled(self, value: bool) -> None:
        pass


def signal(entry: SyncEntry, fence: DmaFence) -> None:
    """xe_sync_entry_signal for syncobj out-syncs (kernel lock held)."""
    if not entry.signal or entry.syncobj is None:
        return
    if entry.type == SYNC_TIMELINE_SYNCOBJ:
        entry.syncobj.add_point(entry.value, fence)
    else:
        entry.syncobj.replace(fence)


def in_fences(file: Any, raws: list[bytes]) -> list[DmaFence]:
    """The in-fences among `raws` that parse cleanly (kernel lock held): what a bind waits for
    before it is applied.  Bad entries are left to `parse`, which reports them in order."""
    out = []
    for raw in raws:
        sync = _uapi.drm_xe_sync.from_buffer_copy(raw)
        s_type, flags, addr, value = sync.type, sync.flags, sync.addr, sync.timeline_value
        if s_type not in (SYNC_SYNCOBJ, SYNC_TIMELINE_SYNCOBJ) or flags & SYNC_FLAG_SIGNAL or addr >> 32:
            continue
        obj = file.syncobjs.get(addr)
        point = value if s_type == SYNC_TIMELINE_SYNCOBJ else 0
        if obj is not None and obj.point_state(point) != "missing":
            out.append(_point_fence(obj, point))
    return out
