"""IGT's ``tests/intel/xe_eudebug_online.c`` subtests, ported (binary ``xe_eudebug_online``).

A client runs a gpgpu shader built from IGT's templates (``GpgpuShader``) with a system routine
(SIP) on an exec queue with the EUDEBUG property; the debugger stops its threads (breakpoints,
INTERRUPT_ALL), reads EU_ATTENTION events, asks STOPPED and RESUMEs them (all, one, one DSS,
single steps), and rewrites the shader's ISA through the VM fd.  Names (T:line) follow IGT's
source; ``docs/porting.md`` lists every difference from it with its reason.

The client side is :func:`run_online_client` (T:1045), the debugger side the triggers below
(T:424-1010); :class:`OnlineData` is IGT's ``online_debug_data`` (T:371): the debugger's
fields live in this process, the one field a forked client reports (``threads_count``) in
memory shared across the fork.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import random
import signal
import struct
import threading
import time
from typing import Any, Callable

from xe_eudebug import uapi
from xe_eudebug.client import Client, eudebug_engines, exec_queue_args
from xe_eudebug.debugger import Debugger, VmFile
from xe_eudebug.device import engine_class_property, force_gt_reset, has_vram, set_engine_class_property
from xe_eudebug.eucontrol import (INTERRUPT_ALL, RESUME, STOPPED, Topology, count_set_bits, exec_queue_of_attention,
                                  first_dss_only, only_first_set_bit, only_nth_set_bit, xor_count)
from xe_eudebug.events import Event, EventFlags, EventType, filter_mask
from xe_eudebug.gpgpu import Target
from xe_eudebug.gpgpu_exec import GpgpuExec, bb_size_for
from xe_eudebug.isa.gpgpu import BREAKPOINT_BIT, GpgpuShader
from xe_eudebug.log import EventLog
from xe_eudebug.session import Session, open_device_elsewhere

from . import clients as ic
from .registry import require, skip, subtest

BINARY = "xe_eudebug_online"

# Test flags (T:25-50)
SHADER_NOP = 0
SHADER_BREAKPOINT = 1 << 0
SHADER_LOOP = 1 << 1
SHADER_SINGLE_STEP = 1 << 2
SIP_SINGLE_STEP = 1 << 3
DISABLE_DEBUG_MODE = 1 << 4
SHADER_N_NOOP_BREAKPOINT = 1 << 5
SHADER_CACHING_SRAM = 1 << 6
SHADER_CACHING_VRAM = 1 << 7
SHADER_MIN_THREADS = 1 << 8
DO_NOT_EXPECT_CANARIES = 1 << 9
BB_IN_SRAM = 1 << 10
BB_IN_VRAM = 1 << 11
TARGET_IN_SRAM = 1 << 12
TARGET_IN_VRAM = 1 << 13
SHADER_PAGEFAULT_READ = 1 << 14
SHADER_PAGEFAULT_WRITE = 1 << 15
FAULTABLE_VM = 1 << 16
TRIGGER_UFENCE_SET_BREAKPOINT = 1 << 24
TRIGGER_RESUME_SINGLE_WALK = 1 << 25
TRIGGER_RESUME_PARALLEL_WALK = 1 << 26
TRIGGER_RECONNECT = 1 << 27
TRIGGER_RESUME_SET_BP = 1 << 28
TRIGGER_RESUME_DELAYED = 1 << 29
TRIGGER_RESUME_DSS = 1 << 30
TRIGGER_RESUME_ONE = 1 << 31
SHADER_PAGEFAULT = SHADER_PAGEFAULT_READ | SHADER_PAGEFAULT_WRITE

DEBUGGER_REATTACHED = 1
SHADER_LOOP_N = 3
SINGLE_STEP_COUNT = 16
STEERING_SINGLE_STEP = 0
STEERING_CONTINUE = 0x00C0FFEE
STEERING_END_LOOP = 0xDEADCA11
CACHING_INIT_VALUE = 0xCAFE0000
CACHING_POISON_VALUE = 0xCAFEDEAD
SIGTERM_COUNT = 50
SHADER_CANARY = 0x01010101
BAD_CANARY = 0x0F1F1F1F
BAD_OFFSET = 0x12345678 << 12            # never bound: the pagefault shaders' access
WALKER_X_DIM = 4
WALKER_ALIGNMENT = 16
SIMD_SIZE = 16
STARTUP_TIMEOUT_S = 3.0
MAX_PREEMPT_TIMEOUT_S = 10
PAGE_SIZE = 4096
TARGET_OFFSET = 0x1A000000
BB_OFFSET = 0x1B000000
DEFAULT_TIMEOUT_S = 60
#: breakpoint-many-sessions-*: how long the test holds each session's first attention before it
#: resumes it (IGT's WORKLOAD_DELAY_US), and the gap that tells serialised from concurrent
WORKLOAD_DELAY_S = 5.0
#: set-breakpoint-sigint-debugger: how long the SIGINT loop runs (IGT: 60 s; time only)
SIGINT_LOOP_S = 60.0
#: how long a client waits for its workload before it fails (IGT waits without limit, then
#: asserts the wait took under 60 s unless the debugger reconnects)
WORKLOAD_WAIT_S = 180.0

ELF_BINARY = uapi.DRM_XE_DEBUG_METADATA_ELF_BINARY
PROGRAM_MODULE = uapi.DRM_XE_DEBUG_METADATA_PROGRAM_MODULE
VM_BIND_FILTER = filter_mask(EventType.VM_BIND, EventType.VM_BIND_OP, EventType.VM_BIND_UFENCE)


def caching_value(n: int) -> int:
    return CACHING_INIT_VALUE + n


# ------------------------------------------------------------------------------------------------
# Dimensions and shaders (T:83-226)

class Dim:
    def __init__(self, x: int, y: int, alignment: int) -> None:
        self.x, self.y, self.alignment = x, y, alignment


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def walker_dimensions(threads: int) -> Dim:
    x = min(threads, WALKER_X_DIM)
    return Dim(x, threads // x, WALKER_ALIGNMENT)


def surface_dimensions(threads: int) -> Dim:
    w = walker_dimensions(threads)
    return Dim(w.x * SIMD_SIZE, max(w.y, threads // w.x, 4), w.alignment * SIMD_SIZE)


def steering_offset(threads: int) -> int:
    w = walker_dimensions(threads)
    return _align(w.x, w.alignment) * w.y * 4


def get_number_of_threads(flags: int) -> int:
    if flags & (SHADER_MIN_THREADS | SHADER_PAGEFAULT):
        return 16
    if flags & (TRIGGER_RESUME_ONE | TRIGGER_RESUME_SINGLE_WALK | TRIGGER_RESUME_PARALLEL_WALK
                | SHADER_CACHING_SRAM | SHADER_CACHING_VRAM):
        return 32
    return 512


def min_page_size(fd: int, flags: int) -> int:
    """xe_min_page_size of system memory (SHADER_CACHING_SRAM) or of the first VRAM region."""
    want_sys = bool(flags & SHADER_CACHING_SRAM)
    for r in ic.mem_regions(fd):
        if (r.mem_class == uapi.DRM_XE_MEM_REGION_CLASS_SYSMEM) == want_sys:
            return int(r.min_page_size)
    ic.fail("no VRAM region for SHADER_CACHING_VRAM")
    return 0


def caching_get_instruction_count(fd: int, s_dim_x: int, flags: int) -> int:
    assert flags & (SHADER_CACHING_SRAM | SHADER_CACHING_VRAM)
    return 2 * min_page_size(fd, flags) // s_dim_x


def get_shader(fd: int, flags: int) -> GpgpuShader:
    w = walker_dimensions(get_number_of_threads(flags))
    s_dim = surface_dimensions(get_number_of_threads(flags))
    shader = GpgpuShader()
    shader.write_dword(SHADER_CANARY, 0)
    if flags & SHADER_BREAKPOINT:
        shader.nop()
        shader.breakpoint()
    elif flags & SHADER_LOOP:
        shader.label(0)
        shader.write_dword(SHADER_CANARY, 0)
        shader.jump_neq(0, w.y, STEERING_END_LOOP)
        shader.write_dword(SHADER_CANARY, 0)
    elif flags & SHADER_SINGLE_STEP:
        shader.nop()
        shader.breakpoint()
        for _ in range(SINGLE_STEP_COUNT):
            shader.nop()
    elif flags & SHADER_N_NOOP_BREAKPOINT:
        for _ in range(SHADER_LOOP_N):
            shader.nop()
            shader.breakpoint()
    elif flags & (SHADER_CACHING_SRAM | SHADER_CACHING_VRAM):
        shader.nop()
        shader.breakpoint()
        for i in range(caching_get_instruction_count(fd, s_dim.x, flags)):
            shader.common_target_write_u32(s_dim.y + i, caching_value(i))
        shader.nop()
        shader.breakpoint()
    elif flags & SHADER_PAGEFAULT:
        if flags & SHADER_PAGEFAULT_READ:
            shader.read_a64_d32(BAD_OFFSET)
        else:
            shader.write_a64_d32(BAD_OFFSET, BAD_CANARY)
        shader.label(0)
        shader.write_dword(SHADER_CANARY, 0)
        shader.jump_neq(0, w.y, STEERING_END_LOOP)
        shader.write_dword(SHADER_CANARY, 0)
    shader.eot()
    return shader


def get_sip(flags: int) -> GpgpuShader:
    w = walker_dimensions(get_number_of_threads(flags))
    sip = GpgpuShader()
    sip.write_aip(0)
    sip.wait()
    if flags & SIP_SINGLE_STEP:
        sip.end_system_routine_step_if_eq(w.y, 0)
    else:
        sip.end_system_routine(True)
    return sip


def count_canaries_eq(words: list[int], w: Dim, value: int) -> int:
    stride = _align(w.x, w.alignment)
    return sum(1 for x in range(w.x) for y in range(w.y) if words[x + stride * y] == value)


def count_canaries_neq(words: list[int], w: Dim, value: int) -> int:
    return w.x * w.y - count_canaries_eq(words, w, value)


# ------------------------------------------------------------------------------------------------
# Shared data (T:371-422)

class OnlineData:
    """IGT's ``online_debug_data``: the engine, the client's thread count (shared with a forked
    client) and the debugger's findings."""

    def __init__(self, hwe: Any) -> None:
        self.hwe = (int(hwe.engine_class), int(hwe.engine_instance), int(hwe.gt_id))
        self._shared = mmap.mmap(-1, PAGE_SIZE)
        self.mutex = threading.RLock()
        self.client_handle = -1
        self.exec_queue_handle = -1
        self.lrc_handle = -1
        self.target_offset = 0
        self.target_size = 0
        self.bb_offset = 0
        self.bb_size = 0
        self.vm_fd: VmFile | None = None
        self.kernel_offset = 0
        self.first_aip = 0
        self.aips_offset_table: list[int] | None = None
        self.steps_done = 0
        self.single_step_bitmask: bytes | None = None
        self.stepped_threads_count = -1
        self.exception_arrived = 0.0
        self.exception_event: Event | None = None
        self.last_eu_control_seqno = 0
        self.att_event_counter = 0
        self.debugger_detach_count = 0
        #: after a reconnect: the metadata types whose replayed CREATE is still to be read
        #: before the client is released (eu_attention_debugger_detach_trigger)
        self.stage_after_metadata: set[int] | None = None

    @property
    def threads_count(self) -> int:
        return struct.unpack_from("<i", self._shared, 0)[0]

    @threads_count.setter
    def threads_count(self, value: int) -> None:
        struct.pack_into("<i", self._shared, 0, value)

    def pread(self, size: int, offset: int) -> bytes:
        assert self.vm_fd is not None, "no VM fd: the VM event has not come"
        data = self.vm_fd.pread(size, offset)
        assert len(data) == size, f"pread of {size} bytes at {offset:#x} returned {len(data)}"
        return data

    def pread_u32(self, offset: int) -> int:
        return struct.unpack("<I", self.pread(4, offset))[0]

    def pwrite_u32(self, value: int, offset: int) -> None:
        assert self.vm_fd is not None, "no VM fd: the VM event has not come"
        assert self.vm_fd.pwrite(struct.pack("<I", value & 0xFFFFFFFF), offset) == 4

    def close(self) -> None:
        if self.vm_fd is not None:
            self.vm_fd.close()
            self.vm_fd = None


