"""Port of IGT ``tests/intel/xe_eudebug.c`` vm-bind-clear and vm-bind-clear-faultable: freshly
bound memory reads as zero, both to the GPU (a batch copies a dword of a new BO over its own
first dword through CS_GPR0) and to the debugger (VM_OPEN + pread at a random dword of every
other bind op), while the GPU writes into the same VM.

Scaled: each client thread loops for ``LOOP_S`` seconds (IGT 5 s).  Each check of IGT is kept:
the client asserts the GPU read zero; the debugger's clear trigger asserts a 4-byte pread of
value 0; at the end ``bind_count == unbind_count`` and ``2 * sum == bind_count``.  The port also
checks what IGT leaves implicit: every thread completed at least one iteration, the user fence of
every exec was written by the GPU, and the debugger did read through VM_OPEN at least once.
"""

from __future__ import annotations

import ctypes
import mmap
import random
import struct
import threading
import time
from typing import Any

from . import clients as ic
from .registry import Skip, subtest
from xe_eudebug import uapi
from xe_eudebug.client import Client, eudebug_engines, exec_queue_args, user_fence_sync
from xe_eudebug.debugger import Debugger
from xe_eudebug.events import Event, EventFlags, EventType
from xe_eudebug.session import Session
from xe_eudebug import ioctl as seam
from xe_eudebug.isa import mi

LOOP_S = 2.0                           # IGT: igt_until_timeout(5)
UFENCE_VALUE = 1337
DEFAULT_TIMEOUT_NS = 60 * ic.NSEC_PER_SEC   # XE_EUDEBUG_DEFAULT_TIMEOUT_SEC
CS_GPR0 = 0x600
SZ_2M = 2 << 20
BATCH_SIZE = 16
CS_PREFETCH = 4096

MI_LOAD_REGISTER_MEM = mi.mi(mi.MI_LOAD_REGISTER_MEM, 4, mi.MI_LRI_LRM_CS_MMIO)
MI_STORE_REGISTER_MEM = mi.mi(mi.MI_STORE_REGISTER_MEM, 4, mi.MI_LRI_LRM_CS_MMIO)
MI_BATCH_BUFFER_END = mi.mi(mi.MI_BATCH_BUFFER_END)
MI_NOOP_ID = mi.mi(mi.MI_NOOP) | 0xC5A3

# the shared counters (IGT's vm_bind_clear_priv, a MAP_SHARED page): debugger and client
_BIND, _UNBIND, _SUM, _PREADS = 0, 8, 16, 24


class Shared:
    def __init__(self) -> None:
        self.page = mmap.mmap(-1, mmap.PAGESIZE)         # MAP_SHARED | MAP_ANONYMOUS
        self.lock = threading.Lock()

    def get(self, off: int) -> int:
        return struct.unpack_from("<Q", self.page, off)[0]

    def add(self, off: int, n: int = 1) -> None:
        with self.lock:
            struct.pack_into("<Q", self.page, off, self.get(off) + n)


def _bb_size(fd: int) -> int:
    """xe_bb_size(fd, 16): the batch plus the command streamer's prefetch, aligned."""
    align = ic.alignment(fd)
    return (BATCH_SIZE + CS_PREFETCH + align - 1) // align * align


def _exec_sync(fd: int, queue: int, address: int, sync: Any) -> None:
    """xe_exec_sync: one batch, one sync."""
    arg = uapi.drm_xe_exec(exec_queue_id=queue, num_syncs=1, syncs=ctypes.addressof(sync),
                           address=address, num_batch_buffer=1)
    seam.ioctl(fd, uapi.DRM_IOCTL_XE_EXEC, arg)


