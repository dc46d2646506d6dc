"""COMPUTE_WALKER thread dispatch: IGT-style gpgpu shaders run on EU threads and write their 2D
target; the per-thread payload (thread group IDs in r0, inline data in r1); the system routine
set by STATE_SIP; the live threads of an engine; and, through raw EXEC on the simulator, a
fault in a shader's send banning the queue and a shader that never ends hitting the job timeout.
"""

from __future__ import annotations

import struct
import threading
import time

import pytest

from gpuexec import LR, NSEC, ERR, GpuClient, syncobj_sync, user_fence
from kbhelpers import set_eudebug
from test_sim_gpu import Space, ring_for
from xe_eudebug.gpgpu import STATE_OFFSET, Target, gpgpu_batch
from xe_eudebug.isa.gpgpu import GpgpuShader
from xe_eudebug.isa.text import assemble_dwords
from xe_eudebug.sim.gpu import CommandStreamer, Context, EngineInfo
from xe_eudebug.sim.gpu.compute import ThreadState
from xe_eudebug import uapi as U

BATCH, TARGET = 0x10000, 0x40000          # the two windows of test_sim_gpu.Space
WIDTH, HEIGHT = 16, 8                     # target: 16 dwords (64 bytes) x 8 rows
CANARY = 0x5A5A5A5A


def _space_with_target() -> Space:
    space = Space()
    space.write(TARGET, struct.pack("<I", CANARY) * (WIDTH * HEIGHT))
    return space


def _run(batch: bytes, space: Space, cs: CommandStreamer | None = None, stop=lambda: None):
    space.write(BATCH, batch)
    cs = cs or CommandStreamer(EngineInfo(U.DRM_XE_ENGINE_CLASS_COMPUTE, 0))
    return cs.run(ring_for(BATCH), space, Context(), stop)


def _target(space: Space) -> list[list[int]]:
    d = struct.unpack(f"<{WIDTH * HEIGHT}I", space.read(TARGET, 4 * WIDTH * HEIGHT))
    return [list(d[WIDTH * y:WIDTH * (y + 1)]) for y in range(HEIGHT)]


def _expect(x_dim: int, y_dim: int, rows: dict[int, int] | None = None, value=None) -> list[list[int]]:
    """The target after x_dim * y_dim threads each wrote one dword per row offset."""
    grid = [[CANARY] * WIDTH for _ in range(HEIGHT)]
    for y_off, v in (rows or {}).items():
        for y in range(y_dim):
            for x in range(x_dim):
                grid[y + y_off][x] = v
    if value is not None:
        for y in range(y_dim):
            for x in range(x_dim):
                grid[y][x] = value(x, y)
    return grid


def test_write_dword_template_fills_one_dword_per_thread():
    s = GpgpuShader()
    s.write_dword(0xC0DE0001, 0)
    s.write_dword(0xC0DE0002, 3)
    s.eot()
    space = _space_with_target()
    result = _run(gpgpu_batch(BATCH, Target(TARGET, WIDTH, HEIGHT), 4, 3, s), space)
    assert result.status == "completed", result.reason
    assert (result.walkers, result.threads) == (1, 12)
    assert result.instructions == 12 * s.instructions
    assert _target(space) == _expect(4, 3, {0: 0xC0DE0001, 3: 0xC0DE0002})


PAYLOAD_SHADER = """
(W) mov (8|M0) r4.0<1>:ud 0x0:ud
(W) shl (1|M0) r4.5<1>:ud r0.1<0;1,0>:ud 0x2:ud
(W) mov (1|M0) r4.6<1>:ud r0.6<0;1,0>:ud
(W) mov (1|M0) r4.7<1>:ud 0x3:ud
(W) shl (1|M0) r5.0<1>:ud r0.6<0;1,0>:ud 0x8:ud
(W) or (1|M0) r5.0<1>:ud r5.0<0;1,0>:ud r0.1<0;1,0>:ud
(W) shl (1|M0) r6.0<1>:ud r1.2<0;1,0>:ud 0x10:ud
(W) or (1|M0) r5.0<1>:ud r5.0<0;1,0>:ud r6.0<0;1,0>:ud
(W) shl (1|M0) r6.0<1>:ud r1.3<0;1,0>:ud 0x18:ud
(W) or (1|M0) r5.0<1>:ud r5.0<0;1,0>:ud r6.0<0;1,0>:ud
(W) send.tgm (1|M0) null r4 null:0 0x0 0x64000007 {I@1, $0}
(W) mov (8|M0) r112.0<1>:ud r0.0<8;8,1>:ud
(W) send.gtwy (8|M0) null r112 null:0 0x0 0x02000000 {I@1, $0, EOT}
"""


