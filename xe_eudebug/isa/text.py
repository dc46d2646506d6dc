"""Text form of Xe2 instructions, in the syntax of IGA (Intel's assembler) that IGT's
`lib/gpgpu_shader.c` templates are written in: a disassembler (`disassemble`) and a parser
(`parse_line`, `assemble`) for the subset the templates use.

    (W&f0.0) send.ugm (1|M0)  r31  r30  null:0  0x0  0x2128403  {I@1, $0}
    (W)      cmp (1|M0)  (ne)f0.0  null<1>:ud  r31.0<0;1,0>:ud  0x5:ud
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Iterable, Sequence

from .encoding import (ARF_BY_NAME, ARF_NAMES, COND_BY_NAME, COND_MODS, SFID_BY_NAME, SFIDS,
                       SIGNED_TYPES, SYNC_BY_NAME, SYNC_FUNCTIONS, TYPE_SIZE, EncodeError,
                       Instruction, Operand, Swsb, decode_program, encode_program)


class AsmError(ValueError):
    """A line the assembler cannot read; names the line and the offending text."""


# --- disassembler -----------------------------------------------------------------------------
def _reg_name(o: Operand) -> str:
    if o.file == "grf":
        return f"r{o.nr}"
    name = ARF_NAMES.get(o.nr >> 4, f"arf{o.nr >> 4:x}")
    return "null" if name == "null" else f"{name}{o.nr & 0xF}"


def _imm_text(o: Operand) -> str:
    v = o.value
    if o.type in SIGNED_TYPES:
        bits = 8 * TYPE_SIZE[o.type]
        if v >> (bits - 1) & 1:
            v -= 1 << bits
        return f"{v}:{o.type}" if v < 0 else f"{v:#x}:{o.type}"
    return f"{v:#x}:{o.type}"


def operand_text(o: Operand, dst: bool = False) -> str:
    if o.file == "imm":
        return _imm_text(o)
    mods = ("-" if o.negate else "") + ("(abs)" if o.absolute else "")
    if dst:
        return f"{_reg_name(o)}<{o.hstride}>:{o.type}" if _reg_name(o) == "null" else \
            f"{_reg_name(o)}.{o.subreg}<{o.hstride}>:{o.type}"
    if _reg_name(o) == "null":
        return f"{mods}null<{o.vstride};{o.width},{o.hstride}>:{o.type}"
    return f"{mods}{_reg_name(o)}.{o.subreg}<{o.vstride};{o.width},{o.hstride}>:{o.type}"


def _pred_text(i: Instruction) -> str:
    parts = ["W"] if i.nomask else []
    if i.pred_ctrl:
        suffix = {1: "", 2: ".any", 3: ".all"}.get(i.pred_ctrl, f".p{i.pred_ctrl}")
        parts.append(("~" if i.pred_inv else "") + f"f{i.flag_reg}.{i.flag_subreg}{suffix}")
    return f"({'&'.join(parts)}) " if parts else ""


def disassemble_one(i: Instruction) -> str:
    head = _pred_text(i)
    size = f"({i.exec_size}|M{i.chan_off})"
    opts = []
    if i.swsb.regdist or i.swsb.sbid is not None:
        opts.append(i.swsb.text())
    if i.breakpoint:
        opts.append("Breakpoint")
    if i.eot:
        opts.append("EOT")
    tail = f" {{{', '.join(opts)}}}" if opts else ""
    if i.opcode in ("send", "sendc"):
        d, s0, s1 = i.dst, i.srcs[0], i.srcs[1]
        sfid = SFIDS.get(i.sfid, f"sfid{i.sfid}")
        return (f"{head}{i.opcode}.{sfid} {size} {_reg_name(d)} {_reg_name(s0)} "
                f"{_reg_name(s1)}:{s1.length or 0} {i.exdesc:#x} {i.desc:#x}{tail}")
    if i.opcode == "jmpi":
        return f"{head}jmpi {size} {i.jip}{tail}"
    if i.opcode == "sync":
        return f"{head}sync.{SYNC_FUNCTIONS[i.sync_fc]} {size} null{tail}"
    if i.opcode == "nop":
        return f"{head}nop{tail}"
    op = i.opcode + (".sat" if i.saturate else "")
    cond = ""
    if i.cond_mod:
        cond = f" ({COND_MODS.get(i.cond_mod, i.cond_mod)})f{i.flag_reg}.{i.flag_subreg}"
    srcs = " ".join(operand_text(s) for s in i.srcs)
    return f"{head}{op} {size}{cond} {operand_text(i.dst, True)} {srcs}{tail}"


def disassemble(code: Sequence[int] | Iterable[Instruction]) -> list[str]:
    """Text of each instruction of a program given as dwords or as `Instruction`s."""
    code = list(code)
    insts = decode_program(code) if code and isinstance(code[0], int) else code
    return [disassemble_one(i) for i in insts]


# --- parser -----------------------------------------------------------------------------------
_NUM = r"[-+]?(?:0x[0-9a-fA-F]+|\d+)"
_REG_RE = re.compile(r"^(?P<neg>-)?(?P<abs>\(abs\))?(?P<name>[a-z]+)(?P<nr>\d+)?"
                     r"(?:\.(?P<sub>\d+))?"
                     r"(?:<(?P<r1>\d+)(?:;(?P<r2>\d+),(?P<r3>\d+))?>)?"
                     r"(?::(?P<type>[a-z]+|\d+))?$")


def _int(text: str) -> int:
    return int(text, 0)


def _imm(token: str, where: str) -> Operand:
    value, _, t = token.rpartition(":")
    if t not in TYPE_SIZE:
        raise AsmError(f"{where}: immediate {token!r} needs a type (:ud, :d, :uq ...)")
    v = _int(value)
    bits = 8 * TYPE_SIZE[t]
    if not -(1 << (bits - 1)) <= v < (1 << bits):
        raise AsmError(f"{where}: immediate {value} does not fit :{t}")
    return Operand("imm", type=t, value=v & ((1 << bits) - 1))


def parse_operand(token: str, where: str = "", dst: bool = False,
                  scalar: bool = False) -> Operand:
    """One operand: a register with optional sub-register, region and type, or an immediate."""
    if re.match(rf"^{_NUM}:[a-z]+$", token):
        return _imm(token, where)
    m = _REG_RE.match(token)
    if not m:
        raise AsmError(f"{where}: cannot read operand {token!r}")
    name, nr = m["name"], m["nr"]
    if name == "r" and nr is not None:
        file, number = "grf", int(nr)
    elif name in ARF_BY_NAME:
        file, number = "arf", ARF_BY_NAME[name] << 4 | int(nr or 0)
    else:
        raise AsmError(f"{where}: unknown register {token!r}")
    t = m["type"] or ""
    if t.isdigit():  # send src1 length: "null:0", "r31:1"
        return Operand(file, number, length=int(t))
    sub = int(m["sub"] or 0)
    neg, ab = bool(m["neg"]), bool(m["abs"])
    if dst:
        return Operand(file, number, sub, t, hstride=int(m["r1"] or 1))
    if m["r2"] is not None:
        return Operand(file, number, sub, t, int(m["r1"]), int(m["r2"]), int(m["r3"]),
                       negate=neg, absolute=ab)
    if m["r1"] is not None:
        raise AsmError(f"{where}: source region {token!r} needs <vstride;width,hstride>")
    if scalar or m["type"] is not None:
        return Operand(file, number, sub, t, 0, 1, 0, negate=neg, absolute=ab)
    return Operand(file, number, sub, t, negate=neg, absolute=ab)


_PRED_RE = re.compile(r"^\((?P<w>W)?&?(?P<inv>~)?(?:f(?P<f>\d)\.(?P<s>\d)(?P<any>\.any|\.all)?)?\)")


def parse_line(line: str, labels: dict[str, int] | None = None, pc: int = 0,
               where: str = "") -> Instruction:
    """Parse one instruction.  `labels` maps label names to byte offsets, `pc` is this
    instruction's byte offset (jmpi targets are relative to the jmpi itself)."""
    text = line.strip()
    where = where or repr(text)
    kw: dict = {}
    m = _PRED_RE.match(text)
    if m and (m["w"] or m["f"] is not None):
        kw["nomask"] = bool(m["w"])
        if m["f"] is not None:
            kw.update(pred_ctrl={None: 1, ".any": 2, ".all": 3}[m["any"]],
                      pred_inv=bool(m["inv"]), flag_reg=int(m["f"]), flag_subreg=int(m["s"]))
        text = text[m.end():].strip()
    opts: list[str] = []
    if text.endswith("}"):
        brace = text.rindex("{")
        opts = [o.strip() for o in text[brace + 1:-1].split(",") if o.strip()]
        text = text[:brace].strip()
    parts = text.split()
    if not parts:
        raise AsmError(f"{where}: empty instruction")
    mnemonic, rest = parts[0], parts[1:]
    base, _, suffix = mnemonic.partition(".")
    if rest and rest[0].startswith("("):
        sm = re.match(r"^\((\d+)(?:\|M(\d+))?\)$", rest[0])
        if sm:
            kw.update(exec_size=int(sm[1]), chan_off=int(sm[2] or 0))
            rest = rest[1:]
    scalar = kw.get("exec_size", 1) == 1
    for o in opts:
        if o == "EOT":
            kw["eot"] = True
        elif o == "Breakpoint":
            kw["breakpoint"] = True
        else:
            kw["swsb"] = _merge_swsb(kw.get("swsb", Swsb()), o, where)
    if rest and rest[0].startswith("(") and re.match(r"^\(\w+\)f\d\.\d$", rest[0]):
        cm = re.match(r"^\((\w+)\)f(\d)\.(\d)$", rest[0])
        if cm[1] not in COND_BY_NAME:
            raise AsmError(f"{where}: unknown condition {cm[1]!r}")
        kw.update(cond_mod=COND_BY_NAME[cm[1]], flag_reg=int(cm[2]), flag_subreg=int(cm[3]))
        rest = rest[1:]
    try:
        if base in ("send", "sendc"):
            if suffix not in SFID_BY_NAME:
                raise AsmError(f"{where}: unknown send target .{suffix}")
            if len(rest) != 5:
                raise AsmError(f"{where}: send takes dst src0 src1 exdesc desc")
            d, s0, s1 = (parse_operand(t, where) for t in rest[:3])
            if s1.length is None:
                s1 = replace(s1, length=0)
            return Instruction(base, **kw, sfid=SFID_BY_NAME[suffix], dst=d,
                               srcs=(Operand(s0.file, s0.nr), Operand(s1.file, s1.nr,
                                                                      length=s1.length)),
                               exdesc=_int(rest[3]), desc=_int(rest[4]))
        if base == "jmpi":
            target = rest[-1]
            if labels is not None and target in labels:
                jip = labels[target] - pc
            else:
                jip = _int(target)
            return Instruction("jmpi", **kw, jip=jip)
        if base == "sync":
            if suffix not in SYNC_BY_NAME:
                raise AsmError(f"{where}: unknown sync function .{suffix}")
            return Instruction("sync", **kw, sync_fc=SYNC_BY_NAME[suffix])
        if base == "nop":  # nop has no mask control: IGA drops a (W) on it
            return Instruction("nop", **dict(kw, nomask=False))
        if not rest:
            raise AsmError(f"{where}: {base} needs operands")
        dst = parse_operand(rest[0], where, dst=True)
        srcs = tuple(parse_operand(t, where, scalar=scalar) for t in rest[1:])
        if dst.type == "" and srcs:
            dst = replace(dst, type=srcs[0].type)
        return Instruction(base, **kw, saturate=suffix == "sat", dst=dst, srcs=srcs)
    except (EncodeError, ValueError) as e:
        if isinstance(e, AsmError):
            raise
        raise AsmError(f"{where}: {e}") from None


