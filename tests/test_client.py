"""Client: token protocol, stages, log transfer, failure reporting, teardown, and the recording
helpers' events and their order relative to the ioctls.

No device is needed: protocol tests use no ioctls, recording tests use the stand-in seam
backend of test_debugger.py, which records how many events the client had logged when each
ioctl arrived.  The helpers against the simulator are covered end to end in test_session.py.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import threading
import time
from typing import Any

import pytest

from xe_eudebug import uapi
from xe_eudebug.client import (
    DEAD_CLIENT,
    Client,
    ClientError,
    ExtensionChain,
    attach_debug_chain,
    exec_queue_args,
    user_fence_sync,
)
from xe_eudebug.events import EventFlags, EventType, VM_BIND_FLAG_UFENCE

from test_debugger import FakeBackend, fake  # noqa: F401  (fixture)
from waiting import wait_for

MODES = [pytest.param(False, id="fork"), pytest.param(True, id="thread")]


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def children() -> set[int]:
    pid = os.getpid()
    out = set()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            out = {int(x) for x in f.read().split()}
    except OSError:
        pass
    return out


# ------------------------------------------------------------------------------------------------
# token protocol

@pytest.mark.parametrize("thread", MODES)
def test_stages_both_ways_and_log_transfer(thread: bool) -> None:
    def work(c: Client) -> None:
        ref = c.vm_bind_event(EventFlags.STATE_CHANGE, 3, 1, 0, 1)
        c.signal_stage(7)                # client -> debugger
        c.wait_stage(1337)               # debugger -> client
        c.vm_bind_op_event(EventFlags.CREATE, ref, 0x1A0000, 4096, 0)
        c.signal_stage(8)

    with Client(-1, work, flags=5, thread=thread, timeout=10) as c:
        assert c.pid > 0 and c.flags == 5
        assert (c.pid == os.getpid()) == thread
        c.start()
        c.wait_debugger_stage(7)
        c.send_client_stage(1337)
        c.wait_debugger_stage(8)
        c.wait_done()
        assert c.done and c.seqno == 3
        assert [(e.type, e.seqno) for e in c.log] == [(EventType.VM_BIND, 1), (EventType.VM_BIND_OP, 2)]
        assert c.log[1].vm_bind_ref_seqno == 1 and c.log.name == "client"
        c.stop()
        assert c.pid == 0
    if not thread:
        assert c.status == 0


@pytest.mark.parametrize("thread", MODES)
def test_client_exception_reported_with_traceback(thread: bool) -> None:
    def work(c: Client) -> None:
        raise ValueError("work went wrong")

    with Client(-1, work, thread=thread, timeout=10) as c:
        c.start()
        t0 = time.monotonic()
        with pytest.raises(ClientError) as info:
            c.wait_done()
        assert time.monotonic() - t0 < 5
    msg = str(info.value)
    assert "CLIENT_FINI" in msg and "ValueError: work went wrong" in msg and "Traceback" in msg
    assert info.value.status == 1
    if not thread:
        assert "exited with status 1" in msg


def test_client_killed_by_signal_is_named() -> None:
    def work(c: Client) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with Client(-1, work, timeout=10) as c:
        c.start()
        with pytest.raises(ClientError) as info:
            c.wait_done()
    assert "killed by signal SIGKILL" in str(info.value)
    assert info.value.status == -signal.SIGKILL


def test_wrong_stage_value_fails_the_client() -> None:
    def work(c: Client) -> None:
        c.wait_stage(2)

    with Client(-1, work, timeout=10) as c:
        c.start()
        c.send_client_stage(3)
        with pytest.raises(ClientError) as info:
            c.wait_done()
    assert "expected stage 2, got 3" in str(info.value)


def test_unexpected_token_is_an_error() -> None:
    with Client(-1, lambda c: None, thread=True, timeout=10) as c:
        c.start()
        with pytest.raises(AssertionError, match="expected token DEBUGGER_STAGE, got CLIENT_FINI"):
            c.wait_debugger_stage(1)


def test_silent_client_times_out_and_is_killed_on_close() -> None:
    before = children()

    def work(c: Client) -> None:
        time.sleep(30)

    c = Client(-1, work, timeout=1)
    c.start()
    t0 = time.monotonic()
    with pytest.raises(ClientError, match="nothing within 1 s"):
        c.wait_done()
    assert 0.9 < time.monotonic() - t0 < 4
    c.close()
    assert time.monotonic() - t0 < 8
    assert children() == before


def test_dead_client_allowed() -> None:
    with Client(-1, lambda c: time.sleep(30), timeout=5) as c:
        c.allow_dead_client = True
        c.start()
        c.kill()
        assert c.pid == 0 and c.done
        c.wait_done()  # no-op once the client is declared gone
        c.stop()


def test_dead_client_allowed_wait_done_marks_it_and_its_log_cannot_be_read() -> None:
    """IGT: wait_done of a dead client (allowed) sets seqno to DEAD_CLIENT, and the log read
    that follows asserts (lib L:1595-1596, 392-407): the log must not read as empty."""
    with Client(-1, lambda c: os._exit(0), timeout=5) as c:
        c.allow_dead_client = True
        c.start()
        c.wait_done()
        assert c.done and c.seqno == DEAD_CLIENT
        with pytest.raises(ClientError, match="died before sending its event log"):
            c.log  # noqa: B018
        c.stop()


@pytest.mark.parametrize("thread", MODES)
def test_no_leaks_after_close(thread: bool) -> None:
    fds, threads, kids = open_fds(), threading.active_count(), children()
    for start in (True, False):
        with Client(-1, lambda c: c.signal_stage(1), thread=thread, timeout=5) as c:
            if start:
                c.start()
                c.wait_debugger_stage(1)
                c.wait_done()
    assert open_fds() == fds
    assert wait_for(lambda: threading.active_count() == threads)
    assert children() == kids


def test_fork_mode_data_is_a_copy_shared_memory_is_shared() -> None:
    shared = mmap.mmap(-1, 4096)
    data = {"items": [1], "shm": shared}

    def work(c: Client) -> None:
        c.data["items"].append(2)
        c.ptr["shm"][0:4] = b"ping"
        assert c.ptr is c.data

    with Client(-1, work, data=data, timeout=10) as c:
        c.start()
        c.wait_done()
        c.stop()
    assert data["items"] == [1]
    assert shared[0:4] == b"ping"
    assert DEAD_CLIENT == 0xCCCCDEAD


# ------------------------------------------------------------------------------------------------
# recording helpers (stand-in device)

class FakeDrm:
    """Answers the client's ioctls and notes (request, events logged so far) for each."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: list[tuple[int, int]] = []
        self.binds: list[Any] = []
        self.metadata: list[bytes] = []
        self.fail: dict[int, int] = {}

    def __call__(self, request: int, addr: int) -> int:
        self.calls.append((request, len(self.client.log)))
        if request in self.fail:
            raise OSError(self.fail[request], "failed")
        if request == uapi.DRM_IOCTL_XE_VM_CREATE:
            uapi.drm_xe_vm_create.from_address(addr).vm_id = 11
        elif request == uapi.DRM_IOCTL_XE_EXEC_QUEUE_CREATE:
            uapi.drm_xe_exec_queue_create.from_address(addr).exec_queue_id = 21
        elif request == uapi.DRM_IOCTL_XE_DEBUG_METADATA_CREATE:
            m = uapi.drm_xe_debug_metadata_create.from_address(addr)
            self.metadata.append(ctypes.string_at(m.user_addr, m.len))
            m.metadata_id = 31
        elif request == uapi.DRM_IOCTL_XE_VM_BIND:
            b = uapi.drm_xe_vm_bind.from_buffer_copy(ctypes.string_at(addr, ctypes.sizeof(uapi.drm_xe_vm_bind)))
            syncs = list((uapi.drm_xe_sync * b.num_syncs).from_address(b.syncs)) if b.num_syncs else []
            chain = []
            ext = b.bind.extensions
            while ext:
                node = uapi.drm_xe_vm_bind_op_ext_attach_debug.from_address(ext)
                chain.append((node.base.name, node.metadata_id, node.cookie))
                ext = node.base.next_extension
            self.binds.append((b, [s.type for s in syncs], chain))
        elif request == uapi.DRM_IOCTL_XE_DEVICE_QUERY:
            raise OSError(errno.EINVAL, "no queries here")
        return 0


