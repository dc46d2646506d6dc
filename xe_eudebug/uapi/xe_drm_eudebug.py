"""The Xe EU debugger uapi (``xe_drm_eudebug.h``): connect, events, debugger ioctls, metadata.

Ioctl numbers, event type values and the exec-queue property number come from the active
:mod:`~xe_eudebug.uapi.generations` record; layouts are the same across generations.
"""

from __future__ import annotations

from ..ioctl import DRM_COMMAND_BASE, DRM_IOW, DRM_IOWR, _IO, _IOW, _IOWR
from ._base import Struct, register_requests, u8, u16, u32, u64
from .generations import ACTIVE as _GEN
from .xe_drm import drm_xe_user_extension

# --- device-fd ioctls --------------------------------------------------------------------------

DRM_XE_EUDEBUG_CONNECT = _GEN.ioctl_nr["EUDEBUG_CONNECT"]
DRM_XE_DEBUG_METADATA_CREATE = _GEN.ioctl_nr["DEBUG_METADATA_CREATE"]
DRM_XE_DEBUG_METADATA_DESTROY = _GEN.ioctl_nr["DEBUG_METADATA_DESTROY"]

DRM_XE_EUDEBUG_VERSION = _GEN.version


class drm_xe_eudebug_connect(Struct):
    _fields_ = [
        ("extensions", u64),
        ("pid", u64),
        ("flags", u32),
        ("version", u32),
    ]


DRM_XE_DEBUG_METADATA_ELF_BINARY = 0
DRM_XE_DEBUG_METADATA_PROGRAM_MODULE = 1
WORK_IN_PROGRESS_DRM_XE_DEBUG_METADATA_MODULE_AREA = 2
WORK_IN_PROGRESS_DRM_XE_DEBUG_METADATA_SBA_AREA = 3
WORK_IN_PROGRESS_DRM_XE_DEBUG_METADATA_SIP_AREA = 4
WORK_IN_PROGRESS_DRM_XE_DEBUG_METADATA_NUM = 5


class drm_xe_debug_metadata_create(Struct):
    _fields_ = [
        ("extensions", u64),
        ("type", u64),
        ("user_addr", u64),
        ("len", u64),
        ("metadata_id", u32),
    ]


class drm_xe_debug_metadata_destroy(Struct):
    _fields_ = [
        ("extensions", u64),
        ("metadata_id", u32),
    ]


XE_VM_BIND_OP_EXTENSIONS_ATTACH_DEBUG = 0


class drm_xe_vm_bind_op_ext_attach_debug(Struct):
    _fields_ = [
        ("base", drm_xe_user_extension),
        ("metadata_id", u64),
        ("flags", u64),
        ("cookie", u64),
        ("reserved", u64),
    ]


DRM_XE_EXEC_QUEUE_SET_PROPERTY_EUDEBUG = _GEN.exec_queue_property_eudebug
DRM_XE_EXEC_QUEUE_EUDEBUG_FLAG_ENABLE = 1 << 0

DRM_IOCTL_XE_EUDEBUG_CONNECT = DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_EUDEBUG_CONNECT, drm_xe_eudebug_connect)
DRM_IOCTL_XE_DEBUG_METADATA_CREATE = DRM_IOWR(
    DRM_COMMAND_BASE + DRM_XE_DEBUG_METADATA_CREATE, drm_xe_debug_metadata_create
)
DRM_IOCTL_XE_DEBUG_METADATA_DESTROY = DRM_IOW(
    DRM_COMMAND_BASE + DRM_XE_DEBUG_METADATA_DESTROY, drm_xe_debug_metadata_destroy
)

# --- events ----------------------------------------------------------------------------------

