"""In-process tests of the simulator's kernel model (xe_eudebug/sim/kernel.py), no server.

A fake Caller reaches this process's own memory through process_vm_readv/writev (so bad
addresses are EFAULT, never a crash); ioctl arguments are ctypes buffers whose address plays the
user pointer.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import random
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from xe_eudebug import uapi as U
from xe_eudebug.sim import kernel as K
from xe_eudebug.sim import procmem

ABI = Path(__file__).resolve().parent / "data" / "abi.json"


class FakeCaller:
    def __init__(self, pid: int | None = None, nonblock: bool = False) -> None:
        self.pid = pid if pid is not None else os.getpid()
        self.nonblock = nonblock
        self.arg_addr = 0

    def read(self, addr: int, size: int) -> bytes:
        try:
            return procmem.read(os.getpid(), addr, size)
        except OSError:
            raise K.KernelError(errno.EFAULT) from None

    def write(self, addr: int, data: bytes) -> None:
        try:
            procmem.write(os.getpid(), addr, data)
        except OSError:
            raise K.KernelError(errno.EFAULT) from None


def config(**kw):
    base = dict(devices=2, read_event_timeout=0.2, fifo_timeout=0.5, fifo_retry=0.05,
                fifo_capacity=64, enable_default=True)
    base.update(kw)
    return SimpleNamespace(**base)


class Env:
    """A kernel plus helpers that issue ioctls with ctypes buffers."""

    def __init__(self, **kw) -> None:
        self.k = K.Kernel(config(**kw))
        self.caller = FakeCaller()
        self.changes: list = []
        self.k.on_poll_change = self.changes.append
        self.keep: list = []

    def buf(self, data: bytes | int) -> ctypes.Array:
        b = ctypes.create_string_buffer(data if isinstance(data, bytes) else bytes(data), data if isinstance(data, int) else len(data))
        self.keep.append(b)
        return b

    def addr(self, b) -> int:
        return ctypes.addressof(b)

    def call(self, file, request: int, b=None, caller=None):
        """Returns (result or -errno, buffer bytes after copy-back)."""
        caller = caller or self.caller
        size = (request >> 16) & 0x3FFF
        if b is None:
            b = self.buf(size)
        caller.arg_addr = ctypes.addressof(b)
        arg = b.raw[:size] if request >> 30 & 1 else b""
        try:
            result, back = self.k.ioctl(file, caller, request, arg)
        except K.KernelError as exc:
            if exc.copy_back:
                ctypes.memmove(b, exc.copy_back, len(exc.copy_back))
            return -exc.errno, b.raw
        if back:
            ctypes.memmove(b, back, len(back))
        return result, b.raw

    def ok(self, file, request, data: bytes):
        b = self.buf(data)
        res, raw = self.call(file, request, b)
        assert not (isinstance(res, int) and res < 0), f"ioctl {request:#x} failed: {errno.errorcode.get(-res)}"
        return res, raw

    # -- resources ------------------------------------------------------------------------------
    def open(self, index=0, caller=None):
        return self.k.open_device(index, caller or self.caller)

    def vm_create(self, f, flags=K.VM_CREATE_LR_MODE) -> int:
        _, raw = self.ok(f, K.DRM_IOCTL_XE_VM_CREATE, struct.pack("<QII16x", 0, flags, 0))
        return struct.unpack_from("<I", raw, 12)[0]

    def vm_destroy(self, f, vm_id) -> int:
        return self.call(f, K.DRM_IOCTL_XE_VM_DESTROY, self.buf(struct.pack("<II16x", vm_id, 0)))[0]

    def bo_create(self, f, size=8192, vm_id=0) -> int:
        _, raw = self.ok(f, K.DRM_IOCTL_XE_GEM_CREATE,
                         struct.pack("<QQIIIIH6x16x", 0, size, 1, 0, vm_id, 0, K.CPU_CACHING_WB))
        return struct.unpack_from("<I", raw, 28)[0]

    def md_create(self, f, data=b"metadata", md_type=0):
        payload = self.buf(data)
        _, raw = self.ok(f, K.DRM_IOCTL_XE_DEBUG_METADATA_CREATE,
                         struct.pack("<QQQQI4x", 0, md_type, self.addr(payload), len(data), 0))
        return struct.unpack_from("<I", raw, 32)[0]

    def md_destroy(self, f, md_id) -> int:
        return self.call(f, K.DRM_IOCTL_XE_DEBUG_METADATA_DESTROY, self.buf(struct.pack("<QI4x", 0, md_id)))[0]

    def bind(self, f, vm_id, ops, syncs=b"", num_syncs=0):
        """ops: list of 80-byte bind ops."""
        if len(ops) == 1:
            head = struct.pack("<QIIII", 0, vm_id, 0, 0, 1) + ops[0]
        else:
            vec = self.buf(b"".join(ops)) if ops else None
            head = struct.pack("<QIIII", 0, vm_id, 0, 0, len(ops)) + struct.pack("<Q", self.addr(vec) if vec else 0) + bytes(72)
        sbuf = self.buf(syncs) if syncs else None
        tail = struct.pack("<IIQ16x", 0, num_syncs, self.addr(sbuf) if sbuf else 0)
        return self.call(f, K.DRM_IOCTL_XE_VM_BIND, self.buf(head + tail))[0]

    def queue_create(self, f, vm_id, cls=K.CLASS_COMPUTE, width=1, eudebug: int | None = 1, insts=None):
        insts = insts or [(cls, i) for i in range(width)]
        eci = self.buf(b"".join(struct.pack("<HHHH", c, i, 0, 0) for c, i in insts))
        ext = 0
        if eudebug is not None:
            e = self.buf(struct.pack("<QIIIIQ16x", 0, 0, 0, K.EQ_PROP_EUDEBUG, 0, eudebug))
            ext = self.addr(e)
        res, raw = self.call(f, K.DRM_IOCTL_XE_EXEC_QUEUE_CREATE,
                             self.buf(struct.pack("<QHHIIIQ16x", ext, width, len(insts) // width, vm_id, 0, 0, self.addr(eci))))
        return res if res < 0 else struct.unpack_from("<I", raw, 20)[0]

    def connect(self, f, pid=None, version=0):
        res, raw = self.call(f, K.DRM_IOCTL_XE_EUDEBUG_CONNECT,
                             self.buf(struct.pack("<QQII", 0, pid or os.getpid(), 0, version)))
        return res, raw

    def debugger(self, f, pid=None):
        d, _ = self.connect(f, pid)
        assert isinstance(d, K.DebuggerFile), d
        self.wait_discovery(d)
        return d

    def wait_discovery(self, d, timeout=5.0):
        end = time.monotonic() + timeout
        while not d.conn.discovery_done:
            assert time.monotonic() < end, "discovery did not finish"
            time.sleep(0.002)

    def read_event(self, d, size=256, nonblock=True):
        b = self.buf(struct.pack("<IHHQQ", size, K.EV_READ, 0, 0, 0) + bytes(max(0, size - 24)))
        res, raw = self.call(d, K.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, b, FakeCaller(nonblock=nonblock))
        if res < 0:
            return res
        length = struct.unpack_from("<I", raw, 0)[0]
        return raw[:length]

    def events(self, d):
        out = []
        while True:
            ev = self.read_event(d)
            if isinstance(ev, int):
                assert ev in (-errno.EAGAIN, -errno.ENOTCONN)
                return out
            out.append(ev)


def detach(env, d, status=-errno.ETIMEDOUT):
    """Detach a connection whose fd stays open (as a fifo timeout does)."""
    with env.k._lock:
        env.k._detach(d.conn, status)


def hdr(ev: bytes):
    return struct.unpack_from("<IHHQQ", ev, 0)


def types(evs):
    return [(hdr(e)[1], hdr(e)[2]) for e in evs]


def op(op_code, addr, rng, obj=0, offset=0, flags=0, ext=0, pat=2):
    # pat 2: Xe2's write-back, 1-way-coherent index (WB BOs and userptrs need a coherent one)
    return struct.pack("<QIHHQQQIIII24x", ext, obj, pat, 0, offset, rng, addr, op_code, flags, 0, 0)


def ufence_sync(addr, value):
    return struct.pack("<QIIQQ16x", 0, K.SYNC_USER_FENCE, K.SYNC_FLAG_SIGNAL, addr, value)


def wait_fence(env, f, addr, value, timeout_ns):
    b = env.buf(struct.pack("<QQHHIQQqII16x", 0, addr, 0, 0, 0, value, (1 << 64) - 1,
                            timeout_ns, 0, 0))
    return env.call(f, K.DRM_IOCTL_XE_WAIT_USER_FENCE, b)


# ------------------------------------------------------------------------------------------------

def test_abi_constants_match_spec():
    macros = json.loads(ABI.read_text())["macros"]
    checked = 0
    for name, value in macros.items():
        if hasattr(K, name):
            assert getattr(K, name) == value, name
            checked += 1
    assert checked >= 20


def test_version_copies_with_drm_length_semantics():
    env = Env()
    f = env.open()
    name = env.buf(1)
    date = env.buf(64)
    b = env.buf(struct.pack("<iii4xQQQQQQ", 0, 0, 0, 1, env.addr(name), 64, env.addr(date), 0, 0))
    res, raw = env.call(f, K.DRM_IOCTL_VERSION, b)
    assert res == 0
    assert struct.unpack_from("<Q", raw, 16)[0] == 2          # full length reported
    assert name.raw == b"x"                                    # only buffer length copied
    assert date.raw[:8] == K.DRIVER_DATE
    assert struct.unpack_from("<Q", raw, 48)[0] == len(K.DRIVER_DESC)
    bad = env.buf(struct.pack("<iii4xQQQQQQ", 0, 0, 0, 2, 8, 0, 0, 0, 0))
    res, raw = env.call(f, K.DRM_IOCTL_VERSION, bad)
    assert res == -errno.EFAULT and struct.unpack_from("<Q", raw, 16)[0] == 2   # copied back anyway


def test_device_query_size_then_fill():
    env = Env()
    f = env.open()
    for q in (K.QUERY_ENGINES, K.QUERY_MEM_REGIONS, K.QUERY_CONFIG, K.QUERY_GT_LIST):
        _, raw = env.ok(f, K.DRM_IOCTL_XE_DEVICE_QUERY, struct.pack("<QIIQ16x", 0, q, 0, 0))
        size = struct.unpack_from("<I", raw, 12)[0]
        assert size > 8
        data = env.buf(size)
        env.ok(f, K.DRM_IOCTL_XE_DEVICE_QUERY, struct.pack("<QIIQ16x", 0, q, size, env.addr(data)))
        if q == K.QUERY_CONFIG:
            n = struct.unpack_from("<I", data.raw, 0)[0]
            info = struct.unpack_from(f"<{n}Q", data.raw, 8)
            assert info[2] == 4096 and info[3] == 48
        if q == K.QUERY_ENGINES:
            n = struct.unpack_from("<I", data.raw, 0)[0]
            classes = {struct.unpack_from("<H", data.raw, 8 + 32 * i)[0] for i in range(n)}
            assert {K.CLASS_RENDER, K.CLASS_COPY, K.CLASS_COMPUTE} <= classes
        res, _ = env.call(f, K.DRM_IOCTL_XE_DEVICE_QUERY, env.buf(struct.pack("<QIIQ16x", 0, q, size - 1, env.addr(data))))
        assert res == -errno.EINVAL
    assert env.call(f, K.DRM_IOCTL_XE_DEVICE_QUERY, env.buf(struct.pack("<QIIQ16x", 0, 99, 0, 0)))[0] == -errno.EINVAL


def test_unknown_requests():
    env = Env()
    f = env.open()
    assert env.call(f, 0xC0085401)[0] == -errno.ENOTTY        # not a DRM ioctl
    assert env.call(f, 0xC0086460)[0] == -errno.EINVAL        # unknown driver nr
    d = env.debugger(f)
    assert env.call(d, 0xC0086A09)[0] == -errno.EINVAL
    assert env.call(d, K.DRM_IOCTL_XE_VM_CREATE)[0] == -errno.EINVAL
    with pytest.raises(K.KernelError) as exc:
        env.k.read(d, env.caller, 16)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(K.KernelError):
        env.k.open_device(5, env.caller)


def test_connect_check_order_and_version_copy_back():
    env = Env(enable_default=False)
    f = env.open()
    res, raw = env.call(f, K.DRM_IOCTL_XE_EUDEBUG_CONNECT, env.buf(struct.pack("<QQII", 1, 0, 1, 77)))
    assert res == -errno.ENODEV                                  # gate first, args unchecked
    assert env.k.set_enabled(0, True) is False
    for args, err in (((1, 1, 0, 0), errno.EINVAL), ((0, 0, 0, 0), errno.EINVAL),
                      ((0, 1, 1, 0), errno.EINVAL), ((0, 1, 0, 0xFFFFFFFF), errno.EINVAL)):
        assert env.call(f, K.DRM_IOCTL_XE_EUDEBUG_CONNECT, env.buf(struct.pack("<QQII", *args)))[0] == -err
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    res, raw = env.connect(f, pid=child.pid)
    assert res == -errno.ENOENT and struct.unpack_from("<I", raw, 20)[0] == 1
    d, raw = env.connect(f)
    assert isinstance(d, K.DebuggerFile) and d.cloexec is False and d.kind == "debugger"
    assert struct.unpack_from("<I", raw, 20)[0] == 1
    env.wait_discovery(d)
    assert env.connect(f)[0] == -errno.EBUSY
    assert env.k.set_enabled(0, True) is True                  # writing the current value
    with pytest.raises(K.KernelError) as exc:
        env.k.set_enabled(0, False)
    assert exc.value.errno == errno.EBUSY
    env.k.release(d)
    assert env.k.set_enabled(0, False) is True
    env.k.set_enabled(0, True)
    d2, _ = env.connect(f)
    assert isinstance(d2, K.DebuggerFile)
    # another device is independent
    env.k.set_enabled(1, True)
    f1 = env.open(1)
    assert isinstance(env.connect(f1)[0], K.DebuggerFile)


def test_connect_permission_denied_for_other_users_process():
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process owned by another user")
    env = Env()
    f = env.open()
    child = subprocess.Popen([sys.executable, "-c", "import os,time; os.setgid(65534); os.setuid(65534); time.sleep(5)"])
    try:
        end = time.monotonic() + 5
        while f"\t65534\t" not in open(f"/proc/{child.pid}/status").read() and time.monotonic() < end:
            time.sleep(0.01)
        user = FakeCaller(pid=child.pid)                         # the credentials are read at call time
        b = env.buf(struct.pack("<QQII", 0, os.getpid(), 0, 0))
        assert env.call(f, K.DRM_IOCTL_XE_EUDEBUG_CONNECT, b, user)[0] == -errno.EACCES   # user -> root
        b = env.buf(struct.pack("<QQII", 0, child.pid, 0, 0))
        assert isinstance(env.call(f, K.DRM_IOCTL_XE_EUDEBUG_CONNECT, b, user)[0], K.DebuggerFile)  # own
        res, _ = env.connect(env.open(1), pid=child.pid)
        assert isinstance(res, K.DebuggerFile)                   # root -> user
    finally:
        child.kill()
        child.wait()


def test_discovery_replays_state_in_order():
    env = Env()
    f = env.open()
    other = env.open(caller=FakeCaller(pid=1))                   # not the target's file
    env.vm_create(other)
    md1 = env.md_create(f, b"abc", 1)
    env.vm_create(f, 0)                                          # non-LR: invisible
    vm = env.vm_create(f)
    bo = env.bo_create(f, 3 * 4096)
    ext = env.buf(struct.pack("<QII QQQQ", 0, 0, 0, md1, 0, 0xC0FFEE, 0))
    assert env.bind(f, vm, [op(K.OP_MAP, 0x10000, 3 * 4096, obj=bo, ext=env.addr(ext))]) == 0
    assert env.bind(f, vm, [op(K.OP_UNMAP, 0x11000, 4096)]) == 0   # split into two pieces
    q = env.queue_create(f, vm)
    assert q == 1
    env.queue_create(f, vm, cls=K.CLASS_COPY, eudebug=None)      # not debuggable
    d = env.debugger(f)
    evs = env.events(d)
    assert types(evs) == [(K.EV_OPEN, 1), (K.EV_METADATA, 1), (K.EV_VM, 1), (K.EV_VM_BIND, 4),
                          (K.EV_VM_BIND_OP, 1), (K.EV_VM_BIND_OP_METADATA, 1),
                          (K.EV_VM_BIND_OP, 1), (K.EV_VM_BIND_OP_METADATA, 1), (K.EV_EXEC_QUEUE, 1)]
    assert [hdr(e)[3] for e in evs] == list(range(1, 10))
    assert all(hdr(e)[4] == 0 for e in evs)
    bind = evs[3]
    assert struct.unpack_from("<QQII", bind, 24) == (1, 1, 0, 2)
    assert struct.unpack_from("<QQQQ", evs[4], 24) == (4, 1, 0x10000, 4096)
    assert struct.unpack_from("<QQQQ", evs[6], 24) == (4, 1, 0x12000, 4096)
    assert struct.unpack_from("<QQQ", evs[5], 24) == (5, 1, 0xC0FFEE)
    assert struct.unpack_from("<QQQQ", evs[1], 24) == (1, 1, 1, 3)
    assert hdr(evs[8])[0] == 64 and struct.unpack_from("<QQQIIQ", evs[8], 24) == (1, 1, 1, 4, 1, 1)


def test_live_events_handles_and_release():
    env = Env()
    d = env.debugger(env.open(1), )  # a device-1 file; connection on device 1
    f = env.open(1)
    vm1 = env.vm_create(f)
    vm2 = env.vm_create(f)
    assert env.vm_destroy(f, vm1) == 0
    vm3 = env.vm_create(f)
    evs = env.events(d)
    # first file (opened before connect) and second (live) are clients 1 and 2
    assert types(evs) == [(K.EV_OPEN, 1), (K.EV_OPEN, 1), (K.EV_VM, 1), (K.EV_VM, 1), (K.EV_VM, 2), (K.EV_VM, 1)]
    handles = [struct.unpack_from("<QQ", e, 24) for e in evs[2:]]
    assert handles == [(2, 1), (2, 2), (2, 1), (2, 1)]          # lowest free reused
    assert env.vm_destroy(f, 99) == -errno.ENOENT
    assert vm3 == vm1 and vm2 == 2
    env.k.release(f)
    evs = env.events(d)
    assert types(evs) == [(K.EV_OPEN, 2)] and struct.unpack_from("<Q", evs[0], 24)[0] == 2
    # stale VM handles stay allocated: a new client's VM gets handle 3
    f2 = env.open(1)
    env.vm_create(f2)
    evs = env.events(d)
    assert struct.unpack_from("<QQ", evs[1], 24) == (2, 3)
    assert d in env.changes


def test_read_event_checks_and_emsgsize():
    env = Env()
    f = env.open()
    d = env.debugger(f)
    b = env.buf(struct.pack("<IHHQQ", 256, K.EV_NONE, 0, 0, 0) + bytes(232))
    assert env.call(d, K.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, b)[0] == -errno.EINVAL
    b = env.buf(struct.pack("<IHHQQ", 0, K.EV_READ, 0, 0, 0))
    res, raw = env.call(d, K.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, b)
    assert res == -errno.EINVAL and struct.unpack_from("<I", raw)[0] == 0
    b = env.buf(struct.pack("<IHHQQ", 64, K.EV_READ, 1, 0, 0) + bytes(40))
    assert env.call(d, K.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, b)[0] == -errno.EINVAL
    assert env.k.poll(d) & K.POLLIN
    b = env.buf(struct.pack("<IHHQQ", 24, K.EV_READ, 0, 0, 0) + bytes(8))
    res, raw = env.call(d, K.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, b, FakeCaller(nonblock=True))
    assert res == -errno.EMSGSIZE and struct.unpack_from("<I", raw)[0] == 32
    ev = env.read_event(d, 32)
    assert hdr(ev)[:2] == (32, K.EV_OPEN)
    assert env.k.poll(d) == 0
    assert env.read_event(d) == -errno.EAGAIN
    t0 = time.monotonic()
    assert env.read_event(d, nonblock=False) == -errno.ENOENT
    assert 0.15 < time.monotonic() - t0 < 2
    # blocking reader woken by a live event: the event comes once the reader sleeps (it
    # announces the sleep holding the kernel lock, which vm_create needs), long before its
    # timeout (read at call time)
    env.k.config.read_event_timeout = 5.0
    out = []
    sleeping = threading.Event()
    th = threading.Thread(target=lambda: out.append(env.read_event(d, nonblock=False)))
    env.k.might_sleep = lambda: sleeping.set() if threading.current_thread() is th else None
    th.start()
    assert sleeping.wait(10)
    env.vm_create(f)
    th.join(10)
    assert hdr(out[0])[1] == K.EV_VM
    env.vm_create(f)
    detach(env, d, 0)
    assert env.k.poll(d) == K.POLLIN | K.POLLHUP
    assert hdr(env.read_event(d))[1] == K.EV_VM                   # drained after detach
    assert env.read_event(d) == -errno.ENOTCONN
    assert env.k.poll(d) == K.POLLHUP


def debugged_ufence_bind(env, value, addr):
    """A debugged client with an LR VM and a BO mapped at `addr` with a user fence (value)."""
    f = env.open()
    d = env.debugger(f)
    vm = env.vm_create(f)
    bo = env.bo_create(f)
    fence = ctypes.c_uint64(0)
    assert env.bind(f, vm, [op(K.OP_MAP, addr, 4096, obj=bo)], ufence_sync(ctypes.addressof(fence), value), 1) == 0
    return f, d, vm, bo, fence


def test_user_fence_held_until_ack_and_released_on_detach():
    env = Env()
    f, d, vm, bo, fence = debugged_ufence_bind(env, 0xDEAD, 0x200000)
    evs = env.events(d)
    assert types(evs)[2:] == [(K.EV_VM_BIND, 4), (K.EV_VM_BIND_OP, 1), (K.EV_VM_BIND_UFENCE, 1 | 8)]
    bind_seq = hdr(evs[2])[3]
    assert struct.unpack_from("<QQII", evs[2], 24)[2:] == (1, 1)
    assert struct.unpack_from("<Q", evs[3], 24)[0] == bind_seq
    assert struct.unpack_from("<Q", evs[4], 24)[0] == bind_seq
    res, raw = wait_fence(env, f, ctypes.addressof(fence), 0xDEAD, 50_000_000)
    assert res == -errno.ETIME and fence.value == 0
    assert struct.unpack_from("<q", raw, 40)[0] == 0             # remaining timeout copied back
    ack = lambda seq, flags=0: env.call(d, K.DRM_XE_EUDEBUG_IOCTL_ACK_EVENT,
                                        env.buf(struct.pack("<IIQ", 99, flags, seq)))[0]
    useq = hdr(evs[4])[3]
    assert ack(useq, 1) == -errno.EINVAL
    assert ack(bind_seq) == -errno.EINVAL
    assert ack(useq) == 0
    assert fence.value == 0xDEAD
    assert ack(useq) == -errno.EINVAL
    assert wait_fence(env, f, ctypes.addressof(fence), 0xDEAD, 10_000_000)[0] == 0
    # a waiter is woken by the release on detach
    fence2 = ctypes.c_uint64(0)
    assert env.bind(f, vm, [op(K.OP_MAP, 0x400000, 4096, obj=bo)],
                    ufence_sync(ctypes.addressof(fence2), 7), 1) == 0
    out = []
    th = threading.Thread(target=lambda: out.append(wait_fence(env, f, ctypes.addressof(fence2), 7, 3_000_000_000)[0]))
    th.start()
    time.sleep(0.05)
    detach(env, d)
    th.join(5)
    assert out == [0] and fence2.value == 7
    assert ack(999) == -errno.ENOTCONN


def test_fence_written_immediately_without_debugger_and_prefetch_quirk():
    env = Env()
    f = env.open()
    vm = env.vm_create(f)
    bo = env.bo_create(f)
    fence = ctypes.c_uint64(0)
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=bo)], ufence_sync(ctypes.addressof(fence), 5), 1) == 0
    assert fence.value == 5
    d = env.debugger(f)
    env.events(d)
    fence.value = 0
    assert env.bind(f, vm, [op(K.OP_PREFETCH, 0x1000, 4096)], ufence_sync(ctypes.addressof(fence), 9), 1) == 0
    evs = env.events(d)
    assert types(evs) == [(K.EV_VM_BIND_UFENCE, 9)]             # VM_BIND dropped, fence held
    assert fence.value == 0
    # sync errors: two user fences, bad alignment, syncobj
    s = ufence_sync(ctypes.addressof(fence), 1)
    assert env.bind(f, vm, [op(K.OP_MAP, 0x8000, 4096, obj=bo)], s + s, 2) == -errno.EINVAL
    assert env.bind(f, vm, [op(K.OP_MAP, 0x8000, 4096, obj=bo)], ufence_sync(ctypes.addressof(fence) + 4, 1), 1) == -errno.EINVAL
    assert env.bind(f, vm, [op(K.OP_MAP, 0x8000, 4096, obj=bo)], struct.pack("<QIIQQ16x", 0, 0, 0, 1, 0), 1) == -errno.ENOENT
    assert env.events(d) == []                                   # failed binds emit nothing


def test_bind_argument_checks_and_attach_debug_chain():
    env = Env()
    f = env.open()
    vm = env.vm_create(f)
    bo = env.bo_create(f)
    md = env.md_create(f)
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1001, 4096, obj=bo)]) == -errno.EINVAL
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 0, obj=bo)]) == -errno.EINVAL
    assert env.bind(f, vm, [op(9, 0x1000, 4096)]) == -errno.EINVAL
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 8192, obj=bo, offset=4096)]) == -errno.EINVAL
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=77)]) == -errno.ENOENT
    assert env.bind(f, 55, [op(K.OP_MAP, 0x1000, 4096, obj=bo)]) == -errno.EINVAL
    assert env.bind(f, vm, [op(K.OP_MAP, 1 << 48, 4096, obj=bo)]) == -errno.EINVAL

    def chain(n, md_id=md, flags=0, name=0, pad=0):
        nxt = 0
        for _ in range(n):
            e = env.buf(struct.pack("<QIIQQQQ", nxt, name, pad, md_id, flags, 1, 0))
            nxt = env.addr(e)
        return nxt

    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=bo, ext=chain(17))]) == -errno.E2BIG
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=bo, ext=chain(1, md_id=9))]) == -errno.ENOENT
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=bo, ext=chain(1, flags=1))]) == -errno.EINVAL
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=bo, ext=chain(1, name=1))]) == -errno.EINVAL
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=bo, ext=chain(1, pad=1))]) == -errno.EINVAL
    assert env.bind(f, vm, [op(K.OP_UNMAP, 0x1000, 4096, ext=chain(1))]) == -errno.EINVAL
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=bo, ext=8)]) == -errno.EFAULT
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=bo, ext=chain(16))]) == 0
    d = env.debugger(f)
    evs = env.events(d)
    opev = [e for e in evs if hdr(e)[1] == K.EV_VM_BIND_OP][0]
    assert struct.unpack_from("<Q", opev, 32)[0] == 16
    assert sum(1 for e in evs if hdr(e)[1] == K.EV_VM_BIND_OP_METADATA) == 16
    # destroying attached metadata succeeds
    assert env.md_destroy(f, md) == 0
    assert env.md_destroy(f, md) == -errno.ENOENT


def test_vector_binds_unmap_all_and_events():
    env = Env()
    f = env.open()
    d = env.debugger(f)
    vm = env.vm_create(f)
    bo = env.bo_create(f, 4 * 4096)
    assert env.bind(f, vm, [op(K.OP_MAP, 0x10000, 4096, obj=bo), op(K.OP_MAP, 0x20000, 4096, obj=bo, offset=4096)]) == 0
    assert env.bind(f, vm, [op(K.OP_UNMAP_ALL, 0, 0, obj=bo)]) == 0
    assert env.bind(f, vm, [op(K.OP_UNMAP, 0x50000, 4096)]) == 0     # nothing to do: success, no events
    evs = env.events(d)[2:]
    assert types(evs) == [(K.EV_VM_BIND, 4), (K.EV_VM_BIND_OP, 1), (K.EV_VM_BIND_OP, 1),
                          (K.EV_VM_BIND, 4), (K.EV_VM_BIND_OP, 2)]
    assert struct.unpack_from("<QQ", evs[4], 40) == (0, 0)
    assert struct.unpack_from("<I", evs[0], 44)[0] == 2
    nonlr = env.vm_create(f, 0)
    assert env.bind(f, nonlr, [op(K.OP_MAP, 0x10000, 4096, obj=bo)]) == 0
    assert env.events(d) == []


def test_metadata_create_checks_and_read_metadata():
    env = Env()
    f = env.open()
    data = env.buf(b"0123456789")
    mk = lambda ext=0, t=0, a=None, n=10: env.call(
        f, K.DRM_IOCTL_XE_DEBUG_METADATA_CREATE,
        env.buf(struct.pack("<QQQQI4x", ext, t, env.addr(data) if a is None else a, n, 0)))[0]
    assert mk(ext=1) == -errno.EINVAL
    assert mk(t=5) == -errno.EINVAL
    assert mk(a=0) == -errno.EINVAL
    assert mk(n=0) == -errno.EINVAL
    assert mk(n=1 << 63) == -errno.EFAULT
    assert mk(a=8) == -errno.EFAULT
    d = env.debugger(f)
    assert mk() == 0
    evs = env.events(d)
    mev = evs[-1]
    assert hdr(mev)[1] == K.EV_METADATA and struct.unpack_from("<QQQQ", mev, 24) == (1, 1, 0, 10)
    out = env.buf(64)
    rm = lambda size, ch=1, mh=1, flags=0, ptr=None: env.call(
        d, K.DRM_XE_EUDEBUG_IOCTL_READ_METADATA,
        env.buf(struct.pack("<QQIIQQ", ch, mh, flags, 0, env.addr(out) if ptr is None else ptr, size)))
    res, raw = rm(0)
    assert res == 0 and struct.unpack_from("<Q", raw, 32)[0] == 10 and out.raw[:10] == bytes(10)
    res, raw = rm(5)
    assert res == -errno.EINVAL and struct.unpack_from("<Q", raw, 32)[0] == 5
    res, raw = rm(64)
    assert res == 0 and out.raw[:10] == b"0123456789" and struct.unpack_from("<Q", raw, 32)[0] == 10
    assert rm(64, ch=2)[0] == -errno.EINVAL
    assert rm(64, mh=2)[0] == -errno.EINVAL
    assert rm(64, flags=1)[0] == -errno.EINVAL
    assert rm(64, mh=(7 << 32) | 1)[0] == 0                     # low 32 bits only
    assert rm(64, ptr=1 << 62)[0] == -errno.EFAULT
    assert env.md_destroy(f, 1) == 0
    assert rm(64)[0] == -errno.EINVAL


def test_vm_open_and_vm_fd_access():
    env = Env()
    f = env.open()
    d = env.debugger(f)
    vm = env.vm_create(f)
    bo = env.bo_create(f, 2 * 4096)
    user = ctypes.create_string_buffer(b"U" * 8192)
    uaddr = (ctypes.addressof(user) + 4095) & ~4095
    assert env.bind(f, vm, [op(K.OP_MAP, 0x10000, 4096, obj=bo), op(K.OP_MAP, 0x11000, 4096, obj=bo, offset=4096),
                            op(K.OP_MAP_USERPTR, 0x20000, 4096, offset=uaddr)]) == 0
    vo = lambda ch=1, vh=1, flags=0, t=0: env.call(d, K.DRM_XE_EUDEBUG_IOCTL_VM_OPEN,
                                                  env.buf(struct.pack("<QQQQQ", 0, ch, vh, flags, t)))[0]
    assert vo(ch=5) == -errno.EINVAL
    assert vo(vh=5) == -errno.EINVAL
    assert vo(flags=1) == -errno.EINVAL
    assert vo(t=10_000_000_001) == -errno.EINVAL
    vf = vo()
    assert isinstance(vf, K.VmFile) and vf.cloexec
    c = env.caller
    assert env.k.pwrite(vf, c, b"hello", 0x10FFE) == 5          # spans two adjacent mappings
    assert env.k.pread(vf, c, 5, 0x10FFE) == b"hello"
    assert env.k.pread(vf, c, 8192, 0x11000 + 4000) == env.k.pread(vf, c, 96, 0x11000 + 4000)  # short count
    assert len(env.k.pread(vf, c, 8192, 0x11000 + 4000)) == 96
    for bad in (0, 0xFFFF, 0x12000):
        with pytest.raises(K.KernelError) as exc:
            env.k.pread(vf, c, 1, bad)
        assert exc.value.errno == errno.EINVAL
    with pytest.raises(K.KernelError):
        env.k.pwrite(vf, c, b"x", -1)
    assert env.k.pread(vf, c, 0, 0x10000) == b""
    assert env.k.pread(vf, c, 4, uaddr - uaddr + 0x20000) == b"UUUU"
    assert env.k.pwrite(vf, c, b"zz", 0x20001) == 2
    assert user.raw[uaddr - ctypes.addressof(user) + 1:][:2] == b"zz"
    assert env.k.lseek(vf, c, 0x10FFE, os.SEEK_SET) == 0x10FFE
    assert env.k.read(vf, c, 5) == b"hello" and env.k.lseek(vf, c, 0, os.SEEK_CUR) == 0x11003
    assert env.k.fsync(vf, c) == 0
    # same memory as the client's mmap
    _, raw = env.ok(f, K.DRM_IOCTL_XE_GEM_MMAP_OFFSET, struct.pack("<QII24x", 0, bo, 0))
    memfd, off = env.k.mmap_bo(f, struct.unpack_from("<Q", raw, 16)[0], 8192)
    assert os.pread(memfd, 5, off + 0xFFE) == b"hello"
    env.k.release(d)                                             # vm fd keeps working after detach
    assert env.k.pread(vf, c, 2, 0x10FFE) == b"he"
    assert env.vm_destroy(f, vm) == 0
    with pytest.raises(K.KernelError) as exc:
        env.k.pread(vf, c, 0, 0x10000)                           # handle check before length
    assert exc.value.errno == errno.EINVAL


def test_exec_queue_property_order():
    env = Env()
    f = env.open()
    lr = env.vm_create(f)
    plain = env.vm_create(f, 0)
    assert env.queue_create(f, lr, cls=K.CLASS_COPY, eudebug=1) == -errno.EINVAL
    assert env.queue_create(f, lr, eudebug=2) == -errno.EINVAL
    assert env.queue_create(f, plain, eudebug=1) == -errno.EINVAL
    assert env.queue_create(f, lr, eudebug=0) == -errno.EINVAL
    assert env.queue_create(f, 42, eudebug=1) == -errno.ENOENT
    env.k.set_enabled(0, False)
    assert env.queue_create(f, lr, eudebug=1) == -errno.EPERM
    assert env.queue_create(f, lr, cls=K.CLASS_COPY, eudebug=1) == -errno.EINVAL
    env.k.set_enabled(0, True)
    d = env.debugger(f)
    q = env.queue_create(f, lr, width=2)
    assert q == 1
    ev = env.events(d)[-1]
    assert hdr(ev)[0] == 56 + 16 and struct.unpack_from("<QQQIIQQ", ev, 24) == (1, 1, 1, 4, 2, 1, 2)
    assert env.vm_destroy(f, lr) == -errno.EBUSY
    assert env.call(f, K.DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, env.buf(struct.pack("<II16x", q, 0)))[0] == 0
    assert hdr(env.events(d)[-1])[2] == K.F_DESTROY
    assert env.vm_destroy(f, lr) == 0


def test_eu_control_validation_without_eu_model():
    env = Env()
    f = env.open()
    vm = env.vm_create(f)
    d = env.debugger(f)
    env.queue_create(f, vm)
    mask = env.buf(64)
    ec = lambda cmd=0, ch=1, qh=1, lh=1, flags=0, size=0: env.call(
        d, K.DRM_XE_EUDEBUG_IOCTL_EU_CONTROL,
        env.buf(struct.pack("<QIIQQQIIQ", ch, cmd, flags, 0, qh, lh, 0, size, env.addr(mask))))[0]
    assert ec(flags=1) == -errno.EINVAL
    assert ec(ch=9) == -errno.EINVAL
    assert ec(cmd=1, size=3) == -errno.EINVAL
    assert ec(qh=9) == -errno.EINVAL
    assert ec(lh=9) == -errno.EINVAL
    assert ec(cmd=0, size=8) == -errno.EINVAL
    assert ec(cmd=0) == -errno.EINVAL
    assert ec(cmd=1, size=64) == -errno.ENOENT
    assert ec(cmd=2, size=64) == -errno.ENOENT
    assert ec(cmd=7) == -errno.EINVAL
    detach(env, d)
    assert ec(cmd=1) == -errno.ENOTCONN


def test_discovery_blocks_resources_and_debugger_ioctls_ebusy():
    env = Env(fifo_capacity=2, fifo_timeout=5.0)
    f = env.open()
    for _ in range(4):
        env.vm_create(f)
    d, _ = env.connect(f)
    time.sleep(0.05)
    assert not d.conn.discovery_done                             # blocked on the full fifo
    assert env.call(d, K.DRM_XE_EUDEBUG_IOCTL_VM_OPEN)[0] == -errno.EBUSY
    assert env.call(d, 0x1234)[0] == -errno.EBUSY
    done = []
    th = threading.Thread(target=lambda: done.append(env.vm_create(f)))
    th.start()
    time.sleep(0.05)
    assert not done                                              # resource ioctl waits
    evs = []
    end = time.monotonic() + 5
    while len(evs) < 6 and time.monotonic() < end:
        ev = env.read_event(d, nonblock=False)
        if not isinstance(ev, int):
            evs.append(ev)
    th.join(5)
    assert done == [5]
    assert [hdr(e)[3] for e in evs] == list(range(1, 7))         # discovery first, live VM last
    assert types(evs)[-1] == (K.EV_VM, 1)


def test_discovery_end_lets_waiting_ioctls_in_before_the_next_discovery():
    """A discovery's end grants the gate to the ioctls waiting then, even when another CONNECT has
    queued the next discovery meanwhile (the kernel's rw_semaphore wakes its waiting readers):
    back-to-back CONNECTs must not starve a client's resource ioctls."""
    env = Env()
    k, dev = env.k, env.k.devices[0]
    f = env.open()
    with k._lock:
        dev.writers_waiting += 1                                 # discovery A, as CONNECT queues it
        k._gate_write(dev)
    done = []
    th = threading.Thread(target=lambda: done.append(env.vm_create(f)), daemon=True)
    th.start()
    end = time.monotonic() + 30
    while not k.gate_waiters and time.monotonic() < end:
        time.sleep(0.01)
    assert k.gate_waiters and not done                           # VM_CREATE waits for A
    with k._lock:
        dev.writers_waiting += 1                                 # discovery B queued while A runs
        k._gate_write_done(dev)                                  # A ends
    th.join(30)
    try:
        assert done == [1]                                       # in before B, which waits
        assert dev.writers_waiting == 1 and not dev.writer and not dev.readers_granted
    finally:
        with k._lock:                                            # B never runs here
            dev.writers_waiting -= 1
            k._gate_cv.notify_all()
        th.join(30)


def test_full_fifo_detaches_with_etimedout():
    env = Env(fifo_capacity=3, fifo_timeout=0.3, fifo_retry=0.05)
    f = env.open()
    d = env.debugger(f)
    t0 = time.monotonic()
    for _ in range(4):
        env.vm_create(f)                                         # the 4th waits, then is dropped
    assert 0.25 < time.monotonic() - t0 < 3
    assert d.conn.status == -errno.ETIMEDOUT
    assert env.k.poll(d) == K.POLLIN | K.POLLHUP | K.POLLERR
    assert len(env.events(d)) == 3
    assert env.read_event(d) == -errno.ENOTCONN
    assert isinstance(env.connect(f)[0], K.DebuggerFile)        # detached: a new connect works


def test_wait_user_fence_ops_and_abstime():
    env = Env()
    f = env.open()
    val = ctypes.c_uint64(10)
    a = ctypes.addressof(val)
    w = lambda opc, value, mask=(1 << 64) - 1, flags=0, timeout=0: env.call(
        f, K.DRM_IOCTL_XE_WAIT_USER_FENCE,
        env.buf(struct.pack("<QQHHIQQqII16x", 0, a, opc, flags, 0, value, mask, timeout, 0, 0)))[0]
    assert w(0, 10) == 0 and w(1, 10) == -errno.ETIME
    assert w(2, 9) == 0 and w(3, 10) == 0 and w(4, 11) == 0 and w(5, 10) == 0 and w(4, 10) == -errno.ETIME
    assert w(0, 0xFF0A, mask=0xFF) == 0
    assert w(6, 0) == -errno.EINVAL and w(0, 0, flags=2) == -errno.EINVAL
    now = time.monotonic_ns()
    t0 = time.monotonic()
    assert w(0, 11, flags=1, timeout=now + 50_000_000) == -errno.ETIME
    assert 0.03 < time.monotonic() - t0 < 1
    env2 = env.call(f, K.DRM_IOCTL_XE_WAIT_USER_FENCE,
                    env.buf(struct.pack("<QQHHIQQqII16x", 0, a + 4, 0, 0, 0, 0, 0, 0, 0, 0)))[0]
    assert env2 == -errno.EINVAL


def test_gem_create_mmap_close():
    env = Env()
    f = env.open()
    g = lambda size=4096, placement=1, flags=0, caching=1, handle=0: env.call(
        f, K.DRM_IOCTL_XE_GEM_CREATE,
        env.buf(struct.pack("<QQIIIIH6x16x", 0, size, placement, flags, 0, handle, caching)))[0]
    assert g(size=100) == -errno.EINVAL and g(placement=2) == -errno.EINVAL and g(caching=0) == -errno.EINVAL
    assert g(size=1 << 60) == -errno.ENOMEM
    h1, h2 = env.bo_create(f), env.bo_create(f)
    assert (h1, h2) == (1, 2)
    close = lambda h: env.call(f, K.DRM_IOCTL_GEM_CLOSE, env.buf(struct.pack("<II", h, 0)))[0]
    assert close(h1) == 0 and close(h1) == -errno.EINVAL
    assert env.bo_create(f) == 1
    res, _ = env.call(f, K.DRM_IOCTL_XE_GEM_MMAP_OFFSET, env.buf(struct.pack("<QII24x", 0, 9, 0)))
    assert res == -errno.ENOENT
    with pytest.raises(K.KernelError):
        env.k.mmap_bo(f, 12345, 4096)


def test_fuzz_random_bytes_only_raise_kernel_errors():
    env = Env(read_event_timeout=0.0, fifo_timeout=0.05, fifo_retry=0.01)
    rng = random.Random(1234)
    f = env.open()
    vm = env.vm_create(f)
    bo = env.bo_create(f)
    env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=bo)])
    d = env.debugger(f)
    requests = [e[0] for e in env.k._drm_table.values()]
    dreqs = list(env.k._debugger_table)
    for i in range(3000):
        small = [0, 1, 2, 3, 4, 5, 0x1000, vm, bo, 1 << 63, (1 << 64) - 1, env.addr(env.buf(64))]
        size = 136
        data = b"".join(struct.pack("<Q", rng.choice(small) if rng.random() < 0.6 else rng.getrandbits(64))
                        for _ in range(size // 8))
        b = env.buf(data + bytes(64))
        if i % 3:
            target, req = f, rng.choice(requests)
        else:
            target, req = d, rng.choice(dreqs + [rng.getrandbits(32)])
        if rng.random() < 0.1:
            req = (req & ~(0x3FFF << 16)) | (rng.randrange(0, 200) << 16)   # wrong struct size
        res, _ = env.call(target, req, b, FakeCaller(nonblock=True))   # anything but KernelError fails
        if isinstance(res, K.File):
            env.k.release(res)
    # the model is still consistent: a fresh connect after release works and events flow
    env.k.release(d)
    f2 = env.open()
    d2 = env.debugger(f2)
    env.vm_create(f2)
    assert any(hdr(e)[1] == K.EV_VM for e in env.events(d2))


def test_wait_user_fence_forever_is_woken_by_ack():
    env = Env()
    f, d, _vm, _bo, fence = debugged_ufence_bind(env, 3, 0x1000)
    useq = hdr(env.events(d)[-1])[3]
    out = []
    th = threading.Thread(target=lambda: out.append(wait_fence(env, f, ctypes.addressof(fence), 3, -1)))
    th.start()
    time.sleep(0.1)
    assert not out
    assert env.call(d, K.DRM_XE_EUDEBUG_IOCTL_ACK_EVENT, env.buf(struct.pack("<IIQ", 0, 0, useq)))[0] == 0
    th.join(5)
    res, raw = out[0]
    assert res == 0 and fence.value == 3
    assert K.LONG_MAX - 10**9 < struct.unpack_from("<q", raw, 40)[0] < K.LONG_MAX


def test_drm_dispatch_tolerates_struct_size_like_drm():
    env = Env()
    f = env.open()
    # VM_CREATE encoded with a 16-byte struct: the rest is zero-filled, 16 bytes come back
    short = (K.DRM_IOCTL_XE_VM_CREATE & ~(0x3FFF << 16)) | (16 << 16)
    b = env.buf(struct.pack("<QII", 0, K.VM_CREATE_LR_MODE, 0) + b"\xAA" * 16)
    res, raw = env.call(f, short, b)
    assert res == 0 and struct.unpack_from("<I", raw, 12)[0] == 1 and raw[16:32] == b"\xAA" * 16
    # a larger struct: trailing bytes beyond the kernel's size are not interpreted
    big = (K.DRM_IOCTL_XE_VM_CREATE & ~(0x3FFF << 16)) | (48 << 16)
    b = env.buf(struct.pack("<QII16x", 0, 0, 0) + b"\xFF" * 16)
    res, raw = env.call(f, big, b)
    assert res == 0 and struct.unpack_from("<I", raw, 12)[0] == 2 and raw[32:48] == b"\xFF" * 16
    # write-only encoding of an _IOWR ioctl: nothing is copied back
    wo = K.DRM_IOCTL_XE_VM_CREATE & ~(2 << 30)
    b = env.buf(struct.pack("<QII16x", 0, 0, 0))
    res, raw = env.call(f, wo, b)
    assert res == 0 and struct.unpack_from("<I", raw, 12)[0] == 0


def test_discovery_after_client_exit_and_destroyed_resources():
    env = Env()
    f = env.open()
    vm = env.vm_create(f)
    md = env.md_create(f)
    assert env.vm_destroy(f, vm) == 0 and env.md_destroy(f, md) == 0   # gone before connect
    f2 = env.open()
    env.k.release(f2)
    d = env.debugger(f)
    assert types(env.events(d)) == [(K.EV_OPEN, 1)]
    # a mapping whose metadata was destroyed disconnects the next connection's discovery (§2.2)
    md = env.md_create(f)
    vm = env.vm_create(f)
    bo = env.bo_create(f)
    ext = env.buf(struct.pack("<QIIQQQQ", 0, 0, 0, md, 0, 1, 0))
    assert env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=bo, ext=env.addr(ext))]) == 0
    assert env.md_destroy(f, md) == 0
    env.k.release(d)
    d2 = env.debugger(f)
    env.events(d2)
    assert d2.conn.status == -errno.ENOENT


