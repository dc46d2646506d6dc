"""IGT's ``tests/intel/xe_exec_sip_eudebug.c`` subtests, ported (binary ``xe_exec_sip_eudebug``).

No debugger attaches here.  A 512-thread shader writes a canary and then waits (``sync.host``) or
hits a breakpoint; its system routine (SIP) writes a second canary lower in the same surface and
ends, or waits for a host that never comes (the "heavy" SIP first loops over 90 writes and 10
reads).  With eudebug disabled TD_CTL is clear: no thread enters the SIP, and a thread waiting
in ``sync.host`` holds its job until the engine's job timeout resets it.  With eudebug enabled
(an LR VM and a queue with the EUDEBUG property) every thread that hits the breakpoint enters
the SIP; a SIP that waits raises attention with no debugger to take it, and the kernel resets
the GT.  Either way the job must end within the engine's ``job_timeout_ms`` + 8 s (ten times
that with IGT's ``INTEL_SIMULATION=1``, as IGT allows a simulated device).

Names (S:line) follow IGT's source; every subtest runs once per RENDER and COMPUTE engine, as
IGT's dynamic subtests do.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

from xe_eudebug import uapi
from xe_eudebug.client import eudebug_engines, exec_queue_args, retry_ioctl
from xe_eudebug.device import enable_eudebug, engine_job_timeout_ms, eudebug_enabled
from xe_eudebug.gpgpu import Target
from xe_eudebug.gpgpu_exec import GpgpuExec, bb_size_for
from xe_eudebug.isa.gpgpu import GpgpuShader

from . import clients as ic
from .registry import require, subtest

BINARY = "xe_exec_sip_eudebug"

WIDTH, HEIGHT = 64, 64                  # S:26-27 (bytes per row, minimum rows)
COLOR_C4 = 0xC4
SHADER_CANARY = 0x01010101
SIP_CANARY = 0x02020202
THREADS = 512
TARGET_OFFSET = 0x1A000000
BB_OFFSET = 0x1B000000
#: IGT's allowance for devcoredump processing after a reset, on top of the job timeout (S:279)
DEVCOREDUMP_S = 8.0

SHADER_BREAKPOINT, SHADER_WAIT, SHADER_WRITE = "breakpoint", "wait", "write"
SIP_HEAVY, SIP_NULL, SIP_WAIT, SIP_WRITE = "heavy", "null", "wait", "write"
F_SUBMIT_TWICE = 1 << 0


def get_shader(shader_type: str) -> GpgpuShader:
    """S:66: the canary in row 0 of the thread's column, then a wait or a breakpoint, EOT."""
    s = GpgpuShader()
    s.write_dword(SHADER_CANARY, 0)
    if shader_type == SHADER_WAIT:
        s.wait()
    elif shader_type == SHADER_BREAKPOINT:
        s.nop()
        s.breakpoint()
    s.eot()
    return s


def get_sip(sip_type: str, shader_type: str, y_offset: int) -> GpgpuShader | None:
    """S:89: the SIP canary `y_offset` rows down; the heavy SIP is at least twice the work of a
    production SIP (45 x 2 data port writes, 10 reads); breakpoint suppress when the shader
    stopped on a breakpoint."""
    if sip_type == SIP_NULL:
        return None
    sip = GpgpuShader()
    sip.write_dword(SIP_CANARY, y_offset)
    if sip_type == SIP_WAIT:
        sip.wait()
    elif sip_type == SIP_HEAVY:
        sip.loop_begin(0)
        sip.write_dword(0xDEADBEEF, y_offset)
        sip.write_dword(SIP_CANARY, y_offset)
        sip.loop_end(0, 45)
        sip.loop_begin(1)
        sip.jump_neq(1, y_offset, SIP_CANARY)
        sip.loop_end(1, 10)
        sip.wait()
    sip.end_system_routine(shader_type == SHADER_BREAKPOINT)
    return sip


