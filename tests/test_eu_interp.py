"""The Xe2 EU interpreter running IGT's shader templates on a flat fake memory."""

from __future__ import annotations

import ast
import os
import struct

from xe_eudebug.isa.gpgpu import GpgpuShader
from xe_eudebug.sim.gpu.eu import (CR0_EXC_BREAKPOINT, CR0_EXC_ILLEGAL, CR0_ILLEGAL_ENABLE,
                                   EuThread, FlatMemory, Stop, Surface)

IBASE = 0x10000000
SURFACE = 0x20000000
ROW = 64  # surface pitch and width in bytes
ROWS = 16
SIP_OFFSET = 0x8000


def _setup(shader: GpgpuShader, sip: GpgpuShader | None = None, tg=(2, 3), **kw):
    mem = FlatMemory()
    isa = mem.bind(IBASE, 0x10000)
    isa[:len(shader.to_bytes())] = shader.to_bytes()
    if sip is not None:
        isa[SIP_OFFSET:SIP_OFFSET + len(sip.to_bytes())] = sip.to_bytes()
    target = mem.bind(SURFACE, ROW * ROWS)
    mem.surfaces[0] = Surface(SURFACE, ROW, ROWS, ROW)
    t = EuThread(mem, IBASE, 0, SIP_OFFSET if sip is not None else None, **kw)
    r0 = [0] * 16
    r0[1], r0[6] = tg
    t.write_grf(0, struct.pack("<16I", *r0))
    return t, mem, isa, target


def _dword(target, x, y):
    return struct.unpack_from("<I", target, y * ROW + 4 * x)[0]


def test_write_dword_writes_its_cell_and_nothing_else():
    s = GpgpuShader()
    s.write_dword(0xC0FFEE01, 1)
    s.eot()
    t, mem, _, target = _setup(s)
    assert t.run(1000) is Stop.EOT
    assert _dword(target, 2, 3 + 1) == 0xC0FFEE01
    assert sum(1 for b in target if b) == 4
    assert t.executed == s.instructions  # every instruction ran once, the EOT last


def test_common_target_write_and_counting_loop():
    s = GpgpuShader()
    s.loop_begin(0)
    s.common_target_write_u32(5, 0xA5A5A5A5)
    s.loop_end(0, 3)
    s.eot()
    t, _, _, target = _setup(s)
    assert t.run(10000) is Stop.EOT
    assert target[5 * ROW:5 * ROW + 16] == b"\xa5" * 16 and not any(target[5 * ROW + 16:])
    assert t.grf_dwords(40, 1) == (3,)


def test_jump_neq_spins_until_memory_holds_the_value():
    s = GpgpuShader()
    s.label(0)
    s.nop()
    s.jump_neq(0, 7, 0x5EED)
    s.write_dword(1, 0)
    s.eot()
    t, _, _, target = _setup(s)
    assert t.run(500) is Stop.BUDGET
    assert not any(target)
    struct.pack_into("<I", target, 7 * ROW, 0x5EED)
    assert t.run(500) is Stop.EOT
    assert _dword(target, 2, 3) == 1


def _sip(aip_row: int, suppress: bool) -> GpgpuShader:
    """xe_eudebug_online's SIP: report the AIP, wait for the host, return."""
    sip = GpgpuShader()
    sip.write_aip(aip_row)
    sip.wait()
    sip.end_system_routine(suppress)
    return sip


def _endless_loop() -> GpgpuShader:
    s = GpgpuShader()
    s.label(0)
    s.nop()
    s.jump(0)
    return s


def _breakpoint_shader():
    s = GpgpuShader()
    s.write_dword(0x01010101, 0)
    s.nop()
    s.breakpoint()
    bp = s.instructions - 1
    s.write_dword(0x02020202, 1)
    s.eot()
    return s, _sip(2, True), bp


def test_breakpoint_enters_sip_which_reports_aip_and_returns():
    s, sip, bp = _breakpoint_shader()
    t, _, _, target = _setup(s, sip, breakpoints_enabled=True)
    assert t.run(1000) is Stop.HOST_WAIT
    assert t.in_sip and t.cr0(1) & CR0_EXC_BREAKPOINT
    assert _dword(target, 2, 3 + 2) == 16 * bp == t.cr0(2)
    assert _dword(target, 2, 4) == 0  # the rest of the shader has not run
    t.resume()
    assert t.run(1000) is Stop.EOT
    assert not t.in_sip and not t.cr0(1) & CR0_EXC_BREAKPOINT
    assert _dword(target, 2, 4) == 0x02020202