def test_threads_get_their_group_ids_in_r0_and_the_inline_data_in_r1():
    """Each thread writes height << 24 | pitch << 16 | group Y << 8 | group X (r1.3, r1.2:
    the inline data IGT fills with the target's stride and height)."""
    code = struct.pack(f"<{len(d := assemble_dwords(PAYLOAD_SHADER))}I", *d)
    space = _space_with_target()
    result = _run(gpgpu_batch(BATCH, Target(TARGET, WIDTH, HEIGHT), 3, 5, code), space)
    assert result.status == "completed", result.reason
    assert _target(space) == _expect(3, 5, value=lambda x, y: HEIGHT << 24 | 64 << 16 | y << 8 | x)


INDEX_SHADER = """
(W) mov (8|M0) r4.0<1>:ud 0x0:ud
(W) mul (1|M0) r4.5<1>:ud r0.1<0;1,0>:ud 0xc:ud
(W) shl (1|M0) r6.0<1>:ud r0.2<0;1,0>:ud 0x2:ud
(W) add (1|M0) r4.5<1>:ud r4.5<0;1,0>:ud r6.0<0;1,0>:ud
(W) mov (1|M0) r4.6<1>:ud r0.6<0;1,0>:ud
(W) mov (1|M0) r4.7<1>:ud 0x3:ud
(W) add (1|M0) r5.0<1>:ud r0.2<0;1,0>:ud 0x100:ud
(W) send.tgm (1|M0) null r4 null:0 0x0 0x64000007 {I@1, $0}
(W) mov (8|M0) r112.0<1>:ud r0.0<8;8,1>:ud
(W) send.gtwy (8|M0) null r112 null:0 0x0 0x02000000 {I@1, $0, EOT}
"""


def test_every_thread_of_a_group_runs_with_its_index_in_r0_2():
    """Three threads per group (the interface descriptor's thread count): thread i of group
    (x, y) writes 0x100 + i at dword 3x + i of row y."""
    d = assemble_dwords(INDEX_SHADER)
    batch = bytearray(gpgpu_batch(BATCH, Target(TARGET, WIDTH, HEIGHT), 4, 2,
                                  struct.pack(f"<{len(d)}I", *d)))
    walker = batch.index(struct.pack("<I", 0x72080026))           # COMPUTE_WALKER header
    struct.pack_into("<I", batch, walker + 4 * (19 + 5), 3)        # IDD dw5: 3 threads/group
    space = _space_with_target()
    result = _run(bytes(batch), space)
    assert result.status == "completed" and result.threads == 24, result.reason
    expected = _expect(0, 0)
    for y in range(2):
        expected[y][:12] = [0x100 + i for _x in range(4) for i in range(3)]
    assert _target(space) == expected


def _illegal_shader() -> GpgpuShader:
    s = GpgpuShader(illegal_opcode_exception_enable=True)
    s.write_dword(1, 0)
    s.code.extend([0, 0, 0, 0])           # opcode 0: illegal
    s.write_dword(2, 2)
    s.eot()
    return s


def test_illegal_opcode_enters_the_system_routine_that_state_sip_points_at():
    sip = GpgpuShader()
    sip.write_dword(0x5195, 4)
    sip.increase_aip(16)                  # step over the illegal instruction
    sip.end_system_routine(False)
    space = _space_with_target()
    result = _run(gpgpu_batch(BATCH, Target(TARGET, WIDTH, HEIGHT), 2, 2, _illegal_shader(), sip), space)
    assert result.status == "completed", result.reason
    assert _target(space) == _expect(2, 2, {0: 1, 2: 2, 4: 0x5195})


def test_illegal_opcode_without_the_exception_enabled_fails_the_job():
    space = _space_with_target()
    batch = gpgpu_batch(BATCH, Target(TARGET, WIDTH, HEIGHT), 2, 2, _illegal_shader(),
                        illegal_opcode_exception=False)
    result = _run(batch, space)
    assert result.status == "eu-error" and "illegal opcode" in result.reason
    # the first thread wrote its first dword and stopped the job before its second store
    assert _target(space)[0][0] == 1 and _target(space)[2][:2] == [CANARY, CANARY]


def _start_job(space: Space, gt=None):
    """Run the batch at BATCH on a job thread (stopped after 30 s) on the engine of `gt` (an
    EuArray; a private one by default): engine, thread, results, deadline."""
    cs = CommandStreamer(EngineInfo(U.DRM_XE_ENGINE_CLASS_COMPUTE, 0), gt)
    deadline = time.monotonic() + 30
    results: list = []
    job = threading.Thread(target=lambda: results.append(
        cs.run(ring_for(BATCH), space, Context(), lambda: "timeout" if time.monotonic() > deadline else None)))
    job.start()
    return cs, job, results, deadline


