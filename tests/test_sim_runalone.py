"""Scheduling of the simulated GT's EUs, raw ioctls on private simulator instances:

- run-alone: a debuggable queue's job (EUDEBUG property) runs with no other job on its GT's
  render and compute engines, and no job starts there while it runs; other queues share them;
- a GT reset (debugfs ``gtN/force_reset``) stops the running job and also a job that waits for
  the EUs (it was submitted): both queues are banned;
- tiles: each GT has its own EUs: a debuggable job on one tile does not hold the other's, and a
  reset of one GT leaves the other's job running.
"""

from __future__ import annotations

import ctypes
import errno

from gpuexec import ERR, MI_BATCH_BUFFER_END, NSEC, GpuClient, pack, sdi, spin, user_fence
from xe_eudebug import device, ioctl as seam, uapi as U
from xe_eudebug.sim import kernel as K
from xe_eudebug.sim import port
from test_sim_kernel import Env

LOOP, STORE, FENCE = 0x1A0000, 0x2A0000, 0xF000   # batch addresses; fence offset in the BO
STARTED = 0x8000                                  # offset of the loops' started marks in the BO
WAITING_NS = NSEC // 2                            # a job held back stays unsignalled this long


def _debuggable_queue(c: GpuClient, vm: int, cls: int, instance: int = 0, gt: int = 0) -> int:
    eci = U.drm_xe_engine_class_instance(engine_class=cls, engine_instance=instance, gt_id=gt)
    ext = U.drm_xe_ext_set_property(property=U.DRM_XE_EXEC_QUEUE_SET_PROPERTY_EUDEBUG,
                                    value=U.DRM_XE_EXEC_QUEUE_EUDEBUG_FLAG_ENABLE)
    ext.base.name = U.DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY
    c.keep += [eci, ext]
    arg = U.drm_xe_exec_queue_create(width=1, num_placements=1, vm_id=vm,
                                     instances=ctypes.addressof(eci), extensions=ctypes.addressof(ext))
    seam.ioctl(c.fd, U.DRM_IOCTL_XE_EXEC_QUEUE_CREATE, arg)
    return int(arg.exec_queue_id)


class Gpu:
    """One client with looping batches (each marks that it started, then jumps to itself) and a
    batch that stores a dword and ends, in one VM; each exec signals its own user fence."""

    def __init__(self, fd: int) -> None:
        self.c = GpuClient(fd=fd)
        device.enable_eudebug(self.c.fd, True)
        self.vm = self.c.vm()
        self.loop_bo, self.store = self.c.bo(), self.c.bo()
        self.c.bind(self.vm, self.loop_bo, LOOP)
        self.c.bind(self.vm, self.store, STORE)
        self.c.write(self.store, 0, pack(sdi(STORE + 0x100, 7), MI_BATCH_BUFFER_END))
        self.fences = self.loops = 0

    def queue(self, cls: int = K.CLASS_COMPUTE, *, debuggable: bool = False, gt: int = 0,
              instance: int = 0) -> int:
        if debuggable:
            return _debuggable_queue(self.c, self.vm, cls, instance, gt)
        return self.c.queue(self.vm, cls, instance, gt)

    def run(self, q: int, batch: int) -> int:
        """EXEC `batch` on `q` with a fresh user fence in the store BO; returns its offset."""
        self.fences += 1
        off = FENCE + 8 * self.fences
        self.c.write(self.store, off, bytes(8))
        assert self.c.exec(q, batch, [user_fence(STORE + off, 1)]) == 0
        return off

    def loop(self, q: int) -> int:
        """EXEC a loop of its own on `q` (as `run`) and return once the engine runs it, so that a
        later job is submitted while this one holds the EUs, not merely queued before it."""
        self.loops += 1
        batch, mark = LOOP + 0x40 * self.loops, STARTED + 8 * self.loops
        self.c.write(self.loop_bo, batch - LOOP, spin(batch, STORE + mark))
        off = self.run(q, batch)
        self.c.wait_started(self.store, mark, f"the loop on exec queue {q}")
        return off

    def wait(self, q: int, off: int, timeout_ns: int = 30 * NSEC) -> int:
        return self.c.wait_ufence(self.c.bo_addr(self.store, off), 1, timeout_ns, q)

    def close(self) -> None:
        self.c.close()


def _gpu(sim_server, **config) -> tuple[Gpu, str]:
    handle = sim_server(**config)
    return Gpu(handle.open_device(0)), handle.socket


def test_a_debuggable_job_waits_for_the_gts_other_jobs(sim_server):
    """A job of a debuggable queue does not start while a job of another queue runs on the GT's
    compute engines (another instance too); it runs once that one ends."""
    gpu, _sock = _gpu(sim_server)
    try:
        plain = gpu.queue(instance=0)
        dbg = gpu.queue(debuggable=True, instance=1)
        looping = gpu.loop(plain)
        held = gpu.run(dbg, STORE)
        assert gpu.wait(dbg, held, WAITING_NS) == ERR["ETIME"]
        gpu.c.queue_destroy(plain)                                  # stops the loop
        assert gpu.wait(dbg, held) == 0
        assert gpu.c.read32(gpu.store, 0x100) == 7
        assert looping
    finally:
        gpu.close()