def test_breakpoint_ignored_without_debug_mode():
    s, sip, _ = _breakpoint_shader()
    t, _, _, target = _setup(s, sip, breakpoints_enabled=False)
    assert t.run(1000) is Stop.EOT
    assert _dword(target, 2, 5) == 0 and _dword(target, 2, 4) == 0x02020202


def test_single_step_enters_sip_after_each_instruction():
    s, _, bp = _breakpoint_shader()
    sip = GpgpuShader()
    sip.write_aip(2)
    sip.wait()
    sip.end_system_routine_step_if_eq(0, 0)
    t, _, _, target = _setup(s, sip, breakpoints_enabled=True)
    aips = []
    for _ in range(4):
        assert t.run(1000) is Stop.HOST_WAIT
        aips.append(_dword(target, 2, 5))
        t.resume()
    assert aips == [16 * bp + 16 * i for i in range(4)]


def test_illegal_opcode_stops_or_takes_the_exception():
    s = GpgpuShader()
    s.nop()
    s.code[4:8] = [0x7F, 0, 0, 0]
    s.write_dword(0x03030303, 0)
    s.eot()
    t, _, _, target = _setup(s)
    assert t.run(1000) is Stop.ILLEGAL
    assert "illegal opcode 0x7f" in t.error and "ip 0x10" in t.error
    sip = GpgpuShader()
    sip.write_on_exception(0x04040404, 0, 1, CR0_EXC_ILLEGAL, CR0_EXC_ILLEGAL)
    sip.increase_aip(16)
    sip.end_system_routine(False)
    t, _, _, target = _setup(s, sip, illegal_opcode_exception=True)
    assert t.cr0(1) & CR0_ILLEGAL_ENABLE
    assert t.run(1000) is Stop.EOT
    assert _dword(target, 2, 4) == 0x04040404  # the SIP saw the status bit
    assert _dword(target, 2, 3) == 0x03030303  # and the shader went on after the bad word
    assert not t.cr0(1) & CR0_EXC_ILLEGAL


def test_a64_store_load_and_page_fault():
    s = GpgpuShader()
    s.write_a64_d32(SURFACE + 0x100, 0x600DF00D)
    s.read_a64_d32(SURFACE + 0x100)
    s.eot()
    t, _, _, target = _setup(s)
    assert t.run(1000) is Stop.EOT
    assert struct.unpack_from("<I", target, 0x100)[0] == 0x600DF00D
    assert t.grf_dwords(31, 2) == (0x600DF00D, 0)
    bad = GpgpuShader()
    bad.write_a64_d32(0x7000_0000, 1)
    bad.eot()
    t, _, _, _ = _setup(bad)
    assert t.run(1000) is Stop.FAULT
    assert t.fault.address == 0x7000_0000 and t.fault.write


def test_interrupt_enters_sip_from_an_endless_loop():
    t, _, _, target = _setup(_endless_loop(), _sip(0, False))
    assert t.run(200) is Stop.BUDGET and not t.in_sip
    t.interrupt()
    assert t.run(200) is Stop.HOST_WAIT and t.in_sip
    assert _dword(target, 2, 3) in (0, 16, 32)
    t.resume()
    assert t.run(200) is Stop.BUDGET and not t.in_sip


def test_exception_bits_set_and_clear():
    s = GpgpuShader()
    s.set_exception(1 << 12 | 1 << 3)
    s.clear_exception(1 << 3)
    s.eot()
    t, _, _, _ = _setup(s)
    assert t.run(100) is Stop.EOT
    assert t.cr0(1) == 1 << 12


