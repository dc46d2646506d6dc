"""EXEC (the driver's xe_exec.c) and the jobs behind it (xe_sched_job.c, the GuC backend's job
timeout and ban in xe_guc_submit.c).

DRM_IOCTL_XE_EXEC checks its arguments in the kernel's order, parses the syncs, creates a job and
returns once the job is queued.  Each exec queue runs its jobs in submission order on a thread of
its own ("the queue's slot on its engine"): a job first waits for its in-fences, then the
engine's command streamer (`sim/gpu`) executes the ring the driver emitted for it: an
MI_BATCH_BUFFER_START per batch address and, for an exec user fence, an MI_STORE_DATA_IMM of the
value to the fence's GPU address.  The outcome signals the job's fence:

- completed: fence signalled; out-syncobjs see it; user fence written by the ring.
- a fault on an unmapped address (the hardware's CAT error) or an unknown command: the job's
  fence gets -EIO, the queue is banned, every later job of the queue gets -ECANCELED.
- still running after the queue's job timeout (non-LR VMs; the kernel gives LR queues no job
  timeout): stopped, fence -ETIME, queue banned.
- queue destroyed or its file closed: the running job is stopped, pending jobs get -ECANCELED.

A banned queue fails EXEC with ECANCELED and WAIT_USER_FENCE naming it with EIO.
"""

from __future__ import annotations

import errno as E
import logging
import mmap
import os
import struct
import threading
import time
from collections import deque
from typing import Any

from ... import uapi as _uapi
from .. import procmem
from . import xe_sync
from .drm_syncobj import DmaFence, signaled_stub, wait_fences
from ..gpu import CommandStreamer, Context, EngineInfo, GpuFault, JobResult, mi

log = logging.getLogger(__name__)

__all__ = ["XeExec", "VmView", "DEFAULT_JOB_TIMEOUT_MS"]

#: The kernel's default job timeout (xe_hw_engine.c: sched_props.job_timeout_ms = 5 s).
DEFAULT_JOB_TIMEOUT_MS = 5000
CLASS_VM_BIND = _uapi.DRM_XE_ENGINE_CLASS_VM_BIND
VM_CREATE_SCRATCH_PAGE = _uapi.DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE
MAX_SYNC_BYTES = 64 << 20
FAST_MAPPINGS = 4                     # BO mappings an engine's VM view reaches without the lock             # a larger sync array: kcalloc fails, ENOMEM


def _fail(errno: int, what: str) -> Exception:
    from .xe_device_types import KernelError
    return KernelError(errno, None, what)


class VmView:
    """The queue's VM as the engine sees it: BO and userptr mappings, NULL mappings (read zero,
    writes dropped), the scratch page of a SCRATCH_PAGE VM; anything else faults."""

    def __init__(self, lock: Any, vm: Any, pagefault: Any = None) -> None:
        self._lock = lock
        self.vm = vm
        self.pagefault = pagefault        # a fault-mode VM's fault messages (xe_gt_pagefault.py)
        self._hits: list[Any] = []                  # the BO mappings accessed last ...
        self._maps: dict[Any, mmap.mmap] = {}       # ... their BOs' memory, mapped once ...
        self._seen: Any = None                      # ... and the VM's mapping list they are in

    def _mapped(self, va: int, size: int) -> tuple[mmap.mmap, int] | None:
        """The fast path of an access inside a BO mapping accessed lately: its BO's memory
        mapped in this process and the offset of `va`, or None.  The driver adds a mapping to
        the VM's list in place but removes one only by replacing the list (xe_vm.py
        `_unmap_range`), so while the list is the one the mappings were found in they are all
        still bound; an unbind racing with the access is the race a GPU's TLB has too."""
        vm = self.vm
        if vm.vmas is not self._seen or not vm.alive:
            self._hits = []
            return None
        for v in self._hits:
            if v.start <= va and va + size <= v.end:
                return self._maps[v.bo], v.offset + (va - v.start)
        return None

    def _remember(self, vma: Any) -> None:
        """Map `vma`'s BO for the fast path (kernel lock held, the BO's memfd open)."""
        bo = vma.bo
        if bo not in self._maps:
            try:
                if os.fstat(bo.memfd).st_size < bo.size:     # past the end: SIGBUS, not a fault
                    return
                self._maps[bo] = mmap.mmap(bo.memfd, bo.size)
            except (OSError, ValueError):
                return
        if self.vm.vmas is not self._seen:
            self._hits, self._seen = [], self.vm.vmas
        self._hits = [vma] + [v for v in self._hits if v is not vma][:FAST_MAPPINGS - 1]

    def _access(self, va: int, size: int, data: bytes | None) -> bytes:
        hit = self._mapped(va, size)
        if hit is not None:
            mem, off = hit
            if data is None:
                return mem[off:off + size]
            mem[off:off + size] = data
            return b""
        out: list[bytes] = []
        done = 0
        with self._lock:
            vm = self.vm
            while done < size:
                pos = va + done
                vma = None
                if vm.alive:
                    vma = next((v for v in vm.vmas if v.start <= pos < v.end), None)
                if vma is None:
                    if not (vm.alive and vm.flags & VM_CREATE_SCRATCH_PAGE):
                        raise GpuFault(pos, data is not None)
                    nxt = min((v.start for v in vm.vmas if v.start > pos), default=pos + size)
                    n = min(size - done, nxt - pos)
                    out.append(bytes(n))
                    done += n
                    continue
                n = min(size - done, vma.end - pos)
                off = vma.offset + (pos - vma.start)
                try:
                    if vma.kind == "bo" and n == size:
                        self._remember(vma)
                    if vma.kind == "bo":
                        if data is None:
                            out.append(os.pread(vma.bo.memfd, n, off).ljust(n, b"\0"))
                        else:
                            os.pwrite(vma.bo.memfd, data[done:done + n], off)
                    elif vma.kind == "userptr":
                        if data is None:
                            out.append(procmem.read(vm.file.owner, off, n))
                        else:
                            procmem.write(vm.file.owner, off, data[done:done + n])
                    elif data is None:                    # NULL mapping
                        out.append(bytes(n))
                except OSError:
                    raise GpuFault(pos, data is not None) from None
                done += n
        return b"".join(out)

    def read(self, va: int, size: int) -> bytes:
        hit = self._mapped(va, size)              # the fast path first: every instruction fetch
        if hit is not None:
            return hit[0][hit[1]:hit[1] + size]
        return self._access(va, size, None)

    def write(self, va: int, data: bytes) -> None:
        self._access(va, len(data), bytes(data))


