"""The compute pipeline of a graphics version 20 engine: the state a batch programs
(STATE_BASE_ADDRESS, STATE_SIP, 3DSTATE_BINDING_TABLE_POOL_ALLOC) and COMPUTE_WALKER's thread
dispatch onto `xe_eudebug.sim.gpu.eu` threads.

Layouts are gen20.xml's (mesa): COMPUTE_WALKER is 40 dwords; its body starts at dword 1, so a
body bit b is bit b % 32 of command dword b // 32 + 1:
  dw2 Indirect Data Length (16:0); dw4 Message SIMD (18:17), Emit Inline Parameter (25),
  Emit Local (28:26), Generate Local ID (29), SIMD Size (31:30: 1 SIMT16, 2 SIMT32);
  dw5 Execution Mask (of the last thread of each group); dw7..9 thread group ID X/Y/Z
  dimensions; dw10..12 starting thread group IDs; dw19..26 INTERFACE_DESCRIPTOR_DATA
  (dw0 Kernel Start Pointer 31:6, dw2 bit 13 Illegal Opcode Exception Enable, dw4 Binding
  Table Pointer 20:5, dw5 threads per group 9:0); dw27..31 POSTSYNC_DATA (operation 1:0,
  address, immediate data); dw32..39 the inline data.
STATE_BASE_ADDRESS base addresses are address bits 47:12 with bit 0 "modify enable" (a base is
only changed when it is set): surface state dw4-5, dynamic state dw6-7, instruction dw10-11.
The kernel start pointer and STATE_SIP (dw1-2, bits 63:4) are offsets from the instruction base
address; a binding table pointer is an offset from the binding table pool base (or, without a
pool, the surface state base); a binding table entry (bits 31:6) is an offset from the surface
state base to a RENDER_SURFACE_STATE (width dw2 13:0 and height dw2 29:16 minus one, pitch dw3
17:0 minus one, format dw0 26:18, base address dw8-9).

Per-thread payload, as the hardware fills it for a compute thread: r0.1 thread group ID X, r0.6
thread group ID Y, r0.7 thread group ID Z (what IGT's templates read to place their writes);
with Emit Inline Parameter, r1 holds the 8 dwords of inline data.  Local IDs, indirect (CURBE)
payload and shared local memory are not modelled: a walker asking for them fails as a bad
command, never runs silently without them.
"""

from __future__ import annotations

import enum
import struct
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from .eu import EuThread, Stop, Surface
from .gt import EuArray

__all__ = ["ComputeState", "Walker", "WalkerError", "HwThread", "ThreadState", "EuScheduler",
           "ThreadFault", "ThreadError", "SURFACE_FORMAT_BPP"]

MAX_LIVE_THREADS = 512        # thread slots of the default topology (8 DSS x 8 EUs x 8 threads)
SLICE = 200                   # instructions a thread runs before the next thread's turn
IDLE_POLL_S = 0.001           # all live threads halted: re-check this often

#: bytes per pixel of the RENDER_SURFACE_STATE formats IGT's targets use: R8G8B8A8_UNORM, R8_UNORM
SURFACE_FORMAT_BPP = {0x0C7: 4, 0x140: 1}
SURFACE_TYPE_2D = 1


class WalkerError(Exception):
    """A walker or state the model cannot execute (a bad command)."""


class _Space(Protocol):
    def read(self, va: int, size: int) -> bytes: ...

    def write(self, va: int, data: bytes) -> None: ...


@dataclass
class ComputeState:
    """The compute pipeline state of one context (it survives between batches, as in the LRC)."""

    surface_base: int = 0
    dynamic_base: int = 0
    instruction_base: int = 0
    bt_pool_base: int | None = None
    sip: int | None = None

    def state_base_address(self, dw: tuple[int, ...]) -> None:
        def base(i: int) -> int | None:
            if len(dw) <= i + 1 or not dw[i] & 1:
                return None
            return (dw[i] | dw[i + 1] << 32) & 0xFFFFFFFFF000

        for attr, i in (("surface_base", 4), ("dynamic_base", 6), ("instruction_base", 10)):
            value = base(i)
            if value is not None:
                setattr(self, attr, value)

    def state_sip(self, dw: tuple[int, ...]) -> None:
        self.sip = (dw[1] | dw[2] << 32) & 0xFFFFFFFFFFF0

    def bt_pool(self, dw: tuple[int, ...]) -> None:
        self.bt_pool_base = (dw[1] | dw[2] << 32) & 0xFFFFFFFFF000


