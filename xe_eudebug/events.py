"""Typed, lazy views over eudebug event bytes.

An event is kept as the exact bytes the kernel delivered (or the client recorded); every
field is unpacked from those bytes only when it is read.  Decoding therefore costs one
header unpack and one object; no ctypes structure is built per event.

Field-access rule
-----------------
An event object mirrors its C struct (``struct drm_xe_eudebug_event_<kind>``):

* ``e.base`` is the common header, with ``len``, ``type``, ``flags``, ``seqno`` and
  ``reserved`` exactly as ``e->base.<field>`` in C.
* ``e.type``, ``e.flags`` and ``e.seqno`` are *always* the header's, for every event type,
  so generic code (trigger dispatch, filters, printing) can rely on them.
* Every other attribute is the payload field of that C name: ``e.client_handle``,
  ``e.vm_handle``, ``e.vm_bind_ref_seqno``, ``e.lrc_handle`` (a list), ``e.bitmask`` (bytes) ...
  On a METADATA event ``e.len`` is therefore the metadata's length, as ``em->len`` is in C;
  the event's size is ``e.base.len``.  An event type without a payload field of a name has no
  such attribute (``e.len`` on a VM event raises ``AttributeError``, as ``ev->len`` would not
  compile).
* The three payload fields whose names collide with the header shortcuts -- METADATA ``type``
  and the ``flags`` of VM_BIND, EU_ATTENTION and PAGEFAULT -- are reached through
  ``e.payload.type`` / ``e.payload.flags`` (``e.payload`` is a named tuple of all payload
  fields by C name), and for convenience as ``e.metadata_type`` and ``e.bind_flags``.

``bytes(e)`` returns the raw bytes, ``str(e)`` IGT's text form of the event and ``len(e)`` the
number of stored bytes.  Events are immutable, hashable and compare equal when their bytes are
equal.

Building events
---------------
``make(type, flags=0, /, seqno=0, *, reserved=0, **fields)`` builds an event from its fields
(the header ``len`` is computed).  Header ``type`` and ``flags`` are positional-only, so payload
fields called ``type`` (METADATA) and ``flags`` (VM_BIND, EU_ATTENTION, PAGEFAULT) are passed
as keywords::

    make(EventType.VM, EventFlags.CREATE, seqno=2, client_handle=3, vm_handle=1)
    make(EventType.METADATA, EventFlags.CREATE, seqno=4, client_handle=3,
         metadata_handle=1, type=1, len=8192)
    make(EventType.EXEC_QUEUE, EventFlags.CREATE, seqno=5, client_handle=3, vm_handle=1,
         exec_queue_handle=2, engine_class=4, lrc_handle=[7, 8])   # width defaults to 2

Type and flag values come from :mod:`xe_eudebug.uapi`; nothing here repeats those numbers.
"""

from __future__ import annotations

import ctypes
import struct
from enum import IntEnum, IntFlag
from typing import Any, Callable, ClassVar, Iterable, NamedTuple

from xe_eudebug import uapi as _uapi

__all__ = [
    "EventType",
    "EventFlags",
    "EventHeader",
    "Event",
    "ClientEvent",
    "VmEvent",
    "ExecQueueEvent",
    "EuAttentionEvent",
    "VmBindEvent",
    "VmBindOpEvent",
    "VmBindUfenceEvent",
    "MetadataEvent",
    "VmBindOpMetadataEvent",
    "PagefaultEvent",
    "decode",
    "make",
    "encode",
    "iter_events",
    "event_class",
    "type_name",
    "flags_str",
    "filter_mask",
    "is_filtered",
    "HEADER",
    "HEADER_SIZE",
    "MAX_EVENT_SIZE",
    "EVENT_STRING_MAX_LEN",
    "SEQNO_LIMIT",
    "FILTER_ALL",
    "VM_BIND_FLAG_UFENCE",
]

