"""The narrow memory interface an EU thread runs against, and a flat in-process memory.

The engine provides the real one (the VM of the queue, through its page tables); the thread
only reads and writes bytes at GPU virtual addresses and looks up the surface state of a
binding table index.  A `None` from `read` or `False` from `write` is a page fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Surface:
    """A linear 2D surface (binding table entry): base address, row width and count, pitch."""

    base: int
    width: int  # bytes per row
    height: int  # rows
    pitch: int  # bytes between row starts


class EuMemory(Protocol):
    def read(self, address: int, size: int) -> bytes | None:
        """`size` bytes at GPU virtual `address`, or None for a page fault."""

    def write(self, address: int, data: bytes) -> bool:
        """Store `data` at `address`; False for a page fault (nothing is written then)."""

    def surface(self, bti: int) -> Surface | None:
        """The surface at binding table index `bti`, or None when there is none."""


class FlatMemory:
    """Bound ranges of a GPU address space held in bytearrays; anything else faults."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, bytearray]] = []
        self.surfaces: dict[int, Surface] = {}
        self.reads = 0
        self.writes = 0

    def bind(self, address: int, size_or_data: int | bytes) -> bytearray:
        data = bytearray(size_or_data) if isinstance(size_or_data, int) else \
            bytearray(size_or_data)
        for start, buf in self._ranges:
            if address < start + len(buf) and start < address + len(data):
                raise ValueError(f"bind at {address:#x}+{len(data):#x} overlaps "
                                 f"{start:#x}+{len(buf):#x}")
        self._ranges.append((address, data))
        return data

    def _find(self, address: int, size: int) -> tuple[bytearray, int] | None:
        for start, buf in self._ranges:
            if start <= address and address + size <= start + len(buf):
                return buf, address - start
        return None

    def read(self, address: int, size: int) -> bytes | None:
        self.reads += 1
        hit = self._find(address, size)
        return None if hit is None else bytes(hit[0][hit[1]:hit[1] + size])

    def write(self, address: int, data: bytes) -> bool:
        self.writes += 1
        hit = self._find(address, len(data))
        if hit is None:
            return False
        hit[0][hit[1]:hit[1] + len(data)] = data
        return True

    def surface(self, bti: int) -> Surface | None:
        return self.surfaces.get(bti)
