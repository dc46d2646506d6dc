"""The GT's EU array as the debug hardware sees it: thread slots on the topology, TD_CTL, the
attention registers (TD_ATT) and their clear registers (TD_CLR).

Facts from the kernel (regs/xe_gt_regs.h, xe_gt_debug.c, xe_eudebug.c):
  * TD_CTL (MCR 0xE400): bit 0 GLOBAL_DEBUG_ENABLE, 2 BREAKPOINT_ENABLE, 3 FORCE_EXCEPTION,
    4 FORCE_THREAD_BREAKPOINT_ENABLE, 6 FORCE_EXTERNAL_HALT, 7 FEH_AND_FEE_ENABLE (forced halt
    and forced exception enable).  With eudebug enabled the kernel keeps BREAKPOINT_ENABLE,
    FORCE_THREAD_BREAKPOINT_ENABLE, FEH_AND_FEE_ENABLE and (graphics 12.50+) GLOBAL_DEBUG_ENABLE
    set on the render/compute engines; INTERRUPT_ALL writes FORCE_EXTERNAL_HALT, then
    FORCE_EXCEPTION, then clears both.
  * Attention: per DSS (in the topology's order) two 32-bit rows, TD_ATT(0) and TD_ATT(1); each
    row covers 4 EUs of 8 threads, EU e of the row in bits 8e..8e+7, one bit per thread.  The
    bitmap the kernel reports is those rows in order: 8 bytes per enabled DSS.  Writing a row's
    bits to TD_CLR clears them (the thread waiting in `sync.host` goes on).

The model: a thread is placed on a free (DSS, EU, thread) slot when it is dispatched and frees it
at EOT; a thread halted in `sync.host` raises its slot's attention bit; clearing the bit resumes
it.  Writing TD_CTL applies BREAKPOINT_ENABLE to every thread (live and later) and, with
FEH_AND_FEE_ENABLE, FORCE_EXTERNAL_HALT or FORCE_EXCEPTION interrupts every live thread (and
FORCE_EXTERNAL_HALT every thread dispatched while it stays set): each enters its system routine
at its next instruction boundary.  No driver state lives here: the kernel reads and writes these
registers and decides what they mean.
"""

from __future__ import annotations

import heapq
import threading
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

from .eu import Stop

if TYPE_CHECKING:
    from .compute import HwThread

__all__ = ["Topology", "EuArray", "TD_CTL", "TD_CTL_GLOBAL_DEBUG_ENABLE", "TD_CTL_BREAKPOINT_ENABLE",
           "TD_CTL_FORCE_EXCEPTION", "TD_CTL_FORCE_THREAD_BREAKPOINT_ENABLE",
           "TD_CTL_FORCE_EXTERNAL_HALT", "TD_CTL_FEH_AND_FEE_ENABLE", "TD_ATT_ROWS",
           "EUS_PER_ROW", "TD_CTL_EUDEBUG"]

TD_CTL = 0xE400
TD_CTL_GLOBAL_DEBUG_ENABLE = 1 << 0
TD_CTL_BREAKPOINT_ENABLE = 1 << 2
TD_CTL_FORCE_EXCEPTION = 1 << 3
TD_CTL_FORCE_THREAD_BREAKPOINT_ENABLE = 1 << 4
TD_CTL_FORCE_EXTERNAL_HALT = 1 << 6
TD_CTL_FEH_AND_FEE_ENABLE = 1 << 7
#: what the kernel sets in TD_CTL while eudebug is enabled (graphics version 20 >= 12.50)
TD_CTL_EUDEBUG = (TD_CTL_BREAKPOINT_ENABLE | TD_CTL_FORCE_THREAD_BREAKPOINT_ENABLE
                  | TD_CTL_FEH_AND_FEE_ENABLE | TD_CTL_GLOBAL_DEBUG_ENABLE)
TD_ATT_ROWS = 2
EUS_PER_ROW = 4
_HALT = TD_CTL_FORCE_EXTERNAL_HALT | TD_CTL_FORCE_EXCEPTION