def test_unreadable_argument_is_efault_after_request_checks():
    env = Env()
    f = env.open()
    d = env.debugger(f)
    call = lambda file, req: env.k.ioctl(file, env.caller, req, None)
    for file, req, err in ((d, 0x40086A00, errno.EINVAL), (d, K.DRM_XE_EUDEBUG_IOCTL_ACK_EVENT, errno.EFAULT),
                           (f, 0xC0086460, errno.EINVAL), (f, 0x40085401, errno.ENOTTY),
                           (f, K.DRM_IOCTL_XE_VM_CREATE, errno.EFAULT)):
        with pytest.raises(K.KernelError) as exc:
            call(file, req)
        assert exc.value.errno == err, hex(req)
    assert f.vms == {}


def test_fuzz_file_operations():
    env = Env()
    rng = random.Random(99)
    f = env.open()
    d = env.debugger(f)
    vm = env.vm_create(f)
    bo = env.bo_create(f)
    env.bind(f, vm, [op(K.OP_MAP, 0x1000, 4096, obj=bo)])
    vf, _ = env.call(d, K.DRM_XE_EUDEBUG_IOCTL_VM_OPEN, env.buf(struct.pack("<QQQQQ", 0, 1, 1, 0, 0)))
    assert isinstance(vf, K.VmFile)
    values = [0, 1, 0xFFF, 0x1000, 0x1FFF, 0x2000, -1, 1 << 62, (1 << 63) - 1, -(1 << 63)]
    for _ in range(2000):
        target = rng.choice([f, d, vf])
        what = rng.randrange(6)
        a, b = rng.choice(values), rng.choice(values + [rng.getrandbits(40)])
        try:
            if what == 0:
                env.k.pread(target, env.caller, abs(a) % 10000, b)
            elif what == 1:
                env.k.pwrite(target, env.caller, bytes(abs(a) % 100), b)
            elif what == 2:
                env.k.lseek(target, env.caller, a, rng.randrange(-1, 6))
            elif what == 3:
                env.k.read(target, env.caller, abs(a) % 5000)
            elif what == 4:
                env.k.mmap_bo(target, b, a)
            else:
                env.k.poll(target)
        except K.KernelError:
            pass
    assert env.k.pread(vf, env.caller, 4, 0x1000) == env.k.pread(vf, env.caller, 4, 0x1000)


