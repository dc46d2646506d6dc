"""Reusable parts of the ports of IGT ``tests/intel/xe_eudebug.c``.

Constants, device helpers, the client building blocks (basic client, VM bind clients, bind
lists, discovery client) and the test drivers (basic sessions, client with trigger, basic
discovery) of ``spec/subtests.md`` §2.  The subtest modules of ``xe_eudebug.igt`` import them.

Time-only scale factors (documented in ``docs/subtests.md``) are the module constants marked
"scaled".
"""

from __future__ import annotations

import array
import ctypes
import os
import random
import select
import signal
import struct
import sys
import time
import traceback
from typing import Any, Callable, Iterable

from xe_eudebug import ioctl as seam
from xe_eudebug import uapi
from xe_eudebug.client import Client, eudebug_engines, exec_queue_args, retry_ioctl, try_retry_ioctl, \
    user_fence_sync, wb_pat_index
from xe_eudebug.debugger import Debugger
from xe_eudebug.device import open_device
from xe_eudebug.events import Event, EventFlags, EventType
from xe_eudebug.session import Session, enable_eudebug_for, restore_eudebug

# ------------------------------------------------------------------------------------------------
# Constants (subtests.md §2.2)

STAGE_PRE_DEBUG_RESOURCES_DONE = 1
STAGE_DISCOVERY_DONE = 2
STAGE_CLIENT_WAIT_ON_UFENCE_DONE = 1337

CREATE_VMS = 1 << 0
CREATE_EXEC_QUEUES = 1 << 1
VM_BIND = 1 << 2
VM_BIND_VM_DESTROY = 1 << 3
VM_BIND_EXTENDED = 1 << 4
VM_METADATA = 1 << 5
VM_BIND_METADATA = 1 << 6
VM_BIND_OP_MAP_USERPTR = 1 << 7
VM_BIND_DELAY_UFENCE_ACK = 1 << 8
VM_BIND_UFENCE_RECONNECT = 1 << 9
VM_BIND_UFENCE_SIGINT_CLIENT = 1 << 10
TEST_FAULTABLE = 1 << 30
TEST_DISCOVERY = 1 << 31

# discovery-client flags (their own namespace)
PRIMARY_THREAD = 1 << 0
DISCOVERY_CLOSE_CLIENT = 1 << 1
DISCOVERY_DESTROY_RESOURCES = 1 << 2
DISCOVERY_VM_BIND = 1 << 3
DISCOVERY_SIGINT = 1 << 4

PAGE_SIZE = 4096
METADATA_NUM = 5
MDATA_SIZE = METADATA_NUM * PAGE_SIZE
BO_ADDR = 0x1A0000
MIN_BO_SIZE = 4096 * 8
RESOURCE_COUNT = 16
UFENCE_EVENT_COUNT = 4
UFENCE_VALUE_BASE = 4
USER_FENCE_VALUE = 1337
NSEC_PER_SEC = 1_000_000_000

#: scaled: the basic-discovery driver sleeps this long between attach and stage 2 (IGT 2 s).
DISCOVERY_SETTLE_S = 0.5
#: scaled: the discovery client's random pause before its resources (IGT 1 s).
DISCOVERY_CLIENT_PAUSE_S = 0.1

LR = uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE
#: DRM_XE_MEM_REGION_CLASS_SYSMEM of xe_drm.h (the uapi mirror lacks the region classes).
MEM_REGION_CLASS_SYSMEM = 0
RENDER_COMPUTE = (uapi.DRM_XE_ENGINE_CLASS_RENDER, uapi.DRM_XE_ENGINE_CLASS_COMPUTE)


def fail(message: str) -> None:
    raise AssertionError(message)


# ------------------------------------------------------------------------------------------------
# Device helpers (IGT lib/xe: xe_get_default_alignment, vram_if_possible, xe_supports_faults)

def _query(fd: int, query: int) -> bytes:
    q = uapi.drm_xe_device_query()
    q.query = query
    seam.ioctl(fd, uapi.DRM_IOCTL_XE_DEVICE_QUERY, q)
    buf = ctypes.create_string_buffer(max(1, int(q.size)))
    q.data = ctypes.addressof(buf)
    seam.ioctl(fd, uapi.DRM_IOCTL_XE_DEVICE_QUERY, q)
    return buf.raw[: int(q.size)]


