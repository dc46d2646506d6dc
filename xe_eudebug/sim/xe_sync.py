"""Former location of `sim/kernel/xe_sync.py`: this name is that module (kept for existing imports)."""

import sys

from .kernel import xe_sync as _module

sys.modules[__name__] = _module