#: The common header ``struct drm_xe_eudebug_event`` (len, type, flags, seqno, reserved), a
#: precompiled ``struct.Struct`` derived from the uapi layout.
HEADER = _uapi.layout(_uapi.drm_xe_eudebug_event)
HEADER_SIZE = HEADER.size
#: Size of the debugger's read buffer (IGT ``MAX_EVENT_SIZE``).
MAX_EVENT_SIZE = 32 * 1024
#: Longest printed form of one event including the terminating NUL (IGT
#: ``XE_EUDEBUG_EVENT_STRING_MAX_LEN``); :meth:`Event.__str__` keeps at most one less.
EVENT_STRING_MAX_LEN = 4096
#: Seqno sanity cap: IGT rejects seqnos at or above this value when logging or searching.
SEQNO_LIMIT = 10_000_000

_TYPE_NAMES = (
    "NONE",
    "READ",
    "OPEN",
    "VM",
    "EXEC_QUEUE",
    "EU_ATTENTION",
    "VM_BIND",
    "VM_BIND_OP",
    "VM_BIND_UFENCE",
    "METADATA",
    "VM_BIND_OP_METADATA",
    "PAGEFAULT",
)

EventType = IntEnum(  # type: ignore[misc]
    "EventType",
    [(n, int(getattr(_uapi, "DRM_XE_EUDEBUG_EVENT_" + n))) for n in _TYPE_NAMES],
    module=__name__,
)
EventType.__doc__ = "Event types (``DRM_XE_EUDEBUG_EVENT_<NAME>``); values from the uapi."

EventFlags = IntFlag(  # type: ignore[misc]
    "EventFlags",
    [
        (n, int(getattr(_uapi, "DRM_XE_EUDEBUG_EVENT_" + n)))
        for n in ("CREATE", "DESTROY", "STATE_CHANGE", "NEED_ACK")
    ],
    module=__name__,
)
EventFlags.__doc__ = "Header flag bits (``DRM_XE_EUDEBUG_EVENT_<NAME>``); values from the uapi."

#: VM_BIND payload flag: a user fence is attached, a VM_BIND_UFENCE event follows.
VM_BIND_FLAG_UFENCE = int(_uapi.DRM_XE_EUDEBUG_EVENT_VM_BIND_FLAG_UFENCE)

#: IGT's ``XE_EUDEBUG_FILTER_ALL``: one bit per known type.
FILTER_ALL = 0
for _t in EventType:
    FILTER_ALL |= 1 << int(_t)
del _t

_TYPE_BY_VALUE: dict[int, Any] = {int(t): t for t in EventType}
_FLAGS_CACHE: dict[int, Any] = {}


def _as_type(value: int) -> Any:
    """EventType member for a known value, the plain int otherwise."""
    return _TYPE_BY_VALUE.get(value, value)


def _as_flags(value: int) -> Any:
    f = _FLAGS_CACHE.get(value)
    if f is None:
        f = EventFlags(value)
        if len(_FLAGS_CACHE) < 1024:
            _FLAGS_CACHE[value] = f
    return f


def filter_mask(*types: int) -> int:
    """IGT filter bitmask (``1 << type`` per type) for the given event types."""
    mask = 0
    for t in types:
        mask |= 1 << int(t)
    return mask


def is_filtered(event_type: int, filter: int) -> bool:
    """IGT ``XE_EUDEBUG_EVENT_IS_FILTERED``: bit ``event_type`` of ``filter`` is set."""
    return event_type < 64 and bool((filter >> event_type) & 1)


_PRINT_NAMES = {
    EventType.NONE: "none",
    EventType.READ: "read",
    EventType.OPEN: "client",
    EventType.VM: "vm",
    EventType.EXEC_QUEUE: "exec_queue",
    EventType.EU_ATTENTION: "attention",
    EventType.VM_BIND: "vm_bind",
    EventType.VM_BIND_OP: "vm_bind_op",
    EventType.VM_BIND_UFENCE: "vm_bind_ufence",
    EventType.METADATA: "metadata",
    EventType.VM_BIND_OP_METADATA: "vm_bind_op_metadata",
    EventType.PAGEFAULT: "pagefault",
}
_PRINT_NAMES_BY_VALUE = {int(k): v for k, v in _PRINT_NAMES.items()}


def type_name(event_type: int) -> str:
    """The name IGT prints for an event type (``client`` for OPEN, ``UNKNOWN`` if unknown)."""
    return _PRINT_NAMES_BY_VALUE.get(int(event_type), "UNKNOWN")


