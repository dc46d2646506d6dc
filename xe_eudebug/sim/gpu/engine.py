"""An engine's command streamer: fetches and executes commands through an address-space view.

The driver gives `CommandStreamer.run` a ring (the privileged commands it emitted for one job:
one MI_BATCH_BUFFER_START per batch, the user-fence store), the queue's `AddressSpace` and the
LRC's `Context` (its register file).  The streamer executes until the ring's end and returns a
`JobResult`: completed, a fault on an unmapped address (what the hardware reports as a CAT
error), a command it does not know (the dword and its address), or stopped on the driver's
request (job timeout, queue killed).

User batches run non-privileged, so every memory operand of a batch command is a PPGTT address
(the "Use Global GTT" bits are ignored, as the hardware ignores them in a non-privileged batch).
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ... import uapi as _uapi
from ...isa import mi
from .compute import ComputeState, EuScheduler, HwThread, ThreadError, ThreadFault, Walker, WalkerError
from .gt import EuArray

log = logging.getLogger(__name__)

__all__ = ["AddressSpace", "GpuFault", "EngineInfo", "Context", "JobResult", "CommandStreamer",
           "ENGINE_MMIO_BASE"]

#: MMIO base of each engine (class, instance): RCS, BCS, CCS0..CCS3.
ENGINE_MMIO_BASE = {
    (_uapi.DRM_XE_ENGINE_CLASS_RENDER, 0): 0x2000,
    (_uapi.DRM_XE_ENGINE_CLASS_COPY, 0): 0x22000,
    (_uapi.DRM_XE_ENGINE_CLASS_COMPUTE, 0): 0x1A000,
    (_uapi.DRM_XE_ENGINE_CLASS_COMPUTE, 1): 0x1C000,
    (_uapi.DRM_XE_ENGINE_CLASS_COMPUTE, 2): 0x26000,
    (_uapi.DRM_XE_ENGINE_CLASS_COMPUTE, 3): 0x28000,
}
TIMESTAMP_HZ = 19_200_000
MAX_COMMAND_DWORDS = 1024             # longest header length field (MI_STORE_DATA_IMM: 10 bits)
SEMAPHORE_POLL_S = 0.001              # a waiting MI_SEMAPHORE_WAIT re-reads memory this often
SPIN_YIELD_S = 0.0005                 # a jump back yields the CPU this long (a spinning batch)
STOP_CHECK_EVERY = 64                 # commands between checks of the driver's stop request


class GpuFault(Exception):
    """An access to an address the VM does not map."""

    def __init__(self, va: int, write: bool) -> None:
        super().__init__(f"GPU {'write' if write else 'read'} fault at {va:#x}")
        self.va = va
        self.write = write


class AddressSpace(Protocol):
    """A GPU VM as the engine sees it (the driver implements it)."""

    def read(self, va: int, size: int) -> bytes: ...          # raises GpuFault

    def write(self, va: int, data: bytes) -> None: ...        # raises GpuFault


@dataclass
class EngineInfo:
    engine_class: int
    instance: int

    @property
    def mmio_base(self) -> int:
        return ENGINE_MMIO_BASE.get((self.engine_class, self.instance), 0x2000)


@dataclass
class Context:
    """The state an LRC saves: the engine's register file (32-bit registers by MMIO address)."""

    registers: dict[int, int] = field(default_factory=dict)
    compute: ComputeState = field(default_factory=ComputeState)


@dataclass
class JobResult:
    status: str                   # "completed", "fault", "bad-command", "eu-error", "stopped"
    address: int = 0                          # where the streamer was (fault: the faulting VA)
    dword: int = 0                            # the unknown command's header
    reason: str = ""
    state: list[tuple[str, int, tuple[int, ...]]] = field(default_factory=list)
    walkers: int = 0                          # COMPUTE_WALKERs executed
    commands: int = 0
    threads: int = 0                          # EU threads dispatched
    instructions: int = 0                     # EU instructions executed


