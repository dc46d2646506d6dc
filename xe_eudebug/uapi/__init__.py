"""ctypes mirrors of the uapi headers, with the exact C names of structs, fields and macros.

``from xe_eudebug.uapi import *`` gives what the framework uses of ``drm.h``, and all of
``xe_drm.h`` and ``xe_drm_eudebug.h``. Anonymous unions are reachable by their members' C
names; flexible array members are zero-length arrays. Generation-specific numbers (ioctl
numbers, event type values, the exec-queue property) come from
:mod:`xe_eudebug.uapi.generations`. :func:`layout` gives fast paths a precompiled
``struct.Struct`` derived from these ctypes layouts (never a restated format string).
"""

from . import drm as _drm, xe_drm as _xe_drm, xe_drm_eudebug as _xe_drm_eudebug
from ._base import Layout, layout, struct_code  # noqa: F401
from .drm import *  # noqa: F401,F403
from .generations import ACTIVE as GENERATION, Generation  # noqa: F401
from .xe_drm import *  # noqa: F401,F403
from .xe_drm_eudebug import *  # noqa: F401,F403

__all__ = [*_drm.__all__, *_xe_drm.__all__, *_xe_drm_eudebug.__all__, "GENERATION", "Generation", "Layout", "layout", "struct_code"]
