"""uapi.layout(): precompiled struct.Struct objects derived from the ctypes uapi, and the rule
that the simulator and the event views restate no uapi layout as a format string."""

from __future__ import annotations

import ast
import ctypes
import json
import struct
from pathlib import Path

import pytest

import xe_eudebug.uapi as uapi
from xe_eudebug.uapi import layout

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "xe_eudebug"
ABI = json.loads((Path(__file__).parent / "data" / "abi.json").read_text())


def _layout_free_of_pointers(cls: type) -> bool:
    try:
        layout(cls)
    except TypeError:                              # size_t/void * members (drm_version)
        return False
    return True


@pytest.mark.parametrize("name", sorted(ABI["structs"]))
def test_layout_of_a_whole_struct_spans_it(name):
    cls = getattr(uapi, name)
    if not _layout_free_of_pointers(cls):
        pytest.skip(f"{name} has members without a fixed struct code (size_t, pointers)")
    lay = layout(cls)
    assert lay.offset == 0
    assert lay.size == ctypes.sizeof(cls)


@pytest.mark.parametrize("name", sorted(ABI["structs"]))
def test_layout_reads_every_field_where_ctypes_has_it(name):
    """Each named field read through its own layout gives what ctypes reads from the same bytes."""
    cls = getattr(uapi, name)
    if not _layout_free_of_pointers(cls):
        pytest.skip(f"{name} has members without a fixed struct code (size_t, pointers)")
    raw = bytes((i * 37 + 11) & 0xFF for i in range(ctypes.sizeof(cls)))
    obj = cls.from_buffer_copy(raw)
    for fname, ftype, *_ in cls._fields_:
        if fname in getattr(cls, "_anonymous_", ()) or ctypes.sizeof(ftype) == 0:
            continue
        lay = layout(cls, fname)
        got = lay.unpack_from(raw, lay.offset)
        want = getattr(obj, fname)
        if isinstance(want, ctypes.Array):
            if isinstance(want[0], int):
                assert got == tuple(want), fname
        elif isinstance(want, int):
            assert got == (want,), fname


def test_fields_of_anonymous_unions_and_nested_structs():
    sync = uapi.drm_xe_sync(type=2, flags=1, addr=0x1234_5678_9ABC, timeline_value=77)
    lay = layout(uapi.drm_xe_sync, "type", "flags", "addr", "timeline_value")
    assert lay.unpack_from(bytes(sync), lay.offset) == (2, 1, 0x1234_5678_9ABC, 77)
    prop = uapi.drm_xe_ext_set_property(property=3, value=9)
    prop.base.name = 5
    lay = layout(uapi.drm_xe_ext_set_property, "base.name", "value")
    assert lay.offset == uapi.drm_xe_user_extension.name.offset
    assert lay.unpack_from(bytes(prop), lay.offset) == (5, 9)
    bind = uapi.drm_xe_vm_bind(vm_id=4, num_binds=1, num_syncs=2, syncs=0xABC)
    bind.bind.addr = 0x10000
    lay = layout(uapi.drm_xe_vm_bind, "bind.addr")
    assert lay.unpack_from(bytes(bind), lay.offset) == (0x10000,)


def test_packing_all_fields_gives_the_ctypes_bytes():
    ev = uapi.drm_xe_eudebug_event_vm_bind(client_handle=1, vm_handle=2, flags=1, num_binds=3)
    ev.base.len, ev.base.type, ev.base.seqno = ctypes.sizeof(ev), uapi.DRM_XE_EUDEBUG_EVENT_VM_BIND, 9
    lay = layout(uapi.drm_xe_eudebug_event_vm_bind)
    assert lay.pack(ctypes.sizeof(ev), uapi.DRM_XE_EUDEBUG_EVENT_VM_BIND, 0, 9, 0, 1, 2, 1, 3) == bytes(ev)


def test_last_field_carries_the_tail_padding():
    # drm_xe_debug_metadata_create ends in a u32 followed by 4 bytes of padding
    lay = layout(uapi.drm_xe_debug_metadata_create, "metadata_id")
    assert lay.offset + lay.size == ctypes.sizeof(uapi.drm_xe_debug_metadata_create)
    assert layout(uapi.drm_xe_debug_metadata_create, "len").size == 8


