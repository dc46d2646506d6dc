"""Shared helpers of the uapi modules: a readable ctypes base and request-name registration."""

from __future__ import annotations

import ctypes
from typing import Any

from ..ioctl import register_request_name

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64
s32 = ctypes.c_int32
s64 = ctypes.c_int64


def _field_repr(value: Any) -> str:
    if isinstance(value, ctypes.Structure):
        return repr(value)
    if isinstance(value, ctypes.Array):
        if len(value) == 0:
            return "[]"
        return "[" + ", ".join(_field_repr(v) for v in value) + "]"
    if isinstance(value, int):
        return hex(value) if value > 9 else str(value)
    return repr(value)


class Struct(ctypes.Structure):
    """A C struct of the uapi: fields keep their C names; ``repr`` shows every field."""

    def _fields_in_order(self) -> list[str]:
        names: list[str] = []
        for name, *_ in self._fields_:
            if name in getattr(self, "_anonymous_", ()):
                anon = getattr(self, name)
                names.extend(n for n, *_ in anon._fields_)
            else:
                names.append(name)
        return names

    def __repr__(self) -> str:
        body = ", ".join(f"{n}={_field_repr(getattr(self, n))}" for n in self._fields_in_order())
        return f"{type(self).__name__}({body})"

    def to_bytes(self) -> bytes:
        return ctypes.string_at(ctypes.addressof(self), ctypes.sizeof(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Struct":
        """A copy of ``data`` (at least ``sizeof`` bytes) as this struct."""
        return cls.from_buffer_copy(bytes(data[: ctypes.sizeof(cls)]))


class Union(ctypes.Union):
    def __repr__(self) -> str:
        body = ", ".join(f"{n}={_field_repr(getattr(self, n))}" for n, *_ in self._fields_)
        return f"{type(self).__name__}({body})"


def register_requests(namespace: dict[str, Any]) -> None:
    """Name every ``*IOCTL*`` request macro of a module for the seam's error messages."""
    for name, value in namespace.items():
        if isinstance(value, int) and "IOCTL_" in name and not name.endswith("_BASE"):
            register_request_name(value, name)