def _data(d: Debugger) -> OnlineData:
    return d.data


# ------------------------------------------------------------------------------------------------
# Debugger side: the triggers (T:424-1010)

def _print_attention(e: Event, what: str) -> None:
    words = struct.unpack(f"<{e.bitmask_size // 4}I", e.bitmask[:e.bitmask_size // 4 * 4])
    print(f"EVENT[{e.seqno}] {what}; threads={count_set_bits(e.bitmask)} client[{e.client_handle}], "
          f"exec_queue[{e.exec_queue_handle}], lrc[{e.lrc_handle}], bitmask_size[{e.bitmask_size}]")
    for i in range(0, len(words) - 1, 2):
        print(f"bitmask[{i // 2}] = 0x{words[i]:08x}{words[i + 1]:08x}")


def eu_attention_debug_trigger(d: Debugger, e: Event) -> None:
    _print_attention(e, "eu-attention")


def eu_attention_reset_trigger(d: Debugger, e: Event) -> None:
    """reset-with-attention (T:440): the threads are stopped; reset their GT through debugfs."""
    _print_attention(e, "eu-attention with reset")
    force_gt_reset(d.master_fd, _data(d).hwe[2])


def save_first_exception_trigger(d: Debugger, e: Event) -> None:
    """breakpoint-many-sessions-* (T:601): note when the first attention came, and keep it."""
    data = _data(d)
    with data.mutex:
        if data.exception_event is None:
            data.exception_arrived = time.monotonic()
            data.exception_event = e


def find_kernel_in_bb(kernel: GpgpuShader, data: OnlineData) -> int:
    buf = data.pread(data.bb_size, data.bb_offset)
    offset = buf.find(kernel.to_bytes())
    assert offset >= 0, "the kernel is not in the batch buffer"
    return offset


def set_breakpoint_once(d: Debugger, data: OnlineData) -> bool:
    kernel = get_shader(d.master_fd, d.flags)
    if data.kernel_offset:
        return False
    assert data.vm_fd is not None and data.target_size and data.bb_size
    data.kernel_offset = find_kernel_in_bb(kernel, data)
    aip = data.kernel_offset + len(kernel.code) * 4 - 0x10
    instr = data.pread_u32(data.bb_offset + aip)
    data.pwrite_u32(instr | BREAKPOINT_BIT, data.bb_offset + aip)
    data.vm_fd.fsync()
    return True


def get_aips_offset_table(data: OnlineData, threads: int) -> None:
    if data.aips_offset_table is not None:
        return
    first_aip = data.pread_u32(data.target_offset)
    data.first_aip = first_aip
    table = [0]
    assert data.vm_fd is not None
    data.vm_fd.fsync()
    target = data.pread(data.target_size, data.target_offset)
    for i in range(4, data.target_size - data.target_size % 4, 4):
        if struct.unpack_from("<I", target, i)[0] == first_aip:
            table.append(i)
    assert len(table) == threads, f"{len(table)} AIPs found in the target, {threads} threads expected"
    data.aips_offset_table = table


def get_stepped_threads_count(data: OnlineData, threads: int) -> int:
    assert data.vm_fd is not None and data.aips_offset_table is not None
    data.vm_fd.fsync()
    count = 0
    for i in range(threads):
        aip = data.pread_u32(data.target_offset + data.aips_offset_table[i])
        if aip != data.first_aip:
            assert aip == data.first_aip + 0x10, f"thread {i}: AIP {aip:#x}, first {data.first_aip:#x}"
            count += 1
    return count


def _stopped_and_check(d: Debugger, e: Event) -> bytes:
    _seqno, bitmask = d.eu_stopped(e.client_handle, e.exec_queue_handle, e.lrc_handle, e.bitmask_size)
    if not d.flags & SHADER_PAGEFAULT:
        assert bitmask == e.bitmask, "STOPPED bitmask differs from the attention's"
    return bitmask


def eu_attention_resume_trigger(d: Debugger, e: Event) -> None:
    data = _data(d)
    if data.last_eu_control_seqno > e.seqno:
        return
    bitmask = _stopped_and_check(d, e)
    with data.mutex:
        if not data.exception_arrived:
            data.exception_arrived = time.monotonic()
            elapsed = 0.0
        else:
            elapsed = time.monotonic() - data.exception_arrived
        if d.flags & TRIGGER_RESUME_DELAYED and elapsed < MAX_PREEMPT_TIMEOUT_S + 1:
            return
        if d.flags & TRIGGER_RESUME_ONE:
            bitmask = only_first_set_bit(bitmask)
        elif d.flags & TRIGGER_RESUME_DSS:
            bitmask = first_dss_only(e.bitmask)
        elif d.flags & TRIGGER_RESUME_SET_BP:
            if not set_breakpoint_once(d, data):
                kernel = get_shader(d.master_fd, d.flags)
                expected = data.kernel_offset + len(kernel.code) * 4 - 0x10
                aip = data.pread_u32(data.target_offset)
                assert aip == expected, f"AIP {aip:#x}, breakpoint at {expected:#x}"
        if d.flags & (SHADER_LOOP | SHADER_PAGEFAULT):
            threads = get_number_of_threads(d.flags)
            data.pwrite_u32(STEERING_END_LOOP, data.target_offset + steering_offset(threads))
            assert data.vm_fd is not None
            data.vm_fd.fsync()
    data.last_eu_control_seqno = d.eu_resume(e.client_handle, e.exec_queue_handle, e.lrc_handle, bitmask)


def eu_attention_resume_single_step_trigger(d: Debugger, e: Event) -> None:
    data = _data(d)
    threads = get_number_of_threads(d.flags)
    get_aips_offset_table(data, threads)
    if data.last_eu_control_seqno > e.seqno:
        return
    bitmask = e.bitmask
    if d.flags & TRIGGER_RESUME_PARALLEL_WALK:
        if data.stepped_threads_count != -1 and data.steps_done < SINGLE_STEP_COUNT:
            after = get_stepped_threads_count(data, threads)
            print(f"Stepped threads after: {after}")
            if after == threads:
                data.first_aip += 0x10
                data.steps_done += 1
            print(f"Shader steps: {data.steps_done}")
            assert data.stepped_threads_count == 0, f"{data.stepped_threads_count} threads stepped before"
            assert after == threads, f"{after} of {threads} threads stepped"
        if data.steps_done < SINGLE_STEP_COUNT:
            data.stepped_threads_count = get_stepped_threads_count(data, threads)
            print(f"Stepped threads before: {data.stepped_threads_count}")
        val = STEERING_SINGLE_STEP if data.steps_done < SINGLE_STEP_COUNT else STEERING_CONTINUE
    elif d.flags & TRIGGER_RESUME_SINGLE_WALK:
        if data.stepped_threads_count != -1 and data.steps_done < 2:
            after = get_stepped_threads_count(data, threads)
            print(f"Stepped threads after: {after}")
            if after == threads:
                data.first_aip += 0x10
                data.steps_done += 1
                data.single_step_bitmask = None
            print(f"Shader steps: {data.steps_done}")
            # Xe2 needs no resume workaround (Wa_14011332042 is for graphics 12 before 12.55)
            assert data.stepped_threads_count + 1 == after, \
                f"{data.stepped_threads_count} threads stepped before, {after} after one step"
        if data.steps_done < 2:
            data.stepped_threads_count = get_stepped_threads_count(data, threads)
            print(f"Stepped threads before: {data.stepped_threads_count}")
            bitmask = only_nth_set_bit(e.bitmask, data.stepped_threads_count + 1)
        val = STEERING_SINGLE_STEP if data.steps_done < 2 else STEERING_CONTINUE
    else:
        val = STEERING_CONTINUE
    data.pwrite_u32(val, data.target_offset + steering_offset(threads))
    assert data.vm_fd is not None
    data.vm_fd.fsync()
    data.last_eu_control_seqno = d.eu_resume(e.client_handle, e.exec_queue_handle, e.lrc_handle, bitmask)


def open_trigger(d: Debugger, e: Event) -> None:
    if e.flags & EventFlags.DESTROY:
        return
    with _data(d).mutex:
        _data(d).client_handle = e.client_handle


def exec_queue_trigger(d: Debugger, e: Event) -> None:
    if e.flags & EventFlags.DESTROY:
        return
    data = _data(d)
    with data.mutex:
        data.exec_queue_handle = e.exec_queue_handle
        data.lrc_handle = e.lrc_handle[0]


def vm_open_trigger(d: Debugger, e: Event) -> None:
    data = _data(d)
    if e.flags & EventFlags.CREATE:
        vm = d.vm_open(e.client_handle, e.vm_handle)
        with data.mutex:
            assert data.vm_fd is None, "a second VM"
            data.vm_fd = vm
        return
    with data.mutex:
        data.close()


def create_metadata_trigger(d: Debugger, e: Event) -> None:
    if not e.flags & EventFlags.CREATE:
        return
    raw = d.read_metadata(e.client_handle, e.metadata_handle, e.len)
    offset, size = struct.unpack_from("<QQ", raw, 0)
    data = _data(d)
    with data.mutex:
        if e.payload.type == ELF_BINARY:
            data.bb_offset, data.bb_size = offset, size
        elif e.payload.type == PROGRAM_MODULE:
            data.target_offset, data.target_size = offset, size
        release = False
        if data.stage_after_metadata is not None:
            data.stage_after_metadata.discard(e.payload.type)
            release = not data.stage_after_metadata
            if release:
                data.stage_after_metadata = None
    if release:
        d.signal_stage(DEBUGGER_REATTACHED)


def overwrite_immediate_value_in_common_target_write(data: OnlineData, offset: int, old: int, new: int) -> None:
    addr, changed = offset, 0
    while changed < 4:
        if data.pread_u32(addr) == old:
            data.pwrite_u32(new, addr)
            before_fsync = data.pread_u32(addr)
            print(f"val_before_fsync[{changed}]: {before_fsync:08x}")
            assert data.vm_fd is not None
            data.vm_fd.fsync()
            after = data.pread_u32(addr)
            assert after == new, f"{after:#x} read back at {addr:#x} after writing {new:#x}"
            changed += 1
        addr += 4


def eu_attention_resume_caching_trigger(d: Debugger, e: Event) -> None:
    data = _data(d)
    s_dim = surface_dimensions(get_number_of_threads(d.flags))
    count = caching_get_instruction_count(d.master_fd, s_dim.x, d.flags)
    preamble = GpgpuShader()
    preamble.write_dword(SHADER_CANARY, 0)
    preamble.nop()
    preamble.breakpoint()
    write_instr = GpgpuShader()
    write_instr.common_target_write_u32(0, 0)
    if not data.kernel_offset:
        data.kernel_offset = find_kernel_in_bb(get_shader(d.master_fd, d.flags), data)
    n = data.att_event_counter

    def at(i: int) -> int:
        return data.bb_offset + data.kernel_offset + len(preamble.code) * 4 + len(write_instr.code) * 4 * i

    if n < count:
        data.pwrite_u32(data.pread_u32(at(n)) | BREAKPOINT_BIT, at(n))
        assert data.vm_fd is not None
        data.vm_fd.fsync()
    if n and n <= count:
        overwrite_immediate_value_in_common_target_write(data, at(n - 1), CACHING_POISON_VALUE, caching_value(n - 1))
    if n < count:
        overwrite_immediate_value_in_common_target_write(data, at(n), caching_value(n), CACHING_POISON_VALUE)
    if 1 < n <= count + 1:
        target = data.pread(data.target_size, data.target_offset)
        for i in range(0, data.target_size - data.target_size % 4, 4):
            assert struct.unpack_from("<I", target, i)[0] != CACHING_POISON_VALUE, f"Poison value found at {i:04d}!"
    r = d.try_eu_control(e.client_handle, e.exec_queue_handle, e.lrc_handle, RESUME, e.bitmask)
    if n < count + 2:
        assert r.ret == 0, f"EU_CONTROL RESUME at breakpoint {n}: {r.ret}"
    data.att_event_counter += 1


def ufence_ack_set_bp_trigger(d: Debugger, e: Event) -> None:
    if e.flags & EventFlags.CREATE:
        set_breakpoint_once(d, _data(d))
        d.ack_ufence(e)


def reset_debugger_log(d: Debugger) -> None:
    assert d.target_pid == 0, "resetting the log of an attached debugger"
    d.log = EventLog(d.log.name, d.log.max_size)


def eu_attention_debugger_detach_trigger(d: Debugger, e: Event) -> None:
    data = _data(d)
    pid = d.target_pid
    data.close()          # the VM fd of the old connection
    d.detach()
    if not d.flags & SHADER_N_NOOP_BREAKPOINT:
        time.sleep(1)     # let the kernel's attention scan see an attention nobody handles
    reset_debugger_log(d)
    if not d.flags & SHADER_N_NOOP_BREAKPOINT:
        # IGT releases the client at the end of this trigger, before the worker has read the
        # replayed metadata CREATE events; the client's teardown may then destroy that metadata
        # first and the worker's READ_METADATA fails EINVAL (a race of IGT's test, on hardware
        # too).  The port releases it once both have been read (create_metadata_trigger).
        with data.mutex:
            data.stage_after_metadata = {ELF_BINARY, PROGRAM_MODULE}
    d.attach(pid)         # IGT: xe_eudebug_connect, then d->fd and d->target_pid set by hand
    d.remove_trigger(EventType.VM, vm_open_trigger)
    time.sleep(2)         # discovery replays the resources


def eu_attention_debugger_ndetach_trigger(d: Debugger, e: Event) -> None:
    data = _data(d)
    if data.debugger_detach_count < SHADER_LOOP_N - 1:
        if data.last_eu_control_seqno > e.seqno:
            return
        eu_attention_debugger_detach_trigger(d, e)
        data.debugger_detach_count += 1
    else:
        print("Reached Nth breakpoint hence preventing the debugger detach")


# ------------------------------------------------------------------------------------------------
# Client side (T:1012-1167)

def run_online_client(c: Client) -> None:
    data: OnlineData = c.data
    flags = c.flags
    threads = get_number_of_threads(flags)
    w_dim, s_dim = walker_dimensions(threads), surface_dimensions(threads)
    fd = c.open_driver()
    shader = get_shader(fd, flags)
    bb_size = bb_size_for(shader)
    height = s_dim.y
    if flags & (SHADER_LOOP | SHADER_SINGLE_STEP | SHADER_PAGEFAULT):
        height += 1
    if flags & (SHADER_CACHING_SRAM | SHADER_CACHING_VRAM):
        height += caching_get_instruction_count(fd, s_dim.x, flags)
    target = Target(TARGET_OFFSET, s_dim.x // 4, height)
    target_size = target.pitch * target.height
    md = [struct.pack("<QQ", BB_OFFSET, bb_size), struct.pack("<QQ", TARGET_OFFSET, target_size)]
    mid = [c.metadata_create(fd, ELF_BINARY, md[0]), c.metadata_create(fd, PROGRAM_MODULE, md[1])]
    vm_flags = ic.LR | (uapi.DRM_XE_VM_CREATE_FLAG_FAULT_MODE if flags & (SHADER_PAGEFAULT | FAULTABLE_VM) else 0)
    vm = c.vm_create(fd, vm_flags)
    create = exec_queue_args(vm, data.hwe, eudebug=not flags & DISABLE_DEBUG_MODE)
    c.exec_queue_create(fd, create)
    run = GpgpuExec(fd, vm, int(create.exec_queue_id), BB_OFFSET, bb_size, target,
                    placement=memory_region(fd, flags & (BB_IN_SRAM | BB_IN_VRAM)),
                    target_placement=memory_region(fd, flags & (TARGET_IN_SRAM | TARGET_IN_VRAM)))
    try:
        sip = get_sip(flags)
        start = time.monotonic()
        run.submit(shader, sip, w_dim.x, w_dim.y)
        run.wait(WORKLOAD_WAIT_S)
        if flags & TRIGGER_RECONNECT:
            c.wait_stage(DEBUGGER_REATTACHED)
        else:
            elapsed = time.monotonic() - start
            assert elapsed < DEFAULT_TIMEOUT_S, f"the workload took {elapsed:.1f} s"
        if not flags & DO_NOT_EXPECT_CANARIES:
            words = run.target_u32()
            data.threads_count = count_canaries_neq(words, w_dim, 0)
            assert data.threads_count, "No canaries found, nothing executed?"
            if flags & (SHADER_BREAKPOINT | TRIGGER_RESUME_SET_BP | SHADER_N_NOOP_BREAKPOINT) \
                    and not flags & DISABLE_DEBUG_MODE:
                aip = words[0]
                assert aip != SHADER_CANARY, "Workload executed but breakpoint not hit!"
                hit = count_canaries_eq(words, w_dim, aip)
                assert hit == data.threads_count, f"AIP {aip:#x} in {hit} of {data.threads_count} threads"
                print(f"Breakpoint hit in {data.threads_count} threads, AIP=0x{aip:08x}")
    finally:
        run.close()
    c.exec_queue_destroy(fd, create)
    c.vm_destroy(fd, vm)
    c.metadata_destroy(fd, mid[0], ELF_BINARY, 16)
    c.metadata_destroy(fd, mid[1], PROGRAM_MODULE, 16)
    c.close_driver(fd)


def memory_region(fd: int, flags: int) -> int:
    """IGT's get_memory_region: system memory for *_IN_SRAM, VRAM for *_IN_VRAM, else VRAM if
    the device has it."""
    if flags & (BB_IN_SRAM | TARGET_IN_SRAM):
        return ic.system_memory(fd)
    if flags & (BB_IN_VRAM | TARGET_IN_VRAM):
        vram = ic.vram_if_possible(fd, 0) & ~ic.system_memory(fd)
        require(vram, "Device does not have VRAM.")
        return vram
    return ic.vram_if_possible(fd, 0)


# ------------------------------------------------------------------------------------------------
# Checks (T:1169-1377)

def attention_bitmask_size(fd: int, gt: int) -> int:
    return Topology.query(fd, gt).attention_bitmask_size


def online_session_check(s: Session, flags: int) -> None:
    assert s.client is not None and s.debugger is not None
    data: OnlineData = s.client.data
    expect_exception = not flags & DISABLE_DEBUG_MODE
    s.check(True, VM_BIND_FILTER)
    size = attention_bitmask_size(s.debugger.master_fd, data.hwe[2])
    total = pagefault_threads = 0
    for e in s.debugger.log:
        if e.type == EventType.EU_ATTENTION:
            assert e.flags == EventFlags.STATE_CHANGE, f"attention flags {e.flags}"
            assert e.bitmask_size == size, f"attention bitmask_size {e.bitmask_size}, expected {size}"
            total += count_set_bits(e.bitmask[:size])
            assert exec_queue_of_attention(s.debugger.log, e) is not None, f"no exec queue for {e}"
        elif e.type == EventType.PAGEFAULT:
            assert e.bitmask_size == 3 * size, f"pagefault bitmask_size {e.bitmask_size}, expected {3 * size}"
            pagefault_threads += xor_count(e.bitmask[size:2 * size], e.bitmask[2 * size:3 * size])
    if flags in (SHADER_BREAKPOINT, TRIGGER_UFENCE_SET_BREAKPOINT):
        assert total == data.threads_count, f"{total} attention bits, {data.threads_count} threads"
    if expect_exception:
        assert total > 0, "no attention"
    else:
        assert total == 0, f"{total} attention bits without debug mode"
    if flags & SHADER_PAGEFAULT:
        assert pagefault_threads > 0, "no thread faulted according to the PAGEFAULT events"


# ------------------------------------------------------------------------------------------------
# Engines and sessions

def pick_compute(fd: int, gt: int) -> Any | None:
    """A random RENDER or COMPUTE engine of ``gt`` (IGT's pick_compute), None when it has none."""
    engines = [e for e in eudebug_engines(fd) if e.gt_id == gt]
    return random.choice(engines) if engines else None


def for_each_gt(fd: int, body: Callable[[Any], None]) -> None:
    """IGT's test_gt_render_or_compute: ``body(hwe)`` for one compute engine of every GT."""
    gt, ran = 0, False
    while (hwe := pick_compute(fd, gt)) is not None:
        kind = "RENDER" if hwe.engine_class == uapi.DRM_XE_ENGINE_CLASS_RENDER else "COMPUTE"
        print(f"Starting dynamic subtest: DRM_XE_ENGINE_CLASS_{kind}{hwe.engine_instance}")
        body(hwe)
        ran, gt = True, gt + 1
    require(ran, "no RENDER or COMPUTE engine")


def require_faultable_vm_support(fd: int, flags: int) -> None:
    """IGT's ``igt_require(!(flags & FAULTABLE_VM) || !xe_supports_faults(fd))``: IGT's helper
    returns the VM_CREATE ioctl's result (0 when a fault-mode VM can be created), so the
    ``-faultable`` variants need fault-mode VMs."""
    require(not flags & FAULTABLE_VM or ic.supports_faults(fd), "fault-mode VMs are not supported")


def _session(fd: int, flags: int, data: OnlineData, client_thread: bool) -> Session:
    return Session(run_online_client, flags, device=fd, data=data, client_thread=client_thread)


def _add(d: Debugger, *triggers: tuple[int, Callable[[Debugger, Event], None]]) -> None:
    for etype, fn in triggers:
        d.add_trigger(etype, fn)


def _wait_workload_started(data: OnlineData) -> int:
    """Poll the target's first dword through the VM fd for up to STARTUP_TIMEOUT_S (IGT's
    startup loop): 0 until the VM and the target are known and the workload wrote it."""
    val = 0
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        raw = b""
        with data.mutex:
            if data.vm_fd is not None and data.target_size:
                try:
                    raw = data.vm_fd.pread(4, data.target_offset)
                except OSError:   # IGT: pread() != 4 (the target is not bound yet): try again
                    raw = b""
        if len(raw) == 4:
            val = struct.unpack("<I", raw)[0]
            if val:
                break
        time.sleep(0.001)
    return val


TRIGGERS_BASE = ((EventType.OPEN, open_trigger), (EventType.EXEC_QUEUE, exec_queue_trigger))
TRIGGERS_VM = ((EventType.VM, vm_open_trigger), (EventType.METADATA, create_metadata_trigger))


# ------------------------------------------------------------------------------------------------
# Subtests (T:1468-2325)

def _run_session(fd: int, hwe: Any, flags: int, client_thread: bool,
                 triggers: tuple[tuple[int, Callable[[Debugger, Event], None]], ...], check: bool = True) -> None:
    """IGT's xe_eudebug_session_run with ``triggers``, then (``check``) online_session_check."""
    data = OnlineData(hwe)
    with _session(fd, flags, data, client_thread) as s:
        assert s.debugger is not None
        _add(s.debugger, *triggers)
        s.run()
        if check:
            online_session_check(s, s.flags)
    data.close()


def test_basic_online(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    _run_session(fd, hwe, flags, client_thread, (
        (EventType.EU_ATTENTION, eu_attention_debug_trigger), (EventType.EU_ATTENTION, eu_attention_resume_trigger),
        (EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger)))


def test_preemption(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    """preempt-breakpoint (O:1687): a workload stopped on a breakpoint, resumed only after 11 s,
    while a second client (no debugger) runs a shader without breakpoints on the same engine;
    the stopped workload must have been resumed by the debugger."""
    data = OnlineData(hwe)
    with _session(fd, flags, data, client_thread) as s, \
            Client(fd, run_online_client, SHADER_NOP, data, thread=client_thread) as other:
        c, d = s.client, s.debugger
        assert c is not None and d is not None
        _add(d, (EventType.EU_ATTENTION, eu_attention_debug_trigger),
             (EventType.EU_ATTENTION, eu_attention_resume_trigger),
             (EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger))
        assert d.try_attach(c) == 0
        d.start_worker()
        c.start()
        time.sleep(1)     # the debugged client starts first
        other.start()
        c.wait_done()
        other.wait_done()
        d.stop_worker(1.0)
    data.close()
    assert data.last_eu_control_seqno != 0, "Workload with breakpoint has ended without resume!"


def test_set_breakpoint_online(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    require_faultable_vm_support(fd, flags)
    _run_session(fd, hwe, flags, client_thread, (
        *TRIGGERS_BASE, *TRIGGERS_VM, (EventType.VM_BIND_UFENCE, ufence_ack_set_bp_trigger),
        (EventType.EU_ATTENTION, eu_attention_resume_trigger)))


def test_set_breakpoint_online_sigint_debugger(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    start = time.monotonic()
    for _ in range(10):
        test_set_breakpoint_online(fd, hwe, SHADER_NOP | TRIGGER_UFENCE_SET_BREAKPOINT, client_thread)
    set_breakpoint_us = int((time.monotonic() - start) * 1e6 / 10)
    print(f"Average set-breakpoint execution time: {set_breakpoint_us} us")
    max_sleep_us = max(1, set_breakpoint_us * 11 // 10)
    print(f"Maximum sleep_time: {max_sleep_us} us")
    loop_start = time.monotonic()
    loops = sigints = events_max = 0
    while time.monotonic() - loop_start < SIGINT_LOOP_S:
        sleep_us = random.randrange(max_sleep_us)
        data = OnlineData(hwe)
        with _session(fd, flags, data, client_thread) as s:
            c, d = s.client, s.debugger
            assert c is not None and d is not None
            c.allow_dead_client = True
            _add(d, *TRIGGERS_BASE, *TRIGGERS_VM, (EventType.VM_BIND_UFENCE, ufence_ack_set_bp_trigger),
                 (EventType.EU_ATTENTION, eu_attention_resume_trigger))
            assert d.try_attach(c) == 0
            d.start_worker()
            assert d.event_count == 0
            c.start()
            if not loops:
                c.wait_done()
            else:
                time.sleep(sleep_us / 1e6)
            loops += 1
            count = d.event_count
            if count > events_max:
                events_max = count
            elif 0 < count < events_max:
                sigints += 1
            for _ in range(SIGTERM_COUNT):
                d.kill(signal.SIGTERM)
                time.sleep(random.randrange(1000) / 1e6)
            d.kill(signal.SIGINT)
            while not d.handled_sigint:
                time.sleep(0.001)
            d.detach()
            assert d.worker_state == d.worker_state.ACTIVE
            d.worker_state = d.worker_state.INACTIVE
            c.wait_done()
            d.log.print(debug=True)
            c.log.print(debug=True)
        data.close()
    print(f"{sigints} correctly timed SIGINTs in {loops} loops")
    assert sigints > 0, "no SIGINT came while events were still arriving"


def _run_interrupting(fd: int, hwe: Any, flags: int, client_thread: bool,
                      attention_trigger: Callable[[Debugger, Event], None],
                      interrupt: Callable[[Debugger, OnlineData], None],
                      check: Callable[[Session], None]) -> None:
    """The shape of interrupt-all, tdctl-parameters and interrupt-reconnect (O:1785-1843,
    1964-2064, 2118-2180): attach, start the client, wait until its workload writes the
    target, ``interrupt`` under the data's lock, wait for the client, ``check``."""
    data = OnlineData(hwe)
    with _session(fd, flags, data, client_thread) as s:
        c, d = s.client, s.debugger
        assert c is not None and d is not None
        _add(d, *TRIGGERS_BASE, (EventType.EU_ATTENTION, eu_attention_debug_trigger),
             (EventType.EU_ATTENTION, attention_trigger), *TRIGGERS_VM,
             (EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger))
        assert d.try_attach(c) == 0
        d.start_worker()
        c.start()
        _wait_workload_started(data)
        with data.mutex:
            assert data.client_handle != -1 and data.exec_queue_handle != -1
            interrupt(d, data)
        c.wait_done()
        d.stop_worker(1.0)
        d.log.print(debug=True)
        c.log.print(debug=True)
        check(s)
    data.close()


def pagefault_trigger(d: Debugger, e: Event) -> None:
    """The three bitmaps of a PAGEFAULT (before, after, resolved): after XOR resolved are the
    threads that faulted; the address is the page of BAD_OFFSET."""
    size = e.bitmask_size // 3
    maps = [e.bitmask[i * size:(i + 1) * size] for i in range(3)]
    faulted = xor_count(maps[1], maps[2])
    print(f"EVENT[{e.seqno}] pagefault; threads[before={count_set_bits(maps[0])}, "
          f"after={count_set_bits(maps[1])}, resolved={count_set_bits(maps[2])}, pagefault={faulted}] "
          f"client[{e.client_handle}], exec_queue[{e.exec_queue_handle}], lrc[{e.lrc_handle}], "
          f"bitmask_size[{e.bitmask_size}], pagefault_address[0x{e.pagefault_address:x}]")
    assert faulted > 0, "PAGEFAULT with no faulted thread"
    assert e.pagefault_address == BAD_OFFSET, f"pagefault_address {e.pagefault_address:#x}"


def test_pagefault_online(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    """pagefault-read / -write (T:1648): the shader reads or writes an unbound address of a
    fault-mode VM; the debugger gets PAGEFAULT with the faulted threads, then their attention."""
    _run_session(fd, hwe, flags, client_thread, (
        *TRIGGERS_BASE, (EventType.EU_ATTENTION, eu_attention_debug_trigger),
        (EventType.EU_ATTENTION, eu_attention_resume_trigger), *TRIGGERS_VM,
        (EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger), (EventType.PAGEFAULT, pagefault_trigger)))


def _interrupt_all(d: Debugger, data: OnlineData) -> None:
    d.interrupt_all(data.client_handle, data.exec_queue_handle, data.lrc_handle)


def test_interrupt_all(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    require_faultable_vm_support(fd, flags)
    _run_interrupting(fd, hwe, flags, client_thread, eu_attention_resume_trigger, _interrupt_all,
                      lambda s: online_session_check(s, s.flags))


def _tdctl_parameter_checks(bitmask_size: int) -> Callable[[Debugger, OnlineData], None]:
    attention_bitmask = bytes(bitmask_size)

    def checks(d: Debugger, data: OnlineData) -> None:
        ch, qh, lh = data.client_handle, data.exec_queue_handle, data.lrc_handle
        assert lh != -1
        einval = -errno.EINVAL
        for args, what in (((ch, qh, lh + 1), "lrc_handle"), ((ch, qh + 1, lh), "exec_queue_handle"),
                           ((ch + 1, qh, lh), "client_handle")):
            r = d.try_eu_control(*args, INTERRUPT_ALL, attention_bitmask, bitmask_size)
            assert r.ret == einval, f"INTERRUPT_ALL with a wrong {what}: {r.ret}, -EINVAL expected"
        # the bitmask size must be a multiple of 4 for every command
        r = d.try_eu_control(ch, qh, lh, STOPPED, attention_bitmask, 3)
        assert r.ret == einval, f"STOPPED with bitmask_size 3: {r.ret}, -EINVAL expected"
        command = random.getrandbits(31) | (RESUME + 1)
        r = d.try_eu_control(ch, qh, lh, command, attention_bitmask, 0)
        assert r.ret == einval, f"command {command:#x}: {r.ret}, -EINVAL expected"
        _interrupt_all(d, data)

    return checks


def test_tdctl_parameters(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    checks = _tdctl_parameter_checks(attention_bitmask_size(fd, int(hwe.gt_id)))
    _run_interrupting(fd, hwe, flags, client_thread, eu_attention_resume_trigger, checks,
                      lambda s: online_session_check(s, s.flags))


def _no_attention_after_reconnect(s: Session) -> None:
    assert s.debugger is not None
    s.check(True, VM_BIND_FILTER)
    for e in s.debugger.log:
        assert e.type != EventType.EU_ATTENTION, f"attention after the reconnect: {e}"


def test_interrupt_reconnect(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    _run_interrupting(fd, hwe, flags, client_thread, eu_attention_debugger_detach_trigger, _interrupt_all,
                      _no_attention_after_reconnect)


def test_single_step(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    _run_session(fd, hwe, flags, client_thread, (
        (EventType.OPEN, open_trigger), (EventType.EU_ATTENTION, eu_attention_debug_trigger),
        (EventType.EU_ATTENTION, eu_attention_resume_single_step_trigger), *TRIGGERS_VM,
        (EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger)))


def test_debugger_reopen(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    _run_session(fd, hwe, flags, client_thread, (
        (EventType.EU_ATTENTION, eu_attention_debug_trigger), (EventType.EU_ATTENTION, eu_attention_resume_trigger),
        (EventType.EU_ATTENTION, eu_attention_debugger_ndetach_trigger),
        (EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger)), check=False)


def test_caching(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    """writes-caching-* (T:2298): breakpoints set one after the other on the shader's target
    writes, whose immediates the debugger poisons and restores through the VM fd; the poison
    must never reach the target.  BB_IN_* / TARGET_IN_* place the batch and the target."""
    if flags & (SHADER_CACHING_VRAM | BB_IN_VRAM | TARGET_IN_VRAM):
        require(has_vram(fd), "Device does not have VRAM.")
    _run_session(fd, hwe, flags, client_thread, (
        (EventType.OPEN, open_trigger), (EventType.EU_ATTENTION, eu_attention_debug_trigger),
        (EventType.EU_ATTENTION, eu_attention_resume_caching_trigger), *TRIGGERS_VM,
        (EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger)))


def test_reset_with_attention_online(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    """reset-with-attention (T:1733): a session whose debugger resets the GT (debugfs
    force_reset) at the first attention, with the threads stopped on the breakpoint; then a
    second session runs the same workload to the end: the GT is usable after the reset."""
    data = OnlineData(hwe)
    with _session(fd, flags, data, client_thread) as s1:
        assert s1.debugger is not None
        _add(s1.debugger, (EventType.EU_ATTENTION, eu_attention_reset_trigger),
             (EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger))
        s1.run()
    with _session(fd, flags, data, client_thread) as s2:
        assert s2.debugger is not None
        _add(s2.debugger, (EventType.EU_ATTENTION, eu_attention_resume_trigger),
             (EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger))
        s2.run()
        online_session_check(s2, s2.flags)
    data.close()


def test_interrupt_other(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    """interrupt-other(-debuggable) (T:1875): a client loops forever on the GT (its queue
    debuggable or not); the debugger detaches from it and attaches to a second client whose
    debuggable (run-alone) queue cannot start beside the loop: INTERRUPT_ALL on that queue is
    EINVAL.  A GT reset ends both workloads; the second client's events must match."""
    data = OnlineData(hwe)
    debugee_data = OnlineData(hwe)
    with _session(fd, flags, data, client_thread) as s, \
            Client(fd, run_online_client, SHADER_LOOP | DO_NOT_EXPECT_CANARIES, debugee_data,
                   thread=client_thread) as debugee:
        c, d = s.client, s.debugger
        assert c is not None and d is not None
        _add(d, *TRIGGERS_BASE, *TRIGGERS_VM, (EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger))
        assert d.try_attach(c) == 0
        d.start_worker()
        c.start()
        assert _wait_workload_started(data) != 0, "Workload execution is not yet started"
        d.detach()
        reset_debugger_log(d)
        d.data = debugee_data
        assert d.try_attach(debugee) == 0
        debugee.start()
        time.sleep(STARTUP_TIMEOUT_S)    # IGT's loop here waits its whole startup timeout
        with debugee_data.mutex:
            assert debugee_data.client_handle != -1 and debugee_data.exec_queue_handle != -1
            # the other client's queue runs alone: it has not started, nothing to interrupt
            r = d.try_eu_control(debugee_data.client_handle, debugee_data.exec_queue_handle,
                                 debugee_data.lrc_handle, INTERRUPT_ALL, None, 0)
            assert r.ret == -errno.EINVAL, f"INTERRUPT_ALL of the waiting run-alone queue: {r.ret}, -EINVAL expected"
        force_gt_reset(d.master_fd, debugee_data.hwe[2])
        debugee.wait_done()
        d.stop_worker(1.0)
        d.log.print(debug=True)
        debugee.log.print(debug=True)
        s.check(True, VM_BIND_FILTER)
    data.close()
    debugee_data.close()


def test_interrupt_other_preempt_max(fd: int, hwe: Any, flags: int, client_thread: bool = False) -> None:
    """interrupt-other (T:2606): test_interrupt_other with the engine class's preemption
    timeout (GT 0's sysfs, as IGT) at its maximum, restored afterwards; skipped when sysfs
    cannot set it."""
    cls = int(hwe.engine_class)
    try:
        maximum = engine_class_property(fd, 0, cls, "preempt_timeout_max")
        old = set_engine_class_property(fd, 0, cls, "preempt_timeout_us", maximum)
    except OSError as exc:
        skip(f"the preemption timeout cannot be set to its maximum: {exc}")
    try:
        test_interrupt_other(fd, hwe, flags, client_thread)
    finally:
        try:
            set_engine_class_property(fd, 0, cls, "preempt_timeout_us", old)
        except OSError as exc:
            print(f"Cleanup of preempt_timeout failed! {exc}")


def find_suitable_engines(fd: int, many_tiles: bool) -> list[Any]:
    """IGT's find_suitable_engines (T:2341): the RENDER/COMPUTE engines of each tile; with
    ``many_tiles`` the first of every tile (skipped unless there are two tiles), else all of
    the first tile that has more than one."""
    tile_of = {int(g.gt_id): int(g.tile_id) for g in ic.gt_list(fd)}
    per_tile: dict[int, list[Any]] = {}
    for gt in sorted(tile_of):
        per_tile.setdefault(tile_of[gt], []).extend(e for e in eudebug_engines(fd) if e.gt_id == gt)
    hwes: list[Any] = []
    tiles = 0
    for tile in sorted(per_tile):
        engines = per_tile[tile]
        if not engines:
            continue
        if many_tiles:
            hwes.append(engines[0])
            tiles += 1
        elif len(engines) > 1:
            hwes.extend(engines)
            break
    if many_tiles:
        require(tiles > 1, "Mulit-tile scenario requires more tiles")
    return hwes


def test_many_sessions_on_tiles(fd: int, multi_tile: bool) -> None:
    """breakpoint-many-sessions-single-tile / -tiles (T:2414): one session per engine, each a
    workload with a breakpoint; the first attention of each is resumed WORKLOAD_DELAY_S after
    it came.  On one tile the workloads run one after the other (attentions at least that far
    apart); on several tiles at once (closer than that)."""
    flags = SHADER_BREAKPOINT | SHADER_MIN_THREADS
    hwes = find_suitable_engines(fd, multi_tile)
    n = len(hwes)
    require(n > 1, "Test requires at least two parallel compute engines!")
    datas = [OnlineData(hwe) for hwe in hwes]
    with contextlib.ExitStack() as stack:
        # every client forked before any debugger thread runs (IGT creates each session's
        # client, then starts its worker, in one loop)
        sessions = [stack.enter_context(_session(fd, flags, data, False)) for data in datas]
        for s in sessions:
            assert s.debugger is not None and s.client is not None
            _add(s.debugger, (EventType.EU_ATTENTION, eu_attention_debug_trigger),
                 (EventType.EU_ATTENTION, save_first_exception_trigger),
                 (EventType.VM_BIND_UFENCE, ic.ufence_ack_trigger))
            assert s.debugger.try_attach(s.client) == 0
            s.debugger.start_worker()
            s.client.start()
        final_mask, attempt_mask = (1 << n) - 1, 0
        deadline = time.monotonic() + sessions[0].client.timeout   # type: ignore[union-attr]
        while attempt_mask != final_mask and time.monotonic() < deadline:
            for i, (s, data) in enumerate(zip(sessions, datas)):
                if attempt_mask & (1 << i):
                    continue
                with data.mutex:
                    e = data.exception_event
                if e is None:
                    continue
                attempt_mask |= 1 << i
                time.sleep(WORKLOAD_DELAY_S)
                assert s.debugger is not None
                s.debugger.eu_resume(e.client_handle, e.exec_queue_handle, e.lrc_handle, e.bitmask)
                break
            time.sleep(0.001)
        assert attempt_mask == final_mask, f"first attentions of sessions {attempt_mask:#b}, all of {final_mask:#b} expected"
        for i in range(n - 1):
            diff = abs(datas[i].exception_arrived - datas[i + 1].exception_arrived)
            print(f"First attentions of sessions {i} and {i + 1}: {int(diff * 1e6)} us apart")
            if multi_tile:
                assert diff < WORKLOAD_DELAY_S, \
                    f"Expected to execute workloads concurrently. Actual delay: {int(diff * 1e6)} us"
            else:
                assert diff >= WORKLOAD_DELAY_S, \
                    f"Expected a serialization of workloads. Actual delay: {int(diff * 1e6)} us"
        for s in sessions:
            assert s.client is not None and s.debugger is not None
            s.client.wait_done()
            s.debugger.stop_worker(1.0)
            s.debugger.log.print(debug=True)
            online_session_check(s, flags)
    for data in datas:
        data.close()


# ------------------------------------------------------------------------------------------------
# Registration: IGT's names and flags (T:2554-2687)

#: The device shape a subtest needs on the simulator: `xe-eudebug run` options, as in
#: tests/igt/xe_eudebug_online.expected (the runner starts a simulator of that shape)
DISCRETE = ("--discrete",)
TWO_TILES = ("--tiles", "2")

#: name: (test, flags[, device shape])
PORTED: dict[str, tuple[Any, ...]] = {
    "basic-breakpoint": (test_basic_online, SHADER_BREAKPOINT),
    "preempt-breakpoint": (test_preemption, SHADER_BREAKPOINT | TRIGGER_RESUME_DELAYED),
    "set-breakpoint": (test_set_breakpoint_online, SHADER_NOP | TRIGGER_UFENCE_SET_BREAKPOINT),
    "set-breakpoint-faultable": (test_set_breakpoint_online,
                                 SHADER_NOP | TRIGGER_UFENCE_SET_BREAKPOINT | FAULTABLE_VM),
    "set-breakpoint-sigint-debugger": (test_set_breakpoint_online_sigint_debugger,
                                       SHADER_NOP | TRIGGER_UFENCE_SET_BREAKPOINT),
    "breakpoint-not-in-debug-mode": (test_basic_online, SHADER_BREAKPOINT | DISABLE_DEBUG_MODE),
    "stopped-thread": (test_basic_online, SHADER_BREAKPOINT | TRIGGER_RESUME_DELAYED),
    "resume-one": (test_basic_online, SHADER_BREAKPOINT | TRIGGER_RESUME_ONE),
    "resume-dss": (test_basic_online, SHADER_BREAKPOINT | TRIGGER_RESUME_DSS),
    "interrupt-all": (test_interrupt_all, SHADER_LOOP),
    "interrupt-other-debuggable": (test_interrupt_other, SHADER_LOOP),
    "interrupt-other": (test_interrupt_other_preempt_max, SHADER_LOOP | DISABLE_DEBUG_MODE),
    "interrupt-all-set-breakpoint": (test_interrupt_all, SHADER_LOOP | TRIGGER_RESUME_SET_BP),
    "interrupt-all-set-breakpoint-faultable": (test_interrupt_all,
                                               SHADER_LOOP | TRIGGER_RESUME_SET_BP | FAULTABLE_VM),
    "tdctl-parameters": (test_tdctl_parameters, SHADER_LOOP),
    "reset-with-attention": (test_reset_with_attention_online, SHADER_BREAKPOINT),
    "interrupt-reconnect": (test_interrupt_reconnect, SHADER_LOOP | TRIGGER_RECONNECT),
    "single-step": (test_single_step, SHADER_SINGLE_STEP | SIP_SINGLE_STEP | TRIGGER_RESUME_PARALLEL_WALK),
    "single-step-one": (test_single_step, SHADER_SINGLE_STEP | SIP_SINGLE_STEP | TRIGGER_RESUME_SINGLE_WALK),
    "debugger-reopen": (test_debugger_reopen, SHADER_N_NOOP_BREAKPOINT),
    "writes-caching-sram-bb-sram-target-sram": (test_caching, SHADER_CACHING_SRAM | BB_IN_SRAM | TARGET_IN_SRAM),
    **{f"writes-caching-{page}-bb-{bb}-target-{target}": (
        test_caching, (SHADER_CACHING_VRAM if page == "vram" else SHADER_CACHING_SRAM)
        | (BB_IN_VRAM if bb == "vram" else BB_IN_SRAM) | (TARGET_IN_VRAM if target == "vram" else TARGET_IN_SRAM),
        DISCRETE)
       for page in ("sram", "vram") for bb in ("sram", "vram") for target in ("sram", "vram")
       if "vram" in (page, bb, target)},
    "pagefault-read": (test_pagefault_online, SHADER_PAGEFAULT_READ),
    "pagefault-write": (test_pagefault_online, SHADER_PAGEFAULT_WRITE),
}


#: How long a thread-client variant may run in its helper process.
THREAD_VARIANT_TIMEOUT_S = 600.0


def _in_thread_client_process(body: Callable[[int], None]) -> None:
    """Run ``body(device fd)`` in a forked helper with a device fd its own process did not open:
    a thread client's debugger targets its own process, where every DRM file this process
    opened (the runner's) would be one more client in the debugger's log."""

    def child() -> None:
        dev = open_device_elsewhere()
        try:
            body(dev)
        finally:
            os.close(dev)

    ic.run_forked(child, THREAD_VARIANT_TIMEOUT_S).join()


def _register(name: str, test: Callable[..., None], flags: int, shape: tuple[str, ...] = ()) -> None:
    def run(fd: int, client_thread: bool = False) -> None:
        """``client_thread``: the client runs in a thread of the debugger's process instead of
        IGT's forked process."""
        if client_thread:
            _in_thread_client_process(lambda dev: for_each_gt(dev, lambda hwe: test(dev, hwe, flags, True)))
        else:
            for_each_gt(fd, lambda hwe: test(fd, hwe, flags, False))

    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    subtest(name, binary=BINARY, device_shape=shape, client_thread=False)(run)


for _name, _entry in PORTED.items():
    _register(_name, *_entry)

subtest("breakpoint-many-sessions-single-tile", binary=BINARY, multi_tile=False)(test_many_sessions_on_tiles)
subtest("breakpoint-many-sessions-tiles", binary=BINARY, device_shape=TWO_TILES,
        multi_tile=True)(test_many_sessions_on_tiles)
