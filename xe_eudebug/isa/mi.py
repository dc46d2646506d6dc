"""Command formats of the Xe2 (graphics version 20) command streamer, as mesa's gen20.xml and
IGT's headers describe them: header fields, opcodes and fixed lengths.

A command's first dword names it: bits 31:29 are the command type (0 = MI, 3 = the graphics
pipeline).  MI commands carry a 6-bit opcode in bits 28:23; graphics-pipeline commands carry a
sub-type (28:27), an opcode (26:24) and a sub-opcode (23:16, or 23:18 for the compute commands
of sub-type 2).  Variable-length commands hold "DWord Length" = total length - 2 in their low
bits.
"""

from __future__ import annotations

# -- MI commands (command type 0): opcode in bits 28:23 -----------------------------------------
MI_NOOP = 0x00
MI_USER_INTERRUPT = 0x02
MI_ARB_CHECK = 0x05
MI_ARB_ON_OFF = 0x08
MI_BATCH_BUFFER_END = 0x0A
MI_SEMAPHORE_WAIT = 0x1C
MI_STORE_DATA_IMM = 0x20
MI_LOAD_REGISTER_IMM = 0x22
MI_STORE_REGISTER_MEM = 0x24
MI_FLUSH_DW = 0x26
MI_LOAD_REGISTER_MEM = 0x29
MI_LOAD_REGISTER_REG = 0x2A
MI_BATCH_BUFFER_START = 0x31

#: opcode -> (name, mask of the "DWord Length" field, or 0 for a one-dword command)
MI_COMMANDS: dict[int, tuple[str, int]] = {
    MI_NOOP: ("MI_NOOP", 0),
    MI_USER_INTERRUPT: ("MI_USER_INTERRUPT", 0),
    MI_ARB_CHECK: ("MI_ARB_CHECK", 0),
    MI_ARB_ON_OFF: ("MI_ARB_ON_OFF", 0),
    MI_BATCH_BUFFER_END: ("MI_BATCH_BUFFER_END", 0),
    MI_SEMAPHORE_WAIT: ("MI_SEMAPHORE_WAIT", 0xFF),
    MI_STORE_DATA_IMM: ("MI_STORE_DATA_IMM", 0x3FF),
    MI_LOAD_REGISTER_IMM: ("MI_LOAD_REGISTER_IMM", 0xFF),
    MI_STORE_REGISTER_MEM: ("MI_STORE_REGISTER_MEM", 0xFF),
    MI_FLUSH_DW: ("MI_FLUSH_DW", 0x3F),
    MI_LOAD_REGISTER_MEM: ("MI_LOAD_REGISTER_MEM", 0xFF),
    MI_LOAD_REGISTER_REG: ("MI_LOAD_REGISTER_REG", 0xFF),
    MI_BATCH_BUFFER_START: ("MI_BATCH_BUFFER_START", 0xFF),
}

# header bits
MI_BBS_SECOND_LEVEL = 1 << 22          # MI_BATCH_BUFFER_START: Second Level Batch Buffer
MI_BBS_PPGTT = 1 << 8                  # MI_BATCH_BUFFER_START: Address Space Indicator (PPGTT)
MI_USE_GGTT = 1 << 22                  # SDI/LRM/SRM/SEMAPHORE_WAIT: Use Global GTT / memory type
MI_SDI_STORE_QWORD = 1 << 21           # MI_STORE_DATA_IMM: Store Qword
MI_LRI_LRM_CS_MMIO = 1 << 19           # LRI/LRM/SRM: MMIO Remap Enable (engine-relative offset)
MI_LRR_SOURCE_CS_MMIO = 1 << 18        # LRR: source is engine-relative
MI_LRR_DEST_CS_MMIO = 1 << 19          # LRR: destination is engine-relative
MI_SEMAPHORE_REGISTER_POLL = 1 << 16   # MI_SEMAPHORE_WAIT: compare a register, not memory
MI_SEMAPHORE_COMPARE_SHIFT = 12        # MI_SEMAPHORE_WAIT: Compare Operation, bits 14:12
MI_FLUSH_DW_POST_SYNC_SHIFT = 14       # MI_FLUSH_DW: Post-Sync Operation, bits 15:14
MI_NOOP_WRITE_ID = 1 << 22             # MI_NOOP: Identification Number Register Write Enable

