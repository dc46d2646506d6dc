"""Core DRM uapi (``drm.h``): the parts the Xe eudebug framework uses."""

from __future__ import annotations

import ctypes

from ..ioctl import DRM_COMMAND_BASE, DRM_IOCTL_BASE, DRM_IOW, DRM_IOWR
from ._base import Struct, register_requests, s32, u32

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


DRM_IOCTL_VERSION = DRM_IOWR(0x00, drm_version)
DRM_IOCTL_GEM_CLOSE = DRM_IOW(0x09, drm_gem_close)

register_requests(globals())

__all__ = [n for n in dir() if n.startswith(("drm_", "DRM_", "XE_", "WORK_IN_PROGRESS_"))]
