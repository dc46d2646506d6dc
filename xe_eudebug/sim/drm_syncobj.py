"""Former location of `sim/kernel/drm_syncobj.py`: this name is that module (kept for existing imports)."""

import sys

from .kernel import drm_syncobj as _module

sys.modules[__name__] = _module
