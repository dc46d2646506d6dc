"""A `gpgpu_shader` builder: the shader templates of IGT's `lib/gpgpu_shader.c`, for Xe2.

Each method appends the instructions of one IGT template (`write_dword`, `nop`, `breakpoint`,
`jump_neq`, `eot`, ...) assembled from the IGA text below.  The text is written the way IGA
emits graphics version 20 code: with the software-scoreboard annotations (`{I@1}`, `{$0}`) and
the `sync.allrd`/`sync.allwr`/`sync.nop` that IGA's automatic dependency resolution inserts, so
that `GpgpuShader(...).code` is bit-identical to what IGT's generated templates give (tests check
every template).  `ARG(n)` places are `{n}` fields; IGT's placeholder values (0xc0ded000 + n)
reproduce the unpatched template.
"""

from __future__ import annotations

import string

from .encoding import INSTRUCTION_BYTES
from .text import assemble_dwords

IGA64_ARG0 = 0xC0DED000

_SYNC_TAIL = """
(W) sync.allrd (1|M0) null
(W) sync.allwr (1|M0) null
(W) sync.nop (1|M0) null {{A@1}}
"""
_SYNC_NOP = "(W) sync.nop (1|M0) null {{A@1}}\n"

# Typed 2D block payload (r30/r4 ...) for the target surface at binding table index 0.
_SHARED_SPACE = """
(W) mov (8|M0) r30.0<1>:ud 0x0:ud{first}
(W) mov (1|M0) r30.5<1>:ud 0x0:ud
(W) mov (1|M0) r30.6<1>:ud {y}:ud
(W) mov (1|M0) r30.7<1>:ud {wm1}:ud
"""
_THREAD_SPACE = """
(W) mov (8|M0) r4.0<1>:ud 0x0:ud{first}
(W) shl (1|M0) r4.5<1>:ud r0.1<0;1,0>:ud 0x2:ud
(W) add (1|M0) r4.5<1>:ud r4.5<0;1,0>:ud {x}:ud {{{{I@1}}}}
(W) add (1|M0) r4.6<1>:ud r0.6<0;1,0>:ud {y}:ud
(W) mov (1|M0) r4.7<1>:ud 0x3:ud
"""
_LOAD_SPACE_DW = "(W) send.tgm (1|M0) r31 r30 null:0 0x0 0x62100003 {{I@1, $0}}\n"
_STORE_THREAD_DW = "({pred}) send.tgm (1|M0) null r4 null:0 0x0 0x64000007 {{{{I@1, $0}}}}\n"
_A64_SURFACE = """
(W) mov (8|M0) r30.0<1>:uq 0x0:uq
(W) mov (1|M0) r30.0<1>:ud {0}:ud
(W) mov (1|M0) r30.1<1>:ud {1}:ud
(W) mov (1|M0) r30.2<1>:ud 0x3f:ud
(W) mov (1|M0) r30.4<1>:ud 0x3f:ud
(W) mov (1|M0) r30.7<1>:ud 0x3:ud
"""

