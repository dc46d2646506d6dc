"""User fences and WAIT_USER_FENCE (the driver's xe_wait_user_fence.c)."""

from __future__ import annotations

import errno as E
import logging
import struct
import time
from typing import TYPE_CHECKING

from ... import uapi as _uapi
from .. import procmem
from .xe_device_types import (
    CALLER_CHECK, KernelError, LONG_MAX, UFENCE_FLAG_ABSTIME, UFENCE_OPS, _caller_gone, _fail,
)

if TYPE_CHECKING:
    from .xe_device_types import Caller, DeviceFile

log = logging.getLogger(__name__)

_WAIT = _uapi.layout(_uapi.drm_xe_wait_user_fence, "extensions", "addr", "op", "flags", "pad", "value", "mask",
                     "timeout", "exec_queue_id", "pad2")
_WAIT_RESERVED = _uapi.layout(_uapi.drm_xe_wait_user_fence, "reserved")
_WAIT_TIMEOUT = _uapi.layout(_uapi.drm_xe_wait_user_fence, "timeout")


class UserFence:
    __slots__ = ("task", "addr", "value")

    def __init__(self, task: "procmem.Task", addr: int, value: int) -> None:
        self.task = task                           # the binder, held as a task (never a bare pid)
        self.addr = addr
        self.value = value


class XeWaitUserFenceMixin:
    """The `Kernel` methods of xe_wait_user_fence.py (mixed into `Kernel` in xe_device.py)."""

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

    # -- xe: WAIT_USER_FENCE -------------------------------------------------------------------------
    def _wait_user_fence(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, addr, op, flags, pad, value, mask, timeout, q_id, pad2 = _WAIT.unpack_from(k)
        r0, r1 = _WAIT_RESERVED.unpack_from(k, _WAIT_RESERVED.offset)
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
            _WAIT_TIMEOUT.pack_into(k, _WAIT_TIMEOUT.offset, timeout)
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
            _WAIT_TIMEOUT.pack_into(k, _WAIT_TIMEOUT.offset, left)
        if err:
            raise _fail(err, "WAIT_USER_FENCE")
        return 0
