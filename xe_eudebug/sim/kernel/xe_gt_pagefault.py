"""Page faults of fault-mode VMs (the driver's xe_gt_pagefault.c) and what the EU debugger does
with them (the pagefault part of xe_eudebug.c, the settled attention read of xe_gt_debug.c).

An EU access to an unmapped page of a VM created with DRM_XE_VM_CREATE_FLAG_FAULT_MODE stalls
the thread and sends a fault message (`sim/gpu/compute.py` `PageFault`, one per page in flight).
A worker ("the GT's pagefault queue") handles the messages in order:

1. The page is mapped by now (another fault on it was handled): reply success.
2. Otherwise the EU debugger's part (xe_eudebug_pagefault_create) runs when a debugger is
   attached to the VM's client, the run-alone queue on the GT is debuggable and TD_CTL is
   programmed: the attention scan is held off; the attention bitmap is read ("before");
   TD_CTL gets FORCE_EXTERNAL_HALT, then FORCE_EXCEPTION (every thread that is not stalled
   enters its system routine and raises attention); the bitmap is read again once the threads
   have settled ("after").
3. With the debugger's part, a NULL page (reads zero, writes dropped) is mapped at the
   faulting 4 KiB page and the reply is success: the stalled threads retry their access, which
   completes, then take the forced exception into the SIP.  Without it the reply is failure:
   the job fails as a CAT error does and the queue is banned (-EIO), as for a fault in a VM
   that is not in fault mode.
4. After the reply: the bitmap is read once the threads have settled ("resolved"; when it
   equals "after" the resolution is deferred); TD_CTL's two bits are cleared; the PAGEFAULT
   event is sent (STATE_CHANGE; client, exec queue and LRC handles of the run-alone queue;
   flags 0; bitmask_size = 3 x the attention bitmap size; pagefault_address = the page; the
   before, after and resolved bitmaps in that order), then the attention scan runs at once, so
   the EU_ATTENTION of the faulted threads follows the PAGEFAULT event.  With discovery still
   running, or a deferred resolution whose re-read still equals "after", the event is queued on
   the debugger and the attention scan sends it before its next EU_ATTENTION (no re-read check
   then).  No run-alone queue or no debugger at send time drops it; a missing handle or a
   failed send disconnects the debugger.

The kernel's attention read waits a fixed 100 ms settle time; hardware threads reach their
halt within microseconds.  Interpreted threads take rounds, so the model reads once no thread
of the GT can run (each is halted, stalled, paused or ended), at most SETTLE_TIMEOUT_S.  The
NULL page stays mapped, as in the kernel.
"""

from __future__ import annotations

import ctypes
import errno as E
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ... import uapi as _uapi
from ..gpu.compute import PAGE_SIZE, PageFault
from ..gpu.gt import EuArray, TD_CTL_FORCE_EXCEPTION, TD_CTL_FORCE_EXTERNAL_HALT
from .xe_device_types import EV_PAGEFAULT, F_STATE_CHANGE
from .xe_vm import Vma

if TYPE_CHECKING:
    from .xe_device_types import Device
    from .xe_eudebug import Connection
    from .xe_exec_queue import ExecQueue
    from .xe_vm import Vm

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S = 2.0            # longest wait for the threads to settle before a read
SETTLE_POLL_S = 0.001
_HEADER = ctypes.sizeof(_uapi.drm_xe_eudebug_event)


@dataclass
class EudebugPagefault:
    """xe_eudebug_pagefault: the queue and LRC the event names, the fault, the three reads."""

    q: ExecQueue
    lrc_idx: int
    fault: PageFault
    before: bytes
    after: bytes
    resolved: bytes = b""
    deferred_resolved: bool = False


