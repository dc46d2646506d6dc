"""Every struct size, field offset/size and macro value of the uapi against the measured ABI."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import pytest

import xe_eudebug.uapi as uapi

ABI = json.loads((Path(__file__).parent / "data" / "abi.json").read_text())
STRUCTS = ABI["structs"]
MACROS = ABI["macros"]


def test_abi_file_has_the_expected_scope():
    assert len(STRUCTS) == 43
    assert len(MACROS) == 117


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_size_and_alignment(name):
    cls = getattr(uapi, name)
    assert ctypes.sizeof(cls) == STRUCTS[name]["size"]
    assert ctypes.alignment(cls) == STRUCTS[name]["align"]


def _field_layout(cls, field):
    """(offset, size) of ``field``, looking into anonymous unions as C does."""
    for fname, ftype, *_ in cls._fields_:
        if fname == field:
            return getattr(cls, fname).offset, ctypes.sizeof(ftype)
    for anon in getattr(cls, "_anonymous_", ()):
        anon_type = dict((n, t) for n, t, *_ in cls._fields_)[anon]
        base = getattr(cls, anon).offset
        for fname, ftype, *_ in anon_type._fields_:
            if fname == field:
                return base + getattr(anon_type, fname).offset, ctypes.sizeof(ftype)
    raise AssertionError(f"{cls.__name__} has no field {field}")


@pytest.mark.parametrize(
    "name,field", sorted((s, f) for s, v in STRUCTS.items() for f in v["fields"])
)
def test_field_offset_and_size(name, field):
    cls = getattr(uapi, name)
    offset, size = STRUCTS[name]["fields"][field]
    assert _field_layout(cls, field) == (offset, size)
    # the field is reachable by its C name on an instance
    getattr(cls(), field)


@pytest.mark.parametrize("name", sorted(MACROS))
def test_macro_value(name):
    assert getattr(uapi, name) & 0xFFFFFFFFFFFFFFFF == MACROS[name]


def test_connect_request_value():
    assert uapi.DRM_IOCTL_XE_EUDEBUG_CONNECT == 0xC018644E


def test_anonymous_union_members_share_storage():
    op = uapi.drm_xe_vm_bind_op()
    op.userptr = 0x1234_5000
    assert op.obj_offset == 0x1234_5000
    bind = uapi.drm_xe_vm_bind()
    bind.vector_of_binds = 0xDEAD_B000
    assert bind.bind.extensions == 0xDEAD_B000
    sync = uapi.drm_xe_sync()
    sync.addr = 0x1_0000_0007
    assert sync.handle == 7


def test_repr_names_every_field():
    text = repr(uapi.drm_xe_eudebug_connect(pid=42, version=1))
    assert text == "drm_xe_eudebug_connect(extensions=0, pid=0x2a, flags=0, version=1)"


def test_event_struct_table_covers_every_payload_type():
    assert set(uapi.EVENT_STRUCTS) == set(range(2, 12))
    assert uapi.EVENT_STRUCTS[uapi.DRM_XE_EUDEBUG_EVENT_METADATA] is uapi.drm_xe_eudebug_event_metadata
