"""The simulated Xe kernel driver.

`start_server()` runs a private simulator instance in a child process and returns a handle with
``.socket``, ``.pid`` and ``.stop()``; `SimConfig` holds its settings.  `python3 -m xe_eudebug.sim`
runs one in the foreground.  The client side (`xe_eudebug.sim.port`) is registered with the
system-call seam when `xe_eudebug` is imported; see docs/simulator.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import SimConfig

if TYPE_CHECKING:  # pragma: no cover
    from .launch import ServerHandle, start_server

__all__ = ["SimConfig", "start_server", "ServerHandle"]


def __getattr__(name: str) -> Any:
    # The server modules are only needed by processes that start a simulator.
    if name in ("start_server", "ServerHandle"):
        from . import launch

        return getattr(launch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
