"""Shared helpers of the uapi modules: a readable ctypes base and request-name registration."""

from __future__ import annotations

import ctypes
import struct
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


# --- precompiled layouts for fast paths --------------------------------------------------------

_CODES = {
    ctypes.c_uint8: "B", ctypes.c_int8: "b", ctypes.c_uint16: "H", ctypes.c_int16: "h",
    ctypes.c_uint32: "I", ctypes.c_int32: "i", ctypes.c_uint64: "Q", ctypes.c_int64: "q",
}


def struct_code(ctype: type) -> str:
    """The ``struct`` format code of a ctypes scalar type of the uapi (``u64`` -> ``"Q"``)."""
    try:
        return _CODES[ctype]
    except KeyError:
        raise TypeError(f"no struct code for ctypes type {ctype.__name__}") from None


class Layout(struct.Struct):
    """A ``struct.Struct`` built from a ctypes layout of this package by :func:`layout`.

    ``offset`` is where its first field sits in the C struct (pass it to ``unpack_from`` /
    ``pack_into``), ``names`` the fields it covers in order, ``ctype`` the C struct."""

    __slots__ = ("offset", "names", "ctype")
    offset: int
    names: tuple[str, ...]
    ctype: type


def _member(ctype: type, name: str) -> tuple[int, type]:
    """Offset and ctypes type of field ``name`` of ``ctype`` (also a member of an anonymous union)."""
    types = {f[0]: f[1] for f in ctype._fields_}
    if name in types:
        return getattr(ctype, name).offset, types[name]
    for anon in getattr(ctype, "_anonymous_", ()):
        try:
            off, t = _member(types[anon], name)
        except KeyError:
            continue
        return getattr(ctype, anon).offset + off, t
    raise KeyError(name)


def _scalars(ctype: type) -> list[tuple[int, str]]:
    """(relative offset, struct code) of every scalar in ``ctype``: arrays and nested structs are
    expanded, a union counts as its first member, a flexible array member has none."""
    if ctype in _CODES:
        return [(0, _CODES[ctype])]
    if issubclass(ctype, ctypes.Array):
        step = ctypes.sizeof(ctype._type_)
        inner = _scalars(ctype._type_)
        return [(i * step + o, c) for i in range(ctype._length_) for o, c in inner]
    if issubclass(ctype, ctypes.Union):
        return _scalars(ctype._fields_[0][1])
    if issubclass(ctype, ctypes.Structure):
        return [(getattr(ctype, n).offset + o, c) for n, t, *_ in ctype._fields_ for o, c in _scalars(t)]
    return [(0, struct_code(ctype))]     # not a uapi scalar: TypeError


def layout(ctype: type, *names: str) -> Layout:
    """A precompiled ``struct.Struct`` of fields ``names`` of the ctypes struct ``ctype`` (all its
    fields when none are named), for fast paths that must not restate a layout.

    Names are C field names (``a.b`` for a nested struct's field; members of anonymous unions by
    their own name); array and nested-struct fields give one value per scalar. Fields must be
    named in ascending offset order; gaps become pad bytes. Offsets come from ctypes and every
    field's position in the format is checked against them. When the last named field is the
    struct's last, the format runs to the struct's end (its tail padding included), so ``pack``
    of all fields gives the whole struct."""
    if not names:
        names = tuple(n for n, *_ in ctype._fields_)
    fmt, start, end = "=", None, 0
    for name in names:
        off, t = 0, ctype
        for part in name.split("."):
            try:
                o, t = _member(t, part)
            except KeyError:
                raise KeyError(f"layout of {ctype.__name__}: no field {name}") from None
            off += o
        if start is None:
            start = end = off
        if off < end:
            raise ValueError(f"layout of {ctype.__name__}: field {name} (offset {off}) is out of order "
                             f"or overlaps the field before it (which ends at {end})")
        fmt += "x" * (off - end)
        for rel, code in _scalars(t):
            gap = off + rel - start - struct.calcsize(fmt)
            if gap < 0:
                raise ValueError(f"layout of {ctype.__name__}: a scalar of {name} overlaps at offset {off + rel}")
            fmt += "x" * gap + code
        end = off + ctypes.sizeof(t)
        if struct.calcsize(fmt) > end - start:
            raise ValueError(f"layout of {ctype.__name__}: field {name} does not fit at offset {off}")
        fmt += "x" * (end - start - struct.calcsize(fmt))
    assert start is not None
    if all(getattr(ctype, n).offset < end or ctypes.sizeof(t) == 0 for n, t, *_ in ctype._fields_):
        fmt += "x" * (ctypes.sizeof(ctype) - end)
    lay = Layout(fmt)
    lay.offset, lay.names, lay.ctype = start, tuple(names), ctype
    return lay
