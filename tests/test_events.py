"""Pure tests of xe_eudebug.events: decode/encode against hand-built bytes, text form."""

from __future__ import annotations

import json
import pickle
import random
import struct
from pathlib import Path

import pytest

from xe_eudebug import events
from xe_eudebug.events import EventFlags, EventType, decode, make

_ABI_CANDIDATES = [
    Path(__file__).parent / "data" / "abi.json",
    Path(__file__).resolve().parents[2] / "shared" / "spec" / "abi.json",
]
_ABI_PATH = next((p for p in _ABI_CANDIDATES if p.exists()), None)
if _ABI_PATH is None:  # pragma: no cover - depends on checkout
    pytest.skip("abi.json (tests/data/abi.json) not found", allow_module_level=True)
ABI = json.loads(_ABI_PATH.read_text())
MACROS = ABI["macros"]
STRUCTS = ABI["structs"]

# event type name -> C struct name
STRUCT_OF = {
    "OPEN": "drm_xe_eudebug_event_client",
    "VM": "drm_xe_eudebug_event_vm",
    "EXEC_QUEUE": "drm_xe_eudebug_event_exec_queue",
    "EU_ATTENTION": "drm_xe_eudebug_event_eu_attention",
    "VM_BIND": "drm_xe_eudebug_event_vm_bind",
    "VM_BIND_OP": "drm_xe_eudebug_event_vm_bind_op",
    "VM_BIND_UFENCE": "drm_xe_eudebug_event_vm_bind_ufence",
    "METADATA": "drm_xe_eudebug_event_metadata",
    "VM_BIND_OP_METADATA": "drm_xe_eudebug_event_vm_bind_op_metadata",
    "PAGEFAULT": "drm_xe_eudebug_event_pagefault",
}
# flexible array -> its count field
ARRAYS = {"lrc_handle": "width", "bitmask": "bitmask_size"}
HEADER_FIELDS = ("len", "type", "flags", "seqno", "reserved")
SHORTCUTS = ("type", "flags", "seqno")
FMT = {1: "B", 2: "H", 4: "I", 8: "Q"}


def hand_built(type_name: str, seed: int) -> tuple[bytes, dict[str, object], tuple[int, int, int]]:
    """Bytes of one event of the type, laid out with abi.json offsets only."""
    rnd = random.Random(seed)
    st = STRUCTS[STRUCT_OF[type_name]]
    size = st["size"]
    values: dict[str, object] = {}
    array_name = None
    for name, (off, fsize) in st["fields"].items():
        if name == "base":
            continue
        if fsize == 0:
            array_name = name
            continue
        values[name] = rnd.getrandbits(8 * fsize)
    tail = b""
    if array_name is not None:
        count_field = ARRAYS[array_name]
        n = rnd.randint(0, 5)
        values[count_field] = n
        if array_name == "bitmask":
            items: object = bytes(rnd.getrandbits(8) for _ in range(n))
            tail = items  # type: ignore[assignment]
        else:
            items = [rnd.getrandbits(64) for _ in range(n)]
            tail = struct.pack(f"<{n}Q", *items)  # type: ignore[arg-type]
        values[array_name] = items
    buf = bytearray(size)
    hdr = STRUCTS["drm_xe_eudebug_event"]["fields"]
    etype = MACROS["DRM_XE_EUDEBUG_EVENT_" + type_name]
    eflags = rnd.choice([1, 2, 4, 9])
    seqno = rnd.randint(1, 10**6)
    total = size + len(tail)
    for name, val in (("len", total), ("type", etype), ("flags", eflags), ("seqno", seqno), ("reserved", 0)):
        off, fsize = hdr[name]
        struct.pack_into("<" + FMT[fsize], buf, off, val)
    for name, (off, fsize) in st["fields"].items():
        if name == "base" or fsize == 0:
            continue
        struct.pack_into("<" + FMT[fsize], buf, off, values[name])
    return bytes(buf) + tail, values, (etype, eflags, seqno)


