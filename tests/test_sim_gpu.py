"""The simulated command streamer (sim/gpu) on its own: a fake address space, no driver."""

from __future__ import annotations

import logging
import struct
import threading
import time

import pytest

from gpuexec import (CS_GPR, MI_ARB_CHECK, MI_BATCH_BUFFER_END, MI_NOOP, bbs, lri, lrm, lrr, pack, sdi,
                     semaphore_wait, srm)
from xe_eudebug import uapi as U
from xe_eudebug.sim.gpu import CommandStreamer, Context, EngineInfo, GpuFault, mi


class Space:
    """Two mapped 64 KiB windows at 0x10000 and 0x40000; everything else faults."""

    def __init__(self) -> None:
        self.mem = {0x10000: bytearray(0x10000), 0x40000: bytearray(0x10000)}

    def _find(self, va: int, size: int, write: bool) -> tuple[bytearray, int]:
        for base, buf in self.mem.items():
            if base <= va and va + size <= base + len(buf):
                return buf, va - base
        raise GpuFault(va, write)

    def read(self, va: int, size: int) -> bytes:
        buf, off = self._find(va, size, False)
        return bytes(buf[off:off + size])

    def write(self, va: int, data: bytes) -> None:
        buf, off = self._find(va, len(data), True)
        buf[off:off + len(data)] = data

    def u32(self, va: int) -> int:
        return struct.unpack("<I", self.read(va, 4))[0]


def ring_for(addr: int) -> bytes:
    return pack(bbs(addr))


def run(batch: bytes, ctx: Context | None = None, stop=lambda: None, space: Space | None = None,
        engine: tuple[int, int] = (U.DRM_XE_ENGINE_CLASS_RENDER, 0)):
    space = space or Space()
    space.write(0x10000, batch)
    result = CommandStreamer(EngineInfo(*engine)).run(ring_for(0x10000), space, ctx or Context(), stop)
    return result, space


def test_decode_lengths_follow_the_dword_length_fields():
    assert mi.decode(mi.mi(mi.MI_NOOP) | 0xC5A3) == ("MI_NOOP", 1)
    assert mi.decode(mi.mi(mi.MI_STORE_DATA_IMM, 4)) == ("MI_STORE_DATA_IMM", 4)
    assert mi.decode(mi.mi(mi.MI_LOAD_REGISTER_IMM, 7)) == ("MI_LOAD_REGISTER_IMM", 7)
    assert mi.decode(mi.gfx(2, 2, 2, 40)) == ("COMPUTE_WALKER", 40)
    assert mi.decode(mi.gfx(1, 1, 4, 1) | 0x302) == ("PIPELINE_SELECT", 1)
    assert mi.decode(0x3F << 23) is None                      # no MI opcode 0x3F
    assert mi.decode(2 << 29) is None                         # blitter commands: not modelled


def test_unknown_command_reports_its_dword_and_address():
    result, _ = run(pack(MI_NOOP, MI_NOOP, 0x1F800123, MI_BATCH_BUFFER_END))
    assert (result.status, result.dword, result.address) == ("bad-command", 0x1F800123, 0x10008)


def test_fault_reports_the_address():
    result, _ = run(pack(sdi(0x90000, 1), MI_BATCH_BUFFER_END))
    assert (result.status, result.address) == ("fault", 0x90000)
    result, _ = run(pack(bbs(0x7000000), MI_BATCH_BUFFER_END))      # fetch from nowhere
    assert (result.status, result.address) == ("fault", 0x7000000)


def test_registers_are_per_context_and_engine_relative():
    ctx = Context()
    result, space = run(pack(lri(CS_GPR[3], 0xAB), srm(CS_GPR[3], 0x40000), MI_BATCH_BUFFER_END), ctx)
    assert result.status == "completed" and space.u32(0x40000) == 0xAB
    assert ctx.registers[0x2000 + CS_GPR[3]] == 0xAB             # RCS MMIO base + offset
    # an absolute register address reaches the same register
    absolute = [mi.mi(mi.MI_STORE_REGISTER_MEM, 4), 0x2000 + CS_GPR[3], 0x40004, 0]
    result, space = run(pack(absolute, MI_BATCH_BUFFER_END), ctx)
    assert space.u32(0x40004) == 0xAB
    # a fresh context starts from zero; a compute engine has its own MMIO base
    ccs = Context()
    result, space = run(pack(lri(CS_GPR[0], 5), MI_BATCH_BUFFER_END), ccs,
                        engine=(U.DRM_XE_ENGINE_CLASS_COMPUTE, 0))
    assert ccs.registers == {0x1A000 + CS_GPR[0]: 5}


def test_lrm_lrr_srm_copy():
    space = Space()
    space.write(0x40010, struct.pack("<I", 0x1234))
    result, space = run(pack(lrm(CS_GPR[0], 0x40010), lrr(CS_GPR[0], CS_GPR[5]), srm(CS_GPR[5], 0x40020),
                             MI_BATCH_BUFFER_END), space=space)
    assert result.status == "completed" and space.u32(0x40020) == 0x1234