DRM_XE_EUDEBUG_EVENT_NONE = _GEN.event_type["NONE"]
DRM_XE_EUDEBUG_EVENT_READ = _GEN.event_type["READ"]
DRM_XE_EUDEBUG_EVENT_OPEN = _GEN.event_type["OPEN"]
DRM_XE_EUDEBUG_EVENT_VM = _GEN.event_type["VM"]
DRM_XE_EUDEBUG_EVENT_EXEC_QUEUE = _GEN.event_type["EXEC_QUEUE"]
DRM_XE_EUDEBUG_EVENT_EU_ATTENTION = _GEN.event_type["EU_ATTENTION"]
DRM_XE_EUDEBUG_EVENT_VM_BIND = _GEN.event_type["VM_BIND"]
DRM_XE_EUDEBUG_EVENT_VM_BIND_OP = _GEN.event_type["VM_BIND_OP"]
DRM_XE_EUDEBUG_EVENT_VM_BIND_UFENCE = _GEN.event_type["VM_BIND_UFENCE"]
DRM_XE_EUDEBUG_EVENT_METADATA = _GEN.event_type["METADATA"]
DRM_XE_EUDEBUG_EVENT_VM_BIND_OP_METADATA = _GEN.event_type["VM_BIND_OP_METADATA"]
DRM_XE_EUDEBUG_EVENT_PAGEFAULT = _GEN.event_type["PAGEFAULT"]

DRM_XE_EUDEBUG_EVENT_CREATE = 1 << 0
DRM_XE_EUDEBUG_EVENT_DESTROY = 1 << 1
DRM_XE_EUDEBUG_EVENT_STATE_CHANGE = 1 << 2
DRM_XE_EUDEBUG_EVENT_NEED_ACK = 1 << 3

DRM_XE_EUDEBUG_EVENT_VM_BIND_FLAG_UFENCE = 1 << 0


class drm_xe_eudebug_event(Struct):
    _fields_ = [
        ("len", u32),
        ("type", u16),
        ("flags", u16),
        ("seqno", u64),
        ("reserved", u64),
    ]


class drm_xe_eudebug_event_client(Struct):
    _fields_ = [
        ("base", drm_xe_eudebug_event),
        ("client_handle", u64),
    ]


class drm_xe_eudebug_event_vm(Struct):
    _fields_ = [
        ("base", drm_xe_eudebug_event),
        ("client_handle", u64),
        ("vm_handle", u64),
    ]


class drm_xe_eudebug_event_exec_queue(Struct):
    _fields_ = [
        ("base", drm_xe_eudebug_event),
        ("client_handle", u64),
        ("vm_handle", u64),
        ("exec_queue_handle", u64),
        ("engine_class", u32),
        ("width", u32),
        ("lrc_handle", u64 * 0),
    ]


class drm_xe_eudebug_event_eu_attention(Struct):
    _fields_ = [
        ("base", drm_xe_eudebug_event),
        ("client_handle", u64),
        ("exec_queue_handle", u64),
        ("lrc_handle", u64),
        ("flags", u32),
        ("bitmask_size", u32),
        ("bitmask", u8 * 0),
    ]


class drm_xe_eudebug_event_vm_bind(Struct):
    _fields_ = [
        ("base", drm_xe_eudebug_event),
        ("client_handle", u64),
        ("vm_handle", u64),
        ("flags", u32),
        ("num_binds", u32),
    ]


class drm_xe_eudebug_event_vm_bind_op(Struct):
    _fields_ = [
        ("base", drm_xe_eudebug_event),
        ("vm_bind_ref_seqno", u64),
        ("num_extensions", u64),
        ("addr", u64),
        ("range", u64),
    ]


class drm_xe_eudebug_event_vm_bind_ufence(Struct):
    _fields_ = [
        ("base", drm_xe_eudebug_event),
        ("vm_bind_ref_seqno", u64),
    ]


class drm_xe_eudebug_event_metadata(Struct):
    _fields_ = [
        ("base", drm_xe_eudebug_event),
        ("client_handle", u64),
        ("metadata_handle", u64),
        ("type", u64),
        ("len", u64),
    ]


class drm_xe_eudebug_event_vm_bind_op_metadata(Struct):
    _fields_ = [
        ("base", drm_xe_eudebug_event),
        ("vm_bind_op_ref_seqno", u64),
        ("metadata_handle", u64),
        ("metadata_cookie", u64),
    ]


class drm_xe_eudebug_event_pagefault(Struct):
    _fields_ = [
        ("base", drm_xe_eudebug_event),
        ("client_handle", u64),
        ("exec_queue_handle", u64),
        ("lrc_handle", u64),
        ("flags", u32),
        ("bitmask_size", u32),
        ("pagefault_address", u64),
        ("bitmask", u8 * 0),
    ]