# MI_SEMAPHORE_WAIT compare operations (semaphore address data vs semaphore data dword)
SAD_GREATER_THAN_SDD = 0
SAD_GREATER_THAN_OR_EQUAL_SDD = 1
SAD_LESS_THAN_SDD = 2
SAD_LESS_THAN_OR_EQUAL_SDD = 3
SAD_EQUAL_SDD = 4
SAD_NOT_EQUAL_SDD = 5

# post-sync operations (MI_FLUSH_DW and PIPE_CONTROL, bits 15:14 of their flags dword)
POST_SYNC_NONE = 0
POST_SYNC_WRITE_IMMEDIATE = 1
POST_SYNC_WRITE_DEPTH_COUNT = 2        # PIPE_CONTROL only
POST_SYNC_WRITE_TIMESTAMP = 3

# -- graphics pipeline commands (command type 3) -------------------------------------------------
#: (sub-type, opcode, sub-opcode) -> (name, length in dwords on graphics version 20, or None
#: when the length varies).  Sub-opcodes of sub-type 2 are bits 23:18, the others 23:16.
GFX_COMMANDS: dict[tuple[int, int, int], tuple[str, int | None]] = {
    (1, 1, 4): ("PIPELINE_SELECT", 1),
    (0, 1, 1): ("STATE_BASE_ADDRESS", 22),
    (0, 1, 2): ("STATE_SIP", 3),
    (0, 1, 5): ("STATE_COMPUTE_MODE", 3),
    (3, 1, 0x19): ("3DSTATE_BINDING_TABLE_POOL_ALLOC", 4),
    (3, 2, 0): ("PIPE_CONTROL", 6),
    (2, 2, 0): ("CFE_STATE", 6),
    (2, 2, 2): ("COMPUTE_WALKER", 40),
}
PIPE_CONTROL_POST_SYNC_SHIFT = 14      # flags dword (dw1), bits 15:14
PIPE_CONTROL_GLOBAL_GTT = 1 << 24      # flags dword: Destination Address Type

# -- engine registers (offsets relative to the engine's MMIO base) --------------------------------
CS_GPR0 = 0x600                        # CS_GPR[0..15], 64 bits each: 0x600..0x67C
CS_GPR_COUNT = 16
RING_TIMESTAMP = 0x358


def command_type(dw: int) -> int:
    return dw >> 29


def mi_opcode(dw: int) -> int:
    return (dw >> 23) & 0x3F


def gfx_key(dw: int) -> tuple[int, int, int]:
    subtype = (dw >> 27) & 3
    opcode = (dw >> 24) & 7
    sub = (dw >> 18) & 0x3F if subtype == 2 else (dw >> 16) & 0xFF
    return subtype, opcode, sub


def decode(dw: int) -> tuple[str, int] | None:
    """(name, length in dwords) of the command whose header is `dw`, or None if unknown."""
    ctype = command_type(dw)
    if ctype == 0:
        entry = MI_COMMANDS.get(mi_opcode(dw))
        if entry is None:
            return None
        name, mask = entry
        return name, (dw & mask) + 2 if mask else 1
    if ctype == 3:
        gentry = GFX_COMMANDS.get(gfx_key(dw))
        if gentry is None:
            return None
        name, fixed = gentry
        return name, 1 if fixed == 1 else (dw & 0xFF) + 2
    return None


# -- encoders (tests, the driver's ring) ------------------------------------------------------------

def mi(opcode: int, length: int = 1, flags: int = 0) -> int:
    """An MI header: `length` is the total dword count (1 for a one-dword command)."""
    return (opcode << 23) | flags | (length - 2 if length > 1 else 0)


def gfx(subtype: int, opcode: int, sub: int, length: int) -> int:
    shift = 18 if subtype == 2 else 16
    return 3 << 29 | subtype << 27 | opcode << 24 | sub << shift | (length - 2 if length > 1 else 0)
