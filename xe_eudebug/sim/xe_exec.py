"""Former location of `sim/kernel/xe_exec.py`: this name is that module (kept for existing imports)."""

import sys

from .kernel import xe_exec as _module

sys.modules[__name__] = _module