class Job:
    __slots__ = ("ring", "deps", "fence", "seqno")

    def __init__(self, ring: bytes, deps: list[DmaFence], seqno: int) -> None:
        self.ring = ring
        self.deps = deps
        self.fence = DmaFence()
        self.seqno = seqno


class QueueSched:
    """Scheduling state of one exec queue."""

    def __init__(self, q: Any) -> None:
        self.q = q
        self.jobs: deque[Job] = deque()
        self.thread: threading.Thread | None = None
        self.banned = False
        self.killed = False
        self.last_fence: DmaFence = signaled_stub()
        self.contexts = [Context() for _ in range(q.width)]
        self.seqno = 0
        self.running = False          # a job of the queue is on its engine
        self.reset = False            # a GT reset stops the submitted job (gt_reset, xe_eudebug_hw.py)


class XeExec:
    """The EXEC ioctl and the per-queue job runners of one simulated driver instance."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self._lock = kernel._lock
        self._sched: dict[int, QueueSched] = {}
        self._engines: dict[tuple[int, ...], CommandStreamer] = {}

    # -- state queries ----------------------------------------------------------------------------
    def sched(self, q: Any) -> QueueSched:
        s = self._sched.get(id(q))
        if s is None or s.q is not q:
            s = self._sched[id(q)] = QueueSched(q)
        return s

    def reset_status(self, q: Any) -> bool:
        """The queue was banned or killed (q->ops->reset_status)."""
        s = self._sched.get(id(q))
        return s is not None and s.q is q and (s.banned or s.killed)

    def _job_timeout(self, q: Any) -> float | None:
        if q.vm.lr:
            return None                     # LR queues: no job timeout (MAX_SCHEDULE_TIMEOUT)
        ms = q.job_timeout_ms or getattr(self.kernel.config, "job_timeout_ms", DEFAULT_JOB_TIMEOUT_MS)
        return max(0.0, float(ms)) / 1000.0

    # -- the ioctl -------------------------------------------------------------------------------------
    def ioctl(self, file: Any, caller: Any, k: bytearray) -> int:
        args = _uapi.drm_xe_exec.from_buffer(k)
        qid, num_syncs, syncs_ptr = args.exec_queue_id, args.num_syncs, args.syncs
        address, nbb = args.address, args.num_batch_buffer
        if args.extensions or any(args.pad) or any(args.reserved):
            raise _fail(E.EINVAL, "DRM_IOCTL_XE_EXEC: extensions/pad/reserved")
        with self._lock:
            q = file.queues.get(qid)
            if q is None:
                raise _fail(E.ENOENT, f"DRM_IOCTL_XE_EXEC: exec_queue_id {qid}")
            if q.engine_class == CLASS_VM_BIND:
                raise _fail(E.EINVAL, f"DRM_IOCTL_XE_EXEC: exec queue {qid} is a VM bind queue")
            if nbb and nbb != q.width:
                raise _fail(E.EINVAL, f"DRM_IOCTL_XE_EXEC: num_batch_buffer {nbb} for width {q.width}")
            if self.reset_status(q):
                raise _fail(E.ECANCELED, f"DRM_IOCTL_XE_EXEC: exec queue {qid} was banned")
        if num_syncs * xe_sync.SYNC_SIZE > MAX_SYNC_BYTES:
            raise _fail(E.ENOMEM, f"DRM_IOCTL_XE_EXEC: num_syncs {num_syncs}")
        raws: list[bytes] = []
        fault = 0
        for i in range(num_syncs):
            try:
                raws.append(caller.read(syncs_ptr + i * xe_sync.SYNC_SIZE, xe_sync.SYNC_SIZE))
            except Exception as exc:
                fault = getattr(exc, "errno", E.EFAULT)
                break
        addresses = [address]
        with self._lock:
            vm = q.vm
            entries = [xe_sync.parse(file, raw, lr=vm.lr, what="DRM_IOCTL_XE_EXEC") for raw in raws]
        if fault:
            raise _fail(fault, "DRM_IOCTL_XE_EXEC: syncs")
        if sum(1 for e in entries if e.is_ufence) > 1:
            raise _fail(E.EINVAL, "DRM_IOCTL_XE_EXEC: more than one user fence")
        if q.width > 1:
            raw_addr = caller.read(address, 8 * q.width)
            addresses = list(struct.unpack(f"<{q.width}Q", raw_addr))
        with self._lock:
            s = self.sched(q)
            if not nbb:
                if not vm.lr:
                    for e in entries:
                        xe_sync.signal(e, s.last_fence)
                    self.kernel._fences_written()
                return 0
            if not vm.alive or not q.alive:
                raise _fail(E.ECANCELED, "DRM_IOCTL_XE_EXEC: VM closed")
            ring = b"".join(struct.pack("<3I", mi.mi(mi.MI_BATCH_BUFFER_START, 3, mi.MI_BBS_PPGTT),
                                        a & 0xFFFFFFFF, a >> 32 & 0xFFFF) for a in addresses)
            for e in entries:
                if e.is_ufence:
                    ring += struct.pack("<5I", mi.mi(mi.MI_STORE_DATA_IMM, 5, mi.MI_SDI_STORE_QWORD),
                                        e.addr & 0xFFFFFFFF, e.addr >> 32 & 0xFFFF,
                                        e.value & 0xFFFFFFFF, e.value >> 32)
            deps = [e.fence for e in entries if e.fence is not None]
            if not vm.lr:
                deps.append(s.last_fence)
            s.seqno += 1
            job = Job(ring, deps, s.seqno)
            for e in entries:
                xe_sync.signal(e, job.fence)
            if not vm.lr:
                s.last_fence = job.fence
            s.jobs.append(job)
            if s.thread is None:
                s.thread = threading.Thread(target=self._run_queue, args=(s,), daemon=True,
                                            name=f"xe-exec-q{qid}")
                s.thread.start()
            self.kernel._fences_written()
        return 0

    # -- queue teardown ------------------------------------------------------------------------------
    def kill(self, q: Any) -> None:
        """Exec queue destroyed or its file closed (kernel lock held): stop the running job,
        cancel the pending ones."""
        s = self._sched.get(id(q))
        if s is None or s.q is not q:
            return
        s.killed = True
        self._cancel_pending(s)
        if s.thread is None:
            self._sched.pop(id(q), None)
        self.kernel._fences_written()

    def gt_reset(self, dev_index: int, gt: int, wait: float = 0.0) -> int:
        """GT `gt` of device `dev_index` resets (debugfs force_reset; kernel lock held): a queue
        running a job there has it stopped and is banned, as guc_exec_queue_stop bans a queue
        whose job had started.  With `wait` (force_reset_sync), waits up to that many seconds for
        those jobs to end.  Returns the number of queues hit."""
        hit = [s for s in self._sched.values()
               if s.q.file.index == dev_index and s.q.gt_id == gt
               and s.thread is not None and s.jobs and not s.killed and not s.banned]
        for s in hit:
            s.reset = True
        deadline = time.monotonic() + wait
        while wait and any(s.reset for s in hit) and time.monotonic() < deadline:
            self.kernel._fence_cv.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        return len(hit)

    @staticmethod
    def _cancel_pending(s: QueueSched) -> None:
        while s.jobs:
            job = s.jobs.popleft()
            job.fence.error, job.fence.signaled = -E.ECANCELED, True

    # -- the queue's runner ----------------------------------------------------------------------------
    def _engine(self, q: Any) -> CommandStreamer:
        engine = (q.engine_class, q.engine_instance)
        key = (q.file.index, q.gt_id) + engine     # each GT has its own engines
        cs = self._engines.get(key)
        if cs is None:
            eus = self.kernel._gt(q.file.device, key[1])
            cs = self._engines[key] = CommandStreamer(EngineInfo(*engine), eus)
        return cs

    def running(self) -> list[QueueSched]:
        """The queues with a job on their engine (kernel lock held)."""
        return [s for s in self._sched.values() if s.running]

    @staticmethod
    def _gt_key(q: Any) -> tuple[int, int] | None:
        """(device, GT) of a queue whose jobs run on the GT's EUs (render, compute), else None."""
        if q.engine_class not in (_uapi.DRM_XE_ENGINE_CLASS_RENDER, _uapi.DRM_XE_ENGINE_CLASS_COMPUTE):
            return None
        return q.file.index, q.gt_id

    def _eus_busy(self, s: QueueSched) -> bool:
        """Run-alone (kernel lock held): a debuggable queue's job runs with no other job on its
        GT's render and compute engines, and no job starts there while one runs."""
        key = self._gt_key(s.q)
        if key is None:
            return False
        others = [o for o in self._sched.values()
                  if o is not s and o.running and self._gt_key(o.q) == key]
        return bool(others) and (s.q.debuggable or any(o.q.debuggable for o in others))

    def _wait_for_eus(self, s: QueueSched) -> bool:
        """Wait (kernel lock held) until the job may start on the GT; False when the queue is
        killed or a GT reset stops the job meanwhile (it was submitted: its queue is banned)."""
        while self._eus_busy(s) and not (s.killed or s.reset):
            self.kernel._fence_cv.wait(0.1)
        return not (s.killed or s.reset)

    def _run_queue(self, s: QueueSched) -> None:
        lock, cv = self._lock, self.kernel._fence_cv
        q = s.q
        while True:
            with lock:
                if not s.jobs or s.killed or s.banned:
                    self._cancel_pending(s)
                    s.thread = None
                    if s.killed:
                        self._sched.pop(id(q), None)
                    self.kernel._fences_written()
                    return
                job = s.jobs[0]
                if not wait_fences(lock, cv, job.deps, lambda: not s.killed):
                    continue
                s.reset = False                      # a reset stops the jobs submitted when it comes
                if not self._wait_for_eus(s):
                    result = JobResult("stopped", reason="GT reset" if s.reset else "killed")
                else:
                    engine = self._engine(q)         # the device's EU array is made under the lock
                    s.running = True
                    self.kernel._attention_scan_start()
                    result = None
            timeout = self._job_timeout(q)
            start = time.monotonic()

            def stop() -> str | None:
                if s.killed:
                    return "exec queue destroyed"
                if s.reset:
                    return "GT reset"
                if timeout is not None and time.monotonic() - start > timeout:
                    return f"job timeout ({timeout * 1000:.0f} ms)"
                return None

            if result is None:
                try:
                    pagefault = ((lambda pf: self.kernel._pagefault_submit(q, pf))
                                 if q.vm.fault else None)
                    result = engine.run(job.ring, VmView(lock, q.vm, pagefault), s.contexts[0], stop)
                finally:
                    with lock:
                        s.running = False
                        self.kernel._fences_written()    # the GT's EUs may be free for a waiter
            with lock:
                if s.jobs and s.jobs[0] is job:
                    s.jobs.popleft()
                self._complete(s, job, result)
                self.kernel._fences_written()

    def _complete(self, s: QueueSched, job: Job, result: JobResult) -> None:
        q = s.q
        name = f"exec queue {q.id} (class {q.engine_class}, pid {q.file.owner})"
        if result.status == "completed":
            job.fence.signaled = True
            return
        if result.status == "stopped" and s.killed:
            job.fence.error, job.fence.signaled = -E.ECANCELED, True
            return
        if result.status == "stopped" and s.reset:
            log.warning("%s: job %d stopped by a GT reset; queue banned", name, job.seqno)
            s.reset = False
            job.fence.error, job.fence.signaled, s.banned = -E.ECANCELED, True, True
            self._cancel_pending(s)
            return
        if result.status == "fault":
            log.warning("%s: CAT error: %s (VM %d); job %d failed, queue banned",
                        name, result.reason, q.vm.id, job.seqno)
            err = -E.EIO
        elif result.status == "bad-command":
            log.warning("%s: unknown command %#010x at %#x; job %d failed, queue banned",
                        name, result.dword, result.address, job.seqno)
            err = -E.EIO
        elif result.status == "stopped" and s.reset:
            log.warning("%s: job %d stopped by a GT reset; queue banned", name, job.seqno)
            err = -E.EIO
        elif result.status == "eu-error":
            log.warning("%s: %s; job %d failed, queue banned", name, result.reason, job.seqno)
            err = -E.EIO
        else:
            log.warning("%s: job %d %s; engine reset, queue banned", name, job.seqno, result.reason)
            err = -E.ETIME
        job.fence.error, job.fence.signaled = err, True
        s.banned = True
        self._cancel_pending(s)