def _merge_swsb(s: Swsb, opt: str, where: str) -> Swsb:
    m = re.match(r"^([AFILMS]?)@(\d)$", opt)
    if m:
        return replace(s, regdist=int(m[2]), pipe=m[1])
    m = re.match(r"^\$(\d+)(\.dst|\.src)?$", opt)
    if m:
        return replace(s, sbid=int(m[1]), mode={None: "set", ".dst": "dst", ".src": "src"}[m[2]])
    raise AsmError(f"{where}: unknown instruction option {{{opt}}}")


def split_program(source: str) -> list[str]:
    """Lines of a program: comments (// ...) dropped, ';' separates instructions."""
    out = []
    for raw in source.splitlines():
        raw = raw.split("//", 1)[0]
        for piece in re.split(r";(?![^<]*>)", raw):
            if piece.strip():
                out.append(piece.strip())
    return out


def assemble(source: str, base: int = 0) -> list[Instruction]:
    """Assemble a program (one instruction a line, labels as `NAME:`) to `Instruction`s."""
    lines = split_program(source)
    labels: dict[str, int] = {}
    body: list[str] = []
    for line in lines:
        m = re.match(r"^(\w+):\s*(.*)$", line)
        if m and not m[1].startswith("("):
            labels[m[1]] = base + 16 * len(body)
            if m[2]:
                body.append(m[2])
        else:
            body.append(line)
    return [parse_line(line, labels, base + 16 * n, where=f"line {n + 1} {line!r}")
            for n, line in enumerate(body)]


def assemble_dwords(source: str) -> list[int]:
    return encode_program(assemble(source))
