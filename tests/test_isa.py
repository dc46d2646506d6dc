"""The Xe2 ISA layer against IGT's shader templates: decode, disassembly, assembly, builder."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from igt_templates import (IGA64_ARG0, code_for, generated_templates, igt_source, macros,
                           preprocess, template_sources)
from xe_eudebug.isa import encoding as enc
from xe_eudebug.isa.encoding import (NO_SWSB, DecodeError, EncodeError, Instruction, Operand,
                                     decode, decode_program, encode, get_field, set_field)
from xe_eudebug.isa.gpgpu import TEMPLATES, GpgpuShader, template_arg_count, template_dwords
from xe_eudebug.isa.text import AsmError, assemble, disassemble, parse_line

GEN_VER = 2000
AUTO_SYNCS = {"nop", "allrd", "allwr"}  # what IGA's automatic dependency resolution inserts

TREE = igt_source()
needs_igt = pytest.mark.skipif(
    TREE is None, reason="IGT source not found: set IGT_SRC to an IGT tree, or provide "
    "/work/shared/igt/igt-gpu-tools-b3d809d5.tar.xz (IGT_TARBALL)")


@pytest.fixture(scope="module")
def generated():
    return generated_templates(TREE)


@pytest.fixture(scope="module")
def sources():
    defs = macros(TREE, GEN_VER)
    return {name: preprocess(text, defs, GEN_VER) for name, text in template_sources(TREE).items()}


def _strip(i: Instruction) -> Instruction:
    return replace(i, swsb=NO_SWSB)


@needs_igt
def test_every_template_has_source_text_and_a_gen20_encoding(generated, sources):
    assert set(generated) == set(sources) == set(TEMPLATES)
    assert len(generated) == 20


@needs_igt
def test_decode_and_disassembly_match_the_template_text(generated, sources):
    """(a) every gen_ver <= 2000 template decodes; its disassembly reads back to the same
    instructions as the template's own assembly text (IGA-inserted syncs aside)."""
    for name, entries in generated.items():
        code = code_for(entries, GEN_VER)
        decoded = decode_program(code)
        from_disasm = assemble("\n".join(disassemble(decoded)))
        assert [_strip(i) for i in from_disasm] == [_strip(i) for i in decoded], name
        expected = assemble(sources[name])
        got = iter(from_disasm)
        for want in expected:
            for have in got:
                if _strip(have) == _strip(want):
                    break
                assert have.opcode == "sync" and enc.SYNC_FUNCTIONS[have.sync_fc] in AUTO_SYNCS, \
                    f"{name}: {disassemble([have])[0]!r} where the text has " \
                    f"{disassemble([want])[0]!r}"
            else:
                pytest.fail(f"{name}: {disassemble([want])[0]!r} missing from the encoding")
        for rest in got:
            assert rest.opcode == "sync" and enc.SYNC_FUNCTIONS[rest.sync_fc] in AUTO_SYNCS, name


@needs_igt
def test_builder_reproduces_every_template_encoding(generated):
    """(b) the builder's assembly of each template equals IGT's gen 2000 dwords."""
    for name, entries in generated.items():
        n = template_arg_count(name)
        assert template_dwords(name, *(IGA64_ARG0 + i for i in range(n))) == \
            code_for(entries, GEN_VER), name


def _igt_patch(code: list[int], args: list[int]) -> list[int]:
    """What IGT's __emit_iga64_code does with a template's placeholders."""
    out = []
    for d in code:
        if d & 0xFFFFFF00 == IGA64_ARG0:
            d = args[d - IGA64_ARG0]
        out.append(d)
    return out


@needs_igt
def test_builder_with_arguments_equals_igt_patching(generated):
    rng = random.Random(20)
    for name, entries in generated.items():
        n = template_arg_count(name)
        for _ in range(5):
            args = [rng.getrandbits(32) for _ in range(n)]
            assert template_dwords(name, *args) == _igt_patch(code_for(entries, GEN_VER), args)


def _online_shader() -> GpgpuShader:
    """The shader and SIP xe_eudebug_online builds for a breakpoint test (default flags)."""
    s = GpgpuShader()
    s.write_dword(0x01010101, 0)
    s.nop()
    s.breakpoint()
    s.label(0)
    s.write_dword(0x01010101, 0)
    s.jump_neq(0, 4, 0xDEADBEEF)
    s.write_dword(0x01010101, 0)
    s.eot()
    return s


