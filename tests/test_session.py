"""End to end: Session = forked (or thread) client + debugger on a device.

Runs on the run's private simulator (tests/conftest.py sets ``XE_EUDEBUG_DEVICE=sim``) or on real
hardware when ``XE_EUDEBUG_DEVICE`` names a render node; the code never knows which.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import signal
import threading
import time
from typing import Any

import pytest

from xe_eudebug import client as client_mod
from xe_eudebug import session as session_mod
from xe_eudebug import uapi
from xe_eudebug.client import Client, ClientError, eudebug_engines, exec_queue_args, user_fence_sync
from xe_eudebug.debugger import Debugger, TriggerError, WorkerState
from xe_eudebug.device import eudebug_enabled, min_alignment, open_device
from xe_eudebug.events import EventFlags, EventType
from xe_eudebug.log import EventLog, EventLogMismatch
from xe_eudebug.session import Session

from waiting import wait_for

if not os.environ.get("XE_EUDEBUG_DEVICE", "").startswith("/"):
    pytest.importorskip("xe_eudebug.sim.kernel", reason="the simulator's kernel model is not available")

MODES = [pytest.param(False, id="fork"), pytest.param(True, id="thread")]
TIMEOUT = 20.0
#: Seconds to wait for the debugger's worker to read an event and run its triggers.
EVENT_WAIT = 10.0
METADATA = b"\x01" * 8192
BO_ADDR = 0x1A0000


def debug_engine(fd: int) -> Any:
    engines = eudebug_engines(fd)
    assert engines, "device has no render or compute engine"
    assert all(e.engine_class in (uapi.DRM_XE_ENGINE_CLASS_RENDER, uapi.DRM_XE_ENGINE_CLASS_COMPUTE)
               for e in engines)
    return engines[0]


def basic_work(c: Client) -> None:
    """open, LR VM, metadata (released by the debugger), EUDEBUG exec queue, BO bind/unbind, close."""
    fd = c.open_driver()
    vm = c.vm_create(fd, uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE)
    mid = c.metadata_create(fd, type=1, data=METADATA)
    c.wait_stage(1)
    q = exec_queue_args(vm, debug_engine(fd))
    c.exec_queue_create(fd, q)
    size = min_alignment(fd)
    bo = c.bo_create(fd, size)
    c.vm_bind(fd, vm, bo, 0, BO_ADDR, size, ext=[(mid, 42)])
    c.vm_unbind(fd, vm, 0, BO_ADDR, size)
    c.bo_close(fd, bo)
    c.exec_queue_destroy(fd, q)
    c.metadata_destroy(fd, mid, type=1, length=len(METADATA))
    c.vm_destroy(fd, vm)
    c.close_driver(fd)


def on_metadata(d: Debugger, e: Any) -> None:
    if e.flags & EventFlags.CREATE:
        assert d.read_metadata(e.client_handle, e.metadata_handle, e.len) == METADATA
        d.signal_stage(1)


def baseline() -> tuple[set[int], int, set[int]]:
    """The process state to return to; the first device open of a process sets up its link to the
    simulator (kept for the process's life), so open one before taking the snapshot.  Garbage
    left by earlier tests is collected first: an fd it holds would otherwise be closed by a
    collection during the test and count as a difference."""
    os.close(open_device())
    gc.collect()
    return process_state()


def process_state() -> tuple[set[int], int, set[int]]:
    pid = os.getpid()
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        kids = {int(x) for x in f.read().split()}
    return {int(n) for n in os.listdir("/proc/self/fd")}, threading.active_count(), kids


def settled(before: tuple[set[int], int, set[int]], timeout: float = 5.0) -> tuple[set[int], int, set[int]]:
    deadline = time.monotonic() + timeout
    now = process_state()
    while now != before and time.monotonic() < deadline:
        time.sleep(0.02)
        now = process_state()
    return now


@pytest.mark.parametrize("thread", MODES)
def test_basic_client_matches_and_leaves_nothing_behind(thread: bool) -> None:
    before = baseline()
    with Session(basic_work, client_thread=thread, timeout=TIMEOUT) as s:
        s.debugger.add_trigger(EventType.METADATA, on_metadata)
        s.run()
        s.check(match_opposite=True, filter=0)
        types = [e.type for e in s.debugger.log]
        assert types.count(EventType.OPEN) == 2 and types.count(EventType.EXEC_QUEUE) == 2
        assert types.count(EventType.VM_BIND_OP_METADATA) == 1 and types.count(EventType.VM_BIND_OP) == 2
        assert s.debugger.event_count == len(s.debugger.log) == len(s.client.log)
        assert s.client.seqno == len(s.client.log) + 1
    assert settled(before) == before


def test_missing_or_extra_event_fails_check() -> None:
    def work(c: Client) -> None:
        fd = c.open_driver()
        vm = c.vm_create(fd, uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE)
        c.record(EventType.VM, EventFlags.CREATE, client_handle=fd, vm_handle=99)  # never happens
        c.vm_destroy(fd, vm)
        c.close_driver(fd)

    with Session(work, timeout=TIMEOUT) as s:
        s.run()
        with pytest.raises(EventLogMismatch) as info:
            s.check()
        assert isinstance(info.value, AssertionError) and "vm" in str(info.value)

    def unlogged(c: Client) -> None:
        fd = c.open_driver()
        arg = uapi.drm_xe_vm_create()
        arg.flags = uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE
        from xe_eudebug import ioctl
        ioctl.ioctl(fd, uapi.DRM_IOCTL_XE_VM_CREATE, arg)  # the debugger sees a VM the client did not log
        c.close_driver(fd)

    with Session(unlogged, timeout=TIMEOUT) as s:
        s.run()
        with pytest.raises(EventLogMismatch):
            s.check(match_opposite=False)
        s.check(match_opposite=False, filter=1 << EventType.VM)  # filtered out: passes


@pytest.mark.parametrize("thread", MODES)
def test_stages_both_ways_with_running_worker(thread: bool) -> None:
    def work(c: Client) -> None:
        fd = c.open_driver()
        vm = c.vm_create(fd, uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE)
        c.signal_stage(5)
        c.wait_stage(6)
        c.vm_destroy(fd, vm)
        c.close_driver(fd)

    with Session(work, client_thread=thread, timeout=TIMEOUT) as s:
        d, c = s.debugger, s.client
        d.attach(c)
        assert d.target_pid == c.pid and d.fd >= 0
        d.start_worker()
        c.start()
        s.wait_stage(5)
        deadline = time.monotonic() + 5
        while d.event_count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.event_count == 2  # OPEN + VM; the client waits for stage 6
        d.signal_stage(6)
        c.wait_done()
        d.stop_worker()
        assert d.event_count == 4
        s.check()


def test_trigger_failure_surfaces_promptly() -> None:
    def bad(d: Debugger, e: Any) -> None:
        raise AssertionError("debugger disagrees")

    t0 = time.monotonic()
    with Session(basic_work, timeout=TIMEOUT) as s:
        s.debugger.add_trigger(EventType.METADATA, bad)  # so stage 1 is never signalled
        with pytest.raises(TriggerError) as info:
            s.run()
    assert time.monotonic() - t0 < 8  # not the client's 20 s stage timeout
    assert "debugger disagrees" in str(info.value) and "metadata(9):create" in str(info.value)


def test_trigger_failure_is_raised_once_the_client_finished(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed trigger that released its stage lets the client run to its end: run() raises
    the TriggerError with the client's log read and every event of the run in the debugger's
    log, also when poll slices of the wait for the client's FINI pass after the failure."""

    def bad(d: Debugger, e: Any) -> None:
        if e.flags & EventFlags.CREATE:
            try:
                raise AssertionError("debugger disagrees")
            finally:
                d.signal_stage(1)

    def work(c: Client) -> None:
        fd = c.open_driver()
        vm = c.vm_create(fd, uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE)
        mid = c.metadata_create(fd, type=1, data=METADATA)
        c.wait_stage(1)
        time.sleep(client_mod.POLL_SLICE * 1.5)  # at least one empty slice after the failure
        c.metadata_destroy(fd, mid, type=1, length=len(METADATA))
        c.vm_destroy(fd, vm)
        c.close_driver(fd)

    # far beyond the client's run, so that only its end can end the wait
    monkeypatch.setattr(session_mod, "TRIGGER_FAILURE_GRACE", 60.0)
    with Session(work, timeout=TIMEOUT) as s:
        s.debugger.add_trigger(EventType.METADATA, bad)
        with pytest.raises(TriggerError) as info:
            s.run()
        assert "debugger disagrees" in str(info.value) and len(info.value.failures) == 1
        assert len(s.client.log) == 6 and s.client.seqno == 7
        assert [(e.type, e.flags) for e in s.debugger.log] == [(e.type, e.flags) for e in s.client.log]
        s.check(match_opposite=True)


def test_client_crash_reported() -> None:
    def work(c: Client) -> None:
        fd = c.open_driver()
        raise RuntimeError(f"client broke with fd {fd}")

    before = baseline()
    with Session(work, timeout=TIMEOUT) as s:
        with pytest.raises(ClientError) as info:
            s.run()
    msg = str(info.value)
    assert "RuntimeError: client broke" in msg and "exited with status 1" in msg
    assert settled(before) == before


def test_session_failure_inside_with_block_still_cleans_up() -> None:
    before = baseline()
    with pytest.raises(KeyError):
        with Session(basic_work, timeout=TIMEOUT) as s:
            s.debugger.attach(s.client)
            s.debugger.start_worker()
            raise KeyError("test body failed")
    assert settled(before) == before


def test_sigterm_and_sigint_on_an_attached_worker() -> None:
    def work(c: Client) -> None:
        fd = c.open_driver()
        c.wait_stage(1)
        vm = c.vm_create(fd, uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE)
        c.signal_stage(2)
        c.wait_stage(3)
        c.vm_destroy(fd, vm)
        c.close_driver(fd)

    with Session(work, timeout=TIMEOUT) as s:
        d, c = s.debugger, s.client
        d.attach(c)
        d.start_worker()
        c.start()
        d.kill(signal.SIGTERM)           # interrupts the poll; the worker carries on
        d.signal_stage(1)
        d.wait_stage(2)
        deadline = time.monotonic() + 5
        while d.event_count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.event_count == 2 and d.worker_running and not d.handled_sigint
        d.kill(signal.SIGINT)            # the worker exits at once, state untouched
        deadline = time.monotonic() + 2
        while d.worker_running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not d.worker_running and d.handled_sigint and d.worker_state == WorkerState.ACTIVE
        d.signal_stage(3)
        c.wait_done()
        time.sleep(0.2)
        assert d.event_count == 2        # nothing read after SIGINT
        d.stop_worker()


def test_ufence_held_until_acked() -> None:
    def work(c: Client) -> None:
        fd = c.open_driver()
        vm = c.vm_create(fd, uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE)
        size = min_alignment(fd)
        bo = c.bo_create(fd, size)
        fence = ctypes.c_uint64(0)
        sync = user_fence_sync(ctypes.addressof(fence), 1337)
        c.vm_bind(fd, vm, bo, 0, BO_ADDR, size, syncs=[sync])
        assert c.wait_ufence(fd, ctypes.addressof(fence), 1337, 200_000_000) == -errno.ETIME
        c.signal_stage(1)                 # let the debugger ack
        assert c.wait_ufence(fd, ctypes.addressof(fence), 1337, 10_000_000_000) == 0
        c.vm_unbind(fd, vm, 0, BO_ADDR, size)
        c.bo_close(fd, bo)
        c.vm_destroy(fd, vm)
        c.close_driver(fd)

    held: list[Any] = []
    with Session(work, timeout=TIMEOUT) as s:
        d, c = s.debugger, s.client
        d.add_trigger(EventType.VM_BIND_UFENCE, lambda dbg, e: held.append(e))
        d.attach(c)
        d.start_worker()
        c.start()
        d.wait_stage(1)
        # the client's 200 ms wait does not tell that the worker has run the trigger yet
        assert wait_for(lambda: held, EVENT_WAIT), "no VM_BIND_UFENCE event"
        assert len(held) == 1 and held[0].flags == EventFlags.CREATE | EventFlags.NEED_ACK
        d.ack_ufence(held[0])
        c.wait_done()
        d.stop_worker()
        s.check(match_opposite=True)


def test_vm_access_through_the_debugger() -> None:
    def work(c: Client) -> None:
        fd = c.open_driver()
        vm = c.vm_create(fd, uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE)
        size = min_alignment(fd)
        bo = c.bo_create(fd, size)
        c.vm_bind(fd, vm, bo, 0, BO_ADDR, size)
        c.wait_stage(1)
        c.vm_unbind(fd, vm, 0, BO_ADDR, size)
        c.bo_close(fd, bo)
        c.vm_destroy(fd, vm)
        c.close_driver(fd)

    seen: list[bytes] = []

    def on_op(d: Debugger, e: Any) -> None:
        if not e.flags & EventFlags.CREATE:
            return
        bind = d.log.find_seqno(e.vm_bind_ref_seqno)
        with d.vm_open(bind.client_handle, bind.vm_handle) as vmf:
            assert vmf.pwrite(b"hello", e.addr + 16) == 5
            vmf.fsync()
            seen.append(vmf.pread(5, e.addr + 16))
        d.signal_stage(1)

    with Session(work, timeout=TIMEOUT) as s:
        s.debugger.add_trigger(EventType.VM_BIND_OP, on_op)
        s.run()
        s.check()
    assert seen == [b"hello"]


def test_attach_errors_name_the_ioctl_and_toggle_is_restored() -> None:
    fd = open_device()
    try:
        was = eudebug_enabled(fd)
        with Session(lambda c: None, device=fd, timeout=TIMEOUT) as s:
            assert eudebug_enabled(fd)
            d2 = Debugger(fd)
            try:
                s.debugger.attach(s.client)
                assert d2.try_attach(s.client) == -errno.EBUSY
                with pytest.raises(OSError, match="DRM_IOCTL_XE_EUDEBUG_CONNECT") as info:
                    d2.attach(s.client)
                assert info.value.errno == errno.EBUSY
            finally:
                d2.close()
            s.client.start()
            s.client.wait_done()
        assert eudebug_enabled(fd) == was
    finally:
        os.close(fd)


def test_concurrent_sessions_and_threads_inside_the_client() -> None:
    """IGT multiple-sessions and basic-client-th: four pairs at once, each client creating VMs
    from several threads (seqnos are drawn under the client's lock)."""

    def work(c: Client) -> None:
        fd = c.open_driver()

        def vms() -> None:
            for _ in range(3):
                c.vm_destroy(fd, c.vm_create(fd, uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE))

        threads = [threading.Thread(target=vms) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        c.close_driver(fd)

    before = baseline()
    sessions = [Session(work, timeout=TIMEOUT) for _ in range(4)]  # all forks before any worker
    try:
        for s in sessions:
            s.debugger.attach(s.client)
            s.debugger.start_worker()
        for s in sessions:
            s.client.start()
        for s in sessions:
            s.client.wait_done()
            s.debugger.stop_worker()
        for s in sessions:
            assert len(s.client.log) == 2 + 4 * 3 * 2
            s.check(match_opposite=True)
    finally:
        for s in sessions:
            s.close()
    assert settled(before) == before


def test_later_clients_do_not_inherit_debugger_connections() -> None:
    def work(c: Client) -> None:
        c.wait_stage(1)

    with Session(work, timeout=TIMEOUT) as a:
        a.debugger.attach(a.client)
        ino = os.fstat(a.debugger.fd).st_ino
        with Session(work, timeout=TIMEOUT) as b:
            held = set()
            for n in os.listdir(f"/proc/{b.client.pid}/fd"):
                try:
                    held.add(os.stat(f"/proc/{b.client.pid}/fd/{n}").st_ino)
                except OSError:
                    pass
            assert ino not in held
            b.client.start()
            b.debugger.signal_stage(1)
            b.client.wait_done()
        a.client.start()
        a.debugger.signal_stage(1)
        a.client.wait_done()


def test_detach_releases_ufence_and_worker_follows_reattach() -> None:
    """IGT basic-vm-bind-ufence-reconnect, reduced: a detach releases held user fences; the
    running worker picks up the connection of the next attach (with a fresh log)."""

    def work(c: Client) -> None:
        fd = c.open_driver()
        vm = c.vm_create(fd, uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE)
        size = min_alignment(fd)
        bo = c.bo_create(fd, size)
        fence = ctypes.c_uint64(0)
        c.vm_bind(fd, vm, bo, 0, BO_ADDR, size, syncs=[user_fence_sync(ctypes.addressof(fence), 7)])
        c.signal_stage(1)
        assert c.wait_ufence(fd, ctypes.addressof(fence), 7, 10_000_000_000) == 0
        c.signal_stage(2)
        c.wait_stage(3)
        c.vm_unbind(fd, vm, 0, BO_ADDR, size)
        c.bo_close(fd, bo)
        c.vm_destroy(fd, vm)
        c.close_driver(fd)

    with Session(work, timeout=TIMEOUT) as s:
        d, c = s.debugger, s.client
        d.attach(c)
        d.start_worker()
        c.start()
        d.wait_stage(1)
        deadline = time.monotonic() + 5
        while not any(e.type == EventType.VM_BIND_UFENCE for e in d.log) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(e.type == EventType.VM_BIND_UFENCE for e in d.log)
        d.detach()                       # releases the held fence: the client's wait returns
        d.wait_stage(2)
        d.log = EventLog("debugger")
        deadline = time.monotonic() + 5
        while d.try_attach(c) == -errno.EBUSY and time.monotonic() < deadline:
            time.sleep(0.01)  # the previous connection may still be in its release path
        assert d.attached
        d.signal_stage(3)
        c.wait_done()
        d.stop_worker()
        types = [(e.type, e.flags) for e in d.log]
        assert types[0] == (EventType.OPEN, EventFlags.CREATE)            # discovery
        assert types[-1] == (EventType.OPEN, EventFlags.DESTROY)          # live, after re-attach
        assert (EventType.VM_BIND_OP, EventFlags.DESTROY) in types