def test_type_and_flag_values_match_uapi_macros():
    for name in STRUCT_OF.keys() | {"NONE", "READ"}:
        assert int(EventType[name]) == MACROS["DRM_XE_EUDEBUG_EVENT_" + name]
    for name in ("CREATE", "DESTROY", "STATE_CHANGE", "NEED_ACK"):
        assert int(EventFlags[name]) == MACROS["DRM_XE_EUDEBUG_EVENT_" + name]
    assert [m.name for m in EventType] == [
        "NONE", "READ", "OPEN", "VM", "EXEC_QUEUE", "EU_ATTENTION", "VM_BIND", "VM_BIND_OP",
        "VM_BIND_UFENCE", "METADATA", "VM_BIND_OP_METADATA", "PAGEFAULT",
    ]
    assert events.FILTER_ALL == 0xFFF


def test_header_struct_matches_abi():
    hdr = STRUCTS["drm_xe_eudebug_event"]
    assert events.HEADER.size == hdr["size"] == events.HEADER_SIZE


@pytest.mark.parametrize("type_name", sorted(STRUCT_OF))
def test_view_layout_matches_abi(type_name):
    cls = events.event_class(EventType[type_name])
    st = STRUCTS[STRUCT_OF[type_name]]
    assert cls.SIZE == st["size"]
    fixed = {n: (o, s) for n, (o, s) in st["fields"].items() if n != "base" and s}
    assert {n: (o, struct.calcsize(f)) for n, o, f in cls.FIELDS} == fixed
    flex = [(n, o) for n, (o, s) in st["fields"].items() if s == 0]
    assert ([(cls.ARRAY[0], cls.ARRAY[1])] if cls.ARRAY else []) == flex


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("type_name", sorted(STRUCT_OF))
def test_decode_hand_built(type_name, seed):
    raw, values, (etype, eflags, seqno) = hand_built(type_name, seed)
    e = decode(raw)
    assert type(e) is events.event_class(etype)
    assert bytes(e) == raw and len(e) == len(raw)
    assert e.type == etype and isinstance(e.type, EventType)
    assert e.flags == eflags and e.seqno == seqno
    assert e.base == (len(raw), etype, eflags, seqno, 0)
    assert (e.base.len, e.base.type, e.base.flags, e.base.seqno, e.base.reserved) == (
        len(raw), etype, eflags, seqno, 0)
    for name, val in values.items():
        assert getattr(e.payload, name) == val, name
        if name not in SHORTCUTS:
            assert getattr(e, name) == val, name
    assert set(e.payload._fields) == set(values)
    assert not e.truncated


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("type_name", sorted(STRUCT_OF))
def test_make_reproduces_hand_built_bytes(type_name, seed):
    raw, values, (etype, eflags, seqno) = hand_built(type_name, seed)
    built = make(EventType[type_name], eflags, seqno=seqno, **values)
    assert bytes(built) == raw
    assert events.encode(EventType[type_name], eflags, seqno, **values) == raw
    assert built == decode(raw) and hash(built) == hash(decode(raw))


def test_shadowed_payload_fields():
    m = make(EventType.METADATA, EventFlags.CREATE, seqno=4, client_handle=3,
             metadata_handle=1, type=1, len=8192)
    assert m.type == EventType.METADATA and m.metadata_type == 1 and m.payload.type == 1
    assert m.len == 8192 and m.base.len == 56
    b = make(EventType.VM_BIND, EventFlags.STATE_CHANGE, seqno=8, client_handle=3,
             vm_handle=1, flags=events.VM_BIND_FLAG_UFENCE, num_binds=2)
    assert b.flags == EventFlags.STATE_CHANGE
    assert b.bind_flags == 1 and b.payload.flags == 1 and b.num_binds == 2
    a = make(EventType.EU_ATTENTION, EventFlags.STATE_CHANGE, seqno=2, flags=7, bitmask=b"\xff\x01")
    assert a.flags == EventFlags.STATE_CHANGE and a.payload.flags == 7
    assert a.bitmask == b"\xff\x01" and a.bitmask_size == 2
    vm = make(EventType.VM, EventFlags.CREATE, seqno=1)
    with pytest.raises(AttributeError):
        vm.len  # noqa: B018 - a VM event has no payload 'len', as in C


