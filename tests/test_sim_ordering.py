"""Ordering of releases (last closes) against later calls in the simulator's server.

In the kernel, close(2) of a DRM file runs the release before it returns: when the release
blocks (its OPEN DESTROY event waits for room in a full event fifo, or for a discovery in
progress), the closing process blocks with it, so none of its later calls can overtake the
event; meanwhile the debugger's READ_EVENT keeps draining the fifo.  A simulated fd's close
returns at once, so the server orders the process's later calls after the release itself.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
import time
from typing import Any, Callable

import pytest

seam = pytest.importorskip("xe_eudebug.ioctl", reason="the system-call seam (xe_eudebug.ioctl) is not available")
pytest.importorskip("xe_eudebug.sim.kernel", reason="the simulator's kernel model is not available")
xe = pytest.importorskip("xe_eudebug.uapi.xe_drm", reason="uapi mirrors are not available")
eud = pytest.importorskip("xe_eudebug.uapi.xe_drm_eudebug", reason="uapi mirrors are not available")

if os.environ.get("XE_EUDEBUG_DEVICE", "").startswith("/"):
    pytest.skip("simulator transport tests (XE_EUDEBUG_DEVICE names real hardware)", allow_module_level=True)

OPEN, VM = eud.DRM_XE_EUDEBUG_EVENT_OPEN, eud.DRM_XE_EUDEBUG_EVENT_VM
CREATE, DESTROY = eud.DRM_XE_EUDEBUG_EVENT_CREATE, eud.DRM_XE_EUDEBUG_EVENT_DESTROY
#: Trials per run: unordered, the later event overtook the blocked one in 7-13 of 20 trials.
TRIALS = 10


def _read_event(dbg: int) -> tuple[int, int, int]:
    """One event (blocking READ_EVENT, up to the simulator's 5 s): (type, flags, seqno)."""
    buf = ctypes.create_string_buffer(4096)
    struct.pack_into("<IHH", buf, 0, 4096, eud.DRM_XE_EUDEBUG_EVENT_READ, 0)
    seam.ioctl(dbg, eud.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, buf)
    _len, etype, flags, seqno = struct.unpack_from("<IHHQ", buf, 0)
    return etype, flags, seqno


def _connect_self(fd: int) -> int:
    arg = eud.drm_xe_eudebug_connect()
    arg.pid = os.getpid()
    return seam.ioctl(fd, eud.DRM_IOCTL_XE_EUDEBUG_CONNECT, arg)


def _vm_create(fd: int) -> None:
    vm = xe.drm_xe_vm_create()
    vm.flags = xe.DRM_XE_VM_CREATE_FLAG_LR_MODE
    seam.ioctl(fd, xe.DRM_IOCTL_XE_VM_CREATE, vm)


def test_close_blocked_on_a_full_fifo_is_ordered_before_the_process_next_call(sim_server: Callable[..., Any]) -> None:
    """issue 8 item 13: OPEN#1, OPEN#2, then the close of #2 (OPEN DESTROY, seqno 3) blocks on a
    full fifo (capacity 2) and the same process creates a VM: the debugger must read the OPEN
    DESTROY before the VM CREATE, in seqno order, while this process's own READ_EVENTs drain."""
    srv = sim_server(fifo_capacity=2, fifo_timeout=20.0, fifo_retry=0.05, enable_default=True)
    for trial in range(TRIALS):
        fd = srv.open_device(0)
        dbg = -1
        worker: threading.Thread | None = None
        errors: list[BaseException] = []
        try:
            dbg = _connect_self(fd)                      # discovery: OPEN CREATE of fd (seqno 1)
            extra = srv.open_device(0)                   # OPEN CREATE (seqno 2): the fifo is full
            os.close(extra)                              # its OPEN DESTROY (seqno 3) cannot be queued

            def create() -> None:
                try:
                    _vm_create(fd)                       # VM CREATE: ordered after the close
                except BaseException as exc:  # noqa: BLE001 - surfaced below
                    errors.append(exc)

            worker = threading.Thread(target=create, daemon=True)
            worker.start()
            time.sleep(0.2)                              # the create is issued before any read
            got = [_read_event(dbg) for _ in range(4)]
            worker.join(10)
            assert not worker.is_alive(), "VM_CREATE did not return once the fifo had room"
            assert not errors, errors
            assert got == [(OPEN, CREATE, 1), (OPEN, CREATE, 2), (OPEN, DESTROY, 3), (VM, CREATE, 4)], \
                f"trial {trial}: events out of order: {got}"
        finally:
            if worker is not None and worker.is_alive():
                worker.join(25)
            if dbg >= 0:
                os.close(dbg)
            os.close(fd)


def test_seam_close_returns_after_the_release_as_close_does(sim_server: Callable[..., Any]) -> None:
    """`ioctl.close` of a simulated DRM file blocks while its release does (OPEN DESTROY waiting
    for room in a full fifo) and returns once the event is queued, so whatever the closer does
    next (here: tell another thread) cannot overtake the event."""
    srv = sim_server(fifo_capacity=2, fifo_timeout=20.0, fifo_retry=0.05, enable_default=True)
    fd = srv.open_device(0)
    dbg = _connect_self(fd)                              # OPEN CREATE of fd (seqno 1)
    closer: threading.Thread | None = None
    try:
        extra = srv.open_device(0)                       # OPEN CREATE (seqno 2): the fifo is full
        closed = threading.Event()

        def close_extra() -> None:
            seam.close(extra)
            closed.set()

        closer = threading.Thread(target=close_extra, daemon=True)
        closer.start()
        assert not closed.wait(0.5), "close returned while its OPEN DESTROY could not be queued"
        assert _read_event(dbg) == (OPEN, CREATE, 1)     # room for the OPEN DESTROY
        assert closed.wait(10), "close did not return once its release could finish"
        poll = seam.poll([(dbg, 1)], 0)                  # POLLIN now: both events are queued
        assert poll and poll[0][1] & 1, poll
        assert [_read_event(dbg) for _ in range(2)] == [(OPEN, CREATE, 2), (OPEN, DESTROY, 3)]
    finally:
        if closer is not None:
            closer.join(25)
        os.close(dbg)
        os.close(fd)
