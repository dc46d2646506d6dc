"""The simulator's strace-like call log: ``-v`` (calls, errno names) and ``-vv`` (decoded structs)."""

from __future__ import annotations

import ctypes
import os
import re
import struct
import time

import pytest

pytest.importorskip("xe_eudebug.sim.kernel", reason="the simulator's kernel model is not available")

from xe_eudebug import ioctl as seam  # noqa: E402
from xe_eudebug.sim import port  # noqa: E402
from xe_eudebug.uapi import xe_drm as xe  # noqa: E402
from xe_eudebug.uapi import xe_drm_eudebug as eud  # noqa: E402


def _wait_log(handle, *patterns: str, timeout: float = 30.0) -> str:
    """The server's log once every regex in ``patterns`` matches a line (lines are written after
    the reply, so they may trail the call)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(handle.logfile) as f:
            text = f.read()
        if all(re.search(p, text, re.M) for p in patterns):
            return text
        assert time.monotonic() < deadline, f"{patterns} not all in the simulator log:\n{text[-3000:]}"
        time.sleep(0.05)


def _calls(srv) -> None:
    """VM_CREATE (ok), VM_DESTROY of an unknown VM (ENOENT), CONNECT while disabled (ENODEV),
    then enabled CONNECT to ourselves and one READ_EVENT."""
    fd = port.open_device(0, socket_path=srv.socket)
    try:
        vm = xe.drm_xe_vm_create()
        vm.flags = xe.DRM_XE_VM_CREATE_FLAG_LR_MODE
        seam.ioctl(fd, xe.DRM_IOCTL_XE_VM_CREATE, vm)
        bad = xe.drm_xe_vm_destroy()
        bad.vm_id = 4242
        assert seam.try_ioctl(fd, xe.DRM_IOCTL_XE_VM_DESTROY, bad) < 0
        conn = eud.drm_xe_eudebug_connect()
        conn.pid = os.getpid()
        assert seam.try_ioctl(fd, eud.DRM_IOCTL_XE_EUDEBUG_CONNECT, conn) < 0
        port.set_enabled(fd, True)
        dbg = seam.ioctl(fd, eud.DRM_IOCTL_XE_EUDEBUG_CONNECT, conn)
        try:
            buf = ctypes.create_string_buffer(4096)
            struct.pack_into("<IHH", buf, 0, 4096, eud.DRM_XE_EUDEBUG_EVENT_READ, 0)
            seam.ioctl(dbg, eud.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, buf)
        finally:
            os.close(dbg)
    finally:
        os.close(fd)


def _traced_sim(verbose: int):
    from xe_eudebug.sim import SimConfig, start_server

    return start_server(SimConfig(idle_exit=0), verbose=verbose)


def test_v_logs_every_call_with_its_result_or_errno_name():
    with _traced_sim(1) as srv:
        _check_v(srv)


def _check_v(srv) -> None:
    _calls(srv)
    pid = os.getpid()
    text = _wait_log(
        srv,
        rf"pid {pid} open\(\"sim:0\"\) = drm#\d+ <",
        rf"pid {pid} ioctl\(drm#\d+, DRM_IOCTL_XE_VM_CREATE, \{{\.\.\.\}}\) = 0 <",
        rf"pid {pid} ioctl\(drm#\d+, DRM_IOCTL_XE_VM_DESTROY, \{{\.\.\.\}}\) = -1 ENOENT \(No such file or directory\) <",
        rf"pid {pid} ioctl\(drm#\d+, DRM_IOCTL_XE_EUDEBUG_CONNECT, \{{\.\.\.\}}\) = -1 ENODEV \(",
        rf"pid {pid} ioctl\(drm#\d+, DRM_IOCTL_XE_EUDEBUG_CONNECT, \{{\.\.\.\}}\) = debugger#\d+ <",
        rf"pid {pid} ioctl\(debugger#\d+, DRM_XE_EUDEBUG_IOCTL_READ_EVENT, \{{\.\.\.\}}\) = 0 <",
    )
    assert "=>" not in text  # structs only with -vv
    assert not re.search(r"poll\(.*\) = 0 <", text)


def test_vv_adds_the_decoded_structs():
    with _traced_sim(2) as srv:
        _check_vv(srv)


def _check_vv(srv) -> None:
    _calls(srv)
    pid = os.getpid()
    _wait_log(
        srv,
        rf"pid {pid} ioctl\(drm#\d+, DRM_IOCTL_XE_VM_CREATE, \{{extensions=0, flags=2, vm_id=0, "
        r"reserved=\[0, 0\]\}\) = 0 => \{extensions=0, flags=2, vm_id=1, reserved=\[0, 0\]\} <",
        rf"ioctl\(drm#\d+, DRM_IOCTL_XE_VM_DESTROY, \{{vm_id=0x1092, pad=0, reserved=\[0, 0\]\}}\) = -1 ENOENT",
        rf"ioctl\(drm#\d+, DRM_IOCTL_XE_EUDEBUG_CONNECT, \{{extensions=0, pid={pid:#x}, flags=0, version=0\}}\) "
        r"= debugger#\d+ => \{extensions=0, pid=0x[0-9a-f]+, flags=0, version=1\}",
        r"ioctl\(debugger#\d+, DRM_XE_EUDEBUG_IOCTL_READ_EVENT, \{\.\.\.\}\) = 0 => "
        r"\{base=drm_xe_eudebug_event\(len=0x20, type=2, flags=1, seqno=1, reserved=0\), client_handle=1\}",
    )
