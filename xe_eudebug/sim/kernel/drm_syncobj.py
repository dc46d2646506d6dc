"""DRM sync objects (the DRM core's drm_syncobj.c) and the fences behind them.

A `DmaFence` is signalled once, optionally with an error (a job that timed out or was cancelled
signals its fence with -ETIME, -EIO or -ECANCELED, as the scheduler does).  A `Syncobj` holds
either one fence (binary) or a timeline: a chain of (point, fence) links, where a point counts as
signalled once its fence and every earlier link are signalled (dma_fence_chain).

`DrmSyncobj` implements the ioctls IGT's helpers use: CREATE, DESTROY, WAIT, RESET, SIGNAL,
TIMELINE_WAIT, QUERY, TIMELINE_SIGNAL, with the DRM core's argument checks and errnos.  All
state is guarded by the kernel's lock; every change of a fence notifies the kernel's fence
condition (`Kernel._fence_cv`), on which every waiter sleeps in bounded slices.
"""

from __future__ import annotations

import errno as E
import struct
import threading
import time
from typing import Any, Iterable

from ... import uapi as _uapi

__all__ = ["DmaFence", "Syncobj", "DrmSyncobj", "signaled_stub"]

WAIT_ALL = _uapi.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
WAIT_FOR_SUBMIT = _uapi.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
WAIT_AVAILABLE = _uapi.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE
WAIT_DEADLINE = _uapi.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE
CREATE_SIGNALED = _uapi.DRM_SYNCOBJ_CREATE_SIGNALED
QUERY_LAST_SUBMITTED = _uapi.DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED
WAIT_SLICE_S = 1.0


class DmaFence:
    __slots__ = ("signaled", "error")

    def __init__(self, signaled: bool = False, error: int = 0) -> None:
        self.signaled = signaled
        self.error = error


def signaled_stub() -> DmaFence:
    """dma_fence_get_stub(): an already signalled fence."""
    return DmaFence(True)


class Syncobj:
    __slots__ = ("fence", "chain")

    def __init__(self) -> None:
        self.fence: DmaFence | None = None
        self.chain: list[tuple[int, DmaFence]] | None = None     # timeline links, ascending

    def replace(self, fence: DmaFence | None) -> None:
        """drm_syncobj_replace_fence: the syncobj now holds `fence` alone."""
        self.fence = fence
        self.chain = None

    def add_point(self, point: int, fence: DmaFence) -> None:
        """drm_syncobj_add_point: a new timeline link (a binary fence becomes the chain's base)."""
        if self.chain is None:
            self.chain = [] if self.fence is None else [(0, self.fence)]
        self.chain.append((point, fence))
        self.fence = fence

    def last_point(self) -> int:
        return self.chain[-1][0] if self.chain else 0

    def point_state(self, point: int) -> str:
        """"missing" (not submitted), "pending" or "signaled" (dma_fence_chain_find_seqno)."""
        if self.fence is None:
            return "missing"
        if point == 0:
            if self.chain is None:
                return "signaled" if self.fence.signaled else "pending"
            return "signaled" if all(f.signaled for _p, f in self.chain) else "pending"
        if self.chain is None or self.chain[-1][0] < point:
            return "missing"
        for p, f in self.chain:
            if not f.signaled:
                return "pending"
            if p >= point:
                return "signaled"
        return "signaled"

    def last_signaled(self) -> int:
        if not self.chain:
            return 0
        done = 0
        for p, f in self.chain:
            if not f.signaled:
                break
            done = p
        return done


def _fail(errno: int, what: str) -> Exception:
    from .xe_device_types import KernelError   # the kernel's error type (here: no import cycle)
    return KernelError(errno, None, what)


