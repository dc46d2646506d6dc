"""The GT's debug hardware (sim/gpu/gt.py): threads placed on the topology, TD_CTL breakpoints
and forced halts, the attention bitmap in the kernel's layout and its clearing; and, through
DRM_IOCTL_XE_EXEC on the simulator, the attention scan resetting the GT when the halted threads
belong to a queue without the EUDEBUG property.
"""

from __future__ import annotations

import struct
import time
from types import SimpleNamespace

import pytest

from gpuexec import LR, NSEC, ERR, GpuClient, user_fence
from kbhelpers import enable_eudebug
from test_sim_gpu import Space
from test_sim_walker import _start_job
from xe_eudebug import uapi as U
from xe_eudebug.gpgpu import Target, gpgpu_batch
from xe_eudebug.isa.gpgpu import GpgpuShader
from xe_eudebug.sim.gpu import EuArray, Topology
from xe_eudebug.sim.gpu.gt import (TD_CTL_BREAKPOINT_ENABLE, TD_CTL_EUDEBUG,
                                   TD_CTL_FEH_AND_FEE_ENABLE, TD_CTL_FORCE_EXTERNAL_HALT)

BATCH, TARGET = 0x10000, 0x40000          # the two windows of test_sim_gpu.Space
WIDTH, HEIGHT = 16, 8
END = 0xDEADCA11


def _breakpoint_shader() -> GpgpuShader:
    s = GpgpuShader()
    s.write_dword(1, 0)
    s.nop()
    s.breakpoint()                        # on the nop
    s.write_dword(2, 1)
    s.eot()
    return s


def _loop_shader() -> GpgpuShader:
    s = GpgpuShader()
    s.label(0)
    s.jump_neq(0, 4, END)                 # loop while dword 0 of row 4 != END
    s.write_dword(3, 1)
    s.eot()
    return s


def _sip() -> GpgpuShader:
    """IGT's online SIP: write the AIP to row 0, wait for the host, return."""
    sip = GpgpuShader()
    sip.write_aip(0)
    sip.wait()
    sip.end_system_routine(True)
    return sip


def _start(gt: EuArray, shader: GpgpuShader, x: int, y: int):
    space = Space()
    space.write(TARGET, bytes(4 * WIDTH * HEIGHT))
    space.write(BATCH, gpgpu_batch(BATCH, Target(TARGET, WIDTH, HEIGHT), x, y, shader, _sip()))
    _cs, job, results, deadline = _start_job(space, gt)
    return space, job, results, deadline


def _wait(cond, deadline: float, what: str) -> None:
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _bits(bitmap: bytes) -> int:
    return sum(bin(b).count("1") for b in bitmap)


def test_topology_layout_follows_the_td_att_rows():
    """8 bytes per DSS: rows TD_ATT(0) (EUs 0-3) and TD_ATT(1) (EUs 4-7), 8 thread bits per EU;
    consecutive slots go to different DSS first."""
    t = Topology()
    assert t.slots == 512 and t.bitmap_size == 64
    assert t.place(0) == (0, 0, 0) and t.bit(0) == (0, 0)
    assert t.place(1) == (1, 0, 0) and t.bit(1) == (8, 0)
    assert t.place(8) == (0, 1, 0) and t.bit(8) == (1, 0)
    assert t.place(8 * 5) == (0, 5, 0) and t.bit(8 * 5) == (5, 0)   # row 1, EU 1 of the row
    assert t.place(64) == (0, 0, 1) and t.bit(64) == (0, 1)
    assert sorted(t.bit(s) for s in range(512)) == [(b, i) for b in range(64) for i in range(8)]


def test_breakpoints_armed_by_td_ctl_halt_threads_with_attention_and_clear_resumes_them():
    gt = EuArray()
    gt.write_td_ctl(TD_CTL_EUDEBUG)
    space, job, results, deadline = _start(gt, _breakpoint_shader(), 8, 1)
    _wait(lambda: _bits(gt.attention()) == 8 and not gt.runnable(), deadline, gt.threads())
    assert gt.needs_attention() and job.is_alive()
    locations = sorted(t.location for t in gt.threads())
    assert locations == sorted(Topology().place(s) for s in range(8))
    # every thread stopped on the nop: the SIP wrote the same AIP for each, row 1 untouched
    row0 = struct.unpack("<8I", space.read(TARGET, 32))
    assert len(set(row0)) == 1 and row0[0] not in (0, 1)
    assert struct.unpack("<I", space.read(TARGET + 4 * WIDTH, 4))[0] == 0
    # clear the attention of the threads on DSS 0 only (bytes 0..7)
    half = bytes(gt.attention()[:8]) + bytes(56)
    first = _bits(half)
    assert 0 < first < 8
    assert gt.clear_attention(half) == first
    _wait(lambda: len(gt.threads()) == 8 - first, deadline, gt.threads())
    assert _bits(gt.attention()) == 8 - first and job.is_alive()
    gt.clear_attention(gt.attention())
    job.join(30)
    assert results and results[0].status == "completed", results
    assert gt.threads() == [] and gt.attention() == bytes(64)


def test_without_breakpoint_enable_the_breakpoint_bit_is_not_taken():
    gt = EuArray()
    gt.write_td_ctl(TD_CTL_EUDEBUG & ~TD_CTL_BREAKPOINT_ENABLE)
    space, job, results, deadline = _start(gt, _breakpoint_shader(), 2, 1)
    job.join(30)
    assert results and results[0].status == "completed", results
    assert struct.unpack("<2I", space.read(TARGET, 8)) == (1, 1)
    assert struct.unpack("<2I", space.read(TARGET + 4 * WIDTH, 8)) == (2, 2)