def test_concurrent_producers_and_reader_lose_nothing():
    env = Env(fifo_capacity=8, fifo_timeout=10.0, fifo_retry=0.05, read_event_timeout=2.0)
    f = env.open()
    d = env.debugger(f)
    env.events(d)
    per_thread, threads = 100, 4

    def produce():
        for _ in range(per_thread):
            env.vm_destroy(f, env.vm_create(f))

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for w in workers:
        w.start()
    seqnos = []
    end = time.monotonic() + 20
    while len(seqnos) < 2 * per_thread * threads and time.monotonic() < end:
        ev = env.read_event(d, nonblock=False)
        if not isinstance(ev, int):
            seqnos.append(hdr(ev)[3])
    for w in workers:
        w.join(10)
    assert d.conn.status == 1
    assert sorted(seqnos) == list(range(2, 2 + 2 * per_thread * threads))


def test_fidelity_switches_reproduce_kernel_quirks():
    env = Env(fidelity_lrc_truncation=True, fidelity_nonlr_discovery_abort=True)
    f = env.open()
    plain = env.vm_create(f, 0)
    bo = env.bo_create(f)
    assert env.bind(f, plain, [op(K.OP_MAP, 0x1000, 4096, obj=bo)]) == 0
    env.vm_create(f)                                              # LR VM after the non-LR one
    d = env.debugger(f)
    assert types(env.events(d)) == [(K.EV_OPEN, 1)]              # discovery stopped at the non-LR VM
    lr = env.vm_create(f)
    env.queue_create(f, lr, width=2)
    ev = env.events(d)[-1]
    assert struct.unpack_from("<QQ", ev, 56) == (1, 0)            # width bytes of lrc_handle[] only (not 1, 2)


