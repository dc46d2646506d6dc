"""The send messages IGT's templates use, executed through the thread's memory interface.

* gateway (SFID 3) with EOT: the thread ends.
* LSC 2D block load/store (descriptor opcode 3/7):
  - typed, SFID 13 (TGM), address type BTI: the surface of the binding table index in the
    extended descriptor bits 31..24.  Payload (src0): dword 5 block X in bytes, dword 6 block
    Y in rows, dword 7 bits 7..0 block width - 1 (bytes), bits 15..8 block height - 1.
  - untyped, SFID 15 (UGM), flat address: the Untyped2DBLOCKAddressPayload, dwords 0-1 base
    address, 2 surface width - 1, 3 surface height - 1, 4 pitch - 1 (bytes), 5 X, 6 Y,
    7 block width - 1 and height - 1 as above.
  Stores take their data from src1 (length in the descriptor) or, with no src1, from the
  registers after the payload (src0 length - 1 of them); loads fill `rlen` registers from the
  destination, zero beyond the block.  Rows are packed at the block width.  The parts of a
  typed block outside the surface are dropped on store and read as zero; a flat access that
  touches an unbound page is a page fault.
Everything else raises SendError (the thread takes it as an illegal instruction).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from xe_eudebug.isa.encoding import GRF_BYTES, Instruction

if TYPE_CHECKING:
    from .thread import EuThread, Stop

SFID_GATEWAY, SFID_TGM, SFID_UGM = 3, 13, 15
LSC_LOAD_BLOCK2D, LSC_STORE_BLOCK2D = 3, 7
ADDR_FLAT, ADDR_BTI = 0, 3


class SendError(Exception):
    def __init__(self, message: str, fault: int | None = None, write: bool = False):
        super().__init__(message)
        self.fault = fault
        self.write = write


def _desc_fields(desc: int) -> dict[str, int]:
    return dict(op=desc & 0x3F, data_size=(desc >> 9) & 7, rlen=(desc >> 20) & 0x1F,
                mlen=(desc >> 25) & 0xF, addr_type=(desc >> 29) & 3)


def _regs(t: "EuThread", nr: int, count: int) -> bytes:
    if nr + count > len(t.grf) // GRF_BYTES:
        raise SendError(f"payload r{nr}..r{nr + count - 1} is beyond the register file")
    return bytes(t.grf[nr * GRF_BYTES:(nr + count) * GRF_BYTES])


def execute_send(t: "EuThread", inst: Instruction) -> "Stop | None":
    from .thread import Stop

    if inst.sfid == SFID_GATEWAY:
        if inst.eot:
            return Stop.EOT
        raise SendError(f"gateway message {inst.desc:#x} without EOT is not executed")
    if inst.eot:
        raise SendError(f"EOT on SFID {inst.sfid} is not executed")
    if inst.sfid not in (SFID_TGM, SFID_UGM):
        raise SendError(f"SFID {inst.sfid} (desc {inst.desc:#x}) is not executed")
    f = _desc_fields(inst.desc)
    if f["op"] not in (LSC_LOAD_BLOCK2D, LSC_STORE_BLOCK2D):
        raise SendError(f"LSC operation {f['op']} (desc {inst.desc:#x}) is not executed")
    payload = _regs(t, inst.srcs[0].nr, 1)
    dw = struct.unpack_from("<8I", payload)
    block_w, block_h = (dw[7] & 0xFF) + 1, ((dw[7] >> 8) & 0xFF) + 1
    store = f["op"] == LSC_STORE_BLOCK2D
    if inst.sfid == SFID_TGM:
        if f["addr_type"] != ADDR_BTI:
            raise SendError(f"typed message with address type {f['addr_type']} is not executed")
        bti = inst.exdesc >> 24
        surf = t.memory.surface(bti)
        if surf is None:
            raise SendError(f"no surface at binding table index {bti}")
        base, width, height, pitch = surf.base, surf.width, surf.height, surf.pitch
        x, y, clip = dw[5], dw[6], True
    else:
        if f["addr_type"] != ADDR_FLAT:
            raise SendError(f"untyped message with address type {f['addr_type']} "
                            "is not executed")
        base = dw[0] | dw[1] << 32
        width, height, pitch = dw[2] + 1, dw[3] + 1, dw[4] + 1
        x, y, clip = dw[5], dw[6], False
    size = block_w * block_h
    if store:
        s1 = inst.srcs[1]
        if s1.file == "grf" and s1.length:
            data = _regs(t, s1.nr, s1.length)
        else:
            data = _regs(t, inst.srcs[0].nr + 1, max(f["mlen"] - 1, 0))
        if len(data) < size:
            raise SendError(f"store of {size} bytes with {len(data)} bytes of data")
    else:
        out = bytearray(f["rlen"] * GRF_BYTES)
        if len(out) < size:
            raise SendError(f"load of {size} bytes into {f['rlen']} registers")
    for row in range(block_h):
        ry = y + row
        lo, hi = x, x + block_w
        if clip:
            if ry >= height:
                continue
            hi = min(hi, width)
            if lo >= hi:
                continue
        address = (base + ry * pitch + lo) & ((1 << 64) - 1)
        at = row * block_w
        if store:
            if not t.memory.write(address, data[at:at + hi - lo]):
                raise SendError(f"store to {address:#x}", fault=address, write=True)
        else:
            got = t.memory.read(address, hi - lo)
            if got is None:
                raise SendError(f"load from {address:#x}", fault=address)
            out[at:at + len(got)] = got
    if not store and inst.dst.file == "grf":
        t.write_grf(inst.dst.nr, bytes(out))
    return None