def test_forced_external_halt_interrupts_running_threads_only_with_feh_enabled():
    gt = EuArray()
    space, job, results, deadline = _start(gt, _loop_shader(), 4, 1)
    _wait(lambda: len(gt.threads()) == 4 and all(t.eu.executed > 20 for t in gt.threads()),
          deadline, gt.threads())
    gt.write_td_ctl(TD_CTL_FORCE_EXTERNAL_HALT)           # no FEH_AND_FEE_ENABLE: ignored
    time.sleep(0.2)
    assert gt.attention() == bytes(64) and gt.runnable()
    gt.write_td_ctl(TD_CTL_FEH_AND_FEE_ENABLE | TD_CTL_FORCE_EXTERNAL_HALT)
    gt.write_td_ctl(TD_CTL_FEH_AND_FEE_ENABLE)
    _wait(lambda: _bits(gt.attention()) == 4, deadline, gt.threads())
    space.write(TARGET + 4 * 4 * WIDTH, struct.pack("<I", END))   # end the loop, then resume
    gt.clear_attention(gt.attention())
    job.join(30)
    assert results and results[0].status == "completed", results
    assert struct.unpack("<4I", space.read(TARGET + 4 * WIDTH, 16)) == (3, 3, 3, 3)


def test_a_walker_larger_than_the_eu_array_waits_for_free_slots():
    gt = EuArray(Topology((0,), 2, 2))                   # 4 slots
    s = GpgpuShader()
    s.write_dword(5, 0)
    s.eot()
    space, job, results, deadline = _start(gt, s, 4, 3)  # 12 threads
    job.join(30)
    assert results and results[0].status == "completed", results
    assert all(struct.unpack_from("<I", space.read(TARGET + 4 * WIDTH * y + 4 * x, 4))[0] == 5
               for x in range(4) for y in range(3))


# ------------------------------------------------------------------------------------------------
# through DRM_IOCTL_XE_EXEC on the simulator

GPU_BATCH, GPU_TARGET = 0x1A0000, 0x2B0000
FENCE_OFF = 0xF000


def test_attention_of_a_queue_without_eudebug_resets_the_gt():
    """eudebug enabled (breakpoints armed), the queue not debuggable: the halted threads cannot
    be reported, the scan resets the GT and the job fails with EIO (IGT's
    breakpoint-not-in-debug-mode)."""
    with GpuClient() as c:
        was = enable_eudebug(c.fd, True)
        try:
            _run_not_debuggable(c)
        finally:
            if not was:
                enable_eudebug(c.fd, False)


def _run_not_debuggable(c: GpuClient) -> None:
    vm = c.vm(LR)
    bo, target = c.bo(), c.bo()
    c.bind(vm, bo, GPU_BATCH)
    c.bind(vm, target, GPU_TARGET)
    q = c.queue(vm, U.DRM_XE_ENGINE_CLASS_COMPUTE)
    c.write(bo, 0, gpgpu_batch(GPU_BATCH, Target(GPU_TARGET, WIDTH, HEIGHT), 2, 1,
                               _breakpoint_shader(), _sip()))
    c.write(bo, FENCE_OFF, bytes(8))
    assert c.exec(q, GPU_BATCH, [user_fence(GPU_BATCH + FENCE_OFF, 1)]) == 0
    assert c.wait_ufence(c.bo_addr(bo, FENCE_OFF), 1, 30 * NSEC, q) == ERR["EIO"]
    assert c.read32(target, 0) not in (0, 1)             # the SIP wrote the AIP: it halted
    assert c.read32(target, 4 * WIDTH) == 0             # and never went on
    assert c.exec(q, GPU_BATCH) == ERR["ECANCELED"]


def test_the_scan_after_one_that_saw_a_debugger_comes_at_the_attached_interval(monkeypatch):
    """attention_scan_fn picks its next delay before it scans: 100 ms while a debugger is
    attached at the start of the scan, 1 s otherwise.  A debugger that reads the EU_ATTENTION
    and detaches while that scan runs is therefore followed by a scan 100 ms later (the one
    that resets the GT, IGT's interrupt-reconnect sleeps 1 s for it), not 1 s later."""
    from test_sim_kernel import Env
    from xe_eudebug.sim.kernel import xe_eudebug_hw as hw

    k = Env().k
    dev = k.devices[0]
    dev.enabled = True
    dev.conns.append(object())                        # an attached debugger
    jobs = iter([True, True, False])                  # a job runs for two scans
    monkeypatch.setattr(k.xe_exec, "running", lambda: [object()] if next(jobs) else [])
    monkeypatch.setattr(hw, "time", SimpleNamespace(monotonic=lambda: 100.0))
    seen: list[int] = []

    def scan(d, gt_id=0):
        if d is dev and gt_id == 0:
            seen.append(len(d.conns))
            d.conns.clear()                           # the debugger detaches meanwhile

    monkeypatch.setattr(k, "_attention_scan_device", scan)
    delays: list[float] = []

    class Wait:
        def wait(self, timeout: float) -> None:
            delays.append(timeout)
            k._scan_flush = True                      # end this wait at once

        def notify_all(self) -> None:
            pass

    k._scan_cv = Wait()
    k._attention_scan_loop()
    assert seen == [1, 0]
    assert delays == pytest.approx([hw.ATTENTION_INTERVAL_S, hw.ATTENTION_INTERVAL_IDLE_S])
