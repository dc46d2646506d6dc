"""The driver's EU debug hardware side (in the kernel: the attention scan, EU_CONTROL's
interrupt_all / stopped / resume ops and the TD_CTL programming of xe_eudebug.c, with the
attention bitmap of xe_gt_debug.c).

- TD_CTL: while `enable_eudebug` is 1 the render/compute engines of a device keep
  BREAKPOINT_ENABLE, FORCE_THREAD_BREAKPOINT_ENABLE, FEH_AND_FEE_ENABLE and GLOBAL_DEBUG_ENABLE
  set; 0 clears them (the kernel also resets every GT then; the model does not).
- The attention scan: a worker that runs every 100 ms while any connection exists on the
  device and every 1000 ms otherwise (the interval is chosen when a scan starts, so the scan
  after one that saw a debugger comes 100 ms later even if it detached meanwhile); CONNECT and
  every job start run it at once.  When a
  thread of a GT has attention it finds the run-alone queue running on the GT (a debuggable
  queue with a job on its engine): none, not debuggable, no attached connection for its client
  -> the GT is reset (the running jobs stop, their queues are banned with -EIO); discovery still
  running -> try again next tick; otherwise EU_ATTENTION (STATE_CHANGE; client, exec queue and
  LRC handles; flags 0; bitmask_size = 8 bytes per DSS; the TD_ATT snapshot) is queued, again on
  every scan while attention stays raised.  A failed send disconnects the debugger and resets.
- EU_CONTROL commands after the argument checks of xe_eudebug.py: INTERRUPT_ALL (no run-alone
  queue, another queue or another LRC: EINVAL; then FORCE_EXTERNAL_HALT, FORCE_EXCEPTION, both
  cleared), STOPPED (no run-alone queue ENOENT; another queue or LRC EBUSY; the TD_ATT
  snapshot), RESUME (same errors; TD_CLR with the caller's bits).

The worker lives while any job runs (attention needs threads); it is started again by the next
job.  Attention is read and cleared between the dispatcher's rounds (`EuArray.quiescent`), and
that gate is taken before the kernel lock (see `sim/gpu/gt.py`).
"""

from __future__ import annotations

import ctypes
import errno as E
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ... import uapi as _uapi
from ..gpu.gt import (EuArray, Topology, TD_CTL_EUDEBUG, TD_CTL_FORCE_EXCEPTION,
                      TD_CTL_FORCE_EXTERNAL_HALT)
from .xe_device_types import (CLASS_COMPUTE, CLASS_RENDER, DSS_COUNT, EUS_PER_DSS,
                              EU_CONTROL_INTERRUPT_ALL, EU_CONTROL_RESUME, EU_CONTROL_STOPPED,
                              EV_EU_ATTENTION, F_STATE_CHANGE, _fail)

if TYPE_CHECKING:
    from .xe_device_types import Device
    from .xe_eudebug import Connection
    from .xe_exec_queue import ExecQueue, Lrc

log = logging.getLogger(__name__)

ATTENTION_INTERVAL_S = 0.1            # XE_EUDEBUG_ATTENTION_INTERVAL (100 ms) ...
ATTENTION_INTERVAL_IDLE_S = 1.0       # ... ten times slower without a connection
ATTENTION_SETTLE_S = 1.0              # model: attention unchanged this long counts as settled
THREADS_PER_EU = 8                    # Xe2 (IGT's default without a hwconfig table)
_HEADER = ctypes.sizeof(_uapi.drm_xe_eudebug_event)


def topology() -> Topology:
    """The topology QUERY_GT_TOPOLOGY reports (xe_query.py): DSS_COUNT x EUS_PER_DSS EUs."""
    return Topology(tuple(range(DSS_COUNT)), EUS_PER_DSS, THREADS_PER_EU)