TEMPLATES: dict[str, str] = {
    "read_a64_d32": _A64_SURFACE + """
(W) send.ugm (1|M0) r31 r30 null:0 0x0 0x2128403 {{I@1, $0}}
""" + _SYNC_TAIL,
    "write_a64_d32": _A64_SURFACE + """
(W) mov (8|M0) r31.0<1>:uq 0x0:uq
(W) mov (1|M0) r31.0<1>:ud {2}:ud
(W) send.ugm (1|M0) null r30 r31:1 0x0 0x2020407 {{I@1, $0}}
""" + _SYNC_TAIL,
    "end_system_routine_step_if_eq": """
(W) or (1|M0) cr0.0<1>:ud cr0.0<0;1,0>:ud 0x8000:ud {{A@1}}
(W) and (1|M0) cr0.1<1>:ud cr0.1<0;1,0>:ud {0}:ud {{A@1}}
""" + _SHARED_SPACE.format(first=" {{A@1}}", y="{0}", wm1="0x3") + _LOAD_SPACE_DW + """
(W) mov (1|M0) f0.0<1>:ud 0x0:ud
(W) cmp (1|M0) (ne)f0.0 null<1>:ud r31.0<0;1,0>:ud {2}:ud {{$0.dst}}
(W&f0.0) and (1|M0) cr0.1<1>:ud cr0.1<0;1,0>:ud {3}:ud {{A@1}}
(W) and (1|M0) cr0.0<1>:ud cr0.0<0;1,0>:ud 0x7ffffffd:ud {{A@1}}
""" + _SYNC_NOP,
    "end_system_routine": """
(W) and (1|M0) cr0.1<1>:ud cr0.1<0;1,0>:ud {0}:ud {{A@1}}
(W) and (1|M0) cr0.0<1>:ud cr0.0<0;1,0>:ud 0x7ffffffd:ud {{A@1}}
""" + _SYNC_NOP,
    "breakpoint_suppress": """
(W) or (1|M0) cr0.0<1>:ud cr0.0<0;1,0>:ud 0x8000:ud {{A@1}}
""" + _SYNC_NOP,
    "write_on_exception": """
(W) mov (1|M0) r5.0<1>:ud {2}:ud
""" + _THREAD_SPACE.format(first="", x="{0}", y="{1}") + """
(W) and (1|M0) r3.0<1>:ud cr0.1<0;1,0>:ud {3}:ud {{A@1}}
(W) mov (1|M0) f0.0<1>:ud 0x0:ud {{A@1}}
(W) cmp (1|M0) (eq)f0.0 null<1>:ud r3.0<0;1,0>:ud {4}:ud {{I@2}}
""" + _STORE_THREAD_DW.format(pred="W&f0.0") + _SYNC_TAIL,
    "set_exception": """
(W) or (1|M0) cr0.1<1>:ud cr0.1<0;1,0>:ud {0}:ud {{A@1}}
""" + _SYNC_NOP,
    "clear_exception": """
(W) and (1|M0) cr0.1<1>:ud cr0.1<0;1,0>:ud {0}:ud {{A@1}}
""" + _SYNC_NOP,
    "media_block_write": """
(W) mov (1|M0) r5.0<1>:ud {1}:ud
""" + _THREAD_SPACE.format(first="", x="0x0", y="{0}") + _STORE_THREAD_DW.format(pred="W")
    + _SYNC_TAIL,
    "write_aip": """
(W) add (1|M0) cr0.2<1>:ud cr0.2<0;1,0>:ud {0}:ud {{A@1}}
""" + _SYNC_NOP,
    "media_block_write_aip": """
(W) mov (1|M0) r5.0<1>:ud cr0.2<0;1,0>:ud {{A@1}}
""" + _THREAD_SPACE.format(first=" {{A@1}}", x="0x0", y="{0}")
    + _STORE_THREAD_DW.format(pred="W") + _SYNC_TAIL,
    "common_target_write": """
(W) mov (16|M0) r31.0<1>:ud 0x0:ud
(W) mov (1|M0) r31.0<1>:ud {1}:ud
(W) mov (1|M0) r31.1<1>:ud {2}:ud
(W) mov (1|M0) r31.2<1>:ud {3}:ud
(W) mov (1|M0) r31.3<1>:ud {4}:ud
""" + _SHARED_SPACE.format(first="", y="{0}", wm1="0xf") + """
(W) send.tgm (1|M0) null r30 null:0 0x0 0x64000007 {{I@1, $0}}
""" + _SYNC_TAIL,
    "inc_r40_jump_neq": """
L0:
(W) add (1|M0) r40.0<1>:ud r40.0<0;1,0>:ud 0x1:ud
(W) mov (1|M0) f0.0<1>:ud 0x0:ud
(W) cmp (1|M0) (ne)f0.0 null<1>:ud r40.0<0;1,0>:ud {0}:ud {{I@2}}
(W&f0.0) jmpi (1|M0) L0
""" + _SYNC_NOP,
    "clear_r40": """
(W) mov (1|M0) r40.0<1>:ud 0x0:ud
""" + _SYNC_NOP,
    "jump_dw_neq": "L0:\n" + _SHARED_SPACE.format(first="", y="{0}", wm1="0x3")
    + _LOAD_SPACE_DW + """
(W) mov (1|M0) f0.0<1>:ud 0x0:ud
(W) cmp (1|M0) (ne)f0.0 null<1>:ud r31.0<0;1,0>:ud {1}:ud {{$0.dst}}
(W&f0.0) jmpi (1|M0) L0
""" + _SYNC_NOP,
    "jump": """
L0:
(W) jmpi (1|M0) L0
""" + _SYNC_NOP,
    "eot": """
(W) mov (8|M0) r112.0<1>:ud r0.0<8;8,1>:ud
(W) send.gtwy (8|M0) null r112 null:0 0x0 0x02000000 {{I@1, $0, EOT}}
""",
    "eot_vrt": """
(W) mov (8|M0) r80.0<1>:ud r0.0<8;8,1>:ud
(W) send.gtwy (8|M0) null r80 null:0 0x0 0x02000000 {{I@1, $0, EOT}}
""",
    "nop": "nop\n" + _SYNC_NOP,
    "sync_host": "(W) sync.host (1|M0) null\n" + _SYNC_NOP,
}


def template_dwords(name: str, *args: int) -> list[int]:
    """The Xe2 code of one template with its ARG(n) places set to `args`."""
    text = TEMPLATES[name].format(*(f"{a & 0xFFFFFFFF:#x}" for a in args))
    return assemble_dwords(text)


def template_arg_count(name: str) -> int:
    fields = [f for _, f, _, _ in string.Formatter().parse(TEMPLATES[name]) if f]
    return 1 + max((int(f) for f in fields), default=-1)


def canonical(address: int) -> int:
    """A 48-bit GPU virtual address in canonical form (bit 47 copied to bits 63..48)."""
    address &= (1 << 48) - 1
    return address | (0xFFFF << 48) if address >> 47 else address