_CREATE = int(EventFlags.CREATE)
_DESTROY = int(EventFlags.DESTROY)
_STATE_CHANGE = int(EventFlags.STATE_CHANGE)
_NEED_ACK = int(EventFlags.NEED_ACK)


def flags_str(flags: int) -> str:
    """IGT's text for header flags: ``create|ack``, ``create``, ``destroy``, ``state-change``,
    otherwise ``flags unknown``.

    As IGT's ``flags_to_str`` asserts, flags that are none of CREATE, DESTROY and STATE_CHANGE
    but carry NEED_ACK are an error: ``AssertionError`` naming the flags (only a CREATE event
    can ask for an ack, so such an event is corrupt).
    """
    if flags & _CREATE:
        return "create|ack" if flags & _NEED_ACK else "create"
    if flags & _DESTROY:
        return "destroy"
    if flags & _STATE_CHANGE:
        return "state-change"
    if flags & _NEED_ACK:
        raise AssertionError(f"event flags {flags:#x}: NEED_ACK without CREATE")
    return "flags unknown"


def _s64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _s32(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


class EventHeader(NamedTuple):
    """``struct drm_xe_eudebug_event``; ``type`` is an :class:`EventType` when known and
    ``flags`` an :class:`EventFlags`."""

    len: int
    type: int
    flags: int
    seqno: int
    reserved: int


_HDR_UNPACK = HEADER.unpack_from
_LEN_TYPE = _uapi.layout(_uapi.drm_xe_eudebug_event, "len", "type")
_TYPE = _uapi.layout(_uapi.drm_xe_eudebug_event, "type")
_FLAGS = _uapi.layout(_uapi.drm_xe_eudebug_event, "flags")
_SEQNO = _uapi.layout(_uapi.drm_xe_eudebug_event, "seqno")
_TYPE_AT, _FLAGS_AT, _SEQNO_AT = _TYPE.offset, _FLAGS.offset, _SEQNO.offset


class Event:
    """An event of any type; the class of events whose type has no dedicated view
    (NONE, READ, unknown values).  See the module documentation for the field-access rule."""

    __slots__ = ("_raw", "_buf")

    #: Event type this class decodes (None for the generic class).
    TYPE: ClassVar[int | None] = None
    #: Size of the fixed part of the C struct, header included.
    SIZE: ClassVar[int] = HEADER_SIZE
    #: Payload fields of the fixed part: (C name, offset, struct format character).
    FIELDS: ClassVar[tuple[tuple[str, int, str], ...]] = ()
    #: Trailing flexible array: (C name, offset, item format or "s" for bytes, count field).
    ARRAY: ClassVar[tuple[str, int, str, str] | None] = None
    #: Payload named tuple type.
    Payload: ClassVar[type] = NamedTuple("Payload", [])  # type: ignore[misc]

    _raw: bytes
    _buf: bytes

    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        e = decode(raw)
        if type(e) is not type(self):
            raise TypeError(f"{type(self).__name__} cannot hold an event of type {e.base.type}")
        self._raw = e._raw
        self._buf = e._buf

    @classmethod
    def _wrap(cls, raw: bytes) -> "Event":
        obj = object.__new__(cls)
        obj._raw = raw
        n = len(raw)
        obj._buf = raw if n >= cls.SIZE else raw + bytes(cls.SIZE - n)
        return obj

    # -- header ------------------------------------------------------------------------
    @property
    def base(self) -> EventHeader:
        ln, ty, fl, seqno, reserved = _HDR_UNPACK(self._buf)
        return EventHeader(ln, _as_type(ty), _as_flags(fl), seqno, reserved)

    @property
    def type(self) -> Any:  # overridden by a class constant on typed views
        return _as_type(_TYPE.unpack_from(self._buf, _TYPE_AT)[0])

    @property
    def flags(self) -> Any:
        return _as_flags(_FLAGS.unpack_from(self._buf, _FLAGS_AT)[0])

    @property
    def seqno(self) -> int:
        return _SEQNO.unpack_from(self._buf, _SEQNO_AT)[0]

    # -- payload -----------------------------------------------------------------------
    @property
    def payload(self) -> Any:
        """All payload fields by their C names (a named tuple)."""
        return self.Payload(*(getattr_payload(self, name) for name in self.Payload._fields))

    @property
    def body(self) -> bytes:
        """The bytes after the 24-byte header."""
        return self._raw[HEADER_SIZE:]

    @property
    def truncated(self) -> bool:
        """True when fewer bytes are held than the header ``len`` or the fixed struct needs."""
        n = len(self._raw)
        return n < self.SIZE or n < _LEN_TYPE.unpack_from(self._buf)[0]

    # -- conversions -------------------------------------------------------------------
    def __bytes__(self) -> bytes:
        return self._raw

    def __len__(self) -> int:
        return len(self._raw)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Event):
            return self._raw == other._raw
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._raw)

    def members_str(self) -> str:
        """The members part of IGT's text form."""
        return "<...>"

    def __str__(self) -> str:
        ty = _TYPE.unpack_from(self._buf, _TYPE_AT)[0]
        head = f"{type_name(ty)}({ty})"
        s = f"({self.seqno}) {head:>15}:{flags_str(_FLAGS.unpack_from(self._buf, _FLAGS_AT)[0])}: {self.members_str()}"
        return s[: EVENT_STRING_MAX_LEN - 1]

    def __repr__(self) -> str:
        try:
            text = str(self)
        except AssertionError as exc:  # NEED_ACK without CREATE: repr still describes it
            text = f"({self.seqno}) type {_TYPE.unpack_from(self._buf, _TYPE_AT)[0]}: {exc}"
        return f"<{type(self).__name__} {text}>"

    def __reduce__(self) -> tuple[Callable[..., Event], tuple[bytes]]:
        return (decode, (self._raw,))

    # -- derived events ----------------------------------------------------------------
    def replace(self, **fields: Any) -> "Event":
        """A copy with the given payload fields (C names) changed; header unchanged except
        ``len``, which follows trailing arrays."""
        h = self.base
        values = self.payload._asdict()
        for k in fields:
            if k not in values:
                raise TypeError(f"{type(self).__name__} has no payload field {k!r}")
        values.update(fields)
        if self.ARRAY is None and not self.FIELDS:
            values.setdefault("body", self.body)
        return make(h.type, h.flags, seqno=h.seqno, reserved=h.reserved, **values)

    def with_header(
        self,
        *,
        type: int | None = None,
        flags: int | None = None,
        seqno: int | None = None,
        reserved: int | None = None,
        len: int | None = None,
    ) -> "Event":
        """A copy with header fields changed (the payload bytes are kept as they are).

        Changing ``type`` re-decodes the same bytes as the new type; ``len`` writes the given
        value into the header without resizing (useful to build malformed events)."""
        ln, ty, fl, sq, rs = _HDR_UNPACK(self._buf)
        raw = HEADER.pack(
            ln if len is None else len,
            ty if type is None else int(type),
            fl if flags is None else int(flags),
            sq if seqno is None else seqno,
            rs if reserved is None else reserved,
        ) + self._raw[HEADER_SIZE:]
        return _decode_exact(raw)


