"""EXEC, syncs and the command streamer: argument errnos in the kernel's order, jobs in order on
a queue, user fences written at completion, syncobj semantics, a faulting batch, an unknown
command, a looping batch reset after the job timeout.

Raw ioctls only (tests/gpuexec.py), so the same tests run against a real Xe device; the ones that
need a simulator with a short job timeout start a private instance.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time

import pytest

from gpuexec import (COMPUTE, CS_GPR, ERR, LR, MI_ARB_CHECK, MI_BATCH_BUFFER_END, MI_NOOP,
                     NSEC, GpuClient, U, bbs, lri, lrm, lrr, pack, sdi, semaphore_wait, srm, syncobj_sync,
                     user_fence)
from xe_eudebug.device import set_engine_class_property
from xe_eudebug.isa import mi

SIM = not os.environ.get("XE_EUDEBUG_DEVICE", "").startswith("/")
BATCH = 0x1A0000            # GPU VA of the batch BO
DATA = BATCH + 0x8000       # a data area inside the same BO
DATA_OFF = 0x8000
GATE_TIMEOUT_MS = 10_000    # job_timeout_max: a job the test holds back does not time out


@pytest.fixture
def c():
    client = GpuClient()
    yield client
    client.close()


def setup(c: GpuClient, vm_flags: int = LR) -> tuple[int, int, int]:
    vm = c.vm(vm_flags)
    bo = c.bo()
    c.bind(vm, bo, BATCH)
    return vm, bo, c.queue(vm)


def run(c: GpuClient, q: int, bo: int, batch: bytes, value: int = 1, offset: int = 0) -> int:
    """Write `batch` at `offset`, execute it with a user fence at DATA+0xF00, wait for the fence."""
    c.write(bo, offset, batch)
    c.write(bo, DATA_OFF + 0xF00, bytes(8))
    assert c.exec(q, BATCH + offset, [user_fence(DATA + 0xF00, value)]) == 0
    return c.wait_ufence(c.bo_addr(bo, DATA_OFF + 0xF00), value, 10 * NSEC, q)


# ------------------------------------------------------------------------------------------------
# DRM_IOCTL_XE_EXEC argument checks

def test_exec_argument_errnos_in_kernel_order(c):
    vm, bo, q = setup(c)
    c.write(bo, 0, pack(MI_BATCH_BUFFER_END))
    assert c.exec(q, BATCH, extensions=1) == ERR["EINVAL"]
    assert c.exec(q, BATCH, reserved=(ctypes.c_uint64 * 2)(0, 1)) == ERR["EINVAL"]
    assert c.exec(q, BATCH, pad=(ctypes.c_uint16 * 3)(0, 0, 1)) == ERR["EINVAL"]
    assert c.exec(q + 100, BATCH) == ERR["ENOENT"]
    assert c.exec(q, BATCH, nbb=2) == ERR["EINVAL"]          # width 1
    bind_q = _bind_queue(c, vm)
    assert c.exec(bind_q, BATCH) == ERR["EINVAL"]
    # syncs, parsed in order
    bad_flags = user_fence(DATA, 1)
    bad_flags.flags |= 0x2
    assert c.exec(q, BATCH, [bad_flags]) == ERR["EINVAL"]
    no_signal = user_fence(DATA, 1)
    no_signal.flags = 0
    assert c.exec(q, BATCH, [no_signal]) == ERR["EOPNOTSUPP"]
    assert c.exec(q, BATCH, [user_fence(DATA + 4, 1)]) == ERR["EINVAL"]       # not 8-aligned
    assert c.exec(q, BATCH, [user_fence(DATA, 1), user_fence(DATA + 8, 1)]) == ERR["EINVAL"]
    unknown_type = user_fence(DATA, 1)
    unknown_type.type = 7
    assert c.exec(q, BATCH, [unknown_type]) == ERR["EINVAL"]
    s = c.syncobj()
    assert c.exec(q, BATCH, [syncobj_sync(s, signal=True)]) == ERR["EOPNOTSUPP"]   # LR VM
    assert c.exec(q, BATCH, [syncobj_sync(s + 50, signal=False)]) == ERR["ENOENT"]
    assert c.exec(q, BATCH, [syncobj_sync(s, signal=False)]) == ERR["EINVAL"]      # no fence yet
    assert c.exec(q, BATCH, [syncobj_sync(s, signal=False, point=0)]) == ERR["EINVAL"]
    timeline_zero = syncobj_sync(s, signal=False)
    timeline_zero.type = U.DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ
    assert c.exec(q, BATCH, [timeline_zero]) == ERR["EINVAL"]
    # an unreadable sync array
    arg = U.drm_xe_exec(exec_queue_id=q, num_syncs=1, syncs=8, address=BATCH, num_batch_buffer=1)
    assert c_try(c, arg) == ERR["EFAULT"]
    if SIM:                                   # the model's limit for kcalloc of the sync array
        arg.num_syncs = 0xFFFFFFFF
        assert c_try(c, arg) == -errno.ENOMEM
    # the queue still works after every refusal
    assert run(c, q, bo, pack(MI_BATCH_BUFFER_END)) == 0


def _bind_queue(c: GpuClient, vm: int) -> int:
    eci = U.drm_xe_engine_class_instance(engine_class=U.DRM_XE_ENGINE_CLASS_VM_BIND)
    c.keep.append(eci)
    arg = U.drm_xe_exec_queue_create(width=1, num_placements=1, vm_id=vm, instances=ctypes.addressof(eci))
    from xe_eudebug import ioctl as seam
    seam.ioctl(c.fd, U.DRM_IOCTL_XE_EXEC_QUEUE_CREATE, arg)
    return int(arg.exec_queue_id)


def c_try(c: GpuClient, arg: object) -> int:
    from xe_eudebug import ioctl as seam
    return seam.try_ioctl(c.fd, U.DRM_IOCTL_XE_EXEC, arg)


def test_exec_without_batch_buffers_signals_out_syncs(c):
    """num_batch_buffer 0 on a non-LR VM: the out-syncs get the queue's last fence."""
    vm, bo, q = setup(c, 0)
    s = c.syncobj()
    assert c.exec(q, 0, [syncobj_sync(s)], nbb=0) == 0
    assert c.syncobj_wait([s], NSEC) == (0, 0)