@pytest.fixture
def drm(fake: FakeBackend) -> Any:  # noqa: F811
    c = Client(-1, None, thread=True, timeout=5)
    handler = FakeDrm(c)
    f = fake.new_file(handler)
    c.master_fd = f.fd
    c.pat_index = 0  # the fake answers no device query, so none for the PAT index
    try:
        yield c, handler, f.fd
    finally:
        c.close()


def test_vm_and_metadata_helpers_log_after_their_ioctl(drm: Any) -> None:
    c, h, fd = drm
    vm = c.vm_create(fd, uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE)
    mid = c.metadata_create(fd, type=1, data=b"\x01" * 100)
    c.metadata_destroy(fd, mid, type=1, length=100)
    c.vm_destroy(fd, vm)
    assert (vm, mid) == (11, 31) and h.metadata == [b"\x01" * 100]
    assert h.calls == [
        (uapi.DRM_IOCTL_XE_VM_CREATE, 0),
        (uapi.DRM_IOCTL_XE_DEBUG_METADATA_CREATE, 1),
        (uapi.DRM_IOCTL_XE_DEBUG_METADATA_DESTROY, 2),
        (uapi.DRM_IOCTL_XE_VM_DESTROY, 3),
    ]
    text = [str(e) for e in c.log]
    assert text == [
        "(1)           vm(3):create: client_handle=%d, handle=11" % fd,
        "(2)     metadata(9):create: client_handle=%d, metadata_handle=31, type=1, len=100" % fd,
        "(3)     metadata(9):destroy: client_handle=%d, metadata_handle=31, type=1, len=100" % fd,
        "(4)           vm(3):destroy: client_handle=%d, handle=11" % fd,
    ]
    assert all(e.base.len == e.SIZE and e.base.reserved == 0 for e in c.log)