def getattr_payload(e: Event, name: str) -> Any:
    """Payload field ``name`` of ``e`` even when the header shortcut shadows it."""
    prop = _PAYLOAD_GETTERS[type(e)].get(name)
    if prop is None:
        raise AttributeError(f"{type(e).__name__} has no payload field {name!r}")
    return prop(e)


_PAYLOAD_GETTERS: dict[type, dict[str, Callable[[Event], Any]]] = {Event: {}}
_SHADOWED = ("type", "flags", "seqno")
_CLASSES: dict[int, type[Event]] = {}


def _scalar_getter(lay: _uapi.Layout) -> Callable[[Event], int]:
    unpack, offset = lay.unpack_from, lay.offset

    def get(self: Event) -> int:
        return unpack(self._buf, offset)[0]

    return get


def _array_getter(offset: int, itemfmt: str, count_getter: Callable[[Event], int]) -> Callable[[Event], Any]:
    if itemfmt == "s":

        def get_bytes(self: Event) -> bytes:
            n = count_getter(self)
            return self._raw[offset : offset + n]

        return get_bytes
    item = struct.calcsize("=" + itemfmt)

    def get_list(self: Event) -> list[int]:
        n = count_getter(self)
        avail = max(0, (len(self._raw) - offset) // item)
        n = min(n, avail)
        if n <= 0:
            return []
        return list(struct.unpack_from(f"={n}{itemfmt}", self._raw, offset))

    return get_list


def _define(
    name: str,
    event_type: Any,
    ctype: type,
    count: str | None = None,
    members: Callable[[Event], str] | None = None,
    aliases: dict[str, str] | None = None,
    doc: str = "",
) -> type[Event]:
    """A view class of the uapi event struct ``ctype``: its payload fields (after ``base``) with
    offsets and types from the uapi layout; a flexible array member is a list (bytes for u8)
    of ``count`` items."""
    fields: list[tuple[str, int, str]] = []
    layouts: dict[str, _uapi.Layout] = {}
    array: tuple[str, int, str, str] | None = None
    for fname, ftype, *_ in ctype._fields_[1:]:
        if issubclass(ftype, ctypes.Array) and ftype._length_ == 0:
            elem = ftype._type_
            itemfmt = "s" if elem is ctypes.c_uint8 else _uapi.struct_code(elem)
            assert count is not None, f"{name}: the count field of {fname}"
            array = (fname, getattr(ctype, fname).offset, itemfmt, count)
            continue
        lay = _uapi.layout(ctype, fname)
        layouts[fname] = lay
        fields.append((fname, lay.offset, lay.format.strip("=x")))
    size = ctypes.sizeof(ctype)
    getters: dict[str, Callable[[Event], Any]] = {}
    ns: dict[str, Any] = {
        "__slots__": (),
        "TYPE": int(event_type),
        "SIZE": size,
        "FIELDS": tuple(fields),
        "ARRAY": array,
        "type": event_type,
        "__doc__": doc,
        "__module__": __name__,
    }
    for fname, off, fmt in fields:
        g = _scalar_getter(layouts[fname])
        getters[fname] = g
        if fname not in _SHADOWED:
            ns[fname] = property(g, doc=f"``{fname}`` (offset {off})")
    names = [f[0] for f in fields]
    if array is not None:
        aname, aoff, afmt, count = array
        g = _array_getter(aoff, afmt, getters[count])
        getters[aname] = g
        ns[aname] = property(g, doc=f"``{aname}[{count}]`` (offset {aoff})")
        names.append(aname)
    for alias, target in (aliases or {}).items():
        ns[alias] = property(getters[target], doc=f"payload ``{target}``")
    ns["Payload"] = NamedTuple(name + "Payload", [(n, Any) for n in names])  # type: ignore[misc]
    if members is not None:
        ns["members_str"] = members
    cls = type(name, (Event,), ns)
    _PAYLOAD_GETTERS[cls] = getters
    _CLASSES[int(event_type)] = cls
    return cls


ClientEvent = _define(
    "ClientEvent",
    EventType.OPEN,
    _uapi.drm_xe_eudebug_event_client,
    members=lambda e: f"handle={e.client_handle}",
    doc="OPEN: ``struct drm_xe_eudebug_event_client`` (a DRM client of the target).",
)
VmEvent = _define(
    "VmEvent",
    EventType.VM,
    _uapi.drm_xe_eudebug_event_vm,
    members=lambda e: f"client_handle={e.client_handle}, handle={e.vm_handle}",
    doc="VM: ``struct drm_xe_eudebug_event_vm``.",
)
ExecQueueEvent = _define(
    "ExecQueueEvent",
    EventType.EXEC_QUEUE,
    _uapi.drm_xe_eudebug_event_exec_queue,
    count="width",
    members=lambda e: (
        f"client_handle={e.client_handle}, vm_handle={e.vm_handle}, "
        f"exec_queue_handle={e.exec_queue_handle}, engine_class={_s32(e.engine_class)}, "
        f"exec_queue_width={_s32(e.width)}"
    ),
    doc="EXEC_QUEUE: ``struct drm_xe_eudebug_event_exec_queue``; ``lrc_handle`` is a list of "
    "``width`` handles.",
)
EuAttentionEvent = _define(
    "EuAttentionEvent",
    EventType.EU_ATTENTION,
    _uapi.drm_xe_eudebug_event_eu_attention,
    count="bitmask_size",
    members=lambda e: (
        f"client_handle={e.client_handle}, exec_queue_handle={e.exec_queue_handle}, "
        f"lrc_handle={e.lrc_handle}, bitmask_size={_s32(e.bitmask_size)}"
    ),
    doc="EU_ATTENTION: ``struct drm_xe_eudebug_event_eu_attention``; payload ``flags`` is "
    "``e.payload.flags``; ``bitmask`` is bytes.",
)
VmBindEvent = _define(
    "VmBindEvent",
    EventType.VM_BIND,
    _uapi.drm_xe_eudebug_event_vm_bind,
    aliases={"bind_flags": "flags"},
    members=lambda e: (
        f"client_handle={e.client_handle}, vm_handle={e.vm_handle}, "
        f"flags=0x{e.bind_flags:x}, num_binds={e.num_binds}"
    ),
    doc="VM_BIND: ``struct drm_xe_eudebug_event_vm_bind``; payload ``flags`` (bit 0 = UFENCE) "
    "is ``e.bind_flags`` / ``e.payload.flags``.",
)
VmBindOpEvent = _define(
    "VmBindOpEvent",
    EventType.VM_BIND_OP,
    _uapi.drm_xe_eudebug_event_vm_bind_op,
    members=lambda e: (
        f"vm_bind_ref_seqno={_s64(e.vm_bind_ref_seqno)}, addr={e.addr:016x}, "
        f"range={e.range} num_extensions={e.num_extensions}"
    ),
    doc="VM_BIND_OP: ``struct drm_xe_eudebug_event_vm_bind_op``.",
)
VmBindUfenceEvent = _define(
    "VmBindUfenceEvent",
    EventType.VM_BIND_UFENCE,
    _uapi.drm_xe_eudebug_event_vm_bind_ufence,
    members=lambda e: f"vm_bind_ref_seqno={_s64(e.vm_bind_ref_seqno)}",
    doc="VM_BIND_UFENCE: ``struct drm_xe_eudebug_event_vm_bind_ufence``.",
)
MetadataEvent = _define(
    "MetadataEvent",
    EventType.METADATA,
    _uapi.drm_xe_eudebug_event_metadata,
    aliases={"metadata_type": "type"},
    members=lambda e: (
        f"client_handle={e.client_handle}, metadata_handle={e.metadata_handle}, "
        f"type={e.metadata_type}, len={e.len}"
    ),
    doc="METADATA: ``struct drm_xe_eudebug_event_metadata``; ``e.len`` is the metadata length "
    "(the event size is ``e.base.len``); the metadata type is ``e.metadata_type`` / "
    "``e.payload.type``.",
)
VmBindOpMetadataEvent = _define(
    "VmBindOpMetadataEvent",
    EventType.VM_BIND_OP_METADATA,
    _uapi.drm_xe_eudebug_event_vm_bind_op_metadata,
    members=lambda e: (
        f"vm_bind_op_ref_seqno={_s64(e.vm_bind_op_ref_seqno)}, "
        f"metadata_handle={e.metadata_handle}, metadata_cookie={e.metadata_cookie}"
    ),
    doc="VM_BIND_OP_METADATA: ``struct drm_xe_eudebug_event_vm_bind_op_metadata``.",
)
PagefaultEvent = _define(
    "PagefaultEvent",
    EventType.PAGEFAULT,
    _uapi.drm_xe_eudebug_event_pagefault,
    count="bitmask_size",
    members=lambda e: (
        f"client_handle={e.client_handle}, exec_queue_handle={e.exec_queue_handle}, "
        f"lrc_handle={e.lrc_handle}, bitmask_size={_s32(e.bitmask_size)}, "
        f"pagefault_address=0x{e.pagefault_address:x}"
    ),
    doc="PAGEFAULT: ``struct drm_xe_eudebug_event_pagefault``; payload ``flags`` is "
    "``e.payload.flags``; ``bitmask`` is bytes.",
)


def event_class(event_type: int) -> type[Event]:
    """The view class used for events of ``event_type`` (:class:`Event` if unknown)."""
    return _CLASSES.get(int(event_type), Event)


_CLASS_GET = _CLASSES.get
_LT_UNPACK = _LEN_TYPE.unpack_from


def _decode_exact(raw: bytes) -> Event:
    return _CLASS_GET(_LT_UNPACK(raw)[1], Event)._wrap(raw)


def decode(raw: bytes | bytearray | memoryview) -> Event:
    """Decode one event from ``raw`` (its first ``base.len`` bytes are kept).

    Never fails on content: unknown types give a generic :class:`Event`; an event whose
    bytes end before its header ``len`` or its fixed struct is kept as given and its missing
    fields read as zero (see :attr:`Event.truncated`).  Raises ``ValueError`` only when
    ``raw`` is shorter than the 24-byte header.
    """
    if type(raw) is not bytes:
        raw = bytes(raw)
    n = len(raw)
    if n < HEADER_SIZE:
        raise ValueError(f"an event needs at least {HEADER_SIZE} bytes of header, got {n}")
    ln, ty = _LT_UNPACK(raw)
    if HEADER_SIZE <= ln < n:
        raw = raw[:ln]
    cls = _CLASS_GET(ty, Event)
    obj = object.__new__(cls)
    obj._raw = raw
    obj._buf = raw if len(raw) >= cls.SIZE else raw + bytes(cls.SIZE - len(raw))
    return obj


def make(
    type: int,
    flags: int = 0,
    /,
    seqno: int = 0,
    *,
    reserved: int = 0,
    **fields: Any,
) -> Event:
    """Build an event from its header and payload fields (C names; missing fields are 0).

    ``type`` and ``flags`` are the header's (positional-only, so ``type=``/``flags=`` keywords
    are the payload fields of METADATA / VM_BIND, EU_ATTENTION, PAGEFAULT).  Trailing arrays
    take a sequence: ``lrc_handle=[...]`` (EXEC_QUEUE; ``width`` defaults to its length) and
    ``bitmask=b"..."`` (EU_ATTENTION, PAGEFAULT; ``bitmask_size`` defaults to its length).
    Types without a view accept ``body=bytes`` for the bytes after the header.
    Raises ``TypeError`` for a field the type does not have, ``struct.error``/``ValueError``
    for a value that does not fit its C type.
    """
    cls = event_class(type)
    valid = {f[0] for f in cls.FIELDS}
    if cls.ARRAY is not None:
        valid.add(cls.ARRAY[0])
    if cls is Event:
        valid.add("body")
    unknown = set(fields) - valid
    if unknown:
        raise TypeError(
            f"{type_name(int(type))} event has no field(s) {sorted(unknown)}; "
            f"fields: {sorted(valid)}"
        )
    body = bytearray(cls.SIZE - HEADER_SIZE)
    tail = b""
    if cls.ARRAY is not None:
        aname, aoff, afmt, count = cls.ARRAY
        items = fields.get(aname)
        if items is None:
            items = b"" if afmt == "s" else []
        if afmt == "s":
            tail = bytes(items)
        else:
            items = list(items)
            tail = struct.pack(f"={len(items)}{afmt}", *items)
        if count not in fields:
            fields = dict(fields)
            fields[count] = len(items)
    for fname, off, fmt in cls.FIELDS:
        struct.pack_into("=" + fmt, body, off - HEADER_SIZE, int(fields.get(fname, 0)))
    if cls is Event:
        body = bytearray(fields.get("body", b""))
    size = HEADER_SIZE + len(body) + len(tail)
    raw = HEADER.pack(size, int(type), int(flags), int(seqno), int(reserved)) + bytes(body) + tail
    return cls._wrap(raw)


def encode(type: int, flags: int = 0, /, seqno: int = 0, **fields: Any) -> bytes:
    """``bytes(make(...))``: the raw bytes of an event built from its fields."""
    return make(type, flags, seqno, **fields)._raw


def iter_events(data: bytes | bytearray | memoryview) -> Iterable[Event]:
    """Decode events stored back to back (IGT's log format); stops at the first event whose
    ``len`` is below the header size or runs past the end."""
    mv = memoryview(data)
    off, end = 0, len(mv)
    while off + HEADER_SIZE <= end:
        ln = _LT_UNPACK(mv, off)[0]
        if ln < HEADER_SIZE or off + ln > end:
            return
        yield decode(mv[off : off + ln])
        off += ln