def test_live_threads_are_listed_halt_pause_and_resume():
    """Threads halted in sync.host stay on the engine's list; the job ends when the last one,
    resumed, sends EOT; a paused thread gets no instructions."""
    s = GpgpuShader()
    s.wait()
    s.write_dword(7, 0)
    s.eot()
    space = _space_with_target()
    space.write(BATCH, gpgpu_batch(BATCH, Target(TARGET, WIDTH, HEIGHT), 4, 1, s))
    cs, job, results, deadline = _start_job(space)
    while len(cs.threads) < 4 or any(t.state is not ThreadState.HALTED for t in cs.threads):
        assert time.monotonic() < deadline, cs.threads
        time.sleep(0.01)
    threads = cs.threads
    assert sorted(t.group for t in threads) == [(x, 0, 0) for x in range(4)]
    assert _target(space)[0][:4] == [CANARY] * 4
    threads[0].pause()
    for t in threads[1:]:
        t.resume()
    while len(cs.threads) > 1:
        assert time.monotonic() < deadline, cs.threads
        time.sleep(0.01)
    assert cs.threads == [threads[0]] and threads[0].state is ThreadState.PAUSED
    assert job.is_alive()
    row = _target(space)[0]
    assert row[threads[0].group[0]] == CANARY and sorted(row[:4]) == [7, 7, 7, CANARY]
    threads[0].resume()
    job.join(30)
    assert results and results[0].status == "completed", results
    assert cs.threads == [] and _target(space)[0][:4] == [7] * 4


def test_an_interrupted_thread_runs_the_system_routine_and_goes_on():
    """A thread spinning until a dword of the target changes ends only when an interrupt sends
    it to the SIP, which writes that dword and returns."""
    s = GpgpuShader()
    s.label(0)
    s.jump_neq(0, 3, 0xCAFE)              # loop while dword 0 of row 3 != 0xCAFE
    s.write_dword(1, 0)
    s.eot()
    sip = GpgpuShader()
    sip.write_dword(0xCAFE, 3)
    sip.end_system_routine(False)
    space = _space_with_target()
    space.write(BATCH, gpgpu_batch(BATCH, Target(TARGET, WIDTH, HEIGHT), 1, 1, s, sip))
    cs, job, results, deadline = _start_job(space)
    while not cs.threads or cs.threads[0].eu.executed < 50:
        assert time.monotonic() < deadline and job.is_alive(), results
        time.sleep(0.01)
    assert _target(space)[0][0] == CANARY and job.is_alive()
    cs.threads[0].interrupt()
    job.join(30)
    assert results and results[0].status == "completed", results
    assert _target(space)[3][0] == 0xCAFE and _target(space)[0][0] == 1


# ------------------------------------------------------------------------------------------------
# through DRM_IOCTL_XE_EXEC on the simulator

GPU_BATCH, GPU_TARGET = 0x1A0000, 0x2B0000
FENCE_OFF = 0xF000                        # user fence inside the batch BO, past the state


def _exec_setup(c: GpuClient, vm_flags: int = LR):
    vm = c.vm(vm_flags)
    bo, target = c.bo(), c.bo()
    c.bind(vm, bo, GPU_BATCH)
    c.bind(vm, target, GPU_TARGET)
    c.write(target, 0, struct.pack("<I", CANARY) * (WIDTH * HEIGHT))
    return vm, bo, target, c.queue(vm, U.DRM_XE_ENGINE_CLASS_COMPUTE)


def test_gpgpu_fill_through_exec_writes_the_target_dword_by_dword():
    s = GpgpuShader()
    s.write_dword(0xF111_0000, 1)
    s.eot()
    with GpuClient() as c:
        vm, bo, target, q = _exec_setup(c)
        batch = gpgpu_batch(GPU_BATCH, Target(GPU_TARGET, WIDTH, HEIGHT), 4, 4, s)
        assert len(batch) < FENCE_OFF
        c.write(bo, 0, batch)
        c.write(bo, FENCE_OFF, bytes(8))
        assert c.exec(q, GPU_BATCH, [user_fence(GPU_BATCH + FENCE_OFF, 1)]) == 0
        assert c.wait_ufence(c.bo_addr(bo, FENCE_OFF), 1, 30 * NSEC, q) == 0
        got = [[c.read32(target, 4 * (WIDTH * y + x)) for x in range(WIDTH)] for y in range(HEIGHT)]
    assert got == _expect(4, 4, {1: 0xF1110000})