class _Ring:
    """The ring as an address space of its own (privileged, driver-written)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, va: int, size: int) -> bytes:
        if va < 0 or va + size > len(self.data):
            raise GpuFault(va, False)
        return self.data[va:va + size]


class _BadCommand(Exception):
    def __init__(self, dword: int, address: int, reason: str) -> None:
        super().__init__(reason)
        self.dword = dword
        self.address = address


class _Stopped(Exception):
    pass


class CommandStreamer:
    """Executes jobs on one engine (one instance per engine; `run` is re-entrant per context)."""

    def __init__(self, info: EngineInfo, gt: EuArray | None = None) -> None:
        self.info = info
        self.base = info.mmio_base
        self.gt = gt if gt is not None else EuArray()     # the EUs of the engine's GT
        self.dispatches: list[EuScheduler] = []       # one per walker running on this engine

    @property
    def threads(self) -> list[HwThread]:
        """The live EU threads of this engine (every running walker's)."""
        return [t for d in list(self.dispatches) for t in list(d.live)]

    # -- registers --------------------------------------------------------------------------------
    def _reg(self, offset: int, cs_relative: bool) -> int:
        return self.base + (offset & 0xFFF) if cs_relative else offset & 0x7FFFFC

    def _read_reg(self, ctx: Context, addr: int) -> int:
        if addr == self.base + mi.RING_TIMESTAMP:
            return int(time.monotonic() * TIMESTAMP_HZ) & 0xFFFFFFFF
        return ctx.registers.get(addr, 0)

    # -- the job ------------------------------------------------------------------------------------
    def run(self, ring: bytes, space: AddressSpace, ctx: Context,
            stop: Callable[[], str | None]) -> JobResult:
        result = JobResult("completed")
        try:
            self._execute(ring, space, ctx, stop, result)
        except GpuFault as exc:
            result.status, result.address = "fault", exc.va
            result.reason = str(exc)
        except ThreadFault as exc:
            result.status, result.address = "fault", exc.address
            result.reason = str(exc)
        except _BadCommand as exc:
            result.status, result.address, result.dword = "bad-command", exc.address, exc.dword
            result.reason = str(exc)
        except ThreadError as exc:
            result.status, result.reason = "eu-error", str(exc)
        except _Stopped as exc:
            result.status, result.reason = "stopped", str(exc)
        return result

    def _execute(self, ring: bytes, space: AddressSpace, ctx: Context,
                 stop: Callable[[], str | None], result: JobResult) -> None:
        ring_space = _Ring(ring)
        source: _Ring | AddressSpace = ring_space
        ip = 0
        in_batch = False
        return_to: tuple[int, bool] | None = None      # after a second-level batch: (ip, chained)
        ring_return = 0                                # ring address after the first-level BBS
        count = 0
        while True:
            if source is ring_space and ip >= len(ring):
                return
            count += 1
            result.commands = count
            if count % STOP_CHECK_EVERY == 0:
                self._check_stop(stop)
            header = struct.unpack("<I", source.read(ip, 4))[0]
            decoded = mi.decode(header)
            if decoded is None:
                raise _BadCommand(header, ip, f"unknown command {header:#010x} at {ip:#x}")
            name, length = decoded
            if length > MAX_COMMAND_DWORDS:
                raise _BadCommand(header, ip, f"{name}: length {length}")
            dw = struct.unpack(f"<{length}I", source.read(ip, 4 * length)) if length > 1 else (header,)
            at = ip
            ip += 4 * length
            if mi.command_type(header) == 3:
                self._gfx(name, at, dw, space, ctx, stop, result)
                continue
            op = mi.mi_opcode(header)
            if op == mi.MI_BATCH_BUFFER_END:
                if not in_batch:
                    raise _BadCommand(header, at, "MI_BATCH_BUFFER_END outside a batch")
                if return_to is not None:              # end of a second-level batch
                    ip = return_to[0]
                    return_to = None
                else:                                  # end of the first-level batch
                    source, ip, in_batch = ring_space, ring_return, False
                continue
            if op == mi.MI_BATCH_BUFFER_START:
                target = (dw[1] | dw[2] << 32) & 0xFFFFFFFFFFFC
                if not in_batch:                       # the ring starts a user batch
                    ring_return = ip
                    source, in_batch = space, True
                elif header & mi.MI_BBS_SECOND_LEVEL and return_to is None:
                    return_to = (ip, True)
                if target <= at:
                    self._check_stop(stop)
                    time.sleep(SPIN_YIELD_S)
                ip = target
                continue
            if op == mi.MI_ARB_CHECK:
                self._check_stop(stop)
            elif op == mi.MI_STORE_DATA_IMM:
                addr = (dw[1] | dw[2] << 32) & 0xFFFFFFFFFFFC
                space.write(addr, struct.pack(f"<{length - 3}I", *dw[3:]))
            elif op == mi.MI_LOAD_REGISTER_IMM:
                rel = bool(header & mi.MI_LRI_LRM_CS_MMIO)
                for i in range(1, length - 1, 2):
                    ctx.registers[self._reg(dw[i], rel)] = dw[i + 1]
            elif op in (mi.MI_LOAD_REGISTER_MEM, mi.MI_STORE_REGISTER_MEM):
                reg = self._reg(dw[1], bool(header & mi.MI_LRI_LRM_CS_MMIO))
                addr = (dw[2] | dw[3] << 32) & 0xFFFFFFFFFFFC
                if op == mi.MI_LOAD_REGISTER_MEM:
                    ctx.registers[reg] = struct.unpack("<I", space.read(addr, 4))[0]
                else:
                    space.write(addr, struct.pack("<I", self._read_reg(ctx, reg)))
            elif op == mi.MI_LOAD_REGISTER_REG:
                src = self._reg(dw[1], bool(header & mi.MI_LRR_SOURCE_CS_MMIO))
                dst = self._reg(dw[2], bool(header & mi.MI_LRR_DEST_CS_MMIO))
                ctx.registers[dst] = self._read_reg(ctx, src)
            elif op == mi.MI_FLUSH_DW:
                self._post_sync((header >> mi.MI_FLUSH_DW_POST_SYNC_SHIFT) & 3, dw[1] & ~7, dw[2],
                                dw[3:], space)
            elif op == mi.MI_SEMAPHORE_WAIT:
                self._semaphore_wait(at, header, dw, space, ctx, stop)
            # MI_NOOP, MI_ARB_ON_OFF, MI_USER_INTERRUPT: nothing to model

    def _check_stop(self, stop: Callable[[], str | None]) -> None:
        reason = stop()
        if reason:
            raise _Stopped(reason)

    def _post_sync(self, op: int, lo: int, hi: int, data: tuple[int, ...], space: AddressSpace) -> None:
        addr = (lo | hi << 32) & 0xFFFFFFFFFFFF
        if op == mi.POST_SYNC_WRITE_IMMEDIATE:
            space.write(addr, struct.pack(f"<{len(data)}I", *data))
        elif op == mi.POST_SYNC_WRITE_TIMESTAMP:
            space.write(addr, struct.pack("<Q", int(time.monotonic() * TIMESTAMP_HZ)))
        elif op == mi.POST_SYNC_WRITE_DEPTH_COUNT:
            space.write(addr, struct.pack("<Q", 0))     # no 3D pipeline: no pixels were counted

    def _semaphore_wait(self, at: int, header: int, dw: tuple[int, ...], space: AddressSpace, ctx: Context,
                        stop: Callable[[], str | None]) -> None:
        compare = (header >> mi.MI_SEMAPHORE_COMPARE_SHIFT) & 7
        if len(dw) < 4 or compare > mi.SAD_NOT_EQUAL_SDD:
            raise _BadCommand(header, at, f"MI_SEMAPHORE_WAIT {header:#010x} at {at:#x}: length/compare")
        sdd = dw[1]
        addr = (dw[2] | dw[3] << 32) & 0xFFFFFFFFFFFC
        while True:
            if header & mi.MI_SEMAPHORE_REGISTER_POLL:
                value = self._read_reg(ctx, self._reg(addr, False))
            else:
                value = struct.unpack("<I", space.read(addr, 4))[0]
            if _compare(compare, value, sdd):
                return
            self._check_stop(stop)
            time.sleep(SEMAPHORE_POLL_S)

    def _gfx(self, name: str, at: int, dw: tuple[int, ...], space: AddressSpace, ctx: Context,
             stop: Callable[[], str | None], result: JobResult) -> None:
        if name == "PIPE_CONTROL":
            if len(dw) >= 6:
                op = (dw[1] >> mi.PIPE_CONTROL_POST_SYNC_SHIFT) & 3
                self._post_sync(op, dw[2] & ~3, dw[3], dw[4:6], space)
            return
        result.state.append((name, at, dw))
        if name == "STATE_BASE_ADDRESS":
            ctx.compute.state_base_address(dw)
        elif name == "STATE_SIP":
            ctx.compute.state_sip(dw)
        elif name == "3DSTATE_BINDING_TABLE_POOL_ALLOC":
            ctx.compute.bt_pool(dw)
        elif name == "COMPUTE_WALKER":
            self._walker(at, dw, space, ctx, stop, result)

    def _walker(self, at: int, dw: tuple[int, ...], space: AddressSpace, ctx: Context,
                stop: Callable[[], str | None], result: JobResult) -> None:
        try:
            walker = Walker.parse(at, dw)
        except WalkerError as exc:
            raise _BadCommand(dw[0], at, str(exc)) from None
        sched = EuScheduler(self.gt, ctx)
        self.dispatches.append(sched)
        try:
            sched.run(walker, space, ctx.compute, GpuFault, lambda: self._check_stop(stop))
        finally:
            self.dispatches.remove(sched)
            result.walkers += 1
            result.threads += sched.dispatched
            result.instructions += sched.instructions
        post = walker.postsync                 # POSTSYNC_DATA: after every thread has ended
        self._post_sync(post[0] & 3, post[1] & ~7, post[2], post[3:5], space)


def _compare(op: int, sad: int, sdd: int) -> bool:
    if op == mi.SAD_GREATER_THAN_SDD:
        return sad > sdd
    if op == mi.SAD_GREATER_THAN_OR_EQUAL_SDD:
        return sad >= sdd
    if op == mi.SAD_LESS_THAN_SDD:
        return sad < sdd
    if op == mi.SAD_LESS_THAN_OR_EQUAL_SDD:
        return sad <= sdd
    if op == mi.SAD_EQUAL_SDD:
        return sad == sdd
    return sad != sdd                         # SAD_NOT_EQUAL_SDD
