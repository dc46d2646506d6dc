"""Batches that run a gpgpu shader, shaped as IGT's `gpgpu_shader_exec` builds them for graphics
version 20 (lib/gpgpu_shader.c with lib/gpu_cmds.c's xehp_* emitters).

`gpgpu_batch` returns the bytes of one batch buffer: the commands at offset 0 (PIPELINE_SELECT
GPGPU, STATE_BASE_ADDRESS, STATE_COMPUTE_MODE, 3DSTATE_BINDING_TABLE_POOL_ALLOC, CFE_STATE,
STATE_SIP when there is a system routine, COMPUTE_WALKER, MI_BATCH_BUFFER_END) and the state
from `STATE_OFFSET` on (a binding table whose entry 0 is the target's RENDER_SURFACE_STATE, the
kernel, the SIP).  The batch's own GPU address is the surface state, dynamic state, instruction
and binding table pool base, so every state pointer is an offset into the batch.  The walker
dispatches `x_dim` x `y_dim` thread groups of one SIMD16 thread each; thread (x, y) finds its
group IDs in r0.1 and r0.6, and the inline data (r1) holds the target's canonical address,
stride and height, as IGT fills it.

This module sits above `xe_eudebug.isa` and below the framework; the simulator never imports
it (tests and the framework do).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .isa.gpgpu import GpgpuShader, canonical

__all__ = ["Target", "gpgpu_batch", "STATE_OFFSET", "SURFACEFORMAT_R8G8B8A8_UNORM",
           "SURFACEFORMAT_R8_UNORM"]

STATE_OFFSET = 2048                   # IGT's BATCH_STATE_SPLIT
SURFACEFORMAT_R8G8B8A8_UNORM = 0x0C7
SURFACEFORMAT_R8_UNORM = 0x140
SURFACE_2D = 1


def _gfx(subtype: int, opcode: int, sub: int, length: int) -> int:
    """A graphics-pipeline command header (command type 3), DWord Length = length - 2."""
    shift = 18 if subtype == 2 else 16
    return 3 << 29 | subtype << 27 | opcode << 24 | sub << shift | (length - 2 if length > 1 else 0)


PIPELINE_SELECT_GPGPU = _gfx(1, 1, 4, 1) | 3 << 8 | 2     # selection mask | GPGPU
STATE_BASE_ADDRESS = _gfx(0, 1, 1, 22)
STATE_SIP = _gfx(0, 1, 2, 3)
STATE_COMPUTE_MODE = _gfx(0, 1, 5, 3)
BINDING_TABLE_POOL_ALLOC = _gfx(3, 1, 0x19, 4)
CFE_STATE = _gfx(2, 2, 0, 6)
COMPUTE_WALKER = _gfx(2, 2, 2, 40)
MI_BATCH_BUFFER_END = 0x0A << 23
MODIFY = 1                            # STATE_BASE_ADDRESS: base address modify enable


@dataclass(frozen=True)
class Target:
    """The 2D surface the shader writes (IGT's intel_buf): width in pixels, bpp 32 or 8."""

    address: int
    width: int
    height: int
    bpp: int = 32
    stride: int = 0                   # bytes per row; 0: width * bpp / 8

    @property
    def pitch(self) -> int:
        return self.stride or self.width * self.bpp // 8


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _code(shader: GpgpuShader | bytes) -> bytes:
    return shader.to_bytes() if isinstance(shader, GpgpuShader) else bytes(shader)


def _surface_state(t: Target) -> list[int]:
    if t.bpp == 32:
        fmt = SURFACEFORMAT_R8G8B8A8_UNORM
    elif t.bpp == 8:
        fmt = SURFACEFORMAT_R8_UNORM
    else:
        raise ValueError(f"target bpp {t.bpp}: surface state for 32 and 8 only")
    ss = [0] * 16
    ss[0] = SURFACE_2D << 29 | fmt << 18 | 1 << 16 | 1 << 14 | 1 << 8   # align 4, RW cache
    ss[2] = (t.height - 1) << 16 | (t.width - 1)
    ss[3] = t.pitch - 1
    ss[7] = 4 << 25 | 5 << 22 | 6 << 19 | 7 << 16                       # channel selects R G B A
    ss[8], ss[9] = t.address & 0xFFFFFFFF, t.address >> 32 & 0xFFFF
    return ss


def gpgpu_batch(batch_address: int, target: Target, x_dim: int, y_dim: int,
                shader: GpgpuShader | bytes, sip: GpgpuShader | bytes | None = None, *,
                illegal_opcode_exception: bool | None = None) -> bytes:
    """The batch IGT's gpgpu_shader_exec runs: `shader` on x_dim * y_dim SIMD16 threads writing
    `target`, with `sip` as the system routine.  Illegal-opcode exceptions follow the shader's
    `illegal_opcode_exception_enable` unless given."""
    if x_dim < 1 or y_dim < 1:
        raise ValueError(f"walker dimensions {x_dim} x {y_dim}")
    if illegal_opcode_exception is None:
        illegal_opcode_exception = bool(getattr(shader, "illegal_opcode_exception_enable", False))
    kernel, sip_code = _code(shader), _code(sip) if sip is not None else b""
    state = bytearray()
    bt_offset = STATE_OFFSET
    ss_offset = bt_offset + 64
    kernel_offset = ss_offset + 64
    sip_offset = _align(kernel_offset + len(kernel), 16) if sip_code else 0
    state += struct.pack("<16I", ss_offset, *([0] * 15))
    state += struct.pack("<16I", *_surface_state(target))
    state += kernel
    if sip_code:
        state += bytes(sip_offset - STATE_OFFSET - len(state)) + sip_code
    size = _align(STATE_OFFSET + len(state), 4096)

    def addr(delta: int = 0, flags: int = 0) -> tuple[int, int]:
        a = batch_address + delta
        return (a & 0xFFFFFFFF) | flags, a >> 32 & 0xFFFF

    cmds: list[int] = [PIPELINE_SELECT_GPGPU]
    cmds += [STATE_BASE_ADDRESS, MODIFY, 0, 0, *addr(flags=MODIFY), *addr(flags=MODIFY), 0, 0,
             *addr(flags=MODIFY), 0xFFFFF000 | 1, size | 1, 0, size | 1, MODIFY, 0, 0xFFFFF000,
             MODIFY, 0, 0]
    cmds += [STATE_COMPUTE_MODE, 0, 0]
    cmds += [BINDING_TABLE_POOL_ALLOC, *addr(), 1 << 12]
    cmds += [CFE_STATE, 0, 0, (64 - 1) << 16, 0, 0]
    if sip_code:
        cmds += [STATE_SIP, sip_offset, 0]
    idd = [kernel_offset, 0, 1 << 18 | int(illegal_opcode_exception) << 13, 0, bt_offset, 1, 0, 0]
    target_va = canonical(target.address)
    inline = [target_va & 0xFFFFFFFF, target_va >> 32, target.pitch, target.height, 0, 0, 0, 0]
    walker = [COMPUTE_WALKER, 0, 0, 0, 1 << 30 | 1 << 25 | 1 << 17, 0xFFFF,
              (x_dim << 20) | (y_dim << 10) | 1, x_dim, y_dim, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
              *idd, 0, 0, 0, 0, 0, *inline]
    assert len(walker) == 40
    cmds += walker
    cmds.append(MI_BATCH_BUFFER_END)
    commands = struct.pack(f"<{len(cmds)}I", *cmds)
    if len(commands) > STATE_OFFSET:
        raise ValueError(f"commands ({len(commands)} bytes) run into the state at {STATE_OFFSET}")
    return commands.ljust(STATE_OFFSET, b"\0") + bytes(state)