class XeGtPagefaultMixin:
    """The `Kernel` methods of xe_gt_pagefault.py (mixed into `Kernel` in xe_device.py)."""

    _lock: Any
    devices: list[Device]

    def _pagefault_init(self) -> None:
        self._pf_queue: deque[tuple[ExecQueue, PageFault]] = deque()
        self._pf_thread: threading.Thread | None = None
        self._pf_busy: set[tuple[int, int]] = set()  # (device, GT) handling a debugger's fault (scan held)
        self.pagefaults_handled = 0           # fault messages replied to (tests read it)

    # -- the fault messages --------------------------------------------------------------------------
    def _pagefault_submit(self, q: ExecQueue, pf: PageFault) -> None:
        """A fault message from the EUs running a job of `q` (called by the dispatcher in a
        round; it does not wait)."""
        with self._lock:
            self._pf_queue.append((q, pf))
            if self._pf_thread is None:
                self._pf_thread = threading.Thread(target=self._pagefault_worker, daemon=True,
                                                   name="xe-gt-pagefault")
                self._pf_thread.start()

    def _pagefault_worker(self) -> None:
        while True:
            with self._lock:
                if not self._pf_queue:
                    self._pf_thread = None
                    return
                q, pf = self._pf_queue.popleft()
            dev = q.file.device
            try:
                self._handle_pagefault(dev, q.gt_id, q.vm, pf)
            except Exception:                          # the reply must come, whatever failed
                log.exception("page fault %r: handler failed", pf)
                with self._lock:
                    self._pf_busy.discard((dev.index, q.gt_id))
                if not pf.replied:
                    self._gt(dev, q.gt_id).pagefault_reply(pf, False)

    @staticmethod
    def _vma_at(vm: Vm, address: int) -> Vma | None:
        if not vm.alive:
            return None
        return next((v for v in vm.vmas if v.start <= address < v.end), None)

    def _handle_pagefault(self, dev: Device, gt_id: int, vm: Vm, pf: PageFault) -> None:
        """handle_pagefault_start, the reply, handle_pagefault_end (on GT `gt_id`)."""
        gt = self._gt(dev, gt_id)
        with self._lock:
            mapped = self._vma_at(vm, pf.page) is not None
        epf = None if mapped else self._eudebug_pagefault_create(dev, gt_id, vm, pf)
        with self._lock:
            ok = self._vma_at(vm, pf.page) is not None
            # mapped while the debugger's part ran, or the VM is gone: no event
            stale = epf is not None and (ok or not vm.alive)
            if not ok and not stale and epf is not None:
                self._insert_vma(vm, Vma(pf.page, pf.page + PAGE_SIZE, "null", None, 0, []))
                ok = True
            if not ok:
                access = "fetch" if pf.fetch else "write" if pf.write else "read"
                log.warning("VM %d (pid %d): unsuccessful %s fault at %#x", vm.id,
                            vm.file.owner, access, pf.address)
            self.pagefaults_handled += 1
        if stale:
            assert epf is not None
            self._eudebug_pagefault_destroy(dev, epf, False)
            epf = None
        gt.pagefault_reply(pf, ok)
        if epf is not None:
            epf.resolved = self._attentions_read(gt, settle=True)
            epf.deferred_resolved = epf.resolved == epf.after
            self._eudebug_pagefault_destroy(dev, epf, True)

    # -- the EU debugger's part ----------------------------------------------------------------------
    def _attentions_read(self, gt: EuArray, settle: bool) -> bytes:
        """xe_gt_eu_attentions_read: the bitmap; with `settle`, once the threads have settled."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            with gt.quiescent():
                if not settle or not gt.runnable() or time.monotonic() >= deadline:
                    return gt.attention()
            time.sleep(SETTLE_POLL_S)

    def _debugger_of(self, dev: Device, file: Any) -> Connection | None:
        return next((c for c in dev.conns if c.status == 1 and c.target_task is file.owner_task),
                    None)

    def _eudebug_pagefault_create(self, dev: Device, gt_id: int, vm: Vm,
                                  pf: PageFault) -> EudebugPagefault | None:
        gt = self._gt(dev, gt_id)
        with self._lock:
            if self._debugger_of(dev, vm.file) is None:
                return None
            active = self._runalone(dev, gt_id)
            if active is None or not active[0].debuggable or not gt.td_ctl:
                return None
            if (dev.index, gt_id) in self._pf_busy:    # one in flight (the debugger's pf_fence)
                return None
            self._pf_busy.add((dev.index, gt_id))       # attention_scan_cancel
        q, lrc_idx = active
        before = self._attentions_read(gt, settle=False)
        with gt.quiescent(), self._lock:
            if not gt.td_ctl & TD_CTL_FORCE_EXTERNAL_HALT:
                gt.write_td_ctl(gt.td_ctl | TD_CTL_FORCE_EXTERNAL_HALT)
            if not gt.td_ctl & TD_CTL_FORCE_EXCEPTION:
                gt.write_td_ctl(gt.td_ctl | TD_CTL_FORCE_EXCEPTION)
        after = self._attentions_read(gt, settle=True)
        return EudebugPagefault(q, lrc_idx, pf, before, after)

    def _eudebug_pagefault_destroy(self, dev: Device, epf: EudebugPagefault,
                                   send_event: bool) -> None:
        gt = self._gt(dev, epf.q.gt_id)
        with gt.quiescent(), self._lock:
            gt.write_td_ctl(gt.td_ctl & ~(TD_CTL_FORCE_EXTERNAL_HALT | TD_CTL_FORCE_EXCEPTION))
            if send_event and self._send_pagefault(dev, gt, epf, False) == -E.EBUSY:
                conn = self._debugger_of(dev, epf.q.file)          # queue_pagefault
                if conn is not None:
                    conn.pagefaults.append(epf)
            self._pf_busy.discard((dev.index, epf.q.gt_id))
            self._attention_scan_start()                           # attention_scan_flush

    def _send_pagefault(self, dev: Device, gt: EuArray, epf: EudebugPagefault,
                        from_scan: bool) -> int:
        """send_pagefault: 0 when sent, else -errno; -EBUSY keeps it for a later try (the GT's
        quiescent section and the kernel lock held)."""
        if not dev.conns:
            return -E.ENOTCONN
        active = self._runalone(dev, epf.q.gt_id)
        if active is None:
            return -E.ENOENT
        conn = self._debugger_of(dev, active[0].file)
        if conn is None:
            return -E.ENOTCONN
        if not conn.discovery_done:
            return -E.EBUSY
        if epf.deferred_resolved:
            epf.resolved = gt.attention()
            if epf.resolved == epf.after and not from_scan:
                return -E.EBUSY
        q = epf.q
        ch = conn.clients.find(q.file)
        qh = conn.queues.find(q)
        lh = conn.lrcs.find(q.lrcs[epf.lrc_idx])
        if ch is None or qh is None or lh is None:
            self._detach(conn, -E.ENOENT)
            return -E.ENOENT
        bitmaps = epf.before + epf.after + epf.resolved
        ev = _uapi.drm_xe_eudebug_event_pagefault(client_handle=ch, exec_queue_handle=qh,
                                                   lrc_handle=lh, flags=0,
                                                   bitmask_size=len(bitmaps),
                                                   pagefault_address=epf.fault.page)
        if not self._emit(conn, EV_PAGEFAULT, F_STATE_CHANGE, ev.to_bytes()[_HEADER:] + bitmaps):
            return -E.ETIMEDOUT if conn.status == -E.ETIMEDOUT else -E.ENOTCONN
        return 0

    def _send_queued_pagefaults(self, dev: Device, gt: EuArray, gt_id: int) -> None:
        """handle_gt_queued_pagefault, from the attention scan of GT `gt_id` (quiescent section
        and kernel lock held; threads need attention)."""
        active = self._runalone(dev, gt_id)
        if active is None:
            return
        conn = self._debugger_of(dev, active[0].file)
        if conn is None or not conn.discovery_done:
            return
        while conn.pagefaults:
            err = self._send_pagefault(dev, gt, conn.pagefaults[0], True)
            if err == -E.EBUSY:
                break
            conn.pagefaults.pop(0)
            if err:
                break