def test_a_fault_in_a_shader_send_bans_the_queue():
    """The target's surface is not mapped in this (non-fault-mode) VM: the store faults, the job
    fails with EIO and the queue is banned."""
    s = GpgpuShader()
    s.write_dword(1, 0)
    s.eot()
    with GpuClient() as c:
        vm, bo, target, q = _exec_setup(c)
        c.write(bo, 0, gpgpu_batch(GPU_BATCH, Target(0x7770000, WIDTH, HEIGHT), 2, 1, s))
        c.write(bo, FENCE_OFF, bytes(8))
        assert c.exec(q, GPU_BATCH, [user_fence(GPU_BATCH + FENCE_OFF, 1)]) == 0
        assert c.wait_ufence(c.bo_addr(bo, FENCE_OFF), 1, 30 * NSEC, q) == ERR["EIO"]
        assert c.read64(bo, FENCE_OFF) == 0
        assert c.exec(q, GPU_BATCH) == ERR["ECANCELED"]


def test_an_illegal_instruction_without_a_system_routine_fails_the_job_and_bans_the_queue():
    with GpuClient() as c:
        vm, bo, target, q = _exec_setup(c)
        c.write(bo, 0, gpgpu_batch(GPU_BATCH, Target(GPU_TARGET, WIDTH, HEIGHT), 1, 1, _illegal_shader(),
                                   illegal_opcode_exception=False))
        c.write(bo, FENCE_OFF, bytes(8))
        assert c.exec(q, GPU_BATCH, [user_fence(GPU_BATCH + FENCE_OFF, 1)]) == 0
        assert c.wait_ufence(c.bo_addr(bo, FENCE_OFF), 1, 30 * NSEC, q) == ERR["EIO"]
        assert c.read32(target, 0) == 1 and c.read32(target, 4 * WIDTH * 2) == CANARY
        assert c.exec(q, GPU_BATCH) == ERR["ECANCELED"]


def test_destroying_a_queue_ends_its_halted_threads():
    """Threads halted in sync.host on an LR queue (no job timeout) go when the queue is
    destroyed; the engine then runs the next walker."""
    halt = GpgpuShader()
    halt.wait()
    halt.write_dword(0xDEAD, 0)
    halt.eot()
    fill = GpgpuShader()
    fill.write_dword(0x600D, 0)
    fill.eot()
    with GpuClient() as c:
        # With eudebug enabled the halted threads raise attention that no debugger takes: an
        # attention scan run at q2's job start, while q's threads are still on the GT (its runner
        # releases them at its next poll), would reset the GT and ban q2 too.
        was = set_eudebug(c.fd, False)
        try:
            vm, bo, target, q = _exec_setup(c)
            c.write(bo, 0, gpgpu_batch(GPU_BATCH, Target(GPU_TARGET, WIDTH, HEIGHT), 2, 1, halt))
            assert c.exec(q, GPU_BATCH) == 0
            time.sleep(0.2)
            c.queue_destroy(q)
            q2 = c.queue(vm, U.DRM_XE_ENGINE_CLASS_COMPUTE)
            c.write(bo, 0, gpgpu_batch(GPU_BATCH, Target(GPU_TARGET, WIDTH, HEIGHT), 2, 1, fill))
            c.write(bo, FENCE_OFF, bytes(8))
            assert c.exec(q2, GPU_BATCH, [user_fence(GPU_BATCH + FENCE_OFF, 1)]) == 0
            assert c.wait_ufence(c.bo_addr(bo, FENCE_OFF), 1, 30 * NSEC, q2) == 0
            assert [c.read32(target, 4 * x) for x in range(3)] == [0x600D, 0x600D, CANARY]
        finally:
            set_eudebug(c.fd, was)


def test_a_shader_that_never_ends_hits_the_job_timeout(sim_server):
    s = GpgpuShader()
    s.label(0)
    s.nop()
    s.jump(0)
    s.eot()
    handle = sim_server(job_timeout_ms=300)
    with GpuClient(fd=handle.open_device(0)) as c:
        vm, bo, target, q = _exec_setup(c, 0)
        c.write(bo, 0, gpgpu_batch(GPU_BATCH, Target(GPU_TARGET, WIDTH, HEIGHT), 2, 2, s))
        sync = c.syncobj()
        start = time.monotonic()
        assert c.exec(q, GPU_BATCH, [syncobj_sync(sync)]) == 0
        assert c.syncobj_wait([sync], 30 * NSEC) == (0, 0)
        assert time.monotonic() - start >= 0.3
        assert c.exec(q, GPU_BATCH) == ERR["ECANCELED"]


def test_batch_layout_keeps_commands_before_the_state():
    s = GpgpuShader()
    s.eot()
    batch = gpgpu_batch(BATCH, Target(TARGET, WIDTH, HEIGHT), 1, 1, s, s)
    assert batch[STATE_OFFSET + 128:STATE_OFFSET + 128 + len(s.to_bytes())] == s.to_bytes()
    with pytest.raises(ValueError, match="bpp 16"):
        gpgpu_batch(BATCH, Target(TARGET, WIDTH, HEIGHT, bpp=16), 1, 1, s)