def test_isa_and_eu_layers_import_nothing_above_them():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    allowed = {"isa": ("xe_eudebug.isa",), "sim/gpu/eu": ("xe_eudebug.isa",
                                                          "xe_eudebug.sim.gpu.eu")}
    for sub, ok in allowed.items():
        folder = os.path.join(root, "xe_eudebug", sub)
        for name in os.listdir(folder):
            if not name.endswith(".py"):
                continue
            tree = ast.parse(open(os.path.join(folder, name)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mod = node.module
                elif isinstance(node, ast.Import):
                    mod = node.names[0].name
                else:
                    continue
                if mod.startswith("xe_eudebug"):
                    assert mod.startswith(ok), f"{sub}/{name} imports {mod}"


def test_breakpoint_suppress_lets_one_pass_then_traps_again():
    s = GpgpuShader()
    s.loop_begin(0)
    s.nop()
    s.breakpoint()
    s.loop_end(0, 2)
    s.eot()
    _, sip, _ = _breakpoint_shader()
    t, _, _, _ = _setup(s, sip, breakpoints_enabled=True)
    stops = []
    while (stop := t.run(1000)) is Stop.HOST_WAIT:
        stops.append(t.cr0(2))
        t.resume()
    assert stop is Stop.EOT
    assert len(stops) == 2 and stops[0] == stops[1]  # once per iteration, same instruction


def test_instruction_fetch_sees_writes_to_the_isa():
    t, _, isa, target = _setup(_endless_loop(), _sip(0, True), breakpoints_enabled=True)
    assert t.run(100) is Stop.BUDGET
    struct.pack_into("<I", isa, 16, struct.unpack_from("<I", isa, 16)[0] | 1 << 30)
    assert t.run(100) is Stop.HOST_WAIT  # the debugger's breakpoint, set while running
    assert t.cr0(2) == 16 and _dword(target, 2, 3) == 16


def test_running_off_the_bound_isa_is_a_fetch_fault():
    s = GpgpuShader()
    s.nop()
    t, _, isa, _ = _setup(s)
    isa[0x10000 - 16:] = isa[:16]  # a nop in the last slot of the bound ISA range
    t.ip = 0x10000 - 16
    assert t.run(10) is Stop.FAULT
    assert t.fault.address == IBASE + 0x10000 and not t.fault.write


def _run_text(text: str, **kw) -> EuThread:
    from xe_eudebug.isa.text import assemble_dwords

    code = assemble_dwords(text + "\n(W) send.gtwy (8|M0) null r112 null:0 0x0 0x2000000 {EOT}")
    mem = FlatMemory()
    mem.bind(IBASE, struct.pack(f"<{len(code)}I", *code))
    t = EuThread(mem, IBASE, 0, **kw)
    assert t.run(1000) is Stop.EOT, t.error
    return t


def test_integer_alu_regions_flags_and_predication():
    t = _run_text("""
    (W) mov (16|M0) r10.0<1>:ud 0x0:ud
    (W) mov (1|M0) r10.0<1>:d -8:d
    (W) asr (1|M0) r10.1<1>:d r10.0<0;1,0>:d 0x1:ud
    (W) shr (1|M0) r10.2<1>:ud r10.0<0;1,0>:ud 0x1c:ud
    (W) mul (1|M0) r10.3<1>:d r10.0<0;1,0>:d -3:d
    (W) cmp (1|M0) (lt)f0.0 null<1>:d r10.0<0;1,0>:d 0x0:d
    (W) cmp (1|M0) (lt)f0.1 null<1>:ud r10.0<0;1,0>:ud 0x0:ud
    (W) mov (8|M0) r11.0<1>:ud r10.0<8;8,1>:ud
    (W) mov (8|M0) r12.0<1>:ud 0x0:ud
    (W) mov (1|M0) f1.0<1>:uw 0xa5:uw
    (f1.0) mov (8|M0) r12.0<1>:ud 0x7:ud
    (W&~f0.0) sel (1|M0) r10.4<1>:ud r10.2<0;1,0>:ud r10.3<0;1,0>:ud
    (W) sel (1|M0) (lt)f1.1 r10.7<1>:d r10.0<0;1,0>:d r10.3<0;1,0>:d
    (W) add (4|M0) r13.0<1>:uw r11.0<8;4,2>:uw 0x1:uw
    (W) xor (1|M0) r10.5<1>:ud r10.2<0;1,0>:ud 0xffffffff:ud
    (W) add (1|M0) (eq)f0.0 r10.6<1>:ud r10.2<0;1,0>:ud -15:d
    """, exec_mask=0xFF)
    r10 = t.grf_dwords(10, 8)
    assert r10[0] == 0xFFFFFFF8 and r10[1] == 0xFFFFFFFC and r10[2] == 0xF and r10[3] == 24
    assert t.grf_dwords(11, 4) == r10[:4]
    assert t.grf_dwords(12, 8) == (7, 0, 7, 0, 0, 7, 0, 7)  # flag bits 0b10100101
    assert r10[4] == 24  # f0.0 bit 0 is set (signed -8 < 0), the inverted predicate: src1
    assert r10[7] == 0xFFFFFFF8  # sel.lt: the smaller, signed
    assert struct.unpack_from("<4H", t.grf, 13 * 64) == (0xFFF9, 0xFFFD, 0x10, 25)
    assert r10[5] == 0xFFFFFFF0 and r10[6] == 0
    assert t.flag(0) & 1  # 15 + (-15) == 0 set eq
    assert not t.flag(0) >> 16 & 1  # unsigned 0xfffffff8 < 0 is false