def mem_regions(fd: int) -> list[Any]:
    data = _query(fd, uapi.DRM_XE_DEVICE_QUERY_MEM_REGIONS)
    count = struct.unpack_from("<I", data, 0)[0]
    size = ctypes.sizeof(uapi.drm_xe_mem_region)
    return [uapi.drm_xe_mem_region.from_buffer_copy(data, 8 + i * size) for i in range(count)]


def gt_list(fd: int) -> list[Any]:
    data = _query(fd, uapi.DRM_XE_DEVICE_QUERY_GT_LIST)
    count = struct.unpack_from("<I", data, 0)[0]
    size = ctypes.sizeof(uapi.drm_xe_gt)
    return [uapi.drm_xe_gt.from_buffer_copy(data, 8 + i * size) for i in range(count)]


def alignment(fd: int) -> int:
    """The device default alignment: the largest region ``min_page_size``, at least 4 KiB."""
    return max([PAGE_SIZE] + [int(r.min_page_size) for r in mem_regions(fd)])


def system_memory(fd: int) -> int:
    return sum(1 << int(r.instance) for r in mem_regions(fd) if r.mem_class == MEM_REGION_CLASS_SYSMEM)


def vram_if_possible(fd: int, gt_id: int) -> int:
    """The VRAM region near ``gt_id`` as a placement mask, else system memory."""
    sysmem = system_memory(fd)
    for gt in gt_list(fd):
        if gt.gt_id == gt_id and int(gt.near_mem_regions) & ~sysmem:
            return int(gt.near_mem_regions) & ~sysmem
    return sysmem


def supports_faults(fd: int) -> bool:
    """Whether a fault-mode VM can be created (IGT ``xe_supports_faults``)."""
    arg = uapi.drm_xe_vm_create()
    arg.flags = LR | uapi.DRM_XE_VM_CREATE_FLAG_FAULT_MODE
    if seam.try_ioctl(fd, uapi.DRM_IOCTL_XE_VM_CREATE, arg) < 0:
        return False
    vm_destroy_raw(fd, int(arg.vm_id))
    return True


def vm_flags(flags: int) -> int:
    """LR, plus FAULT_MODE for the -faultable variants."""
    return LR | (uapi.DRM_XE_VM_CREATE_FLAG_FAULT_MODE if flags & TEST_FAULTABLE else 0)


def first_engine(fd: int) -> Any:
    engines = eudebug_engines(fd)
    if not engines:
        fail("the device has no render or compute engine")
    return engines[0]


# ------------------------------------------------------------------------------------------------
# Raw (unlogged) ioctls

def connect_raw(fd: int, pid: int, *, flags: int = 0, version: int = 0, extensions: int = 0) -> int:
    """CONNECT with every field settable; the debug fd or ``-errno``."""
    arg = uapi.drm_xe_eudebug_connect()
    arg.extensions = extensions
    arg.pid = pid
    arg.flags = flags
    arg.version = version
    return try_retry_ioctl(fd, uapi.DRM_IOCTL_XE_EUDEBUG_CONNECT, arg)


def vm_create_raw(fd: int, flags: int = LR) -> int:
    arg = uapi.drm_xe_vm_create()
    arg.flags = flags
    retry_ioctl(fd, uapi.DRM_IOCTL_XE_VM_CREATE, arg)
    return int(arg.vm_id)


def vm_destroy_raw(fd: int, vm: int) -> None:
    arg = uapi.drm_xe_vm_destroy()
    arg.vm_id = vm
    retry_ioctl(fd, uapi.DRM_IOCTL_XE_VM_DESTROY, arg)


def bind_raw(fd: int, vm: int, ops: Iterable[tuple[int, int, int, int, int]], syncs: Any = None) -> None:
    """One VM_BIND ioctl with ops ``(obj, offset_or_userptr, addr, range, op)``; a bind array
    when there is more than one."""
    ops = list(ops)
    pat = wb_pat_index(fd)
    arr = (uapi.drm_xe_vm_bind_op * len(ops))()
    for slot, (obj, offset, addr, size, op) in zip(arr, ops):
        slot.obj = obj
        slot.obj_offset = offset
        slot.addr = addr
        slot.range = size
        slot.op = op
        slot.pat_index = pat
    arg = uapi.drm_xe_vm_bind()
    arg.vm_id = vm
    arg.num_binds = len(ops)
    if len(ops) == 1:
        ctypes.memmove(ctypes.addressof(arg.bind), ctypes.addressof(arr[0]), ctypes.sizeof(arr[0]))
    else:
        arg.vector_of_binds = ctypes.addressof(arr)
    keep = None
    if syncs is not None:
        keep = (uapi.drm_xe_sync * len(syncs))(*syncs)
        arg.num_syncs = len(syncs)
        arg.syncs = ctypes.addressof(keep)
    retry_ioctl(fd, uapi.DRM_IOCTL_XE_VM_BIND, arg)
    del keep, arr