class DrmSyncobj:
    """The syncobj ioctls of one simulated DRM device (handlers take (file, caller, kbuf))."""

    def __init__(self, lock: Any, cv: threading.Condition, on_change: Any) -> None:
        self._lock = lock
        self._cv = cv
        self._on_change = on_change            # bumps the kernel's fence generation, notifies

    def table(self) -> dict[int, tuple[int, Any]]:
        return {
            0xBF: (_uapi.DRM_IOCTL_SYNCOBJ_CREATE, self.create),
            0xC0: (_uapi.DRM_IOCTL_SYNCOBJ_DESTROY, self.destroy),
            0xC3: (_uapi.DRM_IOCTL_SYNCOBJ_WAIT, self.wait),
            0xC4: (_uapi.DRM_IOCTL_SYNCOBJ_RESET, self.reset),
            0xC5: (_uapi.DRM_IOCTL_SYNCOBJ_SIGNAL, self.signal),
            0xCA: (_uapi.DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT, self.timeline_wait),
            0xCB: (_uapi.DRM_IOCTL_SYNCOBJ_QUERY, self.query),
            0xCD: (_uapi.DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, self.timeline_signal),
        }

    # -- lookups -------------------------------------------------------------------------------------
    @staticmethod
    def find(file: Any, handle: int) -> Syncobj | None:
        return file.syncobjs.get(handle)

    def _find_array(self, file: Any, caller: Any, ptr: int, count: int, what: str) -> list[Syncobj]:
        raw = caller.read(ptr, 4 * count)      # EFAULT from the caller
        out = []
        with self._lock:
            for (h,) in struct.iter_unpack("<I", raw):
                obj = file.syncobjs.get(h)
                if obj is None:
                    raise _fail(E.ENOENT, f"{what}: handle {h}")
                out.append(obj)
        return out

    # -- CREATE / DESTROY ----------------------------------------------------------------------------
    def create(self, file: Any, caller: Any, k: bytearray) -> int:
        args = _uapi.drm_syncobj_create.from_buffer(k)
        flags = args.flags
        if flags & ~CREATE_SIGNALED:
            raise _fail(E.EINVAL, f"DRM_IOCTL_SYNCOBJ_CREATE: flags {flags:#x}")
        obj = Syncobj()
        if flags & CREATE_SIGNALED:
            obj.replace(signaled_stub())
        with self._lock:
            h = 1
            while h in file.syncobjs:
                h += 1
            file.syncobjs[h] = obj
        args.handle = h
        return 0

    def destroy(self, file: Any, caller: Any, k: bytearray) -> int:
        args = _uapi.drm_syncobj_destroy.from_buffer(k)
        handle = args.handle
        if args.pad:
            raise _fail(E.EINVAL, "DRM_IOCTL_SYNCOBJ_DESTROY: pad")
        with self._lock:
            if file.syncobjs.pop(handle, None) is None:
                raise _fail(E.EINVAL, f"DRM_IOCTL_SYNCOBJ_DESTROY: handle {handle}")
        return 0

    # -- RESET / SIGNAL / TIMELINE_SIGNAL / QUERY -----------------------------------------------------
    def reset(self, file: Any, caller: Any, k: bytearray) -> int:
        return self._array_op(file, caller, k, "DRM_IOCTL_SYNCOBJ_RESET", None)

    def signal(self, file: Any, caller: Any, k: bytearray) -> int:
        return self._array_op(file, caller, k, "DRM_IOCTL_SYNCOBJ_SIGNAL", signaled_stub)

    def _array_op(self, file: Any, caller: Any, k: bytearray, what: str, make: Any) -> int:
        args = _uapi.drm_syncobj_array.from_buffer(k)
        handles, count = args.handles, args.count_handles
        if args.pad:
            raise _fail(E.EINVAL, f"{what}: pad")
        if not count:
            raise _fail(E.EINVAL, f"{what}: count_handles 0")
        objs = self._find_array(file, caller, handles, count, what)
        with self._lock:
            for obj in objs:
                obj.replace(make() if make else None)
            self._on_change()
        return 0

    def _timeline_array(self, file: Any, caller: Any, k: bytearray, what: str,
                        allowed: int) -> tuple[Any, list[Syncobj]]:
        """drm_syncobj_timeline_array checks: flags, a handle count, the handles."""
        args = _uapi.drm_syncobj_timeline_array.from_buffer(k)
        if args.flags & ~allowed:
            raise _fail(E.EINVAL, f"{what}: flags {args.flags:#x}")
        if not args.count_handles:
            raise _fail(E.EINVAL, f"{what}: count_handles 0")
        return args, self._find_array(file, caller, args.handles, args.count_handles, what)

    def timeline_signal(self, file: Any, caller: Any, k: bytearray) -> int:
        args, objs = self._timeline_array(file, caller, k, "DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL", 0)
        points_ptr, count = args.points, args.count_handles
        points = [0] * count
        if points_ptr:
            points = [p for (p,) in struct.iter_unpack("<Q", caller.read(points_ptr, 8 * count))]
        with self._lock:
            for obj, point in zip(objs, points):
                if point:
                    obj.add_point(point, signaled_stub())
                else:
                    obj.replace(signaled_stub())
            self._on_change()
        return 0

    def query(self, file: Any, caller: Any, k: bytearray) -> int:
        args, objs = self._timeline_array(file, caller, k, "DRM_IOCTL_SYNCOBJ_QUERY", QUERY_LAST_SUBMITTED)
        points_ptr, count, flags = args.points, args.count_handles, args.flags
        with self._lock:
            points = [(o.last_point() if flags & QUERY_LAST_SUBMITTED else o.last_signaled()) for o in objs]
        caller.write(points_ptr, struct.pack(f"<{count}Q", *points))
        return 0

    # -- WAIT / TIMELINE_WAIT ----------------------------------------------------------------------------
    def wait(self, file: Any, caller: Any, k: bytearray) -> int:
        args = _uapi.drm_syncobj_wait.from_buffer(k)
        handles, timeout, count, flags = args.handles, args.timeout_nsec, args.count_handles, args.flags
        what = "DRM_IOCTL_SYNCOBJ_WAIT"
        if flags & ~(WAIT_ALL | WAIT_FOR_SUBMIT | WAIT_DEADLINE):
            raise _fail(E.EINVAL, f"{what}: flags {flags:#x}")
        if not count:
            return 0
        objs = self._find_array(file, caller, handles, count, what)
        first = self._wait(objs, [0] * count, timeout, flags, what)
        args.first_signaled = first
        return 0

    def timeline_wait(self, file: Any, caller: Any, k: bytearray) -> int:
        args = _uapi.drm_syncobj_timeline_wait.from_buffer(k)
        handles, points_ptr, timeout = args.handles, args.points, args.timeout_nsec
        count, flags = args.count_handles, args.flags
        what = "DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT"
        if flags & ~(WAIT_ALL | WAIT_FOR_SUBMIT | WAIT_AVAILABLE | WAIT_DEADLINE):
            raise _fail(E.EINVAL, f"{what}: flags {flags:#x}")
        if not count:
            return 0
        objs = self._find_array(file, caller, handles, count, what)
        points = [p for (p,) in struct.iter_unpack("<Q", caller.read(points_ptr, 8 * count))]
        first = self._wait(objs, points, timeout, flags, what)
        args.first_signaled = first
        return 0

    def _wait(self, objs: list[Syncobj], points: list[int], timeout_ns: int, flags: int, what: str) -> int:
        """drm_syncobj_array_wait: index of the first signalled entry; ETIME when the absolute
        CLOCK_MONOTONIC `timeout_ns` passes first; EINVAL for an entry with nothing submitted
        unless WAIT_FOR_SUBMIT."""
        with self._lock:
            while True:
                done = []
                for i, (obj, point) in enumerate(zip(objs, points)):
                    state = obj.point_state(point)
                    if state == "missing":
                        if not flags & WAIT_FOR_SUBMIT:
                            raise _fail(E.EINVAL, f"{what}: no fence submitted for entry {i}")
                        continue
                    if state == "signaled" or flags & WAIT_AVAILABLE:
                        done.append(i)
                if done and (len(done) == len(objs) or not flags & WAIT_ALL):
                    return done[0]
                left = timeout_ns - time.monotonic_ns()
                if left <= 0:
                    raise _fail(E.ETIME, what)
                self._cv.wait(min(WAIT_SLICE_S, left / 1e9))


def wait_fences(lock: Any, cv: threading.Condition, fences: Iterable[DmaFence],
                alive: Any = lambda: True) -> bool:
    """Wait (lock held by the caller) until every fence is signalled, in bounded slices, while
    `alive()` holds.  True when all are signalled."""
    pending = [f for f in fences if not f.signaled]
    while pending:
        if not alive():
            return False
        cv.wait(WAIT_SLICE_S)
        pending = [f for f in pending if not f.signaled]
    return True