def check_buf(data: bytes, width: int, height: int, sip_type: str, debugger_enabled: bool,
              poison: int) -> tuple[int, int]:
    """S:150: rows with a canary in their first dword count a thread (top half) or a SIP
    (bottom half); every other byte keeps the fill colour.  Returns (threads, SIPs)."""
    def count(rows: range, canary: int) -> int:
        n = 0
        for j in rows:
            row = data[j * width:(j + 1) * width]
            start = 0
            if struct.unpack_from("<I", row, 0)[0] == canary:
                n += 1
                start = 4
            for i in range(start, width):
                assert row[i] == poison, \
                    f"Expected 0x{poison:02x}, found 0x{row[i]:02x} at ({i},{j})"
        return n

    threads = count(range(height // 2), SHADER_CANARY)
    sips = count(range(height // 2, height), SIP_CANARY)
    assert threads, "no thread wrote its canary"
    if sip_type != SIP_NULL and debugger_enabled:
        assert threads == sips, f"Thread and SIP count mismatch, {threads} != {sips}"
    else:
        assert sips == 0, f"{sips} SIP canaries with the SIP not expected to run"
    return threads, sips


def _timeout_s(fd: int, hwe: Any) -> float:
    """S:276: the engine's job timeout + 8 s, ten times that with INTEL_SIMULATION=1."""
    t = engine_job_timeout_ms(fd, hwe.gt_id, hwe.engine_class) / 1000 + DEVCOREDUMP_S
    simulation = os.environ.get("INTEL_SIMULATION", "").strip().lower() in ("1", "y", "yes", "true", "on")
    return t * (10 if simulation else 1)


def test_sip(fd: int, hwe: Any, shader_type: str, sip_type: str, flags: int = 0) -> None:
    """S:252: one run (two with F_SUBMIT_TWICE) of the shader and SIP on `hwe`, on a queue of its
    own file; the job must end (complete, or reset) within the allowance and leave the canaries
    check_buf expects."""
    threads = THREADS
    height = max(HEIGHT, threads * 2)
    debugger_enabled = eudebug_enabled(fd)
    vm = ic.vm_create_raw(fd, ic.LR if debugger_enabled else 0)
    create = exec_queue_args(vm, hwe, eudebug=debugger_enabled)
    retry_ioctl(fd, uapi.DRM_IOCTL_XE_EXEC_QUEUE_CREATE, create)
    timeout = _timeout_s(fd, hwe)
    try:
        for _ in range(2 if flags & F_SUBMIT_TWICE else 1):
            shader = get_shader(shader_type)
            sip = get_sip(sip_type, shader_type, height // 2)
            target = Target(TARGET_OFFSET, WIDTH // 4, height)
            run = GpgpuExec(fd, vm, int(create.exec_queue_id), BB_OFFSET, bb_size_for(shader), target)
            try:
                run.write_target(bytes([COLOR_C4]) * run.target_bytes)
                start = time.monotonic()
                run.submit(shader, sip, 1, threads)
                run.wait(timeout)
                elapsed = time.monotonic() - start
                assert elapsed < timeout, f"the job took {elapsed:.1f} s, allowed {timeout:.1f} s"
                check_buf(run.read_target(), WIDTH, height, sip_type, debugger_enabled, COLOR_C4)
            finally:
                run.close()
    finally:
        destroy = uapi.drm_xe_exec_queue_destroy()
        destroy.exec_queue_id = create.exec_queue_id
        retry_ioctl(fd, uapi.DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, destroy)
        ic.vm_destroy_raw(fd, vm)


def _for_each_engine(fd: int, body: Any) -> None:
    """IGT's test_render_and_compute: a dynamic subtest per RENDER and COMPUTE engine."""
    engines = eudebug_engines(fd)
    require(engines, "no RENDER or COMPUTE engine")
    for hwe in engines:
        kind = "RENDER" if hwe.engine_class == uapi.DRM_XE_ENGINE_CLASS_RENDER else "COMPUTE"
        print(f"Starting dynamic subtest: DRM_XE_ENGINE_CLASS_{kind}{hwe.engine_instance}")
        body(hwe)


#: subtest -> (debugging enabled, shader, SIP, flags) (S:337-375)
PORTED = {
    "wait-writesip-nodebug": (False, SHADER_WAIT, SIP_WRITE, 0),
    "breakpoint-writesip-nodebug": (False, SHADER_BREAKPOINT, SIP_WRITE, 0),
    "breakpoint-writesip": (True, SHADER_BREAKPOINT, SIP_WRITE, 0),
    "breakpoint-writesip-twice": (True, SHADER_BREAKPOINT, SIP_WRITE, F_SUBMIT_TWICE),
    "breakpoint-waitsip": (True, SHADER_BREAKPOINT, SIP_WAIT, 0),
    "breakpoint-waitsip-heavy": (True, SHADER_BREAKPOINT, SIP_HEAVY, 0),
}


def _register(name: str, debug: bool, shader_type: str, sip_type: str, flags: int) -> None:
    def run(fd: int) -> None:
        was_enabled = enable_eudebug(fd, debug)
        try:
            if not debug:
                require(not eudebug_enabled(fd), "eudebug stays enabled")
            _for_each_engine(fd, lambda hwe: test_sip(fd, hwe, shader_type, sip_type, flags))
        finally:
            enable_eudebug(fd, was_enabled)

    run.__name__ = name.replace("-", "_")
    run.__doc__ = test_sip.__doc__
    subtest(name, binary=BINARY)(run)


for _name, (_debug, _shader, _sip, _flags) in PORTED.items():
    _register(_name, _debug, _shader, _sip, _flags)