@needs_igt
def test_composed_shaders_match_igt_composition(generated):
    s = _online_shader()
    g = {k: code_for(v, GEN_VER) for k, v in generated.items()}
    expected = (_igt_patch(g["media_block_write"], [0, 0x01010101]) + g["nop"])
    nop_index = len(expected) // 4 - 1
    expected[4 * nop_index] |= 1 << 30
    label = len(expected)
    expected += _igt_patch(g["media_block_write"], [0, 0x01010101])
    jump = _igt_patch(g["jump_dw_neq"], [4, 0xDEADBEEF])
    start = len(expected)
    expected += jump
    jmpi = next(i for i in range(start, len(expected), 4) if expected[i] & 0x7F == 0x20)
    expected[jmpi + 3] = ((label - jmpi) * 4) & 0xFFFFFFFF
    expected += _igt_patch(g["media_block_write"], [0, 0x01010101]) + g["eot"]
    assert s.code == expected
    assert decode(s.code[4 * nop_index:4 * nop_index + 4]).breakpoint
    sip = GpgpuShader()
    sip.write_aip(0)
    sip.wait()
    sip.end_system_routine(True)
    assert all(i.opcode for i in decode_program(sip.code))
    assert sip.code == (_igt_patch(g["media_block_write_aip"], [0]) + g["sync_host"]
                        + g["breakpoint_suppress"]
                        + _igt_patch(g["end_system_routine"], [0x7FFFFF | 1 << 26]))


# --- layer tests that need no IGT tree --------------------------------------------------------
def test_field_table_round_trips_each_field():
    for name in enc.FIELDS:
        width = enc.field_width(name)
        for value in (0, 1, (1 << width) - 1, 0x5555555555555555 & ((1 << width) - 1)):
            assert get_field(set_field(0, name, value), name) == value, name
    with pytest.raises(EncodeError, match="exec_size"):
        set_field(0, "exec_size", 8)


def test_illegal_and_unknown_opcodes_raise():
    with pytest.raises(DecodeError, match="illegal opcode 0x7f"):
        decode([0x7F, 0, 0, 0], offset=0x40)
    with pytest.raises(DecodeError, match="illegal opcode 0x00"):
        decode([0, 0, 0, 0])
    with pytest.raises(DecodeError, match="compacted"):
        decode([0x20000061, 0, 0, 0])


def test_assembler_round_trip_and_errors():
    text = """
    (W) mov (8|M0) r10.0<1>:ud r0.0<8;8,1>:ud
    (W) add (1|M0) r10.2<1>:d r10.2<0;1,0>:d -5:d {I@1}
    (W) cmp (1|M0) (lt)f1.1 null<1>:ud r10.0<0;1,0>:ud 0x10:ud
    (~f1.1) shl (16|M16) r12.0<1>:uw r14.0<16;16,1>:uw 0x3:uw {Breakpoint}
    (W) send.ugm (1|M0) r31 r30 null:0 0x0 0x2128403 {$3}
    """
    insts = assemble(text)
    again = assemble("\n".join(disassemble(insts)))
    assert again == insts
    assert decode_program(enc.encode_program(insts)) == insts
    assert insts[1].srcs[1].value == (-5) & 0xFFFFFFFF and "-5:d" in disassemble(insts)[1]
    with pytest.raises(AsmError, match="unknown register"):
        parse_line("(W) mov (1) q5.0<1>:ud 0x0:ud")
    with pytest.raises(AsmError, match="does not fit"):
        parse_line("(W) mov (1) r5.0<1>:uw 0x10000:uw")
    with pytest.raises(EncodeError, match="exec size"):
        encode(Instruction("mov", exec_size=3, dst=Operand("grf", 1, type="ud"),
                           srcs=(Operand("imm", type="ud"),)))


def test_breakpoint_on_and_range():
    s = GpgpuShader()
    s.nop()
    s.breakpoint()  # as in IGT: the template's last instruction, the sync.nop IGA appended
    assert not decode(s.code[:4]).breakpoint and decode(s.code[4:8]).breakpoint
    assert s.code[4] == 0x80000901 | 1 << 30
    with pytest.raises(IndexError, match="outside"):
        s.breakpoint_on(2)


def test_command_line_assembles_and_disassembles(tmp_path, capsys):
    from xe_eudebug.isa.__main__ import main

    src = tmp_path / "k.asm"
    src.write_text("L0:\n(W) add (1|M0) r40.0<1>:ud r40.0<0;1,0>:ud 0x1:ud\n"
                   "(W&f0.0) jmpi (1|M0) L0 {Breakpoint}\n")
    out = tmp_path / "k.bin"
    assert main(["asm", str(src), "--out", str(out)]) == 0
    assert main(["disasm", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("000000: 80000040 28058220") and "add (1|M0) r40.0<1>:ud" in lines[0]
    assert lines[1].endswith("(W&f0.0) jmpi (1|M0) -16 {Breakpoint}")
    bad = tmp_path / "bad.hex"
    bad.write_text("0x0000007f, 0x0, 0x0, 0x0")
    assert main(["disasm", "--hex", str(bad)]) == 1
    assert "illegal opcode 0x7f" in capsys.readouterr().out