def bo_mmap(fd: int, bo: int, size: int) -> Any:
    """CPU mapping of a BO (GEM_MMAP_OFFSET + mmap through the seam)."""
    arg = uapi.drm_xe_gem_mmap_offset()
    arg.handle = bo
    retry_ioctl(fd, uapi.DRM_IOCTL_XE_GEM_MMAP_OFFSET, arg)
    return seam.mmap(fd, size, int(arg.offset))


def words(start: int, count: int) -> bytes:
    """64-bit words ``start, start + 1, ...`` (the bind-list priming pattern)."""
    return array.array("Q", range(start, start + count)).tobytes()


def metadata_pattern(size: int = MDATA_SIZE) -> bytes:
    """Byte i = (i + i // 4096) mod 256 (current IGT, subtests.md §4.2)."""
    return bytes((i + i // PAGE_SIZE) & 0xFF for i in range(size))


# ------------------------------------------------------------------------------------------------
# Bind list (subtests.md §2.4 "Bind list")

class BindList:
    """``n`` buffers of ``max(alignment, target or 32 KiB)`` bytes mapped at
    ``BO_ADDR + 2·i·size``: VM-private BOs in ``placement``, or userptr memory when
    ``placement`` is 0.  Word k of buffer i is primed with ``addr + k``."""

    def __init__(self, fd: int, vm: int, n: int, target_size: int = 0, placement: int = 0) -> None:
        self.fd, self.vm = fd, vm
        self.size = max(alignment(fd), target_size or MIN_BO_SIZE)
        self.userptr = not placement
        self.addrs = [BO_ADDR + 2 * i * self.size for i in range(n)]
        self.bos: list[int] = []
        self.maps: list[Any] = []
        vram = placement & ~system_memory(fd)
        flags = uapi.DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM if vram else 0
        for addr in self.addrs:
            if self.userptr:
                import mmap as _mmap
                mem = _mmap.mmap(-1, self.size)
                self.maps.append(mem)
                self.bos.append(0)
            else:
                # VRAM BOs must be write-combined (IGT __xe_default_cpu_caching)
                caching = uapi.DRM_XE_GEM_CPU_CACHING_WC if vram else uapi.DRM_XE_GEM_CPU_CACHING_WB
                bo = Client.bo_create(fd, self.size, placement=placement, flags=flags, vm=vm, cpu_caching=caching)
                self.bos.append(bo)
                self.maps.append(bo_mmap(fd, bo, self.size))
            self.maps[-1][:] = words(addr, self.size // 8)

    def _userptr(self, i: int) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(self.maps[i]))

    def ops(self) -> list[tuple[int, int, int, int, int]]:
        if self.userptr:
            return [(0, self._userptr(i), a, self.size, uapi.DRM_XE_VM_BIND_OP_MAP_USERPTR)
                    for i, a in enumerate(self.addrs)]
        return [(bo, 0, a, self.size, uapi.DRM_XE_VM_BIND_OP_MAP) for bo, a in zip(self.bos, self.addrs)]

    def do(self, c: Client | None, ufence: bool = False) -> None:
        """One bind-array ioctl (optionally with a USER_FENCE of value 1337); with ``c`` log one
        VM_BIND (bind flags 0, num_binds n) and n CREATE ops -- never a VM_BIND_UFENCE -- then
        wait up to 60 s for the fence."""
        fence = (ctypes.c_uint64 * 1)()
        syncs = [user_fence_sync(ctypes.addressof(fence), USER_FENCE_VALUE)] if ufence else None
        bind_raw(self.fd, self.vm, self.ops(), syncs)
        if c is not None:
            ref = c.vm_bind_event(EventFlags.STATE_CHANGE, self.fd, self.vm, 0, len(self.addrs))
            for a in self.addrs:
                c.vm_bind_op_event(EventFlags.CREATE, ref, a, self.size, 0)
        if ufence:
            assert c is not None
            ret = c.wait_ufence(self.fd, ctypes.addressof(fence), USER_FENCE_VALUE, 60 * NSEC_PER_SEC)
            if ret:
                fail(f"bind-list user fence: DRM_IOCTL_XE_WAIT_USER_FENCE returned {ret}")

    def free(self, c: Client) -> None:
        """Check every word now holds ``addr + k + 1``, release the memory, unmap (logged)."""
        for i, addr in enumerate(self.addrs):
            got = bytes(self.maps[i][:])
            if got != words(addr + 1, self.size // 8):
                k = next(k for k in range(self.size // 8) if got[8 * k:8 * k + 8] != words(addr + 1 + k, 1))
                fail(f"buffer at {addr:#x}: word {k} is {int.from_bytes(got[8*k:8*k+8], 'little'):#x}, "
                     f"expected {addr + k + 1:#x} (the debugger's write is missing)")
        for i, addr in enumerate(self.addrs):
            c.vm_unbind(self.fd, self.vm, 0, addr, self.size)
            if not self.userptr:
                self.maps[i].close()
                Client.bo_close(self.fd, self.bos[i])
        if self.userptr:
            for m in self.maps:
                m.close()


# ------------------------------------------------------------------------------------------------
# Client building blocks (subtests.md §2.4)

def prepare_metadata(c: Client, fd: int) -> tuple[list[int], Any, bytes]:
    """Five metadata (type k, (k+1)·4096 bytes, prefixes of one pattern buffer), logged; returns
    (ids, ATTACH_DEBUG chain with cookie = k, data)."""
    from xe_eudebug.client import attach_debug_chain
    data = metadata_pattern()
    ids = [c.metadata_create(fd, k, data[:(k + 1) * PAGE_SIZE]) for k in range(METADATA_NUM)]
    return ids, attach_debug_chain((mid, k) for k, mid in enumerate(ids)), data


def basic_vm_bind_client(c: Client, fd: int) -> None:
    vm = c.vm_create(fd, LR)
    size = alignment(fd)
    bo = Client.bo_create(fd, size, placement=system_memory(fd))
    ids: list[int] = []
    chain = None
    if c.flags & VM_BIND_METADATA:
        ids, chain, _data = prepare_metadata(c, fd)
    c.vm_bind(fd, vm, bo, 0, BO_ADDR, size, ext=chain)
    if c.flags & TEST_DISCOVERY:
        c.signal_stage(STAGE_PRE_DEBUG_RESOURCES_DONE)
        c.wait_stage(STAGE_DISCOVERY_DONE)
    c.vm_unbind(fd, vm, 0, BO_ADDR, size)
    for k, mid in enumerate(ids):
        c.metadata_destroy(fd, mid, k, (k + 1) * PAGE_SIZE)
    Client.bo_close(fd, bo)
    c.vm_destroy(fd, vm)


def vm_bind_vm_destroy_client(c: Client, fd: int) -> None:
    c.vm_create(fd, LR)  # kept alive until the client closes
    size = alignment(fd)
    bo = Client.bo_create(fd, size, placement=system_memory(fd))
    if c.flags & TEST_DISCOVERY:
        vm = vm_create_raw(fd, LR)
        bind_raw(fd, vm, [(bo, 0, BO_ADDR, size, uapi.DRM_XE_VM_BIND_OP_MAP)])
        vm_destroy_raw(fd, vm)
        c.signal_stage(STAGE_PRE_DEBUG_RESOURCES_DONE)
        c.wait_stage(STAGE_DISCOVERY_DONE)
    else:
        vm = c.vm_create(fd, LR)
        c.vm_bind(fd, vm, bo, 0, BO_ADDR, size)
        c.vm_destroy(fd, vm)
    Client.bo_close(fd, bo)


def vm_bind_extended_client(c: Client, fd: int) -> None:
    s = alignment(fd)
    sysmem = system_memory(fd)
    bo0 = Client.bo_create(fd, 3 * s, placement=sysmem)
    bo1 = Client.bo_create(fd, 3 * s, placement=sysmem)
    vm = c.vm_create(fd, LR)
    addr0, addr1 = 0x2A0000, 0x3A0000
    blist = BindList(fd, vm, 4, 0, sysmem)
    if c.flags & TEST_DISCOVERY:
        MAP, UNMAP = uapi.DRM_XE_VM_BIND_OP_MAP, uapi.DRM_XE_VM_BIND_OP_UNMAP
        bind_raw(fd, vm, [(bo0, 0, addr0, 3 * s, MAP)])
        bind_raw(fd, vm, [(0, 0, addr0 + s, s, UNMAP)])
        bind_raw(fd, vm, [(bo1, 0, addr1, 3 * s, MAP)])
        bind_raw(fd, vm, [(bo1, 2 * s, addr1, s, MAP)])
        blist.do(None)
        bind_raw(fd, vm, [(bo0, 0, 0, 0, uapi.DRM_XE_VM_BIND_OP_UNMAP_ALL)])
        ref = c.vm_bind_event(EventFlags.STATE_CHANGE, fd, vm, 0, 6)
        c.vm_bind_op_event(EventFlags.CREATE, ref, addr1, s)
        c.vm_bind_op_event(EventFlags.CREATE, ref, addr1 + s, 2 * s)
        for a in blist.addrs:
            c.vm_bind_op_event(EventFlags.CREATE, ref, a, blist.size)
        c.signal_stage(STAGE_PRE_DEBUG_RESOURCES_DONE)
        c.wait_stage(STAGE_DISCOVERY_DONE)
    else:
        c.vm_bind(fd, vm, bo0, 0, addr0, 3 * s)
        c.vm_unbind(fd, vm, 0, addr0 + s, s)
        c.vm_bind(fd, vm, bo1, 0, addr1, 3 * s)
        c.vm_bind(fd, vm, bo1, 2 * s, addr1, s)
        blist.do(c)
    bind_raw(fd, vm, [(bo1, 0, 0, 0, uapi.DRM_XE_VM_BIND_OP_UNMAP_ALL)])
    ref = c.vm_bind_event(EventFlags.STATE_CHANGE, fd, vm, 0, 1)
    c.vm_bind_op_event(EventFlags.DESTROY, ref, 0, 0)
    Client.bo_close(fd, bo0)
    Client.bo_close(fd, bo1)
    c.vm_destroy(fd, vm)


def basic_client(c: Client) -> None:
    """IGT ``run_basic_client``: open; per ``c.flags`` VMs, exec queues, bind clients; close."""
    fd = c.open_driver()
    if c.flags & CREATE_VMS:
        vm1 = c.vm_create(fd, uapi.DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE | LR)
        vm2 = c.vm_create(fd, LR)
        c.vm_destroy(fd, vm2)
        c.vm_destroy(fd, vm1)
    if c.flags & CREATE_EXEC_QUEUES:
        vm = c.vm_create(fd, LR)
        queues = []
        for hwe in eudebug_engines(fd):
            create = exec_queue_args(vm, hwe)
            c.exec_queue_create(fd, create)
            queues.append(create)
        for create in reversed(queues):
            c.exec_queue_destroy(fd, create)
        c.vm_destroy(fd, vm)
    if c.flags & (VM_BIND | VM_BIND_METADATA):
        basic_vm_bind_client(c, fd)
    if c.flags & VM_BIND_EXTENDED:
        vm_bind_extended_client(c, fd)
    if c.flags & VM_BIND_VM_DESTROY:
        vm_bind_vm_destroy_client(c, fd)
    c.close_driver(fd)


def discovery_client(c: Client) -> None:
    """IGT ``discovery_race_client``: 16 DRM clients with 16 VMs + eudebug exec queues each
    (flags in the discovery namespace)."""
    rng = random.Random(os.getpid())
    for _ in range(RESOURCE_COUNT):
        fd = c.open_driver()
        hwe = first_engine(fd)
        size = max(alignment(fd), MIN_BO_SIZE)
        if not c.flags & (DISCOVERY_DESTROY_RESOURCES | DISCOVERY_CLOSE_CLIENT) and rng.random() < 0.5:
            time.sleep(DISCOVERY_CLIENT_PAUSE_S)
        addr = BO_ADDR
        for _ in range(RESOURCE_COUNT):
            vm = c.vm_create(fd, LR)
            bo = Client.bo_create(fd, size, placement=system_memory(fd))
            create = exec_queue_args(vm, hwe)
            c.exec_queue_create(fd, create)
            if c.flags & DISCOVERY_VM_BIND:
                c.vm_bind(fd, vm, bo, 0, addr, size)
                addr += size
            if c.flags & DISCOVERY_DESTROY_RESOURCES:
                c.exec_queue_destroy(fd, create)
                c.vm_destroy(fd, vm)
                Client.bo_close(fd, bo)
        if c.flags & DISCOVERY_CLOSE_CLIENT:
            c.close_driver(fd)


# ------------------------------------------------------------------------------------------------
# Test drivers (subtests.md §2.3)

def ufence_ack_trigger(d: Debugger, e: Event) -> None:
    """Ack every VM_BIND_UFENCE CREATE event (the drivers add it to every debugger)."""
    if e.flags & EventFlags.CREATE:
        d.ack_ufence(e)


def run_basic_sessions(fd: int, flags: int, count: int = 1, match_opposite: bool = True,
                       filter: int = 0) -> None:
    """``count`` sessions of the basic client, run one after the other, then each checked."""
    run_client_with_trigger(fd, flags, basic_client, count=count, match_opposite=match_opposite,
                            filter=filter, ack_ufences=False)


def run_client_with_trigger(fd: int, flags: int, work: Callable[[Client], Any], data: Any = None,
                            triggers: Iterable[tuple[int, Callable[[Debugger, Event], Any]]] = (),
                            count: int = 1, match_opposite: bool = True, filter: int = 0,
                            ack_ufences: bool = True) -> None:
    """``count`` sessions of ``work`` (all clients forked first), each debugger with ``triggers``
    and (``ack_ufences``) the ufence-ack trigger; run one after the other, then each checked."""
    sessions = [Session(work, flags, device=fd, data=data) for _ in range(count)]
    try:
        for s in sessions:
            assert s.debugger is not None
            for etype, fn in triggers:
                s.debugger.add_trigger(etype, fn)
            if ack_ufences:
                s.debugger.add_trigger(EventType.VM_BIND_UFENCE, ufence_ack_trigger)
        for s in sessions:
            s.run()
        for s in sessions:
            s.check(match_opposite, filter)
    finally:
        for s in sessions:
            s.close()


def run_basic_discovery(fd: int, flags: int, match_opposite: bool = True) -> None:
    """Start the client first, attach once it created its resources (discovery), go on live."""
    with Session(basic_client, flags | TEST_DISCOVERY, device=fd) as s:
        c, d = s.client, s.debugger
        assert c is not None and d is not None
        c.start()
        d.wait_stage(STAGE_PRE_DEBUG_RESOURCES_DONE)
        d.attach(c)
        d.start_worker()
        time.sleep(DISCOVERY_SETTLE_S)
        d.signal_stage(STAGE_DISCOVERY_DONE)
        c.wait_done()
        d.stop_worker(1.0)
        d.log.print(debug=True)
        c.log.print(debug=True)
        s.check(match_opposite, 0)


# ------------------------------------------------------------------------------------------------
# Device fixture helper and forked helpers

def open_enabled_device(device: str | None = None) -> tuple[int, str]:
    """Open the device and enable eudebug for the caller; (fd, key for restore_eudebug)."""
    fd = open_device(device)
    try:
        return fd, enable_eudebug_for(fd)
    except BaseException:
        os.close(fd)
        raise


def close_enabled_device(fd: int, key: str) -> None:
    try:
        restore_eudebug(fd, key)
    finally:
        os.close(fd)


def run_forked(fn: Callable[[], Any], timeout: float = 60.0) -> "Forked":
    """Run ``fn`` in a forked child; ``.join()`` raises ``AssertionError`` with the child's
    traceback if it failed."""
    return Forked(fn, timeout)


class Forked:
    def __init__(self, fn: Callable[[], Any], timeout: float) -> None:
        self.timeout = timeout
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(r)
                fn()
                status = 0
            except BaseException:
                try:
                    os.write(w, traceback.format_exc().encode(errors="replace")[-16000:])
                except OSError:
                    pass
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                except Exception:
                    pass
                os._exit(status)
        os.close(w)
        self.pid, self._r = pid, r

    def join(self) -> None:
        deadline = time.monotonic() + self.timeout
        chunks = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    fail(f"forked helper {self.pid} did not finish within {self.timeout:g} s")
                ready, _, _ = select.select([self._r], [], [], min(left, 1.0))
                if ready:
                    chunk = os.read(self._r, 65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            _pid, status = os.waitpid(self.pid, 0)
        finally:
            os.close(self._r)
        code = os.waitstatus_to_exitcode(status)
        if code:
            fail(f"forked helper {self.pid} exited with {code}:\n{b''.join(chunks).decode(errors='replace')}")


def poll_in(fd: int, timeout_ms: int) -> int:
    """The revents of one poll for POLLIN on ``fd`` (0 when nothing happened)."""
    return dict(seam.poll([(fd, select.POLLIN)], timeout_ms)).get(fd, 0)


def wait_until(cond: Callable[[], bool], timeout: float, interval: float = 0.001) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return cond()
        time.sleep(interval)
    return True