@dataclass(frozen=True)
class Walker:
    """A parsed COMPUTE_WALKER."""

    simd: int
    exec_mask: int
    groups: tuple[int, int, int]          # dimensions
    start: tuple[int, int, int]           # starting group IDs
    kernel: int                           # offset from the instruction base
    illegal_opcode_exception: bool
    binding_table: int
    threads_per_group: int
    inline: tuple[int, ...] | None
    postsync: tuple[int, ...]

    @classmethod
    def parse(cls, at: int, dw: tuple[int, ...]) -> "Walker":
        if len(dw) < 40:
            raise WalkerError(f"COMPUTE_WALKER at {at:#x}: {len(dw)} dwords, 40 expected")
        simd_field = dw[4] >> 30
        if simd_field not in (1, 2):
            raise WalkerError(f"COMPUTE_WALKER at {at:#x}: SIMD Size {simd_field} "
                              "(graphics version 20 has SIMT16 = 1 and SIMT32 = 2)")
        if dw[4] >> 29 & 1 or dw[4] >> 26 & 7:
            raise WalkerError(f"COMPUTE_WALKER at {at:#x}: local IDs (dw4 {dw[4]:#010x}) "
                              "are not modelled")
        if dw[2] & 0x1FFFF:
            raise WalkerError(f"COMPUTE_WALKER at {at:#x}: indirect data length "
                              f"{dw[2] & 0x1FFFF} (indirect payload is not modelled)")
        idd = dw[19:27]
        if idd[5] >> 16 & 0x1F:
            raise WalkerError(f"COMPUTE_WALKER at {at:#x}: shared local memory "
                              "is not modelled")
        simd = 16 * simd_field
        return cls(simd=simd, exec_mask=dw[5] & ((1 << simd) - 1),
                   groups=(dw[7], dw[8], dw[9]), start=(dw[10], dw[11], dw[12]),
                   kernel=idd[0] & 0xFFFFFFC0,
                   illegal_opcode_exception=bool(idd[2] >> 13 & 1),
                   binding_table=idd[4] & 0x1FFFE0,
                   threads_per_group=max(1, idd[5] & 0x3FF),
                   inline=tuple(dw[32:40]) if dw[4] >> 25 & 1 else None,
                   postsync=tuple(dw[27:32]))

    @property
    def thread_count(self) -> int:
        x, y, z = self.groups
        return x * y * z * self.threads_per_group


class ThreadState(enum.Enum):
    RUNNING = "running"       # the scheduler gives it slices
    HALTED = "halted"         # sync.host: waits for resume()
    PAUSED = "paused"         # held by the engine (a debugger's stop, later): no slices
    DONE = "done"             # sent EOT


class _ThreadMemory:
    """`EuMemory` over the queue's address space and the walker's binding table."""

    def __init__(self, space: _Space, state: ComputeState, binding_table: int,
                 fault: type[Exception]) -> None:
        self.space = space
        self.state = state
        bt_base = state.bt_pool_base if state.bt_pool_base is not None else state.surface_base
        self.bt = bt_base + binding_table
        self._fault = fault                # what the address space raises on a fault

    def read(self, address: int, size: int) -> bytes | None:
        try:
            return self.space.read(address, size)
        except self._fault:
            return None

    def write(self, address: int, data: bytes) -> bool:
        try:
            self.space.write(address, data)
        except self._fault:
            return False
        return True

    def surface(self, bti: int) -> Surface | None:
        entry = self.read(self.bt + 4 * bti, 4)
        if entry is None:
            return None
        ss = self.read(self.state.surface_base + (struct.unpack("<I", entry)[0] & 0xFFFFFFC0), 64)
        if ss is None:
            return None
        d = struct.unpack("<16I", ss)
        if d[0] >> 29 != SURFACE_TYPE_2D:
            return None
        bpp = SURFACE_FORMAT_BPP.get(d[0] >> 18 & 0x1FF)
        if bpp is None:
            return None
        return Surface(base=(d[8] | d[9] << 32) & 0xFFFFFFFFFFFF, width=((d[2] & 0x3FFF) + 1) * bpp,
                       height=(d[2] >> 16 & 0x3FFF) + 1, pitch=(d[3] & 0x3FFFF) + 1)