def _thread(c: Client, engine: Any, region: int, counts: list[int], index: int,
            failures: list[str]) -> None:
    fd = c.open_driver()
    try:
        rng = random.Random()
        vm = c.vm_create(fd, ic.vm_flags(c.flags))
        bo_size = _bb_size(fd)
        gtt_mask = 0xFFFFFFFF          # IGT's uint32_t gtt_size: 1 << 48 truncates to 0, mask ~0u
        fence_data = (ctypes.c_uint64 * 1)()
        fence_addr = ctypes.addressof(fence_data)
        count = 0
        end = time.monotonic() + LOOP_S
        while True:
            batch_offset = (rng.getrandbits(31) * SZ_2M) & gtt_mask or SZ_2M
            while True:
                clean_offset = (rng.getrandbits(31) * SZ_2M) & gtt_mask or SZ_2M
                if clean_offset != batch_offset:
                    break
            batch_offset += rng.getrandbits(31) % SZ_2M & -bo_size
            clean_offset += rng.getrandbits(31) % SZ_2M & -bo_size
            delta = (rng.getrandbits(31) % bo_size) & -4

            clean_bo = Client.bo_create(fd, bo_size, placement=region, vm=vm)
            fence_data[0] = 0
            c.vm_bind(fd, vm, clean_bo, 0, clean_offset, bo_size, syncs=user_fence_sync(fence_addr, UFENCE_VALUE))
            assert c.wait_ufence(fd, fence_addr, UFENCE_VALUE, DEFAULT_TIMEOUT_NS) == 0, "clean bind fence"

            batch_bo = Client.bo_create(fd, bo_size, placement=region, vm=vm)
            fence_data[0] = 0
            c.vm_bind(fd, vm, batch_bo, 0, batch_offset, bo_size, syncs=user_fence_sync(fence_addr, UFENCE_VALUE))
            assert c.wait_ufence(fd, fence_addr, UFENCE_VALUE, DEFAULT_TIMEOUT_NS) == 0, "batch bind fence"

            m = ic.bo_mmap(fd, batch_bo, bo_size)
            src = clean_offset + delta
            cs = [MI_NOOP_ID,
                  MI_LOAD_REGISTER_MEM, CS_GPR0, src & 0xFFFFFFFF, src >> 32,
                  MI_STORE_REGISTER_MEM, CS_GPR0, batch_offset & 0xFFFFFFFF, batch_offset >> 32,
                  MI_BATCH_BUFFER_END]
            m[:4 * len(cs)] = struct.pack(f"<{len(cs)}I", *cs)

            create = exec_queue_args(vm, engine)
            queue = c.exec_queue_create(fd, create)
            fence_off = 4 * len(cs)                 # the user fence right after the batch end
            sync = user_fence_sync(batch_offset + fence_off, UFENCE_VALUE)
            _exec_sync(fd, queue, batch_offset, sync)
            fence_cpu = ctypes.addressof(ctypes.c_char.from_buffer(m)) + fence_off
            ret = c.wait_ufence(fd, fence_cpu, UFENCE_VALUE, DEFAULT_TIMEOUT_NS, exec_queue=queue)
            assert ret == 0, f"exec user fence: {ret}"
            assert struct.unpack_from("<Q", m, fence_off)[0] == UFENCE_VALUE, "exec fence not written by the GPU"
            first = struct.unpack_from("<I", m, 0)[0]
            assert first == 0, f"GPU read {first:#x} from fresh memory at {src:#x}"

            c.exec_queue_destroy(fd, create)
            del fence_cpu
            m.close()
            c.vm_unbind(fd, vm, 0, batch_offset, bo_size)
            Client.bo_close(fd, batch_bo)
            c.vm_unbind(fd, vm, 0, clean_offset, bo_size)
            Client.bo_close(fd, clean_bo)
            count += 1
            if time.monotonic() >= end:
                break
        counts[index] = count
    except BaseException as exc:  # reported by the client body, not lost in a thread
        failures.append(f"thread {index} ({engine.engine_class}:{engine.engine_instance}): {exc!r}")
    finally:
        c.close_driver(fd)


def _client(shared: Shared):
    def vm_bind_clear_client(c: Client) -> None:
        fd = c.open_driver()
        regions = [1 << int(r.instance) for r in ic.mem_regions(fd)]
        engines = eudebug_engines(fd)
        slots = [(region, engine) for region in regions for engine in engines]
        counts = [0] * len(slots)
        failures: list[str] = []
        threads = [threading.Thread(target=_thread, args=(c, engine, region, counts, i, failures))
                   for i, (region, engine) in enumerate(slots)]
        for t in threads:
            t.start()
        for t in threads:                          # join only the threads started
            t.join()
        assert not failures, "; ".join(failures)
        assert all(counts), f"a thread sampled no object: {counts}"
        total = 0
        for region in regions:
            n = sum(counts[i] for i, (r, _e) in enumerate(slots) if r == region)
            print(f"region {region:#x} sampled {n} objects")
            total += n
        shared.add(_SUM, total)
        c.close_driver(fd)
    return vm_bind_clear_client


def _triggers(shared: Shared):
    rng = random.Random()

    def clear_trigger(d: Debugger, e: Event) -> None:
        if e.flags & EventFlags.CREATE:
            if rng.getrandbits(1):
                bind = d.log.find_seqno(e.vm_bind_ref_seqno)
                d.assert_(bind is not None, f"no VM_BIND with seqno {e.vm_bind_ref_seqno}")
                with d.vm_open(bind.client_handle, bind.vm_handle) as vm:
                    delta = (rng.getrandbits(31) % e.range) & -4
                    data = vm.pread(4, e.addr + delta)
                d.assert_(len(data) == 4, f"pread returned {len(data)} bytes")
                value = struct.unpack("<I", data)[0]
                d.assert_(value == 0, f"fresh memory at {e.addr + delta:#x} reads {value:#x}")
                shared.add(_PREADS)
            shared.add(_BIND)
        if e.flags & EventFlags.DESTROY:
            shared.add(_UNBIND)

    return clear_trigger


@subtest("vm-bind-clear", flags=0)
@subtest("vm-bind-clear-faultable", flags=ic.TEST_FAULTABLE)
def test_vm_bind_clear(fd: int, flags: int) -> None:
    """IGT vm-bind-clear / vm-bind-clear-faultable (which requires fault-mode VMs: IGT's
    ``xe_supports_faults`` returns 0, the ioctl's result, when they are supported)."""
    if flags & ic.TEST_FAULTABLE and not ic.supports_faults(fd):
        raise Skip("the device does not support fault-mode VMs")
    shared = Shared()
    clear_trigger = _triggers(shared)
    with Session(_client(shared), flags, device=fd) as s:
        c, d = s.client, s.debugger
        assert c is not None and d is not None
        d.add_trigger(EventType.VM_BIND_OP, clear_trigger)
        d.add_trigger(EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger)
        d.attach(c)
        d.start_worker()
        c.start()
        c.wait_done()
        d.stop_worker(1.0)
        d.raise_trigger_failures()
    binds, unbinds, total = shared.get(_BIND), shared.get(_UNBIND), shared.get(_SUM)
    assert binds == unbinds, f"{binds} bind ops, {unbinds} unbind ops"
    assert total * 2 == binds, f"{total} objects sampled, {binds} bind ops"
    assert total > 0
    assert shared.get(_PREADS) > 0 or total < 8, "the debugger never read fresh memory"