def test_make_rejects_unknown_fields_and_defaults_to_zero():
    with pytest.raises(TypeError, match="vm_handle"):
        make(EventType.OPEN, EventFlags.CREATE, seqno=1, vm_handle=2)
    e = make(EventType.VM, EventFlags.DESTROY, seqno=5)
    assert (e.client_handle, e.vm_handle, e.base.len) == (0, 0, 40)


def test_exec_queue_width_defaults_to_lrc_count():
    q = make(EventType.EXEC_QUEUE, EventFlags.CREATE, seqno=5, client_handle=3, vm_handle=1,
             exec_queue_handle=2, engine_class=4, lrc_handle=[7, 8, 9])
    assert q.width == 3 and q.lrc_handle == [7, 8, 9] and q.base.len == 56 + 24


TEXT_CASES = [
    (make(EventType.OPEN, EventFlags.CREATE, seqno=1, client_handle=3),
     "(1)       client(2):create: handle=3"),
    (make(EventType.VM, EventFlags.CREATE, seqno=2, client_handle=3, vm_handle=1),
     "(2)           vm(3):create: client_handle=3, handle=1"),
    (make(EventType.VM_BIND, EventFlags.STATE_CHANGE, seqno=8, client_handle=3, vm_handle=1,
          num_binds=1),
     "(8)      vm_bind(6):state-change: client_handle=3, vm_handle=1, flags=0x0, num_binds=1"),
    (make(EventType.VM_BIND_OP, EventFlags.CREATE, seqno=9, vm_bind_ref_seqno=8,
          addr=0x1A0000, range=65536, num_extensions=5),
     "(9)   vm_bind_op(7):create: vm_bind_ref_seqno=8, addr=00000000001a0000, range=65536 "
     "num_extensions=5"),
    (make(EventType.VM_BIND_OP_METADATA, EventFlags.CREATE, seqno=10, vm_bind_op_ref_seqno=9,
          metadata_handle=1, metadata_cookie=0),
     "(10) vm_bind_op_metadata(10):create: vm_bind_op_ref_seqno=9, metadata_handle=1, "
     "metadata_cookie=0"),
    (make(EventType.VM_BIND_UFENCE, EventFlags.CREATE | EventFlags.NEED_ACK, seqno=11,
          vm_bind_ref_seqno=8),
     "(11) vm_bind_ufence(8):create|ack: vm_bind_ref_seqno=8"),
    (make(EventType.EXEC_QUEUE, EventFlags.DESTROY, seqno=12, client_handle=3, vm_handle=1,
          exec_queue_handle=2, engine_class=4, lrc_handle=[5]),
     "(12)   exec_queue(4):destroy: client_handle=3, vm_handle=1, exec_queue_handle=2, "
     "engine_class=4, exec_queue_width=1"),
    (make(EventType.METADATA, EventFlags.DESTROY, seqno=13, client_handle=3, metadata_handle=2,
          type=1, len=8192),
     "(13)     metadata(9):destroy: client_handle=3, metadata_handle=2, type=1, len=8192"),
    (make(EventType.EU_ATTENTION, EventFlags.STATE_CHANGE, seqno=14, client_handle=3,
          exec_queue_handle=2, lrc_handle=6, bitmask=b"\x00" * 16),
     "(14)    attention(5):state-change: client_handle=3, exec_queue_handle=2, lrc_handle=6, "
     "bitmask_size=16"),
    (make(EventType.PAGEFAULT, EventFlags.STATE_CHANGE, seqno=15, client_handle=3,
          exec_queue_handle=2, lrc_handle=6, pagefault_address=0xDEAD000, bitmask=b"\x00" * 8),
     "(15)   pagefault(11):state-change: client_handle=3, exec_queue_handle=2, lrc_handle=6, "
     "bitmask_size=8, pagefault_address=0xdead000"),
    # %lld / %d fields print signed, as IGT's printf does
    (make(EventType.VM_BIND_UFENCE, EventFlags.CREATE, seqno=16, vm_bind_ref_seqno=2**64 - 1),
     "(16) vm_bind_ufence(8):create: vm_bind_ref_seqno=-1"),
    (make(EventType.EXEC_QUEUE, EventFlags.CREATE, seqno=17, engine_class=2**32 - 2, width=0),
     "(17)   exec_queue(4):create: client_handle=0, vm_handle=0, exec_queue_handle=0, "
     "engine_class=-2, exec_queue_width=0"),
    # flags text
    (make(EventType.OPEN, 0, seqno=18, client_handle=1), "(18)       client(2):flags unknown: handle=1"),
    (make(EventType.OPEN, EventFlags.CREATE | EventFlags.DESTROY, seqno=19, client_handle=1),
     "(19)       client(2):create: handle=1"),
    (make(EventType.OPEN, EventFlags.DESTROY | EventFlags.STATE_CHANGE, seqno=20, client_handle=1),
     "(20)       client(2):destroy: handle=1"),
    # generic events
    (make(EventType.NONE, 0, seqno=21), "(21)         none(0):flags unknown: <...>"),
    (make(EventType.READ, EventFlags.CREATE, seqno=22), "(22)         read(1):create: <...>"),
    (make(99, EventFlags.STATE_CHANGE, seqno=23, body=b"xyz"),
     "(23)     UNKNOWN(99):state-change: <...>"),
]