def _query(env: "Env", f, q: int) -> bytes:
    _, raw = env.ok(f, K.DRM_IOCTL_XE_DEVICE_QUERY, struct.pack("<QIIQ16x", 0, q, 0, 0))
    size = struct.unpack_from("<I", raw, 12)[0]
    if size == 0:
        return b""
    data = env.buf(size)
    env.ok(f, K.DRM_IOCTL_XE_DEVICE_QUERY, struct.pack("<QIIQ16x", 0, q, size, env.addr(data)))
    return data.raw


def test_hwconfig_query_is_a_valid_empty_answer():
    """IGT's xe_device_get asserts HWCONFIG succeeds; the kernel answers size 0 without a GuC
    hwconfig table, and a second call with size 0 succeeds again."""
    env = Env()
    f = env.open()
    assert _query(env, f, K.QUERY_HWCONFIG) == b""
    assert _query(env, f, K.QUERY_HWCONFIG) == b""


def test_gt_topology_masks_match_the_device_model():
    """Per GT: DSS_GEOMETRY, DSS_COMPUTE (16 bytes each: xe_dss_mask_t) and the SIMD16 EU mask
    (8 bytes: xe_eu_mask_t), each as u16 gt_id, u16 type, u32 num_bytes, mask; the DSS count and
    EUs per DSS are those of the EU attention bitmask (EU_BITMASK_SIZE)."""
    env = Env()
    f = env.open()
    data = _query(env, f, K.QUERY_GT_TOPOLOGY)
    masks = []
    off = 0
    while off < len(data):
        gt, kind, n = struct.unpack_from("<HHI", data, off)
        masks.append((gt, kind, int.from_bytes(data[off + 8:off + 8 + n], "little"), n))
        off += 8 + n
    assert off == len(data)
    assert [(gt, kind, n) for gt, kind, _m, n in masks] == [
        (0, U.DRM_XE_TOPO_DSS_GEOMETRY, 16), (0, U.DRM_XE_TOPO_DSS_COMPUTE, 16),
        (0, U.DRM_XE_TOPO_SIMD16_EU_PER_DSS, 8)]
    dss = bin(masks[1][2]).count("1")
    eus = bin(masks[2][2]).count("1")
    assert masks[0][2] == masks[1][2] and dss == K.DSS_COUNT
    assert dss * eus * 8 == K.EU_BITMASK_SIZE * 8  # one attention bit per EU thread (8 per EU)


def test_config_query_reports_the_configured_device_id():
    env = Env(device_id=0xE20B)
    f = env.open()
    data = _query(env, f, K.QUERY_CONFIG)
    assert struct.unpack_from("<Q", data, 8)[0] & 0xFFFF == 0xE20B