class XeEudebugHwMixin:
    """The `Kernel` methods of xe_eudebug_hw.py (mixed into `Kernel` in xe_device.py)."""

    _lock: Any
    devices: list[Device]
    xe_exec: Any

    def _eudebug_hw_init(self) -> None:
        self._gts: dict[tuple[int, int], EuArray] = {}          # (device, GT)
        self._scan_cv = threading.Condition(self._lock)
        self._scan_thread: threading.Thread | None = None
        self._scan_flush = False
        self._scan_seen: dict[tuple[int, int], tuple[bytes, float]] = {}   # (device, GT): (bitmap, since)
        self.attention_scans = 0                  # scans run (diagnostics)

    # -- hardware ----------------------------------------------------------------------------------
    def _gt(self, dev: Device, gt_id: int = 0) -> EuArray:
        """The EU array of GT `gt_id` of the device (each tile's GT has its own), TD_CTL
        programmed for its `enable_eudebug`."""
        gt = self._gts.get((dev.index, gt_id))
        if gt is None:
            gt = self._gts[(dev.index, gt_id)] = EuArray(topology())
            gt.write_td_ctl(TD_CTL_EUDEBUG if dev.enabled else 0)
        return gt

    def _eudebug_hw_enable(self, dev: Device, enable: bool) -> None:
        """xe_eudebug_reinit_hw_engine for every render/compute engine (kernel lock held)."""
        for gt_id in range(dev.gt_count):
            gt = self._gt(dev, gt_id)
            gt.write_td_ctl(gt.td_ctl | TD_CTL_EUDEBUG if enable else gt.td_ctl & ~TD_CTL_EUDEBUG)
        if enable:
            self._attention_scan_start()

    def _runalone(self, dev: Device, gt_id: int = 0) -> tuple[ExecQueue, int] | None:
        """The run-alone queue with a job on the GT and the index of its running LRC (kernel
        lock held).  Only debuggable queues run alone."""
        for s in self.xe_exec.running():
            q = s.q
            if (q.file.device is dev and q.gt_id == gt_id
                    and q.debuggable and q.alive
                    and q.engine_class in (CLASS_RENDER, CLASS_COMPUTE)):
                return q, 0                       # the queue's jobs run on its first LRC
        return None

    def _gt_reset(self, dev: Device, why: str, gt_id: int = 0) -> None:
        """xe_gt_reset_async: every job running on the GT stops; its queue is banned (-EIO)."""
        log.info("device %d GT %d: reset (%s)", dev.index, gt_id, why)
        for s in self.xe_exec.running():
            if s.q.file.device is dev and s.q.gt_id == gt_id:
                s.reset = True

    # -- the attention scan ------------------------------------------------------------------------
    def _attention_scan_start(self) -> None:
        """attention_scan_flush: run the scan now (kernel lock held)."""
        self._scan_flush = True
        self._scan_cv.notify_all()
        if self._scan_thread is None:
            self._scan_thread = threading.Thread(target=self._attention_scan_loop, daemon=True,
                                                 name="xe-eudebug-attention-scan")
            self._scan_thread.start()

    def _attention_scan_loop(self) -> None:
        while True:
            with self._lock:
                if not self.xe_exec.running():
                    self._scan_thread = None
                    return
                self._scan_flush = False
                devices = [d for d in self.devices if d.enabled]
                # The next scan's delay is chosen before this one runs (attention_scan_fn): a scan
                # that sends EU_ATTENTION is followed 100 ms later even when the debugger detaches
                # meanwhile, and that scan resets the GT if the attention is still unhandled.
                connected = any(d.conns for d in self.devices)
                delay = ATTENTION_INTERVAL_S if connected else ATTENTION_INTERVAL_IDLE_S
            for dev in devices:
                for gt_id in range(dev.gt_count):
                    self._attention_scan_device(dev, gt_id)
            with self._lock:
                self.attention_scans += 1
                deadline = time.monotonic() + delay
                while not self._scan_flush:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._scan_cv.wait(left)

    def _attention_scan_device(self, dev: Device, gt_id: int = 0) -> None:
        gt = self._gt(dev, gt_id)
        with gt.quiescent(), self._lock:
            if (dev.index, gt_id) in self._pf_busy:
                return                            # a page fault is handled: scan held off
            bits = gt.attention()
            now = time.monotonic()
            seen, since = self._scan_seen.get((dev.index, gt_id), (b"", now))
            if bits != seen:
                since = now
            self._scan_seen[(dev.index, gt_id)] = (bits, since)
            if not dev.enabled or not any(bits):
                return
            # Hardware threads reach their halt within microseconds of each other; interpreted
            # ones one after the other.  The scan reports attention once it has settled: no
            # thread on the GT can still run, or the bitmap stayed the same for a second.
            if gt.runnable() and now - since < ATTENTION_SETTLE_S:
                return
            self._send_queued_pagefaults(dev, gt, gt_id)  # xe_gt_pagefault.py
            err = self._send_gt_attention(dev, gt, gt_id)
            if err:
                self._gt_reset(dev, f"unattributed EU attention ({-err})", gt_id)

    def _send_gt_attention(self, dev: Device, gt: EuArray, gt_id: int = 0) -> int:
        """xe_send_gt_attention: 0 when sent or deferred, else -errno (kernel lock held)."""
        if not dev.conns:
            return -E.ENOTCONN
        active = self._runalone(dev, gt_id)
        if active is None:
            return -E.ENOENT
        q, lrc_idx = active
        conn = next((c for c in dev.conns if c.target_task is q.file.owner_task), None)
        if conn is None or conn.status != 1:
            return -E.ENOTCONN
        if not conn.discovery_done:
            return 0                              # discovery in progress: next tick
        ch = conn.clients.find(q.file)
        qh = conn.queues.find(q)
        lh = conn.lrcs.find(q.lrcs[lrc_idx])
        if ch is None or qh is None or lh is None:
            self._detach(conn, -E.ENOENT)
            return -E.ENOENT
        bitmap = gt.attention()
        ev = _uapi.drm_xe_eudebug_event_eu_attention(client_handle=ch, exec_queue_handle=qh,
                                                      lrc_handle=lh, flags=0,
                                                      bitmask_size=len(bitmap))
        if not self._emit(conn, EV_EU_ATTENTION, F_STATE_CHANGE, ev.to_bytes()[_HEADER:] + bitmap):
            return -E.ETIMEDOUT if conn.status == -E.ETIMEDOUT else -E.ENOTCONN
        return 0

    # -- EU_CONTROL ----------------------------------------------------------------------------------
    def _eu_control_cmd(self, conn: Connection, q: ExecQueue, lrc: Lrc, cmd: int,
                        bits: bytes) -> bytes:
        """One EU_CONTROL command on the queue's GT, with the gate and the kernel lock held;
        returns the bitmap to copy back (effective size)."""
        dev, gt_id = q.file.device, q.gt_id
        gt = self._gt(dev, gt_id)
        active = self._runalone(dev, gt_id)
        if cmd == EU_CONTROL_INTERRUPT_ALL:
            if bits:
                raise _fail(E.EINVAL, "EU_CONTROL: INTERRUPT_ALL with a bitmask")
            if active is None:
                raise _fail(E.EINVAL, "EU_CONTROL: INTERRUPT_ALL: no run-alone engine running")
            if active[0] is not q or q.lrcs[active[1]] is not lrc:
                raise _fail(E.EINVAL, "EU_CONTROL: INTERRUPT_ALL: another context is running")
            td_ctl = gt.td_ctl
            gt.write_td_ctl(td_ctl | TD_CTL_FORCE_EXTERNAL_HALT)
            gt.write_td_ctl(td_ctl | TD_CTL_FORCE_EXCEPTION)
            gt.write_td_ctl(td_ctl & ~(TD_CTL_FORCE_EXTERNAL_HALT | TD_CTL_FORCE_EXCEPTION))
            return bits
        if cmd in (EU_CONTROL_STOPPED, EU_CONTROL_RESUME):
            name = "STOPPED" if cmd == EU_CONTROL_STOPPED else "RESUME"
            if active is None:
                raise _fail(E.ENOENT, f"EU_CONTROL: {name}: no run-alone context running")
            if active[0] is not q or q.lrcs[active[1]] is not lrc:
                raise _fail(E.EBUSY, f"EU_CONTROL: {name}: another context is running")
            if cmd == EU_CONTROL_STOPPED:
                return gt.attention()[:len(bits)]
            gt.clear_attention(bits)
            return bits
        raise _fail(E.EINVAL, f"EU_CONTROL: cmd {cmd}")