def test_no_job_starts_beside_a_running_debuggable_job(sim_server):
    """While a debuggable queue's job runs, a job of a plain queue on the render engine of the same
    GT waits; two plain queues share the EUs (both run at once)."""
    gpu, _sock = _gpu(sim_server)
    try:
        dbg = gpu.queue(debuggable=True)
        plain = gpu.queue(K.CLASS_RENDER)
        gpu.loop(dbg)
        held = gpu.run(plain, STORE)
        assert gpu.wait(plain, held, WAITING_NS) == ERR["ETIME"]
        gpu.c.queue_destroy(dbg)
        assert gpu.wait(plain, held) == 0

        other = gpu.queue(instance=1)
        gpu.loop(other)
        shared = gpu.run(plain, STORE)
        assert gpu.wait(plain, shared) == 0                          # beside a plain loop
    finally:
        gpu.close()


def test_a_gt_reset_bans_the_running_and_the_waiting_job(sim_server):
    """debugfs gt0/force_reset: the looping job stops, and the debuggable job waiting for the EUs
    (submitted, not started) too; both queues are banned and the GT runs new queues."""
    gpu, sock = _gpu(sim_server)
    try:
        plain = gpu.queue()
        dbg = gpu.queue(debuggable=True, instance=1)
        looping = gpu.loop(plain)
        held = gpu.run(dbg, STORE)
        assert gpu.wait(dbg, held, WAITING_NS) == ERR["ETIME"]
        assert port.sysfs(0, "debugfs/gt0/force_reset", b"1\n", socket_path=sock) == 2
        assert gpu.wait(plain, looping) == ERR["EIO"]
        assert gpu.wait(dbg, held) == ERR["EIO"]
        assert gpu.c.read32(gpu.store, 0x100) == 0                  # the store never ran
        assert gpu.c.exec(dbg, STORE) == ERR["ECANCELED"]
        fresh = gpu.queue(debuggable=True)
        assert gpu.wait(fresh, gpu.run(fresh, STORE)) == 0
    finally:
        gpu.close()


def test_each_tile_has_its_own_eus(sim_server):
    """Two tiles: a debuggable loop on GT 0 does not hold GT 1's jobs back, and a reset of GT 1
    leaves GT 0's job running."""
    gpu, sock = _gpu(sim_server, tiles=2)
    try:
        dbg = gpu.queue(debuggable=True, gt=0)
        looping = gpu.loop(dbg)
        far = gpu.queue(gt=1)
        assert gpu.wait(far, gpu.run(far, STORE)) == 0
        far_loop = gpu.loop(far)
        assert port.sysfs(0, "debugfs/gt1/force_reset", b"1\n", socket_path=sock) == 2
        assert gpu.wait(far, far_loop) == ERR["EIO"]
        assert gpu.wait(dbg, looping, WAITING_NS) == ERR["ETIME"]   # GT 0's loop still runs
        gpu.c.queue_destroy(dbg)
    finally:
        gpu.close()


def test_eu_arrays_are_per_gt():
    """The kernel model keeps an EU array per (device, GT): TD_CTL is programmed on each."""
    from xe_eudebug.sim.gpu.gt import TD_CTL_EUDEBUG

    k = Env(tiles=2).k
    dev = k.devices[0]
    with k._lock:
        k._eudebug_hw_enable(dev, True)
        gts = [k._gt(dev, 0), k._gt(dev, 1)]
    assert gts[0] is not gts[1]
    assert all(g.td_ctl & TD_CTL_EUDEBUG == TD_CTL_EUDEBUG for g in gts)


def test_force_gt_reset_resets_the_gt_of_the_fd_device(sim_server):
    """device.force_gt_reset (IGT's xe_force_gt_reset_async/_sync) on a device of a private
    two-tile instance: GT 1's job ends (-EIO), GT 0's runs on until GT 0 is reset (sync)."""
    gpu, _sock = _gpu(sim_server, tiles=2)
    try:
        near, far = gpu.queue(gt=0), gpu.queue(gt=1)
        near_loop, far_loop = gpu.loop(near), gpu.loop(far)
        device.force_gt_reset(gpu.c.fd, 1)
        assert gpu.wait(far, far_loop) == ERR["EIO"]
        assert gpu.wait(near, near_loop, WAITING_NS) == ERR["ETIME"]
        device.force_gt_reset(gpu.c.fd, 0, sync=True)
        assert gpu.wait(near, near_loop, 0) == ERR["EIO"]        # done when the write returned
        try:
            device.force_gt_reset(gpu.c.fd, 2)
        except OSError as exc:
            assert exc.errno == errno.ENOENT and "debugfs/gt2/force_reset" in str(exc)
        else:
            raise AssertionError("force_gt_reset of a GT the device does not have succeeded")
    finally:
        gpu.close()
