"""The native (uncompacted) 128-bit instruction of graphics version 20 (Xe2), as data.

Every field is described once, as bit ranges of the 128-bit word (bit 0 is bit 0 of the first
dword); `get_field` and `set_field` read and write any of them, and `decode`/`encode` turn a
word into an `Instruction` and back through the same table.  Facts (bit positions, opcode
numbers, type and register-file encodings, SWSB) are those of the Xe2 hardware encoding as
mesa's `brw_eu_inst.h`, `brw_eu.c` and `brw_eu_defines.h` describe it; the compacted 64-bit form
is not supported (no IGT template uses it: `decode` rejects a word with the compaction bit).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

GEN_VER = 2000
INSTRUCTION_BYTES = 16
GRF_BYTES = 64  # Xe2 register width
GRF_COUNT = 128  # registers a thread has without the large-GRF mode


class DecodeError(ValueError):
    """A word that is not an instruction this decoder knows (illegal opcode, bad field)."""

    def __init__(self, message: str, word: int | None = None, offset: int | None = None):
        where = f" at offset {offset:#x}" if offset is not None else ""
        raw = f" (word {word:#034x})" if word is not None else ""
        super().__init__(f"{message}{where}{raw}")
        self.word = word
        self.offset = offset


class EncodeError(ValueError):
    """An `Instruction` that cannot be encoded (value out of range, unknown name)."""


# --- the field table --------------------------------------------------------------------------
# name -> pieces, most significant first; a field's value is its pieces concatenated.
FIELDS: dict[str, tuple[tuple[int, int], ...]] = {
    "opcode": ((6, 0),),
    "swsb": ((17, 8),),
    "exec_size": ((20, 18),),
    "flag_subreg": ((21, 21),),
    "flag_reg": ((23, 22),),
    "chan_off": ((25, 24),),  # qtr control: channel offset in units of 8 (M0, M8, M16, M24)
    "pred_ctrl": ((27, 26),),
    "pred_inv": ((28, 28),),
    "compact": ((29, 29),),
    "breakpoint": ((30, 30),),  # debug control
    "nomask": ((31, 31),),  # mask control, the (W) of the assembly
    "atomic": ((32, 32),),
    "branch_ctrl": ((33, 33),),
    "saturate": ((34, 34),),
    "eot": ((34, 34),),  # send only
    "dst_addr_mode": ((35, 35),),
    "dst_type": ((39, 36),),
    "src0_type": ((43, 40),),
    "src0_abs": ((44, 44),),
    "src0_neg": ((45, 45),),
    "src0_is_imm": ((46, 46),),
    "src1_is_imm": ((47, 47),),
    "dst_hstride": ((49, 48),),
    "dst_file": ((50, 50),),
    "dst_subreg": ((55, 51), (33, 33)),  # byte offset: bits 5..1, then bit 0
    "dst_nr": ((63, 56),),
    "src0_hstride": ((65, 64),),
    "src0_file": ((66, 66),),
    "src0_subreg": ((71, 67), (87, 87)),
    "src0_nr": ((79, 72),),
    "src0_addr_mode": ((80, 80),),
    "src0_width": ((83, 81),),
    "src0_vstride": ((86, 84),),
    "src1_type": ((91, 88),),
    "cond_mod": ((95, 92),),  # also the sync function and the send SFID
    "src1_hstride": ((97, 96),),
    "src1_file": ((98, 98),),
    "src1_subreg": ((103, 99),),  # byte offset / 2
    "src1_nr": ((111, 104),),
    "src1_addr_mode": ((112, 112),),
    "src1_width": ((115, 113),),
    "src1_vstride": ((118, 116),),
    "src1_abs": ((120, 120),),
    "src1_neg": ((121, 121),),
    "imm32": ((127, 96),),
    "imm64": ((127, 64),),
    "jip": ((127, 96),),
    # send
    "sfid": ((95, 92),),
    "send_src1_len": ((103, 99),),
    "send_desc_is_reg": ((48, 48),),
    "send_exdesc_is_reg": ((49, 49),),
    "send_ex_bso": ((39, 39),),
    "send_desc": ((123, 122), (71, 67), (55, 51), (121, 113), (91, 81)),
    # extended descriptor bits 31..11 (bits 10..6 are the src1 length, 5..0 are zero)
    "send_exdesc_hi": ((127, 124), (97, 96), (65, 64), (47, 35)),
}


def field_width(name: str) -> int:
    return sum(hi - lo + 1 for hi, lo in FIELDS[name])


def get_field(word: int, name: str) -> int:
    value = 0
    for hi, lo in FIELDS[name]:
        width = hi - lo + 1
        value = (value << width) | ((word >> lo) & ((1 << width) - 1))
    return value


def set_field(word: int, name: str, value: int) -> int:
    if value < 0 or value >> field_width(name):
        raise EncodeError(f"field {name}: value {value:#x} does not fit {field_width(name)} bits")
    for hi, lo in reversed(FIELDS[name]):
        width = hi - lo + 1
        mask = ((1 << width) - 1) << lo
        word = (word & ~mask) | ((value & ((1 << width) - 1)) << lo)
        value >>= width
    return word


def words_to_int(dwords: Sequence[int]) -> int:
    if len(dwords) != 4:
        raise DecodeError(f"an instruction is 4 dwords, got {len(dwords)}")
    return dwords[0] | dwords[1] << 32 | dwords[2] << 64 | dwords[3] << 96


def int_to_words(word: int) -> list[int]:
    return [(word >> (32 * i)) & 0xFFFFFFFF for i in range(4)]


# --- opcodes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Opcode:
    name: str
    hw: int
    nsrc: int
    kind: str  # "basic", "send", "branch", "sync", "nop", "ternary"


_OPCODES = [
    Opcode("illegal", 0x00, 0, "nop"),
    Opcode("sync", 0x01, 1, "sync"),
    Opcode("jmpi", 0x20, 0, "branch"),
    Opcode("brd", 0x21, 0, "branch"),
    Opcode("if", 0x22, 0, "branch"),
    Opcode("brc", 0x23, 0, "branch"),
    Opcode("else", 0x24, 0, "branch"),
    Opcode("endif", 0x25, 0, "branch"),
    Opcode("while", 0x27, 0, "branch"),
    Opcode("break", 0x28, 0, "branch"),
    Opcode("cont", 0x29, 0, "branch"),
    Opcode("halt", 0x2A, 0, "branch"),
    Opcode("calla", 0x2B, 0, "branch"),
    Opcode("call", 0x2C, 0, "branch"),
    Opcode("ret", 0x2D, 0, "branch"),
    Opcode("goto", 0x2E, 0, "branch"),
    Opcode("join", 0x2F, 0, "branch"),
    Opcode("send", 0x31, 2, "send"),
    Opcode("sendc", 0x32, 2, "send"),
    Opcode("math", 0x38, 2, "basic"),
    Opcode("add", 0x40, 2, "basic"),
    Opcode("mul", 0x41, 2, "basic"),
    Opcode("avg", 0x42, 2, "basic"),
    Opcode("frc", 0x43, 1, "basic"),
    Opcode("rndu", 0x44, 1, "basic"),
    Opcode("rndd", 0x45, 1, "basic"),
    Opcode("rnde", 0x46, 1, "basic"),
    Opcode("rndz", 0x47, 1, "basic"),
    Opcode("mac", 0x48, 2, "basic"),
    Opcode("mach", 0x49, 2, "basic"),
    Opcode("lzd", 0x4A, 1, "basic"),
    Opcode("fbh", 0x4B, 1, "basic"),
    Opcode("fbl", 0x4C, 1, "basic"),
    Opcode("cbit", 0x4D, 1, "basic"),
    Opcode("addc", 0x4E, 2, "basic"),
    Opcode("subb", 0x4F, 2, "basic"),
    Opcode("add3", 0x52, 3, "ternary"),
    Opcode("macl", 0x53, 2, "basic"),
    Opcode("srnd", 0x54, 2, "basic"),
    Opcode("dp4a", 0x58, 3, "ternary"),
    Opcode("dpas", 0x59, 3, "ternary"),
    Opcode("mad", 0x5B, 3, "ternary"),
    Opcode("madm", 0x5D, 3, "ternary"),
    Opcode("nop", 0x60, 0, "nop"),
    Opcode("mov", 0x61, 1, "basic"),
    Opcode("sel", 0x62, 2, "basic"),
    Opcode("movi", 0x63, 1, "basic"),
    Opcode("not", 0x64, 1, "basic"),
    Opcode("and", 0x65, 2, "basic"),
    Opcode("or", 0x66, 2, "basic"),
    Opcode("xor", 0x67, 2, "basic"),
    Opcode("shr", 0x68, 2, "basic"),
    Opcode("shl", 0x69, 2, "basic"),
    Opcode("smov", 0x6A, 1, "basic"),
    Opcode("bfn", 0x6B, 3, "ternary"),
    Opcode("asr", 0x6C, 2, "basic"),
    Opcode("ror", 0x6E, 2, "basic"),
    Opcode("rol", 0x6F, 2, "basic"),
    Opcode("cmp", 0x70, 2, "basic"),
    Opcode("cmpn", 0x71, 2, "basic"),
    Opcode("csel", 0x72, 3, "ternary"),
    Opcode("bfrev", 0x77, 1, "basic"),
    Opcode("bfe", 0x78, 3, "ternary"),
    Opcode("bfi1", 0x79, 2, "basic"),
    Opcode("bfi2", 0x7A, 3, "ternary"),
]
OPCODES_BY_HW = {op.hw: op for op in _OPCODES}
OPCODES_BY_NAME = {op.name: op for op in _OPCODES}

SYNC_FUNCTIONS = {0x0: "nop", 0x2: "allrd", 0x3: "allwr", 0xD: "fence", 0xE: "bar", 0xF: "host"}
SYNC_BY_NAME = {v: k for k, v in SYNC_FUNCTIONS.items()}

COND_MODS = {1: "eq", 2: "ne", 3: "gt", 4: "ge", 5: "lt", 6: "le", 8: "ov", 9: "un"}
COND_BY_NAME = {v: k for k, v in COND_MODS.items()}
COND_BY_NAME.update({"z": 1, "nz": 2, "g": 3, "l": 5, "o": 8, "u": 9})

# shared function IDs, with the assembler's suffix of send
SFIDS = {0: "null", 2: "smpl", 3: "gtwy", 6: "urb", 7: "btd", 8: "rta", 13: "tgm", 14: "slm",
         15: "ugm"}
SFID_BY_NAME = {v: k for k, v in SFIDS.items()}

# --- types ------------------------------------------------------------------------------------
TYPES = {0x0: "ub", 0x1: "uw", 0x2: "ud", 0x3: "uq", 0x4: "b", 0x5: "w", 0x6: "d", 0x7: "q",
         0x9: "hf", 0xA: "f", 0xB: "df", 0x8: "bf"}
TYPE_BY_NAME = {v: k for k, v in TYPES.items()}
TYPE_SIZE = {"ub": 1, "b": 1, "uw": 2, "w": 2, "hf": 2, "bf": 2, "ud": 4, "d": 4, "f": 4,
             "uq": 8, "q": 8, "df": 8}
SIGNED_TYPES = {"b", "w", "d", "q"}
INTEGER_TYPES = {"ub", "b", "uw", "w", "ud", "d", "uq", "q"}

# --- architecture registers (ARF): high nibble of the register number -------------------------
ARF_NAMES = {0x0: "null", 0x1: "a", 0x2: "acc", 0x3: "f", 0x4: "ce", 0x5: "msg", 0x6: "sp",
             0x7: "sr", 0x8: "cr", 0x9: "n", 0xA: "ip", 0xB: "tdr", 0xC: "tm", 0xD: "fc",
             0xF: "dbg"}
ARF_BY_NAME = {v: k for k, v in ARF_NAMES.items()}

# region encodings
VSTRIDE_ENC = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5, 32: 6}
VSTRIDE_DEC = {v: k for k, v in VSTRIDE_ENC.items()}
WIDTH_ENC = {1: 0, 2: 1, 4: 2, 8: 3, 16: 4}
WIDTH_DEC = {v: k for k, v in WIDTH_ENC.items()}
HSTRIDE_ENC = {0: 0, 1: 1, 2: 2, 4: 3}
HSTRIDE_DEC = {v: k for k, v in HSTRIDE_ENC.items()}
EXEC_SIZES = (1, 2, 4, 8, 16, 32)

# --- SWSB (software scoreboard) annotations ---------------------------------------------------
PIPES = {"": 0x0, "A": 0x8, "F": 0x10, "I": 0x18, "L": 0x20, "M": 0x28, "S": 0x30}
PIPE_BY_BITS = {v: k for k, v in PIPES.items()}


@dataclass(frozen=True)
class Swsb:
    """One SWSB annotation: a register distance (with pipe) and/or an SBID token use."""

    regdist: int = 0
    pipe: str = ""  # "", "A", "F", "I", "L", "M"
    sbid: int | None = None
    mode: str = ""  # "set" (send allocates $n), "dst" ($n.dst), "src" ($n.src)

    def text(self) -> str:
        parts = []
        if self.regdist:
            parts.append(f"{self.pipe}@{self.regdist}")
        if self.sbid is not None:
            parts.append(f"${self.sbid}" + {"set": "", "dst": ".dst", "src": ".src"}[self.mode])
        return ", ".join(parts)


NO_SWSB = Swsb()


def swsb_decode(x: int, unordered: bool) -> Swsb:
    if x & 0x300:
        regdist = (x & 0xE0) >> 5
        if unordered:
            pipe = {0x300: "I", 0x200: "F", 0x100: "A"}[x & 0x300]
            return Swsb(regdist, pipe if regdist else "", x & 0x1F, "set")
        pipe = "A" if (x & 0x300) == 0x300 else ""
        return Swsb(regdist, pipe, x & 0x1F, "src" if (x & 0x300) == 0x200 else "dst")
    if (x & 0xE0) == 0x80:
        return Swsb(sbid=x & 0x1F, mode="dst")
    if (x & 0xE0) == 0xA0:
        return Swsb(sbid=x & 0x1F, mode="src")
    if (x & 0xE0) == 0xC0:
        return Swsb(sbid=x & 0x1F, mode="set")
    if x & ~0x3F:
        raise DecodeError(f"SWSB value {x:#x} is not a valid encoding")
    return Swsb(x & 0x7, PIPE_BY_BITS.get(x & 0x38, "") if x & 0x7 else "")


def swsb_encode(s: Swsb, unordered: bool) -> int:
    if s.sbid is None:
        if s.regdist > 7:
            raise EncodeError(f"SWSB register distance {s.regdist} is out of range 0..7")
        return (PIPES[s.pipe] if s.regdist else 0) | s.regdist
    if not 0 <= s.sbid < 32:
        raise EncodeError(f"SWSB token ${s.sbid} is out of range 0..31")
    if s.regdist:
        if s.mode == "set":
            return {"I": 0x300, "F": 0x200}.get(s.pipe, 0x100) | s.regdist << 5 | s.sbid
        base = 0x300 if s.pipe == "A" else (0x200 if s.mode == "src" else 0x100)
        return base | s.regdist << 5 | s.sbid
    return s.sbid | {"set": 0xC0, "dst": 0x80, "src": 0xA0}[s.mode]


# --- decoded form -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Operand:
    """A register operand or an immediate.

    `file` is "grf", "arf" or "imm".  For registers `nr` is the register number (for the ARF the
    full 8-bit number, e.g. 0x80 for cr0), `subreg` the element index in units of `type`, and
    the region is (vstride, width, hstride) for a source, hstride alone for a destination.
    For an immediate, `value` is the raw bits of the operand's type.  Send operands carry no
    type (`type` "") and `length` (the number of registers) for src1.
    """

    file: str
    nr: int = 0
    subreg: int = 0
    type: str = ""
    vstride: int = 0
    width: int = 1
    hstride: int = 1
    value: int = 0
    negate: bool = False
    absolute: bool = False
    length: int | None = None

    @property
    def byte_offset(self) -> int:
        return self.subreg * TYPE_SIZE.get(self.type, 1)


@dataclass(frozen=True)
class Instruction:
    opcode: str
    exec_size: int = 1
    chan_off: int = 0
    nomask: bool = False
    pred_ctrl: int = 0  # 0 none, 1 normal (per channel); other values are the any/all forms
    pred_inv: bool = False
    flag_reg: int = 0
    flag_subreg: int = 0
    cond_mod: int = 0
    saturate: bool = False
    breakpoint: bool = False
    swsb: Swsb = NO_SWSB
    dst: Operand | None = None
    srcs: tuple[Operand, ...] = ()
    # send
    sfid: int = 0
    desc: int = 0
    exdesc: int = 0
    eot: bool = False
    # sync
    sync_fc: int = 0
    # branches: byte offset relative to this instruction
    jip: int = 0

    def with_breakpoint(self, on: bool = True) -> "Instruction":
        return replace(self, breakpoint=on)


def _sext32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def _type_name(code: int, what: str, word: int) -> str:
    try:
        return TYPES[code]
    except KeyError:
        raise DecodeError(f"{what} type encoding {code:#x} is not a type", word) from None


def _subreg_index(byte_offset: int, type_name: str) -> int:
    return byte_offset // TYPE_SIZE.get(type_name, 1)


def _decode_dst(w: int) -> Operand:
    t = _type_name(get_field(w, "dst_type"), "destination", w)
    if get_field(w, "dst_addr_mode"):
        raise DecodeError("indirect destination addressing is not supported", w)
    return Operand("grf" if get_field(w, "dst_file") else "arf", get_field(w, "dst_nr"),
                   _subreg_index(get_field(w, "dst_subreg"), t), t,
                   hstride=HSTRIDE_DEC[get_field(w, "dst_hstride")])


def _decode_src(w: int, n: int, imm64_allowed: bool) -> Operand:
    t = _type_name(get_field(w, f"src{n}_type"), f"source {n}", w)
    if get_field(w, f"src{n}_is_imm"):
        if TYPE_SIZE[t] == 8:
            if not imm64_allowed:
                raise DecodeError(f"64-bit immediate in source {n} of a two-source instruction", w)
            return Operand("imm", type=t, value=get_field(w, "imm64"))
        return Operand("imm", type=t, value=get_field(w, "imm32"))
    if get_field(w, f"src{n}_addr_mode"):
        raise DecodeError(f"indirect addressing in source {n} is not supported", w)
    byte = get_field(w, f"src{n}_subreg") << (1 if n == 1 else 0)
    vs = get_field(w, f"src{n}_vstride")
    if vs == 7:
        raise DecodeError(f"VxH region in source {n} is not supported", w)
    return Operand("grf" if get_field(w, f"src{n}_file") else "arf", get_field(w, f"src{n}_nr"),
                   _subreg_index(byte, t), t, VSTRIDE_DEC[vs], WIDTH_DEC.get(
                       get_field(w, f"src{n}_width"), 1),
                   HSTRIDE_DEC[get_field(w, f"src{n}_hstride")],
                   negate=bool(get_field(w, f"src{n}_neg")),
                   absolute=bool(get_field(w, f"src{n}_abs")))


def _common(w: int, op: Opcode) -> dict:
    return dict(opcode=op.name, exec_size=1 << get_field(w, "exec_size"),
                chan_off=get_field(w, "chan_off") * 8, nomask=bool(get_field(w, "nomask")),
                pred_ctrl=get_field(w, "pred_ctrl"), pred_inv=bool(get_field(w, "pred_inv")),
                flag_reg=get_field(w, "flag_reg"), flag_subreg=get_field(w, "flag_subreg"),
                breakpoint=bool(get_field(w, "breakpoint")),
                swsb=swsb_decode(get_field(w, "swsb"), op.kind == "send"))


def decode(dwords: Sequence[int], offset: int | None = None) -> Instruction:
    """Decode one native instruction (4 dwords); DecodeError for anything unknown."""
    w = words_to_int(dwords)
    if get_field(w, "compact"):
        raise DecodeError("compacted instructions are not supported", w, offset)
    hw = get_field(w, "opcode")
    op = OPCODES_BY_HW.get(hw)
    if op is None or op.name == "illegal":
        raise DecodeError(f"illegal opcode {hw:#04x}", w, offset)
    if get_field(w, "exec_size") > 5:
        raise DecodeError(f"exec size encoding {get_field(w, 'exec_size')} is reserved", w, offset)
    try:
        c = _common(w, op)
        if op.kind == "send":
            src1_len = get_field(w, "send_src1_len")
            if get_field(w, "send_desc_is_reg") or get_field(w, "send_exdesc_is_reg"):
                raise DecodeError("send with a descriptor in a register is not supported", w)
            return Instruction(
                **c, eot=bool(get_field(w, "eot")), sfid=get_field(w, "sfid"),
                desc=get_field(w, "send_desc"),
                exdesc=get_field(w, "send_exdesc_hi") << 11,
                dst=Operand("grf" if get_field(w, "dst_file") else "arf", get_field(w, "dst_nr")),
                srcs=(Operand("grf" if get_field(w, "src0_file") else "arf",
                              get_field(w, "src0_nr")),
                      Operand("grf" if get_field(w, "src1_file") else "arf",
                              get_field(w, "src1_nr"), length=src1_len)))
        if op.kind == "branch":
            if op.name != "jmpi":
                raise DecodeError(f"branch {op.name} is not supported", w)
            return Instruction(**c, jip=_sext32(get_field(w, "jip")))
        if op.kind == "sync":
            fc = get_field(w, "cond_mod")
            if fc not in SYNC_FUNCTIONS:
                raise DecodeError(f"sync function {fc:#x} is not known", w)
            return Instruction(**c, sync_fc=fc)
        if op.kind == "nop":
            return Instruction(**c)
        if op.kind == "ternary":
            raise DecodeError(f"three-source instruction {op.name} is not supported", w)
        if op.name == "math":  # its function sits where the condition modifier is
            raise DecodeError("math is not supported", w)
        srcs = [_decode_src(w, 0, op.nsrc == 1)]
        if op.nsrc == 2:
            srcs.append(_decode_src(w, 1, False))
        imm64 = srcs[0].file == "imm" and TYPE_SIZE[srcs[0].type] == 8
        return Instruction(**c, cond_mod=0 if imm64 else get_field(w, "cond_mod"),
                           saturate=bool(get_field(w, "saturate")), dst=_decode_dst(w),
                           srcs=tuple(srcs))
    except DecodeError as e:
        if e.offset is None and offset is not None:
            raise DecodeError(str(e).split(" (word")[0], w, offset) from None
        raise


def _set(w: int, **fields: int) -> int:
    for k, v in fields.items():
        w = set_field(w, k, v)
    return w


def _enc_dst(w: int, d: Operand) -> int:
    if d.file == "imm":
        raise EncodeError("a destination cannot be an immediate")
    t = d.type or "ud"
    return _set(w, dst_file=int(d.file == "grf"), dst_nr=d.nr,
                dst_subreg=d.subreg * TYPE_SIZE[t], dst_type=TYPE_BY_NAME[t],
                dst_hstride=HSTRIDE_ENC[d.hstride])


def _enc_src(w: int, n: int, s: Operand) -> int:
    t = s.type or "ud"
    w = set_field(w, f"src{n}_type", TYPE_BY_NAME[t])
    if s.file == "imm":
        w = set_field(w, f"src{n}_is_imm", 1)
        if TYPE_SIZE[t] == 8:
            return set_field(w, "imm64", s.value & ((1 << 64) - 1))
        return set_field(w, "imm32", s.value & 0xFFFFFFFF)
    byte = s.subreg * TYPE_SIZE[t]
    if n == 1:
        if byte & 1:
            raise EncodeError(f"source 1 byte offset {byte} must be even")
        byte >>= 1
    try:
        return _set(w, **{f"src{n}_file": int(s.file == "grf"), f"src{n}_nr": s.nr,
                          f"src{n}_subreg": byte, f"src{n}_vstride": VSTRIDE_ENC[s.vstride],
                          f"src{n}_width": WIDTH_ENC[s.width],
                          f"src{n}_hstride": HSTRIDE_ENC[s.hstride],
                          f"src{n}_neg": int(s.negate), f"src{n}_abs": int(s.absolute)})
    except KeyError as e:
        raise EncodeError(f"source {n}: region value {e} is not encodable") from None


def encode(inst: Instruction) -> list[int]:
    """Encode an `Instruction` to its 4 dwords."""
    op = OPCODES_BY_NAME.get(inst.opcode)
    if op is None:
        raise EncodeError(f"unknown opcode {inst.opcode!r}")
    if inst.exec_size not in EXEC_SIZES:
        raise EncodeError(f"exec size {inst.exec_size} is not one of {EXEC_SIZES}")
    if inst.chan_off % 8:
        raise EncodeError(f"channel offset M{inst.chan_off} is not a multiple of 8")
    w = _set(0, opcode=op.hw, exec_size=EXEC_SIZES.index(inst.exec_size),
             chan_off=inst.chan_off // 8, nomask=int(inst.nomask), pred_ctrl=inst.pred_ctrl,
             pred_inv=int(inst.pred_inv), flag_reg=inst.flag_reg, flag_subreg=inst.flag_subreg,
             breakpoint=int(inst.breakpoint),
             swsb=swsb_encode(inst.swsb, op.kind == "send"))
    if op.kind == "send":
        d, s0, s1 = inst.dst, inst.srcs[0], inst.srcs[1]
        if inst.exdesc & 0x7FF:
            raise EncodeError(f"send extended descriptor {inst.exdesc:#x}: bits 10..0 must be 0")
        w = _set(w, eot=int(inst.eot), sfid=inst.sfid, send_desc=inst.desc,
                 send_exdesc_hi=inst.exdesc >> 11, dst_file=int(d.file == "grf"), dst_nr=d.nr,
                 src0_file=int(s0.file == "grf"), src0_nr=s0.nr,
                 src1_file=int(s1.file == "grf"), src1_nr=s1.nr,
                 send_src1_len=s1.length or 0)
    elif op.kind == "branch":
        w = _set(w, src0_is_imm=1, jip=inst.jip & 0xFFFFFFFF)
    elif op.kind == "sync":
        w = _set(w, cond_mod=inst.sync_fc, dst_hstride=1)
    elif op.kind == "nop":
        pass
    elif op.kind == "basic":
        if inst.dst is None or len(inst.srcs) != op.nsrc:
            raise EncodeError(f"{op.name} takes a destination and {op.nsrc} source(s)")
        w = _enc_dst(w, inst.dst)
        w = _set(w, saturate=int(inst.saturate))
        for n, s in enumerate(inst.srcs):
            if n == 1 and s.file == "imm" and TYPE_SIZE[s.type or "ud"] == 8:
                raise EncodeError("a 64-bit immediate is only allowed in source 0 of 1-source ops")
            w = _enc_src(w, n, s)
        if inst.cond_mod:
            w = set_field(w, "cond_mod", inst.cond_mod)
    else:
        raise EncodeError(f"encoding of {op.name} ({op.kind}) is not supported")
    return int_to_words(w)


def decode_program(dwords: Sequence[int]) -> list[Instruction]:
    if len(dwords) % 4:
        raise DecodeError(f"program of {len(dwords)} dwords is not whole instructions")
    return [decode(dwords[i:i + 4], offset=4 * i) for i in range(0, len(dwords), 4)]


def encode_program(insts: Iterable[Instruction]) -> list[int]:
    out: list[int] = []
    for i in insts:
        out.extend(encode(i))
    return out