# ------------------------------------------------------------------------------------------------
# the command streamer

def test_store_data_imm_and_user_fence_written_at_completion(c):
    vm, bo, q = setup(c)
    assert run(c, q, bo, pack(MI_NOOP | 0xC5A3, sdi(DATA, 0xDEADBEEF), sdi(DATA + 8, 1, 2),
                               MI_BATCH_BUFFER_END), value=0x1337) == 0
    assert c.read32(bo, DATA_OFF) == 0xDEADBEEF
    assert c.read64(bo, DATA_OFF + 8) == 1 | 2 << 32
    assert c.read64(bo, DATA_OFF + 0xF00) == 0x1337


def test_registers_lri_lrm_srm_lrr(c):
    """CS general purpose registers: load immediate, from memory, from a register; store."""
    vm, bo, q = setup(c)
    c.write(bo, DATA_OFF, (0xCAFEF00D).to_bytes(4, "little"))
    batch = pack(lri(CS_GPR[0], 0x11111111), srm(CS_GPR[0], DATA + 0x10),
                 lrm(CS_GPR[1], DATA), srm(CS_GPR[1], DATA + 0x14),
                 lrr(CS_GPR[1], CS_GPR[2]), srm(CS_GPR[2], DATA + 0x18),
                 MI_BATCH_BUFFER_END)
    assert run(c, q, bo, batch) == 0
    assert [c.read32(bo, DATA_OFF + o) for o in (0x10, 0x14, 0x18)] == [0x11111111, 0xCAFEF00D, 0xCAFEF00D]