def test_second_level_batch_returns_and_chained_batch_does_not():
    space = Space()
    space.write(0x40100, pack(sdi(0x40000, 1), MI_BATCH_BUFFER_END))
    space.write(0x40200, pack(sdi(0x40008, 3), MI_BATCH_BUFFER_END))
    result, space = run(pack(bbs(0x40100, True), sdi(0x40004, 2), bbs(0x40200), sdi(0x4000C, 9),
                             MI_BATCH_BUFFER_END), space=space)
    assert result.status == "completed"
    assert [space.u32(0x40000 + 4 * i) for i in range(4)] == [1, 2, 3, 0]


@pytest.mark.parametrize("op,value,met", [
    (mi.SAD_GREATER_THAN_SDD, 6, True), (mi.SAD_GREATER_THAN_SDD, 5, False),
    (mi.SAD_GREATER_THAN_OR_EQUAL_SDD, 5, True), (mi.SAD_LESS_THAN_SDD, 4, True),
    (mi.SAD_LESS_THAN_SDD, 5, False), (mi.SAD_LESS_THAN_OR_EQUAL_SDD, 5, True),
    (mi.SAD_EQUAL_SDD, 5, True), (mi.SAD_EQUAL_SDD, 6, False),
    (mi.SAD_NOT_EQUAL_SDD, 6, True), (mi.SAD_NOT_EQUAL_SDD, 5, False),
])
def test_semaphore_wait_compare_operations(op, value, met):
    space = Space()
    space.write(0x40000, struct.pack("<I", value))
    deadline = time.monotonic() + 0.2
    result, _ = run(pack(semaphore_wait(0x40000, 5, op), MI_BATCH_BUFFER_END), space=space,
                    stop=lambda: "timeout" if time.monotonic() > deadline else None)
    assert result.status == ("completed" if met else "stopped")


def test_semaphore_released_by_a_write_from_elsewhere():
    space = Space()
    threading.Timer(0.05, lambda: space.write(0x40000, struct.pack("<I", 1))).start()
    deadline = time.monotonic() + 10
    result, _ = run(pack(semaphore_wait(0x40000, 1), sdi(0x40004, 7), MI_BATCH_BUFFER_END), space=space,
                    stop=lambda: "timeout" if time.monotonic() > deadline else None)
    assert result.status == "completed" and space.u32(0x40004) == 7


def test_a_spinning_batch_stops_when_asked():
    requested = threading.Event()
    threading.Timer(0.1, requested.set).start()
    result, _ = run(pack(MI_ARB_CHECK, bbs(0x10000)), stop=lambda: "queue killed" if requested.is_set() else None)
    assert (result.status, result.reason) == ("stopped", "queue killed")


def test_compute_walker_without_a_simd_size_is_a_bad_command():
    """SIMD Size 0 does not exist on graphics version 20: the walker fails, it is not skipped."""
    walker = [mi.gfx(2, 2, 2, 40)] + [0] * 39
    sip = [mi.gfx(0, 1, 2, 3), 0x3000, 0]
    result, _ = run(pack(sip, walker, MI_BATCH_BUFFER_END))
    assert (result.status, result.address) == ("bad-command", 0x1000C)
    assert "SIMD Size 0" in result.reason and result.walkers == 0
    assert [(name, at) for name, at, _dw in result.state] == [("STATE_SIP", 0x10000), ("COMPUTE_WALKER", 0x1000C)]
    assert result.state[0][2][1] == 0x3000


def test_unknown_command_is_logged_by_the_driver_with_dword_and_address(caplog):
    """The driver side logs a failed job's command dword and address, and bans the queue."""
    from types import SimpleNamespace
    from xe_eudebug.sim.gpu import JobResult
    from xe_eudebug.sim.kernel.xe_exec import Job, QueueSched, XeExec

    kernel = SimpleNamespace(_lock=threading.RLock(), config=None)
    q = SimpleNamespace(id=3, engine_class=0, width=1, file=SimpleNamespace(owner=99),
                        vm=SimpleNamespace(id=1, lr=True))
    exe = XeExec(kernel)
    s = QueueSched(q)
    job = Job(b"", [], 1)
    with caplog.at_level(logging.WARNING, logger="xe_eudebug.sim.kernel.xe_exec"):
        exe._complete(s, job, JobResult("bad-command", address=0x1A0008, dword=0x1F800000))
    assert "0x1f800000" in caplog.text and "0x1a0008" in caplog.text
    assert s.banned and job.fence.signaled and job.fence.error == -5


def test_semaphore_wait_with_a_reserved_compare_operation_is_a_bad_command():
    header = mi.mi(mi.MI_SEMAPHORE_WAIT, 4, 6 << mi.MI_SEMAPHORE_COMPARE_SHIFT)
    result, _ = run(pack([header, 0, 0x40000, 0], MI_BATCH_BUFFER_END))
    assert (result.status, result.dword, result.address) == ("bad-command", header, 0x10000)
