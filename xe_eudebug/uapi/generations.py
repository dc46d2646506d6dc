"""The numbers that change between generations of the eudebug uapi.

The eudebug interface has been renumbered more than once: Intel's prelim headers put CONNECT at
0x59 and METADATA_CREATE/DESTROY at 0x5b/0x5c and number events differently, later postings
renumber again. Everything generation-specific lives in one :class:`Generation` record here;
the uapi modules read the active one, so another generation is added by adding a record, not
by touching code above ``uapi/``.

The active generation is :data:`TARGET` unless ``XE_EUDEBUG_UAPI`` names another registered
generation at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Generation:
    """Generation-specific numbers of the eudebug uapi."""

    name: str
    description: str
    #: DRM driver-private ioctl numbers (added to DRM_COMMAND_BASE) on the device fd.
    ioctl_nr: Mapping[str, int]
    #: ``_IO*('j', nr)`` numbers of the ioctls on the debugger fd.
    debugger_ioctl_nr: Mapping[str, int]
    #: Event type values, by the suffix of ``DRM_XE_EUDEBUG_EVENT_<NAME>``.
    event_type: Mapping[str, int]
    #: The exec-queue SET_PROPERTY number of the EUDEBUG property.
    exec_queue_property_eudebug: int
    version: int = 1


def _frozen(**values: int) -> Mapping[str, int]:
    return MappingProxyType(dict(values))


#: The uapi of ``shared/spec/abi.json``: IGT's ``xe_drm_eudebug.h`` (eudebug ABI version 1).
TARGET = Generation(
    name="igt-2025",
    description="IGT include/drm-uapi-experimental/xe_drm_eudebug.h, eudebug ABI version 1",
    ioctl_nr=_frozen(
        EUDEBUG_CONNECT=0x0E,
        DEBUG_METADATA_CREATE=0x0F,
        DEBUG_METADATA_DESTROY=0x10,
    ),
    debugger_ioctl_nr=_frozen(
        READ_EVENT=0x0,
        VM_OPEN=0x1,
        EU_CONTROL=0x2,
        READ_METADATA=0x3,
        ACK_EVENT=0x4,
    ),
    event_type=_frozen(
        NONE=0,
        READ=1,
        OPEN=2,
        VM=3,
        EXEC_QUEUE=4,
        EU_ATTENTION=5,
        VM_BIND=6,
        VM_BIND_OP=7,
        VM_BIND_UFENCE=8,
        METADATA=9,
        VM_BIND_OP_METADATA=10,
        PAGEFAULT=11,
    ),
    exec_queue_property_eudebug=3,
)

GENERATIONS: dict[str, Generation] = {TARGET.name: TARGET}


def active() -> Generation:
    """The generation the uapi modules are built from."""
    name = os.environ.get("XE_EUDEBUG_UAPI", TARGET.name)
    try:
        return GENERATIONS[name]
    except KeyError:
        raise ImportError(
            f"XE_EUDEBUG_UAPI={name!r} names no known uapi generation (known: {', '.join(GENERATIONS)})"
        ) from None


ACTIVE = active()