def test_fields_out_of_order_or_unknown_are_refused():
    with pytest.raises(ValueError, match="out of order"):
        layout(uapi.drm_xe_vm_create, "vm_id", "flags")
    with pytest.raises(ValueError):
        layout(uapi.drm_xe_sync, "handle", "addr")      # two members of one union overlap
    with pytest.raises(KeyError, match="drm_xe_vm_create: no field no_such_field"):
        layout(uapi.drm_xe_vm_create, "no_such_field")


# -- no uapi layout restated in the simulator or the event views ---------------------------

#: Format strings that are not uapi structs: the simulator's own transport framing and the
#: socket ancillary data of Linux (struct ucred, struct cmsghdr), each named once in wire.py.
WIRE_FORMATS = {
    ("sim/wire.py", "<IHHQQQ"),   # wire.HEADER: the simulator's request/reply header
    ("sim/wire.py", "=iII"),      # struct ucred of SCM_CREDENTIALS
    ("sim/wire.py", "@Nii"),      # struct cmsghdr
}
#: Parts of the tree whose formats are hardware (command streamer, EU registers), not uapi.
HARDWARE = ("sim/gpu/",)
_OFFSET_CALLS = {"pack_into", "unpack_from", "iter_unpack"}


def _literal(node: ast.AST) -> str | None:
    """A format string written in the source: a constant or the constant parts of an f-string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    return None


def _is_format(text: str) -> bool:
    if not text or text[0] not in "<>=!@" or len(text) < 2:
        return False
    try:
        struct.calcsize(text.replace("{", "").replace("}", ""))
    except struct.error:
        return False
    return True


def _codes(fmt: str) -> set[str]:
    return {c for c in fmt[1:] if c.isalpha()} - {"x"}


def _violations(path: Path, rel: str) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[str] = []
    hardware = rel.startswith(HARDWARE)
    for node in ast.walk(tree):
        # any format-like string of more than one field type is a restated record layout
        text = _literal(node)
        if text is not None and _is_format(text) and len(_codes(text)) > 1:
            if (rel, text) not in WIRE_FORMATS and not hardware:
                out.append(f"{rel}:{node.lineno}: record format {text!r}")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "struct"):
            continue
        fmt = _literal(node.args[0]) if node.args else None
        if fmt is None or not _codes(fmt) or hardware or (rel, fmt) in WIRE_FORMATS or not rel.startswith(("sim/kernel/", "events.py")):
            continue
        # in the driver model and the event views, a literal format at an offset (or a
        # precompiled one) addresses a field of a uapi struct: that offset belongs to uapi/
        if node.func.attr in _OFFSET_CALLS - {"iter_unpack"} or node.func.attr == "Struct":
            out.append(f"{rel}:{node.lineno}: struct.{node.func.attr}({fmt!r}, ...) restates a uapi field")
    return out


def _sources() -> list[tuple[Path, str]]:
    files = sorted((PKG / "sim").rglob("*.py")) + [PKG / "events.py"]
    return [(p, p.relative_to(PKG).as_posix()) for p in files]


def test_simulator_and_events_restate_no_uapi_layout():
    found = [v for path, rel in _sources() for v in _violations(path, rel)]
    assert not found, "use xe_eudebug.uapi.layout() or the ctypes structs instead:\n" + "\n".join(found)


def test_the_rule_catches_a_restated_layout(tmp_path):
    """The scan above is not vacuous: a handler written the old way is reported."""
    src = tmp_path / "handler.py"
    src.write_text(
        "import struct\n"
        "def h(k):\n"
        "    ext, flags, vm_id, r0, r1 = struct.unpack_from('<QIIQQ', k, 0)\n"
        "    struct.pack_into('<I', k, 12, vm_id)\n"
        "FMT = '<QQII'\n"
    )
    found = _violations(src, "sim/kernel/xe_vm.py")
    assert len(found) == 4, found                  # two record formats, two offset writes
    assert _violations(src, "sim/gpu/engine.py") == []