BREAKPOINT_BIT = 1 << 30  # dword 0 bit 30: the debug control of an instruction
OPCODE_JMPI = 0x20


class GpgpuShader:
    """A shader built from IGT's templates; `code` is its dwords (4 per instruction)."""

    def __init__(self, illegal_opcode_exception_enable: bool = False):
        self.code: list[int] = []
        self.labels: dict[int, int] = {}
        self.illegal_opcode_exception_enable = illegal_opcode_exception_enable

    # -- plumbing --
    def emit(self, name: str, *args: int) -> int:
        dwords = template_dwords(name, *args)
        self.code.extend(dwords)
        return len(dwords)

    @property
    def instructions(self) -> int:
        return len(self.code) // 4

    def to_bytes(self) -> bytes:
        return b"".join(d.to_bytes(4, "little") for d in self.code)

    def label(self, label_id: int) -> None:
        self.labels[label_id] = len(self.code)

    def _patch_jump(self, label_id: int, size: int) -> None:
        target = self.labels[label_id]
        for at in range(len(self.code) - size, len(self.code), 4):
            if self.code[at] & 0x7F == OPCODE_JMPI:
                self.code[at + 3] = ((target - at) * 4) & 0xFFFFFFFF
                break

    # -- IGT's gpgpu_shader__* --
    def breakpoint_on(self, index: int) -> None:
        if not 0 <= index < self.instructions:
            raise IndexError(f"instruction {index} is outside the shader "
                             f"({self.instructions} instructions)")
        self.code[4 * index] |= BREAKPOINT_BIT

    def breakpoint(self) -> None:
        self.breakpoint_on(self.instructions - 1)

    def wait(self) -> None:
        self.emit("sync_host")

    def nop(self) -> None:
        self.emit("nop")

    def eot(self, vrt: bool = False) -> None:
        self.emit("eot_vrt" if vrt else "eot")

    def jump(self, label_id: int) -> None:
        self._patch_jump(label_id, self.emit("jump"))

    def jump_neq(self, label_id: int, y_offset: int, value: int) -> None:
        self._patch_jump(label_id, self.emit("jump_dw_neq", y_offset, value))

    def loop_begin(self, label_id: int) -> None:
        self.emit("clear_r40")
        self.label(label_id)

    def loop_end(self, label_id: int, iterations: int) -> None:
        self._patch_jump(label_id, self.emit("inc_r40_jump_neq", iterations))

    def common_target_write(self, y_offset: int, value: tuple[int, int, int, int]) -> None:
        self.emit("common_target_write", y_offset, *value)

    def common_target_write_u32(self, y_offset: int, value: int) -> None:
        self.common_target_write(y_offset, (value,) * 4)

    def write_aip(self, y_offset: int) -> None:
        self.emit("media_block_write_aip", y_offset)

    def increase_aip(self, value: int) -> None:
        self.emit("write_aip", value)

    def write_dword(self, value: int, y_offset: int) -> None:
        self.emit("media_block_write", y_offset, value)

    def clear_exception(self, value: int) -> None:
        self.emit("clear_exception", ~value)

    def set_exception(self, value: int) -> None:
        self.emit("set_exception", value)

    def write_on_exception(self, value: int, x_offset: int, y_offset: int, mask: int,
                           expected: int) -> None:
        self.emit("write_on_exception", 4 * x_offset, y_offset, value, mask, expected)

    def end_system_routine(self, breakpoint_suppress: bool) -> None:
        if breakpoint_suppress:
            self.emit("breakpoint_suppress")
        self.emit("end_system_routine", 0x7FFFFF | (1 << 26))

    def end_system_routine_step_if_eq(self, y_offset: int, value: int) -> None:
        # As in IGT, the load row comes from ARG(0) (the cr0.1 mask), not from y_offset: the
        # template text reads SET_SHARED_SPACE_ADDR(r30, ARG(0):ud, 4).  Kept bit-identical.
        self.emit("end_system_routine_step_if_eq", 0x807FFFFF, y_offset, value, 0x7FFFFF)

    def write_a64_d32(self, address: int, value: int) -> None:
        address = canonical(address)
        if address & 3:
            raise ValueError(f"write_a64_d32: address {address:#x} is not dword aligned")
        self.emit("write_a64_d32", address & 0xFFFFFFFF, (address >> 32) & 0xFFFFFFFF, value)

    def read_a64_d32(self, address: int) -> None:
        address = canonical(address)
        if address & 3:
            raise ValueError(f"read_a64_d32: address {address:#x} is not dword aligned")
        self.emit("read_a64_d32", address & 0xFFFFFFFF, (address >> 32) & 0xFFFFFFFF)


__all__ = ["GpgpuShader", "TEMPLATES", "template_dwords", "template_arg_count", "IGA64_ARG0",
           "BREAKPOINT_BIT", "INSTRUCTION_BYTES"]