def test_vm_bind_clear_pattern_copies_fresh_memory_through_a_register(c):
    """The vm-bind-clear batch: load GPR0 from a freshly bound BO, store it over the batch's
    first dword (a no-op carrying an identification number)."""
    vm, bo, q = setup(c)
    clean = c.bo()
    c.bind(vm, clean, 0x4000000)
    assert run(c, q, bo, pack(MI_NOOP | 0xC5A3, lri(CS_GPR[0], 0xFFFFFFFF), lrm(CS_GPR[0], 0x4000000 + 0x40),
                               srm(CS_GPR[0], BATCH), MI_BATCH_BUFFER_END)) == 0
    assert c.read32(bo, 0) == 0                                # GPR0 was loaded from the new BO


def test_chained_and_second_level_batches(c):
    vm, bo, q = setup(c)
    # first level at 0: second-level call to 0x400 (returns), chain to 0x800 (no return)
    c.write(bo, 0x400, pack(sdi(DATA, 1), MI_BATCH_BUFFER_END))
    c.write(bo, 0x800, pack(sdi(DATA + 8, 3), MI_BATCH_BUFFER_END))
    batch = pack(bbs(BATCH + 0x400, second_level=True), sdi(DATA + 4, 2), bbs(BATCH + 0x800),
                 sdi(DATA + 12, 0xBAD), MI_BATCH_BUFFER_END)
    assert run(c, q, bo, batch) == 0
    assert [c.read32(bo, DATA_OFF + o) for o in (0, 4, 8, 12)] == [1, 2, 3, 0]


def test_flush_dw_and_pipe_control_post_sync_writes(c):
    vm, bo, q = setup(c)
    flush = [mi.mi(mi.MI_FLUSH_DW, 5, mi.POST_SYNC_WRITE_IMMEDIATE << mi.MI_FLUSH_DW_POST_SYNC_SHIFT),
             DATA + 0x20, 0, 0xAAAA0001, 0xAAAA0002]
    pc = [mi.gfx(3, 2, 0, 6), mi.POST_SYNC_WRITE_IMMEDIATE << mi.PIPE_CONTROL_POST_SYNC_SHIFT,
          DATA + 0x28, 0, 0xBBBB0001, 0xBBBB0002]
    assert run(c, q, bo, pack(flush, pc, MI_ARB_CHECK, MI_BATCH_BUFFER_END)) == 0
    assert c.read64(bo, DATA_OFF + 0x20) == 0xAAAA0002AAAA0001
    assert c.read64(bo, DATA_OFF + 0x28) == 0xBBBB0002BBBB0001


def test_gpgpu_state_commands_are_accepted(c):
    """The state commands gpgpu_shader_exec emits on graphics version 20 run through (the
    walker itself: tests/test_sim_walker.py)."""
    vm, bo, q = setup(c)
    state = [mi.gfx(1, 1, 4, 1) | 3 << 8 | 2,                 # PIPELINE_SELECT GPGPU
             mi.gfx(0, 1, 1, 22), *[0] * 21,                 # STATE_BASE_ADDRESS
             mi.gfx(0, 1, 5, 3), 0, 0,                       # STATE_COMPUTE_MODE
             mi.gfx(3, 1, 0x19, 4), 0, 0, 0,                 # 3DSTATE_BINDING_TABLE_POOL_ALLOC
             mi.gfx(2, 2, 0, 6), *[0] * 5,                   # CFE_STATE
             mi.gfx(0, 1, 2, 3), 0x2000, 0]                  # STATE_SIP
    c.write(bo, DATA_OFF + 0x100, b"\x5a" * 16)
    assert run(c, q, bo, pack(state, sdi(DATA + 0x40, 0x600D), MI_BATCH_BUFFER_END)) == 0
    assert c.read32(bo, DATA_OFF + 0x40) == 0x600D
    assert bytes(c.map(bo)[DATA_OFF + 0x100:DATA_OFF + 0x110]) == b"\x5a" * 16