@pytest.mark.parametrize("flags", [EventFlags.NEED_ACK, EventFlags.NEED_ACK | 0x10])
def test_text_form_refuses_need_ack_without_create(flags):
    """IGT's flags_to_str asserts on unknown flags that include NEED_ACK (lib L:121)."""
    e = make(EventType.VM, int(flags), seqno=24)
    with pytest.raises(AssertionError, match=f"flags {int(flags):#x}: NEED_ACK without CREATE"):
        str(e)
    assert "NEED_ACK without CREATE" in repr(e)
    assert str(make(EventType.VM, EventFlags.DESTROY | EventFlags.NEED_ACK, seqno=25)).startswith("(25)")


@pytest.mark.parametrize("event,text", TEXT_CASES, ids=[t for _, t in TEXT_CASES])
def test_text_form(event, text):
    assert str(event) == text
    assert text in repr(event)


def test_text_form_type_field_is_15_wide_right_aligned():
    s = str(make(EventType.VM, EventFlags.CREATE, seqno=7))
    assert s.index(":") - len("(7) ") == 15


def test_text_form_truncated_to_string_max():
    e = make(EventType.VM, EventFlags.CREATE, seqno=2, client_handle=3, vm_handle=1)

    class Long(type(e)):  # a view whose members text is longer than IGT's buffer
        __slots__ = ()

        def members_str(self):
            return "x" * 10000

    long = Long._wrap(bytes(e))
    assert len(str(long)) == events.EVENT_STRING_MAX_LEN - 1


def test_decode_accepts_bytearray_and_memoryview_and_keeps_len_bytes():
    e = make(EventType.VM, EventFlags.CREATE, seqno=2, client_handle=3, vm_handle=1)
    buf = bytearray(bytes(e) + b"\xaa" * 100)
    assert decode(buf) == e
    assert decode(memoryview(buf)) == e
    buf[0:4] = b"\0\0\0\0"  # the copy is independent of the buffer
    assert decode(memoryview(bytes(e))).vm_handle == 1


def test_decode_garbage_never_crashes():
    with pytest.raises(ValueError, match="24 bytes"):
        decode(b"\x01" * 23)
    rnd = random.Random(7)
    for _ in range(2000):
        n = rnd.randint(24, 90)
        raw = bytes(rnd.getrandbits(8) for _ in range(n))
        # force known types half of the time
        if rnd.random() < 0.5:
            raw = raw[:4] + struct.pack("<H", rnd.randint(0, 12)) + raw[6:]
        e = decode(raw)
        repr(e), e.base, e.payload, bytes(e)  # noqa: B018 - must not raise
        flags = e.flags
        if flags & EventFlags.NEED_ACK and not flags & (EventFlags.CREATE | EventFlags.DESTROY
                                                         | EventFlags.STATE_CHANGE):
            with pytest.raises(AssertionError, match="NEED_ACK without CREATE"):
                str(e)
        else:
            str(e)


