"""Core DRM uapi (``drm.h``): the parts the Xe eudebug framework uses."""

from __future__ import annotations

import ctypes

from ..ioctl import DRM_COMMAND_BASE, DRM_IOCTL_BASE, DRM_IOW, DRM_IOWR
from ._base import Struct, register_requests, s32, s64, u32, u64


class drm_version(Struct):
    _fields_ = [
        ("version_major", s32),
        ("version_minor", s32),
        ("version_patchlevel", s32),
        ("name_len", ctypes.c_size_t),
        ("name", ctypes.c_void_p),
        ("date_len", ctypes.c_size_t),
        ("date", ctypes.c_void_p),
        ("desc_len", ctypes.c_size_t),
        ("desc", ctypes.c_void_p),
    ]


class drm_gem_close(Struct):
    _fields_ = [
        ("handle", u32),
        ("pad", u32),
    ]


# -- syncobjs (drm.h) ---------------------------------------------------------------------------
DRM_SYNCOBJ_CREATE_SIGNALED = 1 << 0
DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL = 1 << 0
DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT = 1 << 1
DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE = 1 << 2
DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE = 1 << 3
DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED = 1 << 0


class drm_syncobj_create(Struct):
    _fields_ = [
        ("handle", u32),
        ("flags", u32),
    ]


class drm_syncobj_destroy(Struct):
    _fields_ = [
        ("handle", u32),
        ("pad", u32),
    ]


class drm_syncobj_wait(Struct):
    _fields_ = [
        ("handles", u64),
        ("timeout_nsec", s64),
        ("count_handles", u32),
        ("flags", u32),
        ("first_signaled", u32),
        ("pad", u32),
        ("deadline_nsec", u64),
    ]


class drm_syncobj_timeline_wait(Struct):
    _fields_ = [
        ("handles", u64),
        ("points", u64),
        ("timeout_nsec", s64),
        ("count_handles", u32),
        ("flags", u32),
        ("first_signaled", u32),
        ("pad", u32),
        ("deadline_nsec", u64),
    ]


class drm_syncobj_array(Struct):
    _fields_ = [
        ("handles", u64),
        ("count_handles", u32),
        ("pad", u32),
    ]


class drm_syncobj_timeline_array(Struct):
    _fields_ = [
        ("handles", u64),
        ("points", u64),
        ("count_handles", u32),
        ("flags", u32),
    ]


DRM_IOCTL_VERSION = DRM_IOWR(0x00, drm_version)
DRM_IOCTL_GEM_CLOSE = DRM_IOW(0x09, drm_gem_close)
DRM_IOCTL_SYNCOBJ_CREATE = DRM_IOWR(0xBF, drm_syncobj_create)
DRM_IOCTL_SYNCOBJ_DESTROY = DRM_IOWR(0xC0, drm_syncobj_destroy)
DRM_IOCTL_SYNCOBJ_WAIT = DRM_IOWR(0xC3, drm_syncobj_wait)
DRM_IOCTL_SYNCOBJ_RESET = DRM_IOWR(0xC4, drm_syncobj_array)
DRM_IOCTL_SYNCOBJ_SIGNAL = DRM_IOWR(0xC5, drm_syncobj_array)
DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT = DRM_IOWR(0xCA, drm_syncobj_timeline_wait)
DRM_IOCTL_SYNCOBJ_QUERY = DRM_IOWR(0xCB, drm_syncobj_timeline_array)
DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL = DRM_IOWR(0xCD, drm_syncobj_timeline_array)

register_requests(globals())

__all__ = [n for n in dir() if n.startswith(("drm_", "DRM_", "XE_", "WORK_IN_PROGRESS_"))]