class HwThread:
    """One dispatched EU thread: its interpreter, where it came from, its scheduling state."""

    def __init__(self, slot: int, group: tuple[int, int, int], index: int, eu: EuThread,
                 ctx: object | None = None) -> None:
        self.slot = slot              # dispatch order of its walker
        self.group = group
        self.index = index            # thread within its group
        self.eu = eu
        self.paused = False
        self.ctx = ctx                # the context (LRC) that dispatched it
        self.gt_slot: int | None = None                       # its slot on the GT's EU array
        self.location: tuple[int, int, int] | None = None     # (DSS, EU, thread) of that slot

    @property
    def state(self) -> ThreadState:
        if self.eu.state is Stop.EOT:
            return ThreadState.DONE
        if self.paused:
            return ThreadState.PAUSED
        if self.eu.state is Stop.HOST_WAIT:
            return ThreadState.HALTED
        return ThreadState.RUNNING

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.eu.resume()

    def interrupt(self) -> None:
        """Send the thread to its system routine at its next instruction boundary."""
        self.eu.interrupt()

    def __repr__(self) -> str:
        return f"<HwThread {self.slot} group {self.group}.{self.index} {self.state.value} " \
               f"at {self.location} ip {self.eu.ip:#x}>"


class ThreadFault(Exception):
    def __init__(self, thread: HwThread, address: int, write: bool) -> None:
        super().__init__(f"EU thread {thread.slot} (group {thread.group}): "
                         f"{'write' if write else 'read'} fault at {address:#x} "
                         f"(ip {thread.eu.ip:#x})")
        self.address = address
        self.write = write


class ThreadError(Exception):
    """A thread stopped on an instruction it cannot execute, with no exception to take."""


class EuScheduler:
    """The EU threads of one walker: `live` is every dispatched thread not yet ended.  `run`
    dispatches a walker's groups onto free slots of the GT's `EuArray` (later groups wait for a
    slot) and interleaves the live threads, SLICE instructions at a time, until every one has
    sent EOT."""

    def __init__(self, gt: EuArray | None = None, ctx: object | None = None) -> None:
        self.gt = gt if gt is not None else EuArray()
        self.ctx = ctx
        self.live: list[HwThread] = []
        self.dispatched = 0
        self.instructions = 0

    def _threads(self, w: Walker, space: _Space, state: ComputeState,
                 fault: type[Exception]) -> Iterator[HwThread]:
        full = (1 << w.simd) - 1
        decoded: dict = {}                      # one decode cache for the walker's threads
        gx, gy, gz = w.groups
        sx, sy, sz = w.start
        for z in range(sz, sz + gz):
            for y in range(sy, sy + gy):
                for x in range(sx, sx + gx):
                    for i in range(w.threads_per_group):
                        last = i == w.threads_per_group - 1
                        mem = _ThreadMemory(space, state, w.binding_table, fault)
                        eu = EuThread(mem, state.instruction_base, w.kernel, state.sip,
                                      exec_mask=w.exec_mask if last else full,
                                      illegal_opcode_exception=w.illegal_opcode_exception,
                                      decode_cache=decoded)
                        r0 = [0] * 16
                        r0[1], r0[6], r0[7] = x, y, z
                        r0[2] = i               # thread index within the group (r0.2 7:0)
                        eu.write_grf(0, struct.pack("<16I", *r0))
                        if w.inline is not None:
                            eu.write_grf(1, struct.pack("<8I", *w.inline))
                        self.dispatched += 1
                        yield HwThread(self.dispatched - 1, (x, y, z), i, eu, self.ctx)

    def run(self, w: Walker, space: _Space, state: ComputeState, fault: type[Exception],
            check_stop: Callable[[], None]) -> None:
        pending = self._threads(w, space, state, fault)
        exhausted = False
        waiting: HwThread | None = None           # dispatched, no free slot yet
        try:
            while True:
                while not exhausted:
                    t = waiting or next(pending, None)
                    if t is None:
                        exhausted = True
                    elif self.gt.try_place(t):
                        waiting = None
                        self.live.append(t)
                    else:
                        waiting = t
                        break
                if not self.live and exhausted:
                    return
                ran = False
                for t in list(self.live):
                    if t.paused or t.eu.state is Stop.HOST_WAIT:
                        continue
                    with self.gt.round():
                        before = t.eu.executed
                        stop = t.eu.run(SLICE)
                        self.instructions += t.eu.executed - before
                    ran = True
                    if stop is Stop.EOT:
                        self.live.remove(t)
                        self.gt.release(t)
                    elif stop is Stop.FAULT:
                        f = t.eu.fault
                        assert f is not None
                        raise ThreadFault(t, f.address, f.write)
                    elif stop is Stop.ILLEGAL:
                        raise ThreadError(f"EU thread {t.slot} (group {t.group}): {t.eu.error}")
                check_stop()
                if not ran:
                    time.sleep(IDLE_POLL_S)
        finally:
            for t in self.live:       # a job that ends, however, leaves no thread on the GT
                self.gt.release(t)
            self.live.clear()