def test_truncated_event_reads_missing_fields_as_zero():
    e = make(EventType.VM, EventFlags.CREATE, seqno=2, client_handle=3, vm_handle=1)
    t = decode(bytes(e)[:32])
    assert t.truncated and t.client_handle == 3 and t.vm_handle == 0
    assert bytes(t) == bytes(e)[:32] and t.base.len == 40
    q = make(EventType.EXEC_QUEUE, EventFlags.CREATE, seqno=2, lrc_handle=[1, 2, 3])
    tq = decode(bytes(q)[:-8])
    assert tq.width == 3 and tq.lrc_handle == [1, 2]
    huge = bytes(q)[:52] + struct.pack("<I", 2**32 - 1) + bytes(q)[56:]
    assert decode(huge).lrc_handle == [1, 2, 3]


def test_zero_and_short_header_len_keep_all_bytes():
    e = make(EventType.OPEN, EventFlags.CREATE, seqno=1, client_handle=5)
    z = e.with_header(len=0)
    assert len(z) == 32 and z.client_handle == 5 and z.base.len == 0


def test_unknown_type_is_generic_event():
    raw = events.HEADER.pack(30, 77, 1, 5, 0) + b"abcdef"
    e = decode(raw)
    assert type(e) is events.Event and e.type == 77 and not isinstance(e.type, EventType)
    assert e.body == b"abcdef" and e.payload == ()


def test_replace_and_with_header():
    e = make(EventType.VM_BIND_OP, EventFlags.CREATE, seqno=9, vm_bind_ref_seqno=8, addr=16,
             range=4096, num_extensions=1)
    r = e.replace(addr=32)
    assert r.addr == 32 and r.range == 4096 and r.seqno == 9 and e.addr == 16
    h = e.with_header(seqno=99, flags=EventFlags.DESTROY)
    assert h.seqno == 99 and h.flags == EventFlags.DESTROY and h.addr == 16
    with pytest.raises(TypeError):
        e.replace(client_handle=1)
    q = make(EventType.EXEC_QUEUE, EventFlags.CREATE, seqno=2, lrc_handle=[1])
    assert q.replace(lrc_handle=[4, 5], width=2).base.len == 72


def test_pickle_round_trip():
    e = make(EventType.METADATA, EventFlags.CREATE, seqno=4, client_handle=3, len=7)
    assert pickle.loads(pickle.dumps(e)) == e


def test_filter_helpers():
    assert events.filter_mask(EventType.VM_BIND, EventType.OPEN) == 0x44
    assert events.is_filtered(EventType.VM, 0x8) and not events.is_filtered(EventType.VM, 0x4)
    assert events.type_name(EventType.OPEN) == "client" and events.type_name(200) == "UNKNOWN"


def test_iter_events_walks_back_to_back_bytes_and_stops_at_garbage():
    a = make(EventType.OPEN, EventFlags.CREATE, seqno=1, client_handle=3)
    b = make(EventType.EXEC_QUEUE, EventFlags.CREATE, seqno=2, lrc_handle=[1, 2])
    blob = bytes(a) + bytes(b)
    assert list(events.iter_events(blob)) == [a, b]
    assert list(events.iter_events(blob + bytes(a)[:30])) == [a, b]  # truncated tail
    assert list(events.iter_events(bytes(a.with_header(len=8)) + bytes(b))) == []


def test_event_constructor_checks_the_view_class():
    raw = bytes(make(EventType.VM, EventFlags.CREATE, seqno=1, vm_handle=4))
    assert events.VmEvent(raw).vm_handle == 4
    with pytest.raises(TypeError):
        events.ClientEvent(raw)