@dataclass(frozen=True)
class Topology:
    """Enabled DSS (in fuse order), EUs per DSS and threads per EU of one GT."""

    dss: tuple[int, ...] = tuple(range(8))
    eus_per_dss: int = 8
    threads_per_eu: int = 8

    def __post_init__(self) -> None:
        if self.eus_per_dss > TD_ATT_ROWS * EUS_PER_ROW or self.threads_per_eu > 8:
            raise ValueError("the attention rows hold 8 EUs of 8 threads per DSS")

    @property
    def slots(self) -> int:
        return len(self.dss) * self.eus_per_dss * self.threads_per_eu

    @property
    def bitmap_size(self) -> int:
        """Bytes of the attention bitmap: two 32-bit rows per enabled DSS."""
        return len(self.dss) * TD_ATT_ROWS * 4

    def place(self, slot: int) -> tuple[int, int, int]:
        """Slot number -> (DSS index in the topology's order, EU, thread).  Consecutive slots
        go to different DSS first, then EUs, then threads, as a dispatcher spreads the load."""
        n = len(self.dss)
        return slot % n, (slot // n) % self.eus_per_dss, slot // (n * self.eus_per_dss)

    def bit(self, slot: int) -> tuple[int, int]:
        """Slot number -> (byte, bit) of its attention bit in the bitmap."""
        dss, eu, thread = self.place(slot)
        return dss * TD_ATT_ROWS * 4 + eu, thread


class EuArray:
    """The EU threads of one GT (every engine's walkers share it) and its debug registers."""

    def __init__(self, topology: Topology | None = None) -> None:
        self.topology = topology or Topology()
        self._slots: list[HwThread | None] = [None] * self.topology.slots
        self._vacant = list(range(self.topology.slots))    # a heap: the lowest free slot first
        self._free = threading.Condition(threading.Lock())
        self.td_ctl = 0
        self._gate = threading.Condition(threading.Lock())
        self._busy = False
        self._observers = 0

    # -- slices ---------------------------------------------------------------------------------------
    # The dispatchers interleave threads a slice at a time.  The driver reads or clears attention
    # between slices (`quiescent`), never while a thread is half way through one, and a waiting
    # reader goes before the next slice.  Lock order: a slice or a quiescent section first, then
    # the driver's lock.
    @contextmanager
    def _hold(self, observer: bool) -> Iterator[None]:
        with self._gate:
            if observer:
                self._observers += 1
            try:
                while self._busy or (not observer and self._observers):
                    self._gate.wait()
            finally:
                if observer:
                    self._observers -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._gate:
                self._busy = False
                self._gate.notify_all()

    def round(self) -> AbstractContextManager[None]:
        """One thread's slice on a dispatcher."""
        return self._hold(False)

    def quiescent(self) -> AbstractContextManager[None]:
        """No round runs inside: attention is stable apart from the driver's own writes."""
        return self._hold(True)

    # -- placement (the thread dispatcher) ---------------------------------------------------------
    def try_place(self, thread: "HwThread") -> bool:
        """Put a dispatched thread on the lowest free slot; False when every slot is taken."""
        with self._free:
            if not self._vacant:
                return False
            slot = heapq.heappop(self._vacant)
            self._slots[slot] = thread
            thread.gt_slot = slot
            thread.location = self.topology.place(slot)
        self._arm(thread, new=True)
        return True

    def release(self, thread: "HwThread") -> None:
        with self._free:
            slot = thread.gt_slot
            if slot is not None and self._slots[slot] is thread:
                self._slots[slot] = None
                heapq.heappush(self._vacant, slot)
                self._free.notify_all()

    def threads(self) -> list["HwThread"]:
        """Every thread on the GT, in slot order."""
        with self._free:
            return [t for t in self._slots if t is not None]

    # -- TD_CTL ----------------------------------------------------------------------------------------
    @property
    def breakpoints_armed(self) -> bool:
        return bool(self.td_ctl & TD_CTL_BREAKPOINT_ENABLE)

    def _halting(self) -> bool:
        return bool(self.td_ctl & TD_CTL_FEH_AND_FEE_ENABLE and self.td_ctl & _HALT)

    def _arm(self, thread: "HwThread", new: bool = False) -> None:
        thread.eu.breakpoints_enabled = self.breakpoints_armed
        if self._halting() and (not new or self.td_ctl & TD_CTL_FORCE_EXTERNAL_HALT):
            thread.interrupt()

    def write_td_ctl(self, value: int) -> None:
        self.td_ctl = value & 0xFFFFFFFF
        for t in self.threads():
            self._arm(t)

    # -- attention ------------------------------------------------------------------------------------
    def attention(self) -> bytes:
        """TD_ATT of every DSS, rows in order: a bit per thread halted in `sync.host`."""
        bits = bytearray(self.topology.bitmap_size)
        for t in self.threads():
            if t.eu.state is Stop.HOST_WAIT and t.gt_slot is not None:
                byte, bit = self.topology.bit(t.gt_slot)
                bits[byte] |= 1 << bit
        return bytes(bits)

    def needs_attention(self) -> bool:
        return any(t.eu.state is Stop.HOST_WAIT for t in self.threads())

    def runnable(self) -> bool:
        """Some thread on the GT can still run (attention may still change)."""
        return any(t.eu.state is None and not t.paused for t in self.threads())

    def clear_attention(self, bitmap: bytes) -> int:
        """TD_CLR: resume the halted threads whose bits are set (others are unaffected);
        returns how many went on."""
        resumed = 0
        for t in self.threads():
            if t.gt_slot is None:
                continue
            byte, bit = self.topology.bit(t.gt_slot)
            if byte < len(bitmap) and bitmap[byte] >> bit & 1 and t.eu.state is Stop.HOST_WAIT:
                t.resume()
                resumed += 1
        return resumed

    def contexts(self) -> Iterable[object]:
        """The contexts (LRCs) whose threads are on the GT."""
        seen: list[object] = []
        for t in self.threads():
            if t.ctx is not None and all(c is not t.ctx for c in seen):
                seen.append(t.ctx)
        return seen