def test_exec_queue_helpers_log_only_eudebug_queues(drm: Any) -> None:
    c, h, fd = drm
    q = exec_queue_args(11, (uapi.DRM_XE_ENGINE_CLASS_COMPUTE, 0, 0))
    assert c.exec_queue_create(fd, q) == 21
    c.exec_queue_destroy(fd, q)
    plain = exec_queue_args(11, (uapi.DRM_XE_ENGINE_CLASS_RENDER, 0, 0), eudebug=False)
    c.exec_queue_create(fd, plain)
    c.exec_queue_destroy(fd, plain)
    # create logs after its ioctl, destroy before
    assert h.calls == [
        (uapi.DRM_IOCTL_XE_EXEC_QUEUE_CREATE, 0),
        (uapi.DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, 2),
        (uapi.DRM_IOCTL_XE_EXEC_QUEUE_CREATE, 2),
        (uapi.DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, 2),
    ]
    create, destroy = list(c.log)
    assert create.flags == EventFlags.CREATE and destroy.flags == EventFlags.DESTROY
    for e in (create, destroy):
        assert (e.client_handle, e.vm_handle, e.exec_queue_handle, e.engine_class, e.width) == \
            (fd, 11, 21, uapi.DRM_XE_ENGINE_CLASS_COMPUTE, 1)
        assert e.base.len == 56


def test_vm_bind_logs_the_chain_with_metadata_and_ufence(drm: Any) -> None:
    c, h, fd = drm
    fence = ctypes.c_uint64(0)
    sync = user_fence_sync(ctypes.addressof(fence), 1337)
    c.vm_bind(fd, 11, 5, 0, 0x1A0000, 0x10000, syncs=[sync], ext=[(31, 7), (32, 8)])
    b, sync_types, chain = h.binds[0]
    assert (b.vm_id, b.num_binds, b.exec_queue_id) == (11, 1, 0)
    assert (b.bind.obj, b.bind.addr, b.bind.range, b.bind.op) == (5, 0x1A0000, 0x10000, uapi.DRM_XE_VM_BIND_OP_MAP)
    assert sync_types == [uapi.DRM_XE_SYNC_TYPE_USER_FENCE]
    name = uapi.XE_VM_BIND_OP_EXTENSIONS_ATTACH_DEBUG
    assert chain == [(name, 31, 7), (name, 32, 8)]
    events = list(c.log)
    assert [e.type for e in events] == [EventType.VM_BIND, EventType.VM_BIND_OP, EventType.VM_BIND_OP_METADATA,
                                        EventType.VM_BIND_OP_METADATA, EventType.VM_BIND_UFENCE]
    bind, op, m1, m2, uf = events
    assert bind.flags == EventFlags.STATE_CHANGE and bind.bind_flags == VM_BIND_FLAG_UFENCE
    assert (bind.client_handle, bind.vm_handle, bind.num_binds) == (fd, 11, 1)
    assert op.flags == EventFlags.CREATE and op.vm_bind_ref_seqno == bind.seqno
    assert (op.addr, op.range, op.num_extensions) == (0x1A0000, 0x10000, 2)
    assert (m1.vm_bind_op_ref_seqno, m1.metadata_handle, m1.metadata_cookie) == (op.seqno, 31, 7)
    assert (m2.metadata_handle, m2.metadata_cookie) == (32, 8)
    assert uf.flags == EventFlags.CREATE | EventFlags.NEED_ACK and uf.vm_bind_ref_seqno == bind.seqno


