"""One EU thread of a graphics version 20 (Xe2) GPU, interpreted over `xe_eudebug.isa`.

State: 128 GRFs of 64 bytes; the ARF registers the templates use (null, f0..f3, cr0, sr0, ce0,
ip); the instruction pointer as a byte offset from the instruction base address (the AIP the
system routine sees in cr0.2 is such an offset).  Instructions are fetched through the memory
interface on every step, so writes to the ISA (a debugger's breakpoint) are seen at once;
decodes are cached by their 16 bytes.

Exceptions (the system routine, SIP, is entered with cr0.0 bit 31 set and cr0.2 = AIP):
  * breakpoint: an instruction with the debug-control bit, while `breakpoints_enabled` (the
    engine sets it from TD_CTL); cr0.1 bit 31.  cr0.0 bit 15 (breakpoint suppress) lets the
    first instruction after the SIP returns run without its breakpoint and is then cleared.  A return from the SIP with cr0.1 bit 31
    still set runs one instruction and enters the SIP again (single-step).
  * illegal opcode: a word the decoder or the interpreter does not know, when cr0.1 bit 12 is
    set (or the dispatch enabled it); cr0.1 bit 28.  Without it the thread stops with
    `Stop.ILLEGAL` and `error` says what was not understood — never a silent no-op.
  * interrupt: `interrupt()` (the debugger's INTERRUPT_ALL through TD_CTL) enters the SIP at
    the next instruction boundary.
The SIP returns by clearing cr0.0 bit 31; execution goes on at cr0.2.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace

from xe_eudebug.isa.encoding import (GRF_BYTES, GRF_COUNT, SIGNED_TYPES, TYPE_SIZE, DecodeError,
                                     Instruction, Operand, decode)

from .memory import EuMemory
from .send import SendError, execute_send

CR0_MASTER_EXCEPTION = 1 << 31  # cr0.0: in the system routine
CR0_BREAKPOINT_SUPPRESS = 1 << 15  # cr0.0
CR0_EXC_BREAKPOINT = 1 << 31  # cr0.1 status
CR0_EXC_ILLEGAL = 1 << 28  # cr0.1 status
CR0_ILLEGAL_ENABLE = 1 << 12  # cr0.1 enable

ARF_NULL, ARF_FLAG, ARF_CE, ARF_SR, ARF_CR, ARF_IP = 0x00, 0x30, 0x40, 0x70, 0x80, 0xA0
_KNOWN_ARF = {ARF_NULL, ARF_FLAG, ARF_FLAG + 1, ARF_FLAG + 2, ARF_FLAG + 3, ARF_CE, ARF_SR,
              ARF_CR, ARF_IP}


class Stop(enum.Enum):
    BUDGET = "budget"  # ran the instructions it was given, still runnable
    EOT = "eot"  # ended (gateway EOT)
    HOST_WAIT = "host-wait"  # sync.host: halted until resume(); raises attention
    FAULT = "fault"  # a message touched an unbound address; `fault` says where
    ILLEGAL = "illegal"  # an instruction it cannot execute and no exception to take


class ExecError(Exception):
    """An instruction the interpreter cannot execute (taken as an illegal opcode)."""


@dataclass
class Fault:
    address: int
    write: bool
    ip: int

    def __str__(self) -> str:
        kind = "store" if self.write else "load"
        return f"{kind} page fault at {self.address:#x} (ip {self.ip:#x})"


_MASKS = {n: (1 << (8 * n)) - 1 for n in (1, 2, 4, 8)}
_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
_COND = {
    1: lambda a, b: a == b, 2: lambda a, b: a != b, 3: lambda a, b: a > b,
    4: lambda a, b: a >= b, 5: lambda a, b: a < b, 6: lambda a, b: a <= b,
}


def _alu(op: str, a: int, b: int, size: int) -> int:
    if op == "mov":
        return a
    if op == "add":
        return a + b
    if op == "mul":
        return a * b
    if op == "and":
        return a & b
    if op == "or":
        return a | b
    if op == "xor":
        return a ^ b
    if op == "not":
        return ~a
    if op == "shl":
        return a << (b & (8 * size - 1))
    if op == "shr":
        return (a & _MASKS[size]) >> (b & (8 * size - 1))
    if op == "asr":
        return a >> (b & (8 * size - 1))
    raise ExecError(f"{op} is not executed")


class EuThread:
    """One hardware thread: registers, IP, exception state; `run()` executes it."""

    def __init__(self, memory: EuMemory, ibase: int, start: int, sip: int | None = None,
                 *, exec_mask: int = 0xFFFFFFFF, breakpoints_enabled: bool = False,
                 illegal_opcode_exception: bool = False,
                 decode_cache: dict[bytes, Instruction] | None = None):
        self.memory = memory
        self.ibase = ibase
        self.ip = start
        self.sip = sip
        self.exec_mask = exec_mask
        self.breakpoints_enabled = breakpoints_enabled
        self.grf = bytearray(GRF_BYTES * GRF_COUNT)
        self.arf = {nr: bytearray(GRF_BYTES) for nr in _KNOWN_ARF}
        if illegal_opcode_exception:
            self.cr0_set(1, self.cr0(1) | CR0_ILLEGAL_ENABLE)
        self.state: Stop | None = None  # None while runnable
        self.fault: Fault | None = None
        self.error: str | None = None
        self.executed = 0
        self._interrupt = False
        self._step_pending = False
        self._return_to: int | None = None
        # decodes by their 16 bytes; threads of one dispatch may share one (decoding is a pure
        # function of the bytes, and fetch still reads memory on every step)
        self._decoded: dict[bytes, Instruction] = {} if decode_cache is None else decode_cache
        self._checked: set[int] = set()

    # -- register access --
    def cr0(self, dword: int) -> int:
        return struct.unpack_from("<I", self.arf[ARF_CR], 4 * dword)[0]

    def cr0_set(self, dword: int, value: int) -> None:
        struct.pack_into("<I", self.arf[ARF_CR], 4 * dword, value & 0xFFFFFFFF)

    def flag(self, reg: int) -> int:
        return struct.unpack_from("<I", self.arf[ARF_FLAG + reg], 0)[0]

    def set_flag(self, reg: int, value: int) -> None:
        struct.pack_into("<I", self.arf[ARF_FLAG + reg], 0, value & 0xFFFFFFFF)

    def grf_dwords(self, nr: int, count: int = 16) -> tuple[int, ...]:
        return struct.unpack_from(f"<{count}I", self.grf, nr * GRF_BYTES)

    def write_grf(self, nr: int, data: bytes) -> None:
        self.grf[nr * GRF_BYTES:nr * GRF_BYTES + len(data)] = data

    @property
    def in_sip(self) -> bool:
        return bool(self.cr0(0) & CR0_MASTER_EXCEPTION)

    def _buffer(self, o: Operand) -> tuple[bytearray, int]:
        if o.file == "grf":
            if o.nr >= GRF_COUNT:
                raise ExecError(f"r{o.nr} is beyond the {GRF_COUNT} registers")
            return self.grf, o.nr * GRF_BYTES
        if o.nr not in self.arf:
            raise ExecError(f"architecture register {o.nr:#x} is not modelled")
        if o.nr == ARF_IP:
            struct.pack_into("<I", self.arf[ARF_IP], 0, self.ip)
        return self.arf[o.nr], 0

    def _read(self, o: Operand, ch: int) -> int:
        size = TYPE_SIZE[o.type]
        if o.file == "imm":
            v = o.value
        else:
            if o.file == "arf" and o.nr == ARF_NULL:
                return 0
            buf, base = self._buffer(o)
            off = base + (o.subreg + (ch // o.width) * o.vstride + (ch % o.width) * o.hstride) \
                * size
            if off + size > len(buf):
                raise ExecError(f"source region runs past register {o.nr} (byte {off})")
            v = struct.unpack_from(_FMT[size], buf, off)[0]
        if o.type in SIGNED_TYPES and v >> (8 * size - 1):
            v -= 1 << (8 * size)
        if o.absolute:
            v = abs(v)
        return -v if o.negate else v

    def _write(self, o: Operand, ch: int, value: int) -> None:
        if o.file == "arf" and o.nr == ARF_NULL:
            return
        size = TYPE_SIZE[o.type]
        buf, base = self._buffer(o)
        off = base + (o.subreg + ch * o.hstride) * size
        if off + size > len(buf):
            raise ExecError(f"destination region runs past register {o.nr} (byte {off})")
        if o.file == "arf" and o.nr == ARF_CR and off == 0:
            before = self.cr0(0)
            struct.pack_into(_FMT[size], buf, off, value & _MASKS[size])
            if before & CR0_MASTER_EXCEPTION and not self.cr0(0) & CR0_MASTER_EXCEPTION:
                self._return_to = self.cr0(2)
            return
        struct.pack_into(_FMT[size], buf, off, value & _MASKS[size])

    # -- execution --
    def interrupt(self) -> None:
        """Enter the system routine at the next instruction boundary (unless already in it)."""
        self._interrupt = True

    def resume(self) -> None:
        """Let a thread halted in sync.host go on."""
        if self.state is Stop.HOST_WAIT:
            self.ip += 16                           # first: a runner may start it at once
            self.state = None

    def _channels(self, inst: Instruction) -> list[int]:
        mask = 0xFFFFFFFF if inst.nomask else self.exec_mask >> inst.chan_off
        chans = [ch for ch in range(inst.exec_size) if mask >> ch & 1]
        if inst.pred_ctrl:
            if inst.pred_ctrl != 1:
                raise ExecError(f"predicate control {inst.pred_ctrl} (any/all) is not executed")
            f = self.flag(inst.flag_reg) >> (16 * inst.flag_subreg)
            want = 0 if inst.pred_inv else 1
            chans = [ch for ch in chans if (f >> (inst.chan_off + ch)) & 1 == want]
        return chans

    def _enter_sip(self, aip: int, status: int) -> bool:
        if self.sip is None:
            return False
        self.cr0_set(1, self.cr0(1) | status)
        self.cr0_set(2, aip)
        self.cr0_set(0, self.cr0(0) | CR0_MASTER_EXCEPTION)
        self.ip = self.sip
        return True

    def _illegal(self, why: str) -> Stop | None:
        if self.cr0(1) & CR0_ILLEGAL_ENABLE and self._enter_sip(self.ip, CR0_EXC_ILLEGAL):
            return None
        self.error = f"ip {self.ip:#x}: {why}"
        self.state = Stop.ILLEGAL
        return Stop.ILLEGAL

    def _fetch(self) -> Instruction | str | None:
        raw = self.memory.read(self.ibase + self.ip, 16)
        if raw is None:
            return None
        inst = self._decoded.get(raw)
        if inst is None:
            try:
                inst = decode(struct.unpack("<4I", raw), offset=self.ip)
            except DecodeError as e:
                return str(e)
            self._decoded[raw] = inst
        return inst

    def run(self, budget: int = 1 << 62) -> Stop:
        """Execute up to `budget` instructions; returns why it stopped."""
        if self.state is not None:
            return self.state
        for _ in range(budget):
            if self._interrupt:
                self._interrupt = False            # taken, or lost on a thread in its SIP
                if not self.in_sip and self._enter_sip(self.ip, 0):
                    continue
            inst = self._fetch()
            if inst is None:
                self.fault = Fault(self.ibase + self.ip, False, self.ip)
                self.state = Stop.FAULT
                return Stop.FAULT
            if isinstance(inst, str):
                stop = self._illegal(inst)
                if stop:
                    return stop
                continue
            if not self.in_sip and self.cr0(0) & CR0_BREAKPOINT_SUPPRESS:
                # the first instruction after the return runs without its breakpoint; the
                # suppress bit covers that one instruction only
                self.cr0_set(0, self.cr0(0) & ~CR0_BREAKPOINT_SUPPRESS)
            elif inst.breakpoint and self.breakpoints_enabled and not self.in_sip:
                if self._enter_sip(self.ip, CR0_EXC_BREAKPOINT):
                    continue
            try:
                stop = self._execute(inst)
            except ExecError as e:
                stop = self._illegal(f"{inst.opcode}: {e}")
                if stop:
                    return stop
                continue
            except SendError as e:
                if e.fault is not None:
                    self.fault = Fault(e.fault, e.write, self.ip)
                    self.state = Stop.FAULT
                    return Stop.FAULT
                stop = self._illegal(f"send: {e}")
                if stop:
                    return stop
                continue
            self.executed += 1
            if stop is not None:
                self.state = stop
                return stop
            if self._return_to is not None:
                self.ip, self._return_to = self._return_to, None
                self._step_pending = bool(self.cr0(1) & CR0_EXC_BREAKPOINT)
            elif self._step_pending and not self.in_sip:
                self._step_pending = False
                self._enter_sip(self.ip, 0)
        return Stop.BUDGET

    def _execute(self, inst: Instruction) -> Stop | None:
        op = inst.opcode
        if op == "send" or op == "sendc":
            result = execute_send(self, inst)
            self.ip += 16
            return result
        if op == "jmpi":
            if self._channels(inst) if inst.pred_ctrl else True:
                self.ip += inst.jip
            else:
                self.ip += 16
            return None
        if op == "sync":
            if inst.sync_fc == 0xF:  # sync.host: wait for the host
                return Stop.HOST_WAIT
            self.ip += 16
            return None
        if op == "nop":
            self.ip += 16
            return None
        if id(inst) not in self._checked:
            if inst.saturate:
                raise ExecError("saturation is not executed")
            for o in (inst.dst, *inst.srcs):
                if o.type not in ("ub", "b", "uw", "w", "ud", "d", "uq", "q"):
                    raise ExecError(f"type :{o.type} is not executed (integer types only)")
            self._checked.add(id(inst))  # instructions stay alive in the decode cache
        size = TYPE_SIZE[inst.dst.type]
        if op == "sel":
            self._sel(inst)
            self.ip += 16
            return None
        chans = self._channels(inst)
        if op == "cmp":
            self._cmp(inst, chans)
        else:
            values = [(ch, _alu(op, self._read(inst.srcs[0], ch),
                                self._read(inst.srcs[1], ch) if len(inst.srcs) > 1 else 0,
                                size)) for ch in chans]
            for ch, v in values:
                self._write(inst.dst, ch, v)
            if inst.cond_mod:
                self._set_flags(inst, [(ch, _COND[inst.cond_mod](v, 0)) for ch, v in values])
        self.ip += 16
        return None

    def _sel(self, inst: Instruction) -> None:
        """sel: the predicate picks src0 (set) or src1 per channel; without one, the
        condition modifier compares src0 with src1 (ge: max, lt: min); else src0."""
        chans = self._channels(replace(inst, pred_ctrl=0))
        f = self.flag(inst.flag_reg) >> (16 * inst.flag_subreg)
        cond = _COND.get(inst.cond_mod)
        for ch in chans:
            a, b = self._read(inst.srcs[0], ch), self._read(inst.srcs[1], ch)
            if inst.pred_ctrl:
                first = bool((f >> (inst.chan_off + ch)) & 1) != inst.pred_inv
            elif cond is not None:
                first = cond(a, b)
            else:
                first = True
            self._write(inst.dst, ch, a if first else b)

    def _cmp(self, inst: Instruction, chans: list[int]) -> None:
        cond = _COND.get(inst.cond_mod)
        if cond is None:
            raise ExecError(f"condition {inst.cond_mod} is not executed")
        results = []
        for ch in chans:
            r = cond(self._read(inst.srcs[0], ch), self._read(inst.srcs[1], ch))
            results.append((ch, r))
        for ch, r in results:
            self._write(inst.dst, ch, -1 if r else 0)
        self._set_flags(inst, results)

    def _set_flags(self, inst: Instruction, results: list[tuple[int, bool]]) -> None:
        f = self.flag(inst.flag_reg)
        for ch, r in results:
            bit = 1 << (16 * inst.flag_subreg + inst.chan_off + ch)
            f = (f | bit) if r else (f & ~bit)
        self.set_flag(inst.flag_reg, f)
