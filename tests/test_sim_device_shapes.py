"""Device shapes of the simulated driver: the discrete (VRAM) device, several tiles, and the
engine-class sysfs attributes; raw ioctls on the kernel model, as the driver answers them.

- discrete: QUERY_MEM_REGIONS has a VRAM region per tile, QUERY_CONFIG the HAS_VRAM flag and
  Battlemage's device id, the GT list near/far memory masks; GEM_CREATE places BOs in VRAM with the
  kernel's checks (WB caching, NEEDS_VISIBLE_VRAM, placement mask) and its errnos; VRAM BOs map
  for the CPU and bind; the PAT rules of VM_BIND (coherency against the BO's caching, reserved and
  missing entries: graphics 20.01 has 28).
- tiles: one GT per tile, with its engines (gt_id), topology and exec queues.
- sysfs: ``tileN/gtN/engines/<class>/job_timeout_ms`` and friends, the kernel's bounds, and the
  job timeout a queue takes from it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time

import pytest

from gpuexec import MI_ARB_CHECK, NSEC, GpuClient, bbs, pack, syncobj_sync, user_fence, ERR
from test_sim_kernel import Env, op
from xe_eudebug import uapi as U
from xe_eudebug.sim import kernel as K
from xe_eudebug.sim import port
from xe_eudebug.sim.config import DISCRETE_DEVICE_ID, SimConfig

GiB = 1 << 30
VRAM = 8 * GiB


def discrete(**kw) -> Env:
    return Env(discrete=True, vram_size=VRAM, **kw)


def query(env: Env, f, q: int) -> bytes:
    res, raw = env.ok(f, K.DRM_IOCTL_XE_DEVICE_QUERY, struct.pack("<QII24x", 0, q, 0))
    size = struct.unpack_from("<I", raw, 12)[0]
    data = env.buf(size)
    env.ok(f, K.DRM_IOCTL_XE_DEVICE_QUERY, struct.pack("<QIIQ16x", 0, q, size, env.addr(data)))
    return data.raw


def regions(env: Env, f) -> list[tuple[int, ...]]:
    raw = query(env, f, K.QUERY_MEM_REGIONS)
    n = struct.unpack_from("<I", raw, 0)[0]
    return [struct.unpack_from("<HHIQQQQ", raw, 8 + 88 * i) for i in range(n)]


def config_info(env: Env, f) -> list[int]:
    raw = query(env, f, K.QUERY_CONFIG)
    n = struct.unpack_from("<I", raw, 0)[0]
    return list(struct.unpack_from(f"<{n}Q", raw, 8))


def gts(env: Env, f) -> list[tuple[int, ...]]:
    raw = query(env, f, K.QUERY_GT_LIST)
    n = struct.unpack_from("<I", raw, 0)[0]
    return [struct.unpack_from("<HHH6xIQQHHH", raw, 8 + 96 * i) for i in range(n)]


def gem_create(env: Env, f, size: int = 65536, placement: int = 1, flags: int = 0,
               caching: int = K.CPU_CACHING_WC) -> int:
    """The new handle, or -errno."""
    res, raw = env.call(f, K.DRM_IOCTL_XE_GEM_CREATE,
                        env.buf(struct.pack("<QQIIIIH6x16x", 0, size, placement, flags, 0, 0, caching)))
    return res if res < 0 else struct.unpack_from("<I", raw, 28)[0]


def gem_close(env: Env, f, handle: int) -> int:
    return env.call(f, K.DRM_IOCTL_GEM_CLOSE, env.buf(struct.pack("<II", handle, 0)))[0]


def perfmon() -> bool:
    with open("/proc/self/status") as fh:
        caps = int(next(line for line in fh if line.startswith("CapEff:")).split()[1], 16)
    return bool(caps >> 38 & 1 or caps >> 21 & 1)          # CAP_PERFMON or CAP_SYS_ADMIN


# ------------------------------------------------------------------------------------------------
# integrated (default) and discrete queries

def test_integrated_device_has_system_memory_only():
    env = Env()
    f = env.open()
    assert [(r[0], r[1]) for r in regions(env, f)] == [(K.MEM_CLASS_SYSMEM, 0)]
    info = config_info(env, f)
    assert info[1] == 0                                                       # flags: no VRAM
    assert info[0] & 0xFFFF == 0x64A0
    assert [(g[1], g[2], g[4], g[5]) for g in gts(env, f)] == [(0, 0, 1, 0)]   # near: system memory
    assert gem_create(env, f, placement=2) == -errno.EINVAL                   # no VRAM region
    assert gem_create(env, f, flags=K.GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM) == -errno.EINVAL


def test_discrete_device_reports_vram_per_tile():
    env = discrete(tiles=2)
    f = env.open()
    regs = regions(env, f)
    assert [(r[0], r[1]) for r in regs] == [(K.MEM_CLASS_SYSMEM, 0), (K.MEM_CLASS_VRAM, 1),
                                             (K.MEM_CLASS_VRAM, 2)]
    for cls, inst, page, total, used, visible, visible_used in regs[1:]:
        assert (page, total, visible) == (4096, VRAM, VRAM)       # Battlemage: 4 KiB pages, all visible
    assert regs[0][5] == 0                                        # system memory: no cpu_visible_size
    info = config_info(env, f)
    assert info[1] & K.QUERY_CONFIG_FLAG_HAS_VRAM
    assert info[0] & 0xFFFF == DISCRETE_DEVICE_ID == 0xE20B
    # GT n on tile n; near memory: its tile's VRAM, far: the rest
    assert [(g[1], g[2], g[4], g[5]) for g in gts(env, f)] == [(0, 0, 0b010, 0b101), (1, 1, 0b100, 0b011)]
    assert {(g[6], g[7]) for g in gts(env, f)} == {(20, 1)}        # Xe2_HPG, graphics 20.01


def test_simconfig_picks_the_device_id_of_the_shape():
    assert SimConfig().device_id == 0x64A0
    assert SimConfig(discrete=True).device_id == 0xE20B
    assert SimConfig(discrete=True, device_id=0xE20C).device_id == 0xE20C
    assert SimConfig.from_env({"XE_EUDEBUG_SIM_DISCRETE": "1", "XE_EUDEBUG_SIM_TILES": "2"}).tiles == 2
    with pytest.raises(ValueError, match="tiles"):
        SimConfig(tiles=3)


# ------------------------------------------------------------------------------------------------
# GEM_CREATE in VRAM

def test_gem_create_vram_checks_and_errnos():
    env = discrete()
    f = env.open()
    assert gem_create(env, f, placement=2) > 0
    assert gem_create(env, f, placement=3) > 0                                # VRAM or system
    assert gem_create(env, f, placement=4) == -errno.EINVAL                   # no second tile
    assert gem_create(env, f, placement=0) == -errno.EINVAL
    assert gem_create(env, f, placement=2, caching=K.CPU_CACHING_WB) == -errno.EINVAL
    assert gem_create(env, f, placement=3, caching=K.CPU_CACHING_WB) == -errno.EINVAL  # any VRAM bit
    assert gem_create(env, f, placement=1, caching=K.CPU_CACHING_WB) > 0
    vis = K.GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM
    assert gem_create(env, f, placement=2, flags=vis) > 0
    assert gem_create(env, f, placement=1, flags=vis) == -errno.EINVAL        # visible VRAM, no VRAM
    assert gem_create(env, f, placement=2, size=VRAM + 4096) == -errno.ENOMEM
    assert gem_create(env, f, placement=3, size=VRAM + 4096) > 0              # falls back to system


def test_vram_used_figures_follow_the_bos():
    env = discrete()
    f = env.open()
    before = regions(env, f)[1][4]
    h = gem_create(env, f, placement=2, size=1 << 20)
    sys_h = gem_create(env, f, placement=1, size=1 << 20, caching=K.CPU_CACHING_WB)
    shown = regions(env, f)
    if perfmon():
        assert shown[1][4] == before + (1 << 20) and shown[1][6] == shown[1][4]
        assert shown[0][4] >= 1 << 20
    else:                                                                     # not perfmon_capable: 0
        assert shown[1][4] == 0 and shown[0][4] == 0
    assert gem_close(env, f, h) == 0 and gem_close(env, f, sys_h) == 0
    assert env.k.devices[0].region_used == [0, 0]


def test_vram_bo_maps_for_the_cpu_and_binds():
    env = discrete()
    f = env.open()
    h = gem_create(env, f, placement=2, size=8192, flags=K.GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM)
    _res, raw = env.ok(f, K.DRM_IOCTL_XE_GEM_MMAP_OFFSET, struct.pack("<QII24x", 0, h, 0))
    offset = struct.unpack_from("<Q", raw, 16)[0]
    memfd, start = env.k.mmap_bo(f, offset, 8192)
    os.pwrite(memfd, b"vram", start + 100)
    assert os.pread(memfd, 4, start + 100) == b"vram"
    vm = env.vm_create(f)
    assert env.bind(f, vm, [op(K.OP_MAP, 0x100000, 8192, obj=h, pat=3)]) == 0     # WC + uncached PAT
    # prefetch to the VRAM region exists on a discrete device, not to a region it lacks
    pre = struct.pack("<QIHHQQQIIII24x", 0, 0, 2, 0, 0, 8192, 0x100000, K.OP_PREFETCH, 0, 1, 0)
    assert env.bind(f, vm, [pre]) == 0
    pre2 = struct.pack("<QIHHQQQIIII24x", 0, 0, 2, 0, 0, 8192, 0x100000, K.OP_PREFETCH, 0, 2, 0)
    assert env.bind(f, vm, [pre2]) == -errno.EINVAL


# ------------------------------------------------------------------------------------------------
# PAT rules of VM_BIND

@pytest.mark.parametrize("shape", ["integrated", "discrete"])
def test_pat_index_coherency_and_table_size(shape):
    env = discrete() if shape == "discrete" else Env()
    f = env.open()
    vm = env.vm_create(f)
    wb = env.bo_create(f, 8192)                                     # system memory, WB
    wc = gem_create(env, f, placement=2 if shape == "discrete" else 1, size=8192)
    assert env.bind(f, vm, [op(K.OP_MAP, 0x100000, 8192, obj=wb, pat=3)]) == -errno.EINVAL  # no coherency
    assert env.bind(f, vm, [op(K.OP_MAP, 0x100000, 8192, obj=wb, pat=2)]) == 0
    assert env.bind(f, vm, [op(K.OP_MAP, 0x200000, 8192, obj=wc, pat=3)]) == 0
    assert env.bind(f, vm, [op(K.OP_MAP, 0x300000, 8192, obj=wc, pat=16)]) == -errno.EINVAL  # reserved
    assert env.bind(f, vm, [op(K.OP_MAP, 0x300000, 8192, obj=wc, pat=32)]) == -errno.EINVAL
    # entries 28..31 exist on graphics 20.04 (Lunar Lake), not on 20.01 (Battlemage, CLOS3 off)
    expected = -errno.EINVAL if shape == "discrete" else 0
    assert env.bind(f, vm, [op(K.OP_MAP, 0x400000, 8192, obj=wc, pat=28)]) == expected
    # a userptr needs a coherent PAT index
    mem = ctypes.create_string_buffer(3 * 4096)
    page = (ctypes.addressof(mem) + 4095) & ~4095
    assert env.bind(f, vm, [op(K.OP_MAP_USERPTR, 0x500000, 4096, offset=page, pat=3)]) == -errno.EINVAL
    assert env.bind(f, vm, [op(K.OP_MAP_USERPTR, 0x500000, 4096, offset=page, pat=2)]) == 0


# ------------------------------------------------------------------------------------------------
# tiles

def test_each_tile_has_a_gt_with_engines_and_topology():
    env = Env(tiles=2)
    f = env.open()
    raw = query(env, f, K.QUERY_ENGINES)
    n = struct.unpack_from("<I", raw, 0)[0]
    engines = [struct.unpack_from("<HHH", raw, 8 + 32 * i) for i in range(n)]
    per_gt = [sorted((c, i) for c, i, g in engines if g == gt) for gt in (0, 1)]
    assert per_gt[0] == per_gt[1] == sorted(K.ENGINES)
    assert [(g[1], g[2]) for g in gts(env, f)] == [(0, 0), (1, 1)]
    topo, seen, off = query(env, f, K.QUERY_GT_TOPOLOGY), [], 0
    while off < len(topo):
        gt, kind, size = struct.unpack_from("<HHI", topo, off)
        seen.append((gt, kind))
        off += 8 + size
    assert sorted({g for g, _k in seen}) == [0, 1] and seen.count((1, U.DRM_XE_TOPO_DSS_COMPUTE)) == 1


def _queue(env: Env, f, vm: int, insts: list[tuple[int, int, int]]) -> int:
    eci = env.buf(b"".join(struct.pack("<HHHH", c, i, g, 0) for c, i, g in insts))
    res, raw = env.call(f, K.DRM_IOCTL_XE_EXEC_QUEUE_CREATE,
                        env.buf(struct.pack("<QHHIIIQ16x", 0, 1, len(insts), vm, 0, 0, env.addr(eci))))
    return res if res < 0 else struct.unpack_from("<I", raw, 20)[0]


def test_exec_queues_on_each_gt():
    env = Env(tiles=2)
    f = env.open()
    vm = env.vm_create(f)
    q = _queue(env, f, vm, [(K.CLASS_COMPUTE, 0, 1)])
    assert q > 0 and f.queues[q].gt_id == 1
    assert _queue(env, f, vm, [(K.CLASS_COMPUTE, 0, 2)]) == -errno.EINVAL      # no GT 2
    assert _queue(env, f, vm, [(K.CLASS_COMPUTE, 0, 0), (K.CLASS_COMPUTE, 1, 1)]) == -errno.EINVAL
    one = Env()
    f1 = one.open()
    assert _queue(one, f1, one.vm_create(f1), [(K.CLASS_COMPUTE, 0, 1)]) == -errno.EINVAL  # one tile


# ------------------------------------------------------------------------------------------------
# sysfs attributes

ATTR = "tile0/gt0/engines/ccs/job_timeout_ms"


def test_engine_class_attributes_read_and_write_with_the_kernels_bounds():
    env = Env(tiles=2, job_timeout_ms=5000)
    k = env.k
    assert k.sysfs_read(0, ATTR) == b"5000\n"
    assert k.sysfs_read(0, "tile1/gt1/engines/rcs/preempt_timeout_us") == b"640000\n"
    assert k.sysfs_read(0, "tile0/gt0/engines/ccs/.defaults/job_timeout_max") == b"10000\n"
    assert k.sysfs_write(0, ATTR, b"250\n") == 4
    assert k.sysfs_read(0, ATTR) == b"250\n"
    assert k.sysfs_read(0, "tile1/gt1/engines/ccs/job_timeout_ms") == b"5000\n"   # per GT
    assert k.sysfs_read(0, "tile0/gt0/engines/ccs/.defaults/job_timeout_ms") == b"5000\n"
    assert k.sysfs_read(1, ATTR) == b"5000\n"                                      # per device
    for value, err in ((b"0", errno.EINVAL), (b"10001", errno.EINVAL), (b"ten", errno.EINVAL),
                       (b"4294967296", errno.ERANGE)):
        with pytest.raises(K.KernelError) as exc:
            k.sysfs_write(0, ATTR, value)
        assert exc.value.errno == err, value
    assert k.sysfs_write(0, "tile0/gt0/engines/ccs/job_timeout_max", b"300") == 3
    with pytest.raises(K.KernelError) as exc:                                      # above the new max
        k.sysfs_write(0, ATTR, b"400")
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(K.KernelError) as exc:                                      # max below min
        k.sysfs_write(0, "tile0/gt0/engines/ccs/job_timeout_min", b"301")
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(K.KernelError) as exc:
        k.sysfs_write(0, "tile0/gt0/engines/ccs/.defaults/job_timeout_ms", b"1")
    assert exc.value.errno == errno.EACCES
    for missing in ("tile1/gt1/engines/ccs/job_timeout_ms", "tile0/gt0/engines/vcs/job_timeout_ms",
                    "tile0/gt0/engines/ccs/nope", "tile0/gt1/engines/ccs/job_timeout_ms"):
        with pytest.raises(K.KernelError) as exc:
            Env().k.sysfs_read(0, missing)
        assert exc.value.errno == errno.ENOENT, missing


def test_a_queue_takes_its_classes_job_timeout_when_created(sim_server):
    """job_timeout_ms written through sysfs sets the job timeout of queues created after it."""
    handle = sim_server(job_timeout_ms=300)
    assert port.sysfs(0, "tile0/gt0/engines/ccs/job_timeout_ms", b"1500\n", socket_path=handle.socket) == 5
    with GpuClient(fd=handle.open_device(0)) as c:
        vm = c.vm(0)                                                     # not LR: jobs time out
        bo = c.bo()
        c.bind(vm, bo, 0x1A0000)
        q = c.queue(vm, engine_class=K.CLASS_COMPUTE)                    # ccs: 1500 ms
        s = c.syncobj()
        c.write(bo, 0, pack(MI_ARB_CHECK, bbs(0x1A0000)))               # jumps to itself forever
        start = time.monotonic()
        assert c.exec(q, 0x1A0000, [syncobj_sync(s)]) == 0
        assert c.syncobj_wait([s], 30 * NSEC) == (0, 0)
        assert time.monotonic() - start >= 1.5
        assert c.exec(q, 0x1A0000) == ERR["ECANCELED"]


@pytest.mark.parametrize("discrete_shape", [False, True], ids=["integrated", "discrete"])
def test_framework_memory_helpers_follow_igt(sim_server, discrete_shape):
    """device.has_vram / vram_memory / vram_if_possible / system_memory, as IGT's xe_query.c."""
    from xe_eudebug import device

    handle = sim_server(discrete=discrete_shape, tiles=2, vram_size=1 << 30)
    fd = handle.open_device(0)
    try:
        assert device.has_vram(fd) is discrete_shape
        assert device.system_memory(fd) == 1
        assert [r.mem_class for r in device.query_mem_regions(fd)] == [0] + [1, 1] * discrete_shape
        assert device.vram_memory(fd, 1) == (0b100 if discrete_shape else 0)
        assert device.vram_if_possible(fd, 0) == (0b010 if discrete_shape else 1)
        if discrete_shape:
            with pytest.raises(OSError):
                device.vram_memory(fd, 2)                               # no GT 2
    finally:
        os.close(fd)


def test_client_bo_create_picks_igts_caching_for_vram(sim_server):
    """Client.bo_create's default caching is WC in VRAM (WB there is EINVAL), WB in system memory;
    both bind with the write-back PAT index."""
    from xe_eudebug import device
    from xe_eudebug.client import Client, wb_pat_index

    handle = sim_server(discrete=True, vram_size=1 << 30)
    fd = handle.open_device(0)
    try:
        vram = Client.bo_create(fd, 65536, placement=device.vram_if_possible(fd, 0))
        sysmem = Client.bo_create(fd, 65536)
        with pytest.raises(OSError) as exc:
            Client.bo_create(fd, 65536, placement=2, cpu_caching=U.DRM_XE_GEM_CPU_CACHING_WB)
        assert exc.value.errno == errno.EINVAL
        assert wb_pat_index(fd) == 2
        with GpuClient(fd=os.dup(fd)) as c:
            vm = c.vm()
            for n, bo in enumerate((vram, sysmem)):
                c.bind(vm, bo, 0x100000 * (n + 1))
    finally:
        os.close(fd)