def test_vm_unbind_logs_destroy_op_and_refuses_ufence(drm: Any) -> None:
    c, h, fd = drm
    c.vm_unbind(fd, 11, 0, 0x1A0000, 0x1000)
    bind, op = list(c.log)
    assert bind.bind_flags == 0 and op.flags == EventFlags.DESTROY and op.num_extensions == 0
    assert h.binds[0][0].bind.op == uapi.DRM_XE_VM_BIND_OP_UNMAP and h.binds[0][0].bind.obj == 0
    sync = user_fence_sync(0, 1)
    with pytest.raises(ValueError):
        c.vm_unbind(fd, 11, 0, 0x1A0000, 0x1000, syncs=[sync])


def test_failed_ioctls_log_nothing_and_name_the_request(drm: Any) -> None:
    c, h, fd = drm
    h.fail[uapi.DRM_IOCTL_XE_VM_CREATE] = errno.EINVAL
    h.fail[uapi.DRM_IOCTL_XE_VM_BIND] = errno.ENOENT
    with pytest.raises(OSError, match="DRM_IOCTL_XE_VM_CREATE") as info:
        c.vm_create(fd)
    assert info.value.errno == errno.EINVAL
    assert c.try_vm_bind_op(fd, 11, 5, 0, 0x1A0000, 4096, uapi.DRM_XE_VM_BIND_OP_MAP) == -errno.ENOENT
    with pytest.raises(OSError, match="DRM_IOCTL_XE_VM_BIND"):
        c.vm_bind(fd, 11, 5, 0, 0x1A0000, 4096)
    del h.fail[uapi.DRM_IOCTL_XE_VM_BIND]
    # an op that is neither MAP nor UNMAP is issued but not logged
    assert c.try_vm_bind_op(fd, 11, 0, 0, 0x1A0000, 4096, uapi.DRM_XE_VM_BIND_OP_PREFETCH) == -errno.EINVAL
    assert len(c.log) == 0 and c.seqno == 1


def test_low_level_recorders_and_chain_helpers() -> None:
    c = Client(-1, None, thread=True, timeout=5)
    try:
        ref = c.vm_bind_event(EventFlags.STATE_CHANGE, 4, 2, 0, 6)
        op = c.vm_bind_op_event(EventFlags.DESTROY, ref, 0, 0)
        c.vm_bind_op_metadata_event(EventFlags.CREATE, op, 3, 9)
        c.vm_bind_ufence_event(EventFlags.CREATE | EventFlags.NEED_ACK, ref)
        assert (ref, op, c.get_seqno(), c.seqno) == (1, 2, 5, 6)
        assert [e.seqno for e in c.log] == [1, 2, 3, 4]
        chain = attach_debug_chain([(1, 2), (3, 4)])
        assert len(chain) == 2 and chain.address == ctypes.addressof(chain.nodes[0])
        assert chain.nodes[0].base.next_extension == ctypes.addressof(chain.nodes[1])
        assert chain.nodes[1].base.next_extension == 0 and ExtensionChain().address == 0
    finally:
        c.close()


@pytest.mark.parametrize("thread", MODES)
def test_large_log_crosses_the_pipe(thread: bool) -> None:
    def work(c: Client) -> None:
        for i in range(5000):
            c.record(EventType.VM, EventFlags.CREATE, client_handle=3, vm_handle=i + 1)

    with Client(-1, work, thread=thread, timeout=10) as c:
        c.start()
        c.wait_done()
        assert len(c.log) == 5000 and c.log.head == 5000 * 40 and c.seqno == 5001
        assert c.log[4999].vm_handle == 5000 and c.log[4999].seqno == 5000
