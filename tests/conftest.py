"""Test-session plumbing: a private simulator instance for the run, and extra instances on demand.

Unless ``XE_EUDEBUG_DEVICE`` names real hardware (a path), the session starts its own simulator
(own socket directory, eudebug disabled by default as in the kernel) and points
``XE_EUDEBUG_SIM_SOCKET`` and ``XE_EUDEBUG_DEVICE=sim`` at it, so tests never touch the per-user
shared instance.  `sim_server(**config)` starts further private instances with other settings.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from xe_eudebug.sim.config import SimConfig  # noqa: E402


def _uses_hardware() -> bool:
    device = os.environ.get("XE_EUDEBUG_DEVICE", "")
    return device.startswith("/")


def _kernel_model_available() -> bool:
    try:
        import xe_eudebug.sim.kernel  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="session", autouse=True)
def simulator_session() -> Iterator[object | None]:
    """The run's private simulator (None on real hardware or without a kernel model)."""
    if _uses_hardware() or not _kernel_model_available():
        yield None
        return
    from xe_eudebug.sim.launch import selected_instance

    with selected_instance(SimConfig.from_env(idle_exit=0)) as handle:
        yield handle


@pytest.fixture(scope="session")
def sim_server() -> Iterator[Callable[..., object]]:
    """Factory: ``sim_server(devices=2, read_event_timeout=0.5, ...)`` starts a private simulator
    with those `SimConfig` fields and returns its handle (``.socket``, ``.pid``,
    ``.open_device(index)``, ``.stop()``, ``.kill()``).  ``kernel="module:Class"`` swaps the kernel
    model (transport tests).  Every instance is stopped at the end of the session."""
    from xe_eudebug.sim import start_server

    handles: list = []

    def factory(*, kernel: str | None = None, verbose: bool = False, **fields: object):
        fields.setdefault("idle_exit", 0)
        handle = start_server(SimConfig(**fields), kernel=kernel, verbose=verbose)  # type: ignore[arg-type]
        handles.append(handle)
        return handle

    yield factory
    for handle in handles:  # signal all first: they shut down in parallel
        if handle.alive():
            handle.proc.terminate()
    for handle in handles:
        handle.stop()


@pytest.fixture(scope="module")
def eudebug_as_found() -> Iterator[None]:
    """Leave the device's `enable_eudebug` as the module found it, for a module whose fixtures or
    tests enable it (``pytestmark = pytest.mark.usefixtures("eudebug_as_found")``): the test files
    after it must not run with what it left.  Restored once, after the module's last test, when
    no test's debugger is attached any more."""
    from kbhelpers import set_eudebug
    from xe_eudebug.device import eudebug_enabled, open_device

    dev = open_device()
    try:
        was = eudebug_enabled(dev)
    finally:
        os.close(dev)
    yield
    dev = open_device()
    try:
        set_eudebug(dev, was)
    finally:
        os.close(dev)
