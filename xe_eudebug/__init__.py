"""xe_eudebug: test the Linux Xe driver's EU debugger interface from Python.

A pure-Python reimplementation of IGT's ``lib/xe/xe_eudebug``: a :class:`Client` records the
events it expects, a :class:`Debugger` records the events the kernel sends, and a
:class:`Session` runs both and compares the two :class:`EventLog` s. Everything runs on a real
Xe device or on the bundled simulator (``XE_EUDEBUG_DEVICE=sim``).

Submodules are imported on first use of their names, so ``import xe_eudebug`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import ioctl  # noqa: F401  (the system-call seam)
from .sim import port as _sim_port  # noqa: F401  (registers the simulator's seam backend)
from .debuglog import enable_from_env as _enable_from_env

_enable_from_env()  # XE_EUDEBUG_DEBUG=1: the library's loggers to stderr

__version__ = "0.1.0"

_LAZY = {
    "open_device": "device",
    "enable_eudebug": "device",
    "Event": "events",
    "EventType": "events",
    "EventFlags": "events",
    "decode": "events",
    "EventLog": "log",
    "EventLogMismatch": "log",
    "Client": "client",
    "ClientError": "client",
    "attach_debug_chain": "client",
    "Debugger": "debugger",
    "TriggerError": "debugger",
    "VmFile": "debugger",
    "WorkerState": "debugger",
    "Session": "session",
}

__all__ = ["ioctl", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xe_eudebug' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