# --- debugger-fd ioctls ------------------------------------------------------------------------

DRM_XE_EUDEBUG_EU_CONTROL_CMD_INTERRUPT_ALL = 0
DRM_XE_EUDEBUG_EU_CONTROL_CMD_STOPPED = 1
DRM_XE_EUDEBUG_EU_CONTROL_CMD_RESUME = 2

DRM_XE_EUDEBUG_VM_SYNC_MAX_TIMEOUT_NSECS = 10 * 1000 * 1000 * 1000


class drm_xe_eudebug_vm_open(Struct):
    _fields_ = [
        ("extensions", u64),
        ("client_handle", u64),
        ("vm_handle", u64),
        ("flags", u64),
        ("timeout_ns", u64),
    ]


class drm_xe_eudebug_eu_control(Struct):
    _fields_ = [
        ("client_handle", u64),
        ("cmd", u32),
        ("flags", u32),
        ("seqno", u64),
        ("exec_queue_handle", u64),
        ("lrc_handle", u64),
        ("reserved", u32),
        ("bitmask_size", u32),
        ("bitmask_ptr", u64),
    ]


class drm_xe_eudebug_read_metadata(Struct):
    _fields_ = [
        ("client_handle", u64),
        ("metadata_handle", u64),
        ("flags", u32),
        ("reserved", u32),
        ("ptr", u64),
        ("size", u64),
    ]


class drm_xe_eudebug_ack_event(Struct):
    _fields_ = [
        ("type", u32),
        ("flags", u32),
        ("seqno", u64),
    ]


_J = ord("j")
DRM_XE_EUDEBUG_IOCTL_READ_EVENT = _IO(_J, _GEN.debugger_ioctl_nr["READ_EVENT"])
DRM_XE_EUDEBUG_IOCTL_VM_OPEN = _IOW(_J, _GEN.debugger_ioctl_nr["VM_OPEN"], drm_xe_eudebug_vm_open)
DRM_XE_EUDEBUG_IOCTL_EU_CONTROL = _IOWR(_J, _GEN.debugger_ioctl_nr["EU_CONTROL"], drm_xe_eudebug_eu_control)
DRM_XE_EUDEBUG_IOCTL_READ_METADATA = _IOWR(
    _J, _GEN.debugger_ioctl_nr["READ_METADATA"], drm_xe_eudebug_read_metadata
)
DRM_XE_EUDEBUG_IOCTL_ACK_EVENT = _IOW(_J, _GEN.debugger_ioctl_nr["ACK_EVENT"], drm_xe_eudebug_ack_event)

#: Event struct of each event type value (types without a payload struct are absent).
EVENT_STRUCTS: dict[int, type[Struct]] = {
    DRM_XE_EUDEBUG_EVENT_OPEN: drm_xe_eudebug_event_client,
    DRM_XE_EUDEBUG_EVENT_VM: drm_xe_eudebug_event_vm,
    DRM_XE_EUDEBUG_EVENT_EXEC_QUEUE: drm_xe_eudebug_event_exec_queue,
    DRM_XE_EUDEBUG_EVENT_EU_ATTENTION: drm_xe_eudebug_event_eu_attention,
    DRM_XE_EUDEBUG_EVENT_VM_BIND: drm_xe_eudebug_event_vm_bind,
    DRM_XE_EUDEBUG_EVENT_VM_BIND_OP: drm_xe_eudebug_event_vm_bind_op,
    DRM_XE_EUDEBUG_EVENT_VM_BIND_UFENCE: drm_xe_eudebug_event_vm_bind_ufence,
    DRM_XE_EUDEBUG_EVENT_METADATA: drm_xe_eudebug_event_metadata,
    DRM_XE_EUDEBUG_EVENT_VM_BIND_OP_METADATA: drm_xe_eudebug_event_vm_bind_op_metadata,
    DRM_XE_EUDEBUG_EVENT_PAGEFAULT: drm_xe_eudebug_event_pagefault,
}

register_requests(globals())

__all__ = [n for n in dir() if n.startswith(("drm_", "DRM_", "XE_", "WORK_IN_PROGRESS_"))] + ["EVENT_STRUCTS"]