def test_jobs_of_a_queue_run_in_submission_order(c):
    """A job blocked on a semaphore holds back the next job of its queue, not another queue's."""
    vm, bo, q = setup(c)
    other = c.queue(vm)
    c.write(bo, DATA_OFF, bytes(0x100))
    c.write(bo, 0, pack(semaphore_wait(DATA, 1), sdi(DATA + 4, 0xA), MI_BATCH_BUFFER_END))
    c.write(bo, 0x100, pack(sdi(DATA + 8, 0xB), MI_BATCH_BUFFER_END))
    c.write(bo, 0x200, pack(sdi(DATA + 12, 0xC), MI_BATCH_BUFFER_END))
    assert c.exec(q, BATCH, [user_fence(DATA + 0x40, 1)]) == 0
    assert c.exec(q, BATCH + 0x100, [user_fence(DATA + 0x48, 1)]) == 0
    assert c.exec(other, BATCH + 0x200, [user_fence(DATA + 0x50, 1)]) == 0
    assert c.wait_ufence(c.bo_addr(bo, DATA_OFF + 0x50), 1, 10 * NSEC, other) == 0
    assert c.read32(bo, DATA_OFF + 12) == 0xC
    # the second job of `q` waits behind the first
    assert c.wait_ufence(c.bo_addr(bo, DATA_OFF + 0x48), 1, NSEC // 5, q) == ERR["ETIME"]
    assert c.read32(bo, DATA_OFF + 8) == 0
    c.write(bo, DATA_OFF, (1).to_bytes(4, "little"))          # release the semaphore
    assert c.wait_ufence(c.bo_addr(bo, DATA_OFF + 0x48), 1, 10 * NSEC, q) == 0
    assert (c.read32(bo, DATA_OFF + 4), c.read32(bo, DATA_OFF + 8)) == (0xA, 0xB)
    assert c.read64(bo, DATA_OFF + 0x40) == 1


def test_userptr_null_and_scratch_mappings(c):
    """The engine reaches userptr memory in the client, NULL mappings read zero and drop writes,
    and a SCRATCH_PAGE VM turns unmapped accesses into the scratch page instead of a fault."""
    import mmap as _mmap
    vm = c.vm(U.DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE)
    bo = c.bo()
    c.bind(vm, bo, BATCH)
    q = c.queue(vm)
    mem = _mmap.mmap(-1, 0x2000)
    mem[:4] = (0x12345678).to_bytes(4, "little")
    uaddr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    c.bind(vm, 0, 0x300000, 0x2000, op=U.DRM_XE_VM_BIND_OP_MAP_USERPTR, userptr=uaddr)
    c.bind(vm, 0, 0x500000, 0x1000, flags=U.DRM_XE_VM_BIND_FLAG_NULL)
    batch = pack(lrm(CS_GPR[0], 0x300000), srm(CS_GPR[0], DATA),          # userptr -> BO
                 sdi(0x300010, 0xFEED),                                    # BO -> userptr
                 lri(CS_GPR[1], 7), lrm(CS_GPR[1], 0x500000), srm(CS_GPR[1], DATA + 4),   # NULL
                 sdi(0x500000, 1),
                 lri(CS_GPR[2], 7), lrm(CS_GPR[2], 0x9000000), srm(CS_GPR[2], DATA + 8),  # scratch
                 sdi(0x9000000, 1), MI_BATCH_BUFFER_END)
    c.write(bo, DATA_OFF + 4, (0xFFFFFFFF).to_bytes(4, "little") * 2)
    assert run(c, q, bo, batch) == 0
    assert c.read32(bo, DATA_OFF) == 0x12345678
    assert int.from_bytes(mem[0x10:0x14], "little") == 0xFEED
    assert (c.read32(bo, DATA_OFF + 4), c.read32(bo, DATA_OFF + 8)) == (0, 0)
    del uaddr


# ------------------------------------------------------------------------------------------------
# failures: fault, unknown command, timeout

def test_faulting_batch_bans_the_queue(c):
    """A store to an unmapped address in a non-fault-mode VM: CAT error, the queue is banned."""
    vm, bo, q = setup(c)
    c.write(bo, 0, pack(sdi(0x7_0000_0000, 1), MI_BATCH_BUFFER_END))
    c.write(bo, DATA_OFF, bytes(8))
    assert c.exec(q, BATCH, [user_fence(DATA, 5)]) == 0
    assert c.wait_ufence(c.bo_addr(bo, DATA_OFF), 5, 10 * NSEC, q) == ERR["EIO"]
    assert c.read64(bo, DATA_OFF) == 0                         # the fence was never written
    assert c.exec(q, BATCH) == ERR["ECANCELED"]
    # another queue on the same VM is not affected
    q2 = c.queue(vm)
    assert run(c, q2, bo, pack(MI_BATCH_BUFFER_END), offset=0x100) == 0


def test_unknown_command_fails_the_job_and_bans_the_queue(c):
    vm, bo, q = setup(c)
    c.write(bo, 0, pack(MI_NOOP, 0x1F800000, MI_BATCH_BUFFER_END))   # MI opcode 0x3F
    c.write(bo, DATA_OFF, bytes(8))
    assert c.exec(q, BATCH, [user_fence(DATA, 5)]) == 0
    assert c.wait_ufence(c.bo_addr(bo, DATA_OFF), 5, 10 * NSEC, q) == ERR["EIO"]
    assert c.exec(q, BATCH) == ERR["ECANCELED"]


def test_out_syncobj_of_a_failed_job_is_signalled(c):
    vm, bo, _q = setup(c, 0)
    q = c.queue(vm)
    s = c.syncobj()
    c.write(bo, 0, pack(0x1F800000))
    assert c.exec(q, BATCH, [syncobj_sync(s)]) == 0
    assert c.syncobj_wait([s], 10 * NSEC) == (0, 0)          # fence errors are not wait errors
    assert c.exec(q, BATCH) == ERR["ECANCELED"]


@pytest.mark.skipif(not SIM, reason="needs a simulator with a short job timeout")
def test_looping_batch_is_reset_after_the_job_timeout(sim_server):
    handle = sim_server(job_timeout_ms=300)
    with GpuClient(fd=handle.open_device(0)) as c:
        vm, bo, q = setup(c, 0)
        s, gate = c.syncobj(), c.syncobj()
        c.write(bo, 0, pack(MI_ARB_CHECK, bbs(BATCH)))          # jumps to itself forever
        c.write(bo, 0x300, pack(semaphore_wait(DATA + 0x40, 1), MI_BATCH_BUFFER_END))
        c.write(bo, DATA_OFF, bytes(0x48))
        # The looping job waits for `gate`, the fence of a job that ends when the test says so
        # (on a queue made with the longest job timeout): its 300 ms only start once the second
        # job is queued behind it.
        set_engine_class_property(c.fd, 0, COMPUTE, "job_timeout_ms", GATE_TIMEOUT_MS)
        assert c.exec(c.queue(vm, COMPUTE), BATCH + 0x300, [syncobj_sync(gate)]) == 0
        assert c.exec(q, BATCH, [syncobj_sync(gate, signal=False), syncobj_sync(s), user_fence(DATA, 9)]) == 0
        assert c.exec(q, BATCH + 0x100, [user_fence(DATA + 8, 9)]) == 0   # queued behind it
        start = time.monotonic()
        c.write(bo, DATA_OFF + 0x40, (1).to_bytes(4, "little"))          # the gate opens
        assert c.syncobj_wait([s], 10 * NSEC) == (0, 0)
        assert time.monotonic() - start >= 0.3
        assert c.wait_ufence(c.bo_addr(bo, DATA_OFF), 9, 10 * NSEC, q) == ERR["EIO"]
        assert c.read64(bo, DATA_OFF) == 0 and c.read64(bo, DATA_OFF + 8) == 0
        assert c.exec(q, BATCH) == ERR["ECANCELED"]
        # a semaphore that is never met ends the same way
        q2 = c.queue(vm)
        c.write(bo, 0x200, pack(semaphore_wait(DATA + 0x80, 7), MI_BATCH_BUFFER_END))
        assert c.exec(q2, BATCH + 0x200, [syncobj_sync(s)]) == 0
        assert c.syncobj_wait([s], 10 * NSEC) == (0, 0)
        assert c.exec(q2, BATCH) == ERR["ECANCELED"]


def test_destroying_a_queue_stops_its_running_job(c):
    """LR queues have no job timeout: a spinning batch runs until its queue is destroyed."""
    vm, bo, q = setup(c)
    c.write(bo, 0, pack(MI_ARB_CHECK, bbs(BATCH)))
    assert c.exec(q, BATCH) == 0
    time.sleep(0.2)
    c.queue_destroy(q)
    q2 = c.queue(vm)
    assert run(c, q2, bo, pack(MI_BATCH_BUFFER_END), offset=0x100) == 0


# ------------------------------------------------------------------------------------------------
# syncobjs in EXEC and VM_BIND

def test_in_syncobj_orders_jobs_across_queues(c):
    vm, bo, q1 = setup(c, 0)
    q2 = c.queue(vm)
    s = c.syncobj()
    c.write(bo, DATA_OFF, bytes(0x100))
    c.write(bo, 0, pack(semaphore_wait(DATA, 1), MI_BATCH_BUFFER_END))
    c.write(bo, 0x100, pack(sdi(DATA + 4, 0x77), MI_BATCH_BUFFER_END))
    assert c.exec(q1, BATCH, [syncobj_sync(s)]) == 0
    assert c.exec(q2, BATCH + 0x100, [syncobj_sync(s, signal=False), user_fence(DATA + 0x10, 1)]) == 0
    assert c.wait_ufence(c.bo_addr(bo, DATA_OFF + 0x10), 1, NSEC // 5, q2) == ERR["ETIME"]
    c.write(bo, DATA_OFF, (1).to_bytes(4, "little"))
    assert c.wait_ufence(c.bo_addr(bo, DATA_OFF + 0x10), 1, 10 * NSEC, q2) == 0
    assert c.read32(bo, DATA_OFF + 4) == 0x77


def test_timeline_syncobj_points_from_exec(c):
    vm, bo, q = setup(c, 0)
    s = c.syncobj()
    c.write(bo, 0, pack(MI_BATCH_BUFFER_END))
    assert c.exec(q, BATCH, [syncobj_sync(s, point=3)]) == 0
    assert c.timeline_wait([s], [3], 10 * NSEC) == 0
    assert c.timeline_array(U.DRM_IOCTL_SYNCOBJ_QUERY, [s], [0])[1] == [3]
    # in-syncs on points: a submitted point is a dependency, a later one is not submitted yet
    c.write(bo, 0x100, pack(sdi(DATA, 0x55), MI_BATCH_BUFFER_END))
    assert c.exec(q, BATCH + 0x100, [syncobj_sync(s, signal=False, point=2), syncobj_sync(s, point=4)]) == 0
    assert c.timeline_wait([s], [4], 10 * NSEC) == 0
    assert c.read32(bo, DATA_OFF) == 0x55
    assert c.exec(q, BATCH, [syncobj_sync(s, signal=False, point=9)]) == ERR["EINVAL"]


def test_vm_bind_syncobjs(c):
    vm = c.vm(0)
    bo = c.bo()
    out = c.syncobj()
    c.bind(vm, bo, 0x200000, syncs=[syncobj_sync(out)])
    assert c.syncobj_wait([out], NSEC) == (0, 0)
    lr_vm = c.vm(LR)
    with pytest.raises(OSError) as exc:
        c.bind(lr_vm, bo, 0x200000, syncs=[syncobj_sync(out)])
    assert exc.value.errno == -ERR["EOPNOTSUPP"]
    with pytest.raises(OSError) as exc:
        c.bind(vm, bo, 0x400000, syncs=[syncobj_sync(out + 9, signal=False)])
    assert exc.value.errno == -ERR["ENOENT"]


# ------------------------------------------------------------------------------------------------
# DRM syncobj ioctls (drm_syncobj.c)

def test_syncobj_create_destroy_errnos(c):
    from xe_eudebug import ioctl as seam
    assert seam.try_ioctl(c.fd, U.DRM_IOCTL_SYNCOBJ_CREATE, U.drm_syncobj_create(flags=2)) == ERR["EINVAL"]
    h = c.syncobj()
    assert seam.try_ioctl(c.fd, U.DRM_IOCTL_SYNCOBJ_DESTROY, U.drm_syncobj_destroy(handle=h, pad=1)) == ERR["EINVAL"]
    assert seam.try_ioctl(c.fd, U.DRM_IOCTL_SYNCOBJ_DESTROY, U.drm_syncobj_destroy(handle=h)) == 0
    assert seam.try_ioctl(c.fd, U.DRM_IOCTL_SYNCOBJ_DESTROY, U.drm_syncobj_destroy(handle=h)) == ERR["EINVAL"]
    assert c.syncobj_wait([h], 0)[0] == ERR["ENOENT"]


def test_syncobj_wait_signal_reset(c):
    a = c.syncobj()
    b = c.syncobj(U.DRM_SYNCOBJ_CREATE_SIGNALED)
    assert c.syncobj_wait([b], 0) == (0, 0)
    assert c.syncobj_wait([a], NSEC)[0] == ERR["EINVAL"]                 # nothing submitted
    assert c.syncobj_wait([a], NSEC // 10, U.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT)[0] == ERR["ETIME"]
    assert c.syncobj_wait([a, b], NSEC // 10, U.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT) == (0, 1)
    assert c.syncobj_wait([a, b], NSEC // 10, U.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
                          | U.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL)[0] == ERR["ETIME"]
    assert c.syncobj_wait([a], NSEC, U.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE)[0] == ERR["EINVAL"]  # flag
    assert c.syncobj_wait([], NSEC)[0] == 0
    # a signal from another thread wakes a waiter
    threading.Timer(0.1, lambda: c.syncobj_array(U.DRM_IOCTL_SYNCOBJ_SIGNAL, [a])).start()
    assert c.syncobj_wait([a], 10 * NSEC, U.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT) == (0, 0)
    assert c.syncobj_array(U.DRM_IOCTL_SYNCOBJ_RESET, [a, b]) == 0
    assert c.syncobj_wait([b], 0)[0] == ERR["EINVAL"]
    assert c.syncobj_array(U.DRM_IOCTL_SYNCOBJ_RESET, []) == ERR["EINVAL"]
    assert c.syncobj_array(U.DRM_IOCTL_SYNCOBJ_SIGNAL, [a], pad=1) == ERR["EINVAL"]
    assert c.syncobj_array(U.DRM_IOCTL_SYNCOBJ_SIGNAL, [a, a + 100]) == ERR["ENOENT"]


def test_timeline_signal_query_wait(c):
    t = c.syncobj()
    assert c.timeline_array(U.DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, [t], [2]) == (0, [2])
    assert c.timeline_array(U.DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, [t], [5]) == (0, [5])
    assert c.timeline_array(U.DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, [t], [6], flags=1)[0] == ERR["EINVAL"]
    assert c.timeline_array(U.DRM_IOCTL_SYNCOBJ_QUERY, [t], [0]) == (0, [5])
    assert c.timeline_array(U.DRM_IOCTL_SYNCOBJ_QUERY, [t], [0], flags=2)[0] == ERR["EINVAL"]
    assert c.timeline_wait([t], [4], 0) == 0
    assert c.timeline_wait([t], [9], NSEC)  == ERR["EINVAL"]
    assert c.timeline_wait([t], [9], NSEC // 10, U.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT) == ERR["ETIME"]
    threading.Timer(0.1, lambda: c.timeline_array(U.DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, [t], [9])).start()
    assert c.timeline_wait([t], [9], 10 * NSEC, U.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT) == 0


def test_parallel_queue_runs_one_batch_per_lrc(c):
    """A width-2 queue takes an array of two batch addresses; num_batch_buffer must be 2."""
    vm = c.vm(LR)
    bo = c.bo()
    c.bind(vm, bo, BATCH)
    eci = (U.drm_xe_engine_class_instance * 2)()
    for i in range(2):
        eci[i].engine_class, eci[i].engine_instance = U.DRM_XE_ENGINE_CLASS_COMPUTE, i
    from xe_eudebug import ioctl as seam
    arg = U.drm_xe_exec_queue_create(width=2, num_placements=1, vm_id=vm, instances=ctypes.addressof(eci))
    if seam.try_ioctl(c.fd, U.DRM_IOCTL_XE_EXEC_QUEUE_CREATE, arg) < 0:
        pytest.skip("no two consecutive compute engines for a parallel queue")
    q = int(arg.exec_queue_id)
    c.write(bo, 0, pack(sdi(DATA, 0x1111), MI_BATCH_BUFFER_END))
    c.write(bo, 0x100, pack(sdi(DATA + 4, 0x2222), MI_BATCH_BUFFER_END))
    addrs = (ctypes.c_uint64 * 2)(BATCH, BATCH + 0x100)
    assert c.exec(q, ctypes.addressof(addrs), nbb=1) == ERR["EINVAL"]
    assert c.exec(q, 8, nbb=2) == ERR["EFAULT"]                  # the address array is unreadable
    c.write(bo, DATA_OFF + 0xF00, bytes(8))
    assert c.exec(q, ctypes.addressof(addrs), [user_fence(DATA + 0xF00, 3)], nbb=2) == 0
    assert c.wait_ufence(c.bo_addr(bo, DATA_OFF + 0xF00), 3, 10 * NSEC, q) == 0
    assert (c.read32(bo, DATA_OFF), c.read32(bo, DATA_OFF + 4)) == (0x1111, 0x2222)


# -- the engine's view of a VM (xe_exec.VmView) ------------------------------------------------------
class _FakeBo:
    def __init__(self, size: int) -> None:
        self.size = size
        self.memfd = os.memfd_create("vmview-test")
        os.ftruncate(self.memfd, size)


def _view_of(*vmas):
    from xe_eudebug.sim.kernel.xe_exec import VmView
    from xe_eudebug.sim.kernel.xe_vm import Vma

    class _Vm:
        alive, flags = True, 0
    vm = _Vm()
    vm.vmas = [Vma(start, start + bo.size, "bo", bo, 0, []) for start, bo in vmas]
    return VmView(threading.Lock(), vm), vm


def test_vm_view_fast_path_sees_other_writers_and_faults_after_an_unbind():
    """An engine's accesses to a BO mapping it used lately go through a mapping of the BO's
    memory: writes by another path (the debugger's VM fd, a CPU) are seen at once, and once the
    mapping is unbound (the driver replaces the VM's list) the next access faults."""
    from xe_eudebug.sim.gpu import GpuFault
    from xe_eudebug.sim.kernel.xe_vm import Vma

    isa, target = _FakeBo(0x2000), _FakeBo(0x1000)
    view, vm = _view_of((0x10000, isa), (0x40000, target))
    try:
        os.pwrite(isa.memfd, b"\x11" * 16, 0x100)
        assert view.read(0x10100, 16) == b"\x11" * 16
        view.write(0x40010, b"\x22\x33")
        assert view.read(0x10100, 16) == b"\x11" * 16          # both mappings on the fast path
        os.pwrite(isa.memfd, b"\x44" * 16, 0x100)             # a write through the VM fd
        assert view.read(0x10100, 16) == b"\x44" * 16
        assert os.pread(target.memfd, 2, 0x10) == b"\x22\x33"
        vm.vmas = [v for v in vm.vmas if v.bo is target]       # unbind the ISA (xe_vm's way)
        with pytest.raises(GpuFault):
            view.read(0x10100, 16)
        assert view.read(0x40010, 2) == b"\x22\x33"
        vm.vmas = vm.vmas + [Vma(0x10000, 0x11000, "null", None, 0, [])]  # rebound as NULL
        assert view.read(0x10100, 16) == bytes(16)
        vm.alive = False
        with pytest.raises(GpuFault):
            view.read(0x40010, 2)
    finally:
        os.close(isa.memfd)
        os.close(target.memfd)
