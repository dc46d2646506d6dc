"""Transport tests of the simulator: real fds, identity, memory access, poll, robustness.

These run the server with a small stand-in kernel model (`FakeKernel` below, loaded by the server
process with ``--kernel tests.test_sim_transport:FakeKernel``) so they test the transport in
isolation from the kernel model.  Tests against the real model are at the end of the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import select
import signal
import socket
import struct
import threading
import time

import pytest

from xe_eudebug.sim import port
from xe_eudebug.sim.config import SimConfig

FAKE_KERNEL = "tests.test_sim_transport:FakeKernel"
WAIT = 30.0  # seconds any step may take on a loaded machine before a test gives up


# ------------------------------------------------------------------------------------------------
# The stand-in kernel model (runs inside the server process)

def _ioc(direction: int, typ: str, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord(typ) << 8) | nr


FAKE_ECHO = _ioc(3, "F", 1, 16)        # IOWR: copy back the bytes reversed; result = caller pid
FAKE_PUSH = _ioc(1, "F", 2, 8)         # IOW: queue an 8-byte event on every debugger of the device
FAKE_DETACH = _ioc(0, "F", 3, 0)       # IO on a debugger: detach it (poll HUP)
FAKE_PEEK = _ioc(1, "F", 4, 16)        # IOW {addr, len}: read caller memory, result = sum of bytes
FAKE_POKE = _ioc(1, "F", 7, 16)        # IOW {addr, byte}: write 16 copies of byte at addr
FAKE_STATS = _ioc(2, "F", 5, 32)       # IOR: releases of device/debugger/vm files, live files
FAKE_SLEEP = _ioc(1, "F", 6, 8)        # IOW: sleep ms; result = caller pid
FAKE_ID = _ioc(0, "F", 8, 0)           # IO: the file's serial number
FAKE_LIVE = _ioc(1, "F", 9, 8)         # IOW u64 serial: 1 while that file is not released
FAKE_BLOCKED = _ioc(0, "F", 10, 0)     # IO: the calls blocked now (SLEEP, MEET, READ_EVENT)
FAKE_MEET = _ioc(1, "F", 11, 8)        # IOW u64 n: return once n calls are in it at once; result = caller pid
FAKE_CONNECT = 0xC018644E              # the CONNECT request value: returns a debugger file
FAKE_VM_OPEN = 0x40286A01              # the VM_OPEN request value: returns a VM file
FAKE_READ_EVENT = 0x6A00               # READ_EVENT: {len u32, type u16, flags u16, value u64}


class KernelError(Exception):
    def __init__(self, err: int) -> None:
        super().__init__(err, os.strerror(err))
        self.errno = err


class _File:
    serials = iter(range(1, 1 << 62))

    def __init__(self, kind: str, device: int) -> None:
        self.serial = next(self.serials)
        self.kind = kind
        self.device = device
        self.events: list[int] = []
        self.detached = False


class FakeKernel:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.cv = threading.Condition()
        self.files: list[_File] = []
        self.released = {"device": 0, "debugger": 0, "vm": 0}
        self.enabled = [config.enable_default] * config.devices
        self.memfd = os.memfd_create("fake-bo")
        os.ftruncate(self.memfd, 2 * mmap.PAGESIZE)
        self.on_poll_change = lambda f: None
        self.might_sleep = lambda: None  # the server's: a call about to block leaves its event loop
        self.meetings: dict[int, threading.Barrier] = {}
        self.blocked = 0

    def open_device(self, index, caller):
        f = _File("device", index)
        with self.cv:
            self.files.append(f)
        return f

    def ioctl(self, file, caller, request, arg):
        if request == FAKE_ECHO:
            return caller.pid, bytes(reversed(bytes(arg)))  # bytes(): copy_from_user
        if request == FAKE_ID:
            return file.serial, b""
        if request == FAKE_LIVE:
            (serial,) = struct.unpack("<Q", arg)
            with self.cv:
                return int(any(f.serial == serial for f in self.files)), b""
        if request == FAKE_SLEEP:
            with self._blocking():
                time.sleep(struct.unpack("<Q", arg)[0] / 1000)
            return caller.pid, b""
        if request == FAKE_MEET:
            (n,) = struct.unpack("<Q", arg)
            with self.cv:
                meeting = self.meetings.setdefault(n, threading.Barrier(n, timeout=WAIT))
            try:
                with self._blocking():
                    meeting.wait()
            except threading.BrokenBarrierError:
                raise KernelError(errno.ETIMEDOUT) from None
            return caller.pid, b""
        if request == FAKE_BLOCKED:
            with self.cv:
                return self.blocked, b""
        if request == FAKE_PEEK:
            addr, n = struct.unpack("<QQ", arg)
            return sum(caller.read(addr, n)), b""
        if request == FAKE_POKE:
            addr, byte = struct.unpack("<QQ", arg)
            caller.write(addr, bytes([byte]) * 16)
            return 0, b""
        if request == FAKE_STATS:
            with self.cv:
                live = len(self.files)
            r = self.released
            return 0, struct.pack("<4Q", r["device"], r["debugger"], r["vm"], live)
        if request == FAKE_CONNECT and file.kind == "device":
            if not self.enabled[file.device]:
                err = KernelError(errno.ENODEV)
                err.copy_back = arg[:20] + struct.pack("<I", 1)  # written back despite the error
                raise err
            f = _File("debugger", file.device)
            with self.cv:
                self.files.append(f)
            return f, arg[:20] + struct.pack("<I", 1)
        if request == FAKE_PUSH and file.kind == "device":
            (value,) = struct.unpack("<Q", arg)
            with self.cv:
                targets = [f for f in self.files if f.kind == "debugger" and f.device == file.device and not f.detached]
                for f in targets:
                    f.events.append(value)
                self.cv.notify_all()
            for f in targets:
                self.on_poll_change(f)
            return 0, b""
        if file.kind == "debugger":
            if request == FAKE_DETACH:
                with self.cv:
                    file.detached = True
                    self.cv.notify_all()
                self.on_poll_change(file)
                return 0, b""
            if request == FAKE_VM_OPEN:
                f = _File("vm", file.device)
                with self.cv:
                    self.files.append(f)
                return f, b""
            if request == FAKE_READ_EVENT:
                length, typ, flags = struct.unpack("<IHH", caller.read(caller.arg_addr, 8))
                if typ != 1 or length < 16:
                    raise KernelError(errno.EINVAL)
                deadline = time.monotonic() + self.config.read_event_timeout
                with self.cv:
                    while not file.events:
                        if file.detached:
                            raise KernelError(errno.ENOTCONN)
                        if caller.nonblock:
                            raise KernelError(errno.EAGAIN)
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise KernelError(errno.ENOENT)
                        with self._blocking():
                            self.cv.wait(left)
                    value = file.events.pop(0)
                self.on_poll_change(file)
                caller.write(caller.arg_addr, struct.pack("<IHHQ", 16, 2, 0, value))
                return 0, b""
        raise KernelError(errno.EINVAL if file.kind == "debugger" else errno.ENOTTY)

    @contextlib.contextmanager
    def _blocking(self):
        """A step that blocks: the server's event loop is told first (as kernel code calls
        might_sleep), and FAKE_BLOCKED counts the call meanwhile."""
        self.might_sleep()
        with self.cv:
            self.blocked += 1
        try:
            yield
        finally:
            with self.cv:
                self.blocked -= 1

    def read(self, file, caller, size):
        raise KernelError(errno.EINVAL)

    def pread(self, file, caller, size, offset):
        if file.kind != "vm":
            raise KernelError(errno.ESPIPE)
        return os.pread(self.memfd, size, offset)

    def pwrite(self, file, caller, data, offset):
        if file.kind != "vm":
            raise KernelError(errno.ESPIPE)
        return os.pwrite(self.memfd, data, offset)

    def lseek(self, file, caller, offset, whence):
        if offset < 0:
            raise KernelError(errno.EINVAL)
        return offset

    def fsync(self, file, caller):
        return 0

    def mmap_bo(self, file, offset, length):
        if offset != 0 or length > 2 * mmap.PAGESIZE:
            raise KernelError(errno.EINVAL)
        return self.memfd, 0

    def poll(self, file):
        if file.kind != "debugger":
            return select.POLLIN | select.POLLOUT
        mask = select.POLLIN if file.events else 0
        if file.detached:
            mask |= select.POLLHUP
        return mask

    def release(self, file):
        with self.cv:
            self.files.remove(file)
            self.released[file.kind] += 1
            self.cv.notify_all()

    def get_enabled(self, index):
        return self.enabled[index]

    def set_enabled(self, index, value):
        with self.cv:
            if not value and any(f.kind == "debugger" and f.device == index and not f.detached for f in self.files):
                raise KernelError(errno.EBUSY)
            old, self.enabled[index] = self.enabled[index], value
        return old


# ------------------------------------------------------------------------------------------------
# Helpers (client side)

def call(fd: int, request: int, arg=None) -> int:
    """An ioctl through the simulator backend (the seam's job, done directly here)."""
    addr = ctypes.addressof(arg) if arg is not None else 0
    return port.backend.ioctl(fd, request, addr)


def stats(fd: int) -> tuple[int, int, int, int]:
    buf = ctypes.create_string_buffer(32)
    call(fd, FAKE_STATS, buf)
    return struct.unpack("<4Q", buf.raw)


def file_id(fd: int) -> int:
    return call(fd, FAKE_ID)


def is_live(dev: int, serial: int) -> bool:
    return bool(call(dev, FAKE_LIVE, ctypes.create_string_buffer(struct.pack("<Q", serial), 8)))


def wait_released(dev: int, serial: int, what: str) -> None:
    """As close(2) runs the release before it returns, any later call already sees it."""
    assert not is_live(dev, serial), f"no {what}"


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def connect_debugger(dev: int) -> int:
    arg = ctypes.create_string_buffer(struct.pack("<QQII", 0, os.getpid(), 0, 0), 24)
    fd = call(dev, FAKE_CONNECT, arg)
    assert struct.unpack_from("<I", arg.raw, 20)[0] == 1  # copy-back reached our struct
    return fd


def push(dev: int, value: int) -> None:
    call(dev, FAKE_PUSH, ctypes.create_string_buffer(struct.pack("<Q", value), 8))


def read_event(dbg: int) -> int:
    buf = ctypes.create_string_buffer(struct.pack("<IHHQ", 16, 1, 0, 0), 16)
    call(dbg, FAKE_READ_EVENT, buf)
    length, typ, _flags, value = struct.unpack("<IHHQ", buf.raw)
    assert (length, typ) == (16, 2)
    return value


def run_child(fn, timeout: float = 10.0) -> int:
    """Run fn() in a forked child; returns its exit status (fn's return value or 99 on error)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = int(fn() or 0)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("child process timed out")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def fake(sim_server):
    """A private simulator running the stand-in kernel, with eudebug enabled and short timeouts."""
    return sim_server(kernel=FAKE_KERNEL, enable_default=True, read_event_timeout=0.5, idle_exit=0)


@pytest.fixture
def dev(fake):
    fd = fake.open_device(0)
    yield fd
    os.close(fd)


# ------------------------------------------------------------------------------------------------
# Tests

def test_open_returns_real_cloexec_fd_claimed_by_the_backend(fake, dev):
    st = os.fstat(dev)
    assert not os.get_inheritable(dev)
    assert port.backend.claims(dev, st)
    assert port.server_pid_of(dev) == fake.pid
    # An ordinary socket is not claimed: the real system call would run on it.
    a, b = socket.socketpair()
    with a, b:
        assert not port.backend.claims(a.fileno(), os.fstat(a.fileno()))


def test_ioctl_round_trip_copies_back_and_reports_caller_pid(dev):
    arg = ctypes.create_string_buffer(bytes(range(16)), 16)
    assert call(dev, FAKE_ECHO, arg) == os.getpid()
    assert arg.raw == bytes(reversed(range(16)))


def test_unknown_request_gets_kernel_errno(dev):
    with pytest.raises(OSError) as info:
        call(dev, _ioc(0, "F", 99, 0))
    assert info.value.errno == errno.ENOTTY


def test_bad_struct_address_gives_efault_not_a_crash(dev):
    with pytest.raises(OSError) as info:
        port.backend.ioctl(dev, FAKE_ECHO, 8)
    assert info.value.errno == errno.EFAULT


def test_unreadable_struct_faults_only_where_the_kernel_reads_it(dev):
    """An unknown request with a NULL _IOW argument is the kernel's EINVAL/ENOTTY (its request
    check comes first), a known one faults when the kernel copies the struct."""
    dbg = connect_debugger(dev)
    try:
        with pytest.raises(OSError) as info:
            port.backend.ioctl(dbg, _ioc(1, "j", 0, 8), 0)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(dbg)
    with pytest.raises(OSError) as info:
        port.backend.ioctl(dev, FAKE_ECHO, 0)
    assert info.value.errno == errno.EFAULT


def test_kernel_reads_and_writes_caller_memory_with_efault_on_bad_address(dev):
    data = ctypes.create_string_buffer(bytes([1, 2, 3, 4]) * 256, 1024)
    arg = ctypes.create_string_buffer(struct.pack("<QQ", ctypes.addressof(data), 1024), 16)
    assert call(dev, FAKE_PEEK, arg) == 10 * 256
    bad = ctypes.create_string_buffer(struct.pack("<QQ", 16, 8), 16)
    with pytest.raises(OSError) as info:
        call(dev, FAKE_PEEK, bad)
    assert info.value.errno == errno.EFAULT
    target = ctypes.create_string_buffer(16)
    poke = ctypes.create_string_buffer(struct.pack("<QQ", ctypes.addressof(target), 0x5A), 16)
    call(dev, FAKE_POKE, poke)
    assert target.raw == b"\x5a" * 16
    # A read-only page is not writable by copy_to_user either.
    page = mmap.mmap(-1, mmap.PAGESIZE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(addr), mmap.PAGESIZE, mmap.PROT_READ) == 0
    with pytest.raises(OSError) as info:
        call(dev, FAKE_POKE, ctypes.create_string_buffer(struct.pack("<QQ", addr, 1), 16))
    assert info.value.errno == errno.EFAULT
    assert libc.mprotect(ctypes.c_void_p(addr), mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE) == 0


def test_memory_access_through_the_caller_side(sim_server):
    """With memory_access=caller the server asks the blocked caller to copy (no process_vm_*)."""
    srv = sim_server(kernel=FAKE_KERNEL, memory_access="caller", idle_exit=0)
    fd = srv.open_device(0)
    try:
        data = ctypes.create_string_buffer(b"\x07" * 100000, 100000)
        arg = ctypes.create_string_buffer(struct.pack("<QQ", ctypes.addressof(data), 100000), 16)
        assert call(fd, FAKE_PEEK, arg) == 7 * 100000
        with pytest.raises(OSError) as info:
            call(fd, FAKE_PEEK, ctypes.create_string_buffer(struct.pack("<QQ", 4096, 8), 16))
        assert info.value.errno == errno.EFAULT
        target = ctypes.create_string_buffer(16)
        call(fd, FAKE_POKE, ctypes.create_string_buffer(struct.pack("<QQ", ctypes.addressof(target), 3), 16))
        assert target.raw == b"\x03" * 16
    finally:
        os.close(fd)


def test_close_runs_release_after_last_copy(dev, fake):
    other = fake.open_device(0)
    serial = file_id(other)
    base = stats(dev)[0]
    copy = os.dup(other)
    os.close(other)
    time.sleep(0.1)
    assert is_live(dev, serial)  # a dup'd copy keeps the file alive
    os.close(copy)
    wait_released(dev, serial, "release after the last close")
    assert stats(dev)[0] >= base + 1


def test_fork_inheritance_and_process_exit_release(dev, fake):
    inherited = fake.open_device(0)
    os.set_inheritable(inherited, True)
    serial = file_id(inherited)

    def child():
        # The child uses the inherited fd over its own (fresh) connection.
        arg = ctypes.create_string_buffer(bytes(16), 16)
        return 0 if call(inherited, FAKE_ECHO, arg) == os.getpid() else 1

    assert run_child(child) == 0
    assert is_live(dev, serial)  # the child's exit closed only its copy
    os.close(inherited)
    wait_released(dev, serial, "release after the parent's close")

    r, w = os.pipe()

    def child_holds():
        fd = fake.open_device(0)
        os.write(w, struct.pack("<Q", file_id(fd)))
        return 0  # exits without closing: process exit closes it

    try:
        assert run_child(child_holds) == 0
        (child_serial,) = struct.unpack("<Q", os.read(r, 8))
    finally:
        os.close(r)
        os.close(w)
    wait_released(dev, child_serial, "release at process exit")


def test_threads_each_use_their_own_connection(dev):
    """Six threads' calls are in the server at once: a meeting of six in the kernel model, which
    calls served one after the other (a shared connection) never complete (ETIMEDOUT)."""
    results: list[int] = []
    errors: list[BaseException] = []
    arg_n = struct.pack("<Q", 6)

    def worker():
        try:
            results.append(call(dev, FAKE_MEET, ctypes.create_string_buffer(arg_n, 8)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * WAIT)
    assert not errors, f"calls were serialised: {errors}"
    assert results == [os.getpid()] * 6


def test_connect_returns_debugger_fd_with_kernel_flags_and_blocking_read_event(dev):
    dbg = connect_debugger(dev)
    try:
        assert os.get_inheritable(dbg)  # debugger fd: not close-on-exec
        assert port.backend.claims(dbg, os.fstat(dbg))
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            read_event(dbg)
        assert info.value.errno == errno.ENOENT
        assert time.monotonic() - start >= 0.45  # blocked for the configured timeout
        # O_NONBLOCK set with fcntl is honoured.
        import fcntl
        fcntl.fcntl(dbg, fcntl.F_SETFL, fcntl.fcntl(dbg, fcntl.F_GETFL) | os.O_NONBLOCK)
        with pytest.raises(OSError) as info:
            read_event(dbg)
        assert info.value.errno == errno.EAGAIN
        # read() on the debugger fd is the kernel's answer (EINVAL here).
        with pytest.raises(OSError) as info:
            port.backend.read(dbg, 8)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(dbg)


def test_a_blocked_read_event_is_woken_by_an_event_from_another_thread(sim_server):
    """An event pushed while a READ_EVENT is blocked (seen in the kernel model) ends that call
    with the event (a server whose READ_EVENT waits long enough for a loaded machine)."""
    srv = sim_server(kernel=FAKE_KERNEL, enable_default=True, read_event_timeout=WAIT, idle_exit=0)
    dev = srv.open_device(0)
    dbg = connect_debugger(dev)
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.append(read_event(dbg)))
    try:
        reader.start()
        wait_for(lambda: call(dev, FAKE_BLOCKED) == 1, WAIT, "the READ_EVENT to block")
        push(dev, 42)
        reader.join(WAIT)
        assert got == [42]
    finally:
        os.close(dbg)
        reader.join(WAIT)
        os.close(dev)


def test_poll_readiness_follows_the_fifo_and_detach_shows_hup(dev, fake):
    dbg = connect_debugger(dev)
    serial = file_id(dbg)
    try:
        p = select.poll()
        p.register(dbg, select.POLLIN)
        assert p.poll(50) == []
        push(dev, 1)
        push(dev, 2)
        assert p.poll(1000) == [(dbg, select.POLLIN)]
        assert port.backend.poll_mask(dbg) == select.POLLIN
        assert read_event(dbg) == 1
        assert p.poll(0) == [(dbg, select.POLLIN)]
        assert read_event(dbg) == 2
        assert p.poll(0) == []
        push(dev, 3)
        call(dbg, FAKE_DETACH)
        events = dict(p.poll(1000))
        assert events[dbg] & select.POLLHUP
        time.sleep(0.3)
        assert is_live(dev, serial)  # our own shutdown is not mistaken for the last close
        assert port.backend.poll_mask(dbg) == select.POLLIN | select.POLLHUP
        assert read_event(dbg) == 3  # queued events stay readable after detach
        with pytest.raises(OSError) as info:
            read_event(dbg)
        assert info.value.errno == errno.ENOTCONN
        assert dict(p.poll(0))[dbg] & select.POLLHUP
    finally:
        os.close(dbg)
    # The last close of a detached debugger is still seen (through its queued byte).
    wait_released(dev, serial, "release of a detached debugger")


def test_polling_a_debugger_fd_with_events_queued_asks_the_server_nothing(dev, monkeypatch):
    """While events are queued the readiness byte is the server's answer (the preload's poll()
    sees nothing else), so the Python side's poll_mask makes no OP_POLL round trip then; with
    nothing queued, or after a detach, it still asks the server."""
    dbg = connect_debugger(dev)
    ops: list[int] = []
    real = port._Link.call

    def counting(self, op, *args, **kw):
        ops.append(op)
        return real(self, op, *args, **kw)

    monkeypatch.setattr(port._Link, "call", counting)
    try:
        p = select.poll()
        p.register(dbg, select.POLLIN)
        assert port.backend.poll_mask(dbg) == 0
        assert ops.count(port.OP_POLL) == 1
        push(dev, 1)
        assert p.poll(1000) == [(dbg, select.POLLIN)]
        ops.clear()
        assert port.backend.poll_mask(dbg) == select.POLLIN
        assert port.backend.poll_mask(dbg) == select.POLLIN
        assert port.OP_POLL not in ops
        call(dbg, FAKE_DETACH)
        assert dict(p.poll(1000))[dbg] & select.POLLHUP
        assert port.backend.poll_mask(dbg) == select.POLLIN | select.POLLHUP
        assert ops.count(port.OP_POLL) == 1
    finally:
        os.close(dbg)


def test_debugger_release_on_close_and_enable_toggle(dev):
    dbg = connect_debugger(dev)
    serial = file_id(dbg)
    with pytest.raises(OSError) as info:
        port.set_enabled(dev, False)
    assert info.value.errno == errno.EBUSY
    os.close(dbg)
    wait_released(dev, serial, "debugger release")
    assert port.set_enabled(dev, False) is True
    assert port.get_enabled(dev) is False
    arg = ctypes.create_string_buffer(struct.pack("<QQII", 0, os.getpid(), 0, 7), 24)
    with pytest.raises(OSError) as info:
        call(dev, FAKE_CONNECT, arg)
    assert info.value.errno == errno.ENODEV
    assert struct.unpack_from("<I", arg.raw, 20)[0] == 1  # copied back although the call failed
    assert port.set_enabled(dev, True) is False


def test_vm_fd_and_bo_mmap_share_memory(dev):
    dbg = connect_debugger(dev)
    try:
        vm = call(dbg, FAKE_VM_OPEN, ctypes.create_string_buffer(40))
        try:
            assert not os.get_inheritable(vm)  # VM fd: O_CLOEXEC
            m = port.backend.mmap(dev, 2 * mmap.PAGESIZE, 0)
            try:
                m[100:105] = b"hello"
                assert port.backend.pread(vm, 5, 100) == b"hello"
                assert port.backend.pwrite(vm, b"world", 200) == 5
                assert m[200:205] == b"world"
            finally:
                m.close()
            assert port.backend.lseek(vm, 77, os.SEEK_SET) == 77
            port.backend.fsync(vm)
            with pytest.raises(OSError) as info:
                port.backend.mmap(dev, 4096, 4096)
            assert info.value.errno == errno.EINVAL
        finally:
            os.close(vm)
    finally:
        os.close(dbg)


def test_malformed_bytes_close_only_that_connection(fake, dev):
    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad.settimeout(5)
    bad.connect(fake.socket)
    bad.sendall(b"\xff" * 64)  # an impossible header
    assert bad.recv(100) == b""  # the server closed this connection
    bad.close()
    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad.settimeout(5)
    bad.connect(fake.socket)
    bad.sendall(port.HEADER.pack(0, port.OP_IOCTL, 0, 0, 0, 0))  # fd request without an fd
    assert bad.recv(100) == b""
    bad.close()
    # Everyone else keeps working.
    arg = ctypes.create_string_buffer(bytes(16), 16)
    assert call(dev, FAKE_ECHO, arg) == os.getpid()


def test_killed_simulator_gives_clear_error_not_a_hang(sim_server):
    srv = sim_server(kernel=FAKE_KERNEL, idle_exit=0)
    fd = srv.open_device(0)
    try:
        def blocked_call():
            call(fd, FAKE_SLEEP, ctypes.create_string_buffer(struct.pack("<Q", 10000), 8))

        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: _capture(blocked_call, errors))
        t.start()
        wait_for(lambda: call(fd, FAKE_BLOCKED) == 1, WAIT, "the call to block in the server")
        srv.kill()
        t.join(5)
        assert not t.is_alive()
        assert isinstance(errors[0], OSError) and errors[0].errno == errno.ECONNRESET
        assert "simulator connection lost" in str(errors[0])
        with pytest.raises(OSError) as info:
            call(fd, FAKE_ECHO, ctypes.create_string_buffer(16))
        assert info.value.errno == errno.ECONNRESET
        assert "simulator connection lost" in str(info.value)
    finally:
        os.close(fd)


def _capture(fn, errors):
    try:
        fn()
    except BaseException as exc:
        errors.append(exc)


def test_idle_server_exits(sim_server):
    srv = sim_server(kernel=FAKE_KERNEL, idle_exit=0.3)
    fd = srv.open_device(0)
    time.sleep(0.6)
    assert srv.alive()  # an open file keeps it running
    os.close(fd)
    port.connect(srv.socket).drop_thread_conn()
    link = port.connect(srv.socket)
    link._drop_master()
    wait_for(lambda: not srv.alive(), timeout=5, what="idle exit")
    assert not os.path.exists(srv.socket)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_setuid_dropped_child_keeps_using_held_fds(dev):
    held = os.dup(dev)
    os.set_inheritable(held, True)

    def child():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        arg = ctypes.create_string_buffer(bytes(16), 16)
        ok = call(held, FAKE_ECHO, arg) == os.getpid()
        # Memory access still works for the unprivileged process.
        data = ctypes.create_string_buffer(b"\x01" * 64, 64)
        ok = ok and call(held, FAKE_PEEK, ctypes.create_string_buffer(struct.pack("<QQ", ctypes.addressof(data), 64), 16)) == 64
        # A new thread gets its own connection (cloned, no new path connection needed).
        out: list[int] = []
        t = threading.Thread(target=lambda: out.append(call(held, FAKE_ECHO, ctypes.create_string_buffer(16))))
        t.start()
        t.join(5)
        return 0 if ok and out == [os.getpid()] else 1

    try:
        assert run_child(child) == 0
    finally:
        os.close(held)


def test_two_devices_and_private_instances_are_separate(sim_server):
    a = sim_server(kernel=FAKE_KERNEL, devices=2, idle_exit=0)
    b = sim_server(kernel=FAKE_KERNEL, idle_exit=0)
    fa0, fa1, fb = a.open_device(0), a.open_device(1), b.open_device(0)
    try:
        assert port.file_info(fa1)[0] == 1
        assert port.server_pid_of(fa0) == a.pid and port.server_pid_of(fb) == b.pid
        with pytest.raises(OSError) as info:
            b.open_device(1)
        assert info.value.errno == errno.ENOENT
        r = port.reopen(fa1)
        assert port.file_info(r) == (1, port.KIND_DEVICE)
        os.close(r)
    finally:
        for fd in (fa0, fa1, fb):
            os.close(fd)


def test_random_messages_never_disturb_other_clients(fake, dev):
    """Random headers and payloads: the server answers or drops that connection, nothing else."""
    import random

    rng = random.Random(1234)
    kinds = list(range(0, port.MAX_OP + 3)) + [port.M_DATA, port.M_DONE, port.R_REPLY, 0xFFFF]
    for _ in range(60):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(fake.socket)
        payload = rng.randbytes(rng.choice([0, 1, 7, 32, 300]))
        length = len(payload) if rng.random() < 0.8 else rng.getrandbits(32)
        header = port.HEADER.pack(length, rng.choice(kinds), rng.getrandbits(16),
                                  rng.choice([0, 1, 2, rng.getrandbits(64)]), rng.getrandbits(64), rng.getrandbits(64))
        try:
            s.sendall(header[: rng.randint(1, len(header))] if rng.random() < 0.1 else header + payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):  # a reply or nothing; the server closes after EOF either way
                pass
        except ConnectionError:
            pass
        finally:
            s.close()
    arg = ctypes.create_string_buffer(bytes(16), 16)
    assert call(dev, FAKE_ECHO, arg) == os.getpid()
    assert fake.alive()


def test_first_use_starts_one_shared_instance_that_exits_when_idle(tmp_path):
    """Two processes racing to open 'sim' with no server start exactly one (lock file), in the
    per-user directory (mode 0700, socket 0600); it exits after its idle time."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XE_EUDEBUG_SIM_SOCKET"}
    env.update(XDG_RUNTIME_DIR=str(tmp_path), XE_EUDEBUG_SIM_KERNEL=FAKE_KERNEL,
               XE_EUDEBUG_SIM_IDLE_EXIT="0.5", PYTHONPATH=root)
    # each keeps its device open until both have reported: the first's server cannot go idle
    # (and exit) before the second uses it, however late the second starts
    code = ("from xe_eudebug.sim import port\n"
            "fd = port.open_device(0)\n"
            "import os, sys\n"
            "print(port.server_pid_of(fd), oct(os.stat(port.default_socket_path()).st_mode & 0o777), flush=True)\n"
            "sys.stdin.read()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        lines = []
        for p in procs:
            ready, _, _ = select.select([p.stdout], [], [], WAIT)
            assert ready, "a process did not report its server in time"
            lines.append(p.stdout.readline())
    finally:
        outs = [p.communicate(timeout=WAIT) for p in procs]  # closes their stdin: they exit
    outs = [(line + out, err) for line, (out, err) in zip(lines, outs)]
    assert all(p.returncode == 0 for p in procs), outs
    pids = {out.split()[0] for out, _err in outs}
    assert len(pids) == 1
    assert {out.split()[1] for out, _err in outs} == {"0o600"}
    directory = tmp_path / "xe_eudebug-sim"
    sock = directory / "sock"
    assert (directory.stat().st_mode & 0o777) == 0o700
    wait_for(lambda: not sock.exists(), timeout=10, what="the idle server to exit and remove its socket")
    assert (directory / "lock").exists()


def test_closed_fd_is_ebadf_and_the_connection_survives(fake, dev):
    other = fake.open_device(0)
    os.close(other)
    with pytest.raises(OSError) as info:
        call(other, FAKE_ECHO, ctypes.create_string_buffer(16))
    assert info.value.errno == errno.EBADF
    assert call(dev, FAKE_ECHO, ctypes.create_string_buffer(16)) == os.getpid()


def test_private_instance_exits_when_its_owner_is_killed():
    """A private instance (idle exit disabled) does not outlive the process that started it."""
    import subprocess
    import sys

    code = (
        "import time\n"
        "from xe_eudebug.sim import SimConfig, start_server\n"
        "h = start_server(SimConfig(idle_exit=0))\n"
        "print(h.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        server_pid = int(owner.stdout.readline())
        assert os.path.exists(f"/proc/{server_pid}")
    finally:
        owner.kill()
        owner.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{server_pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        os.kill(server_pid, 9)
        raise AssertionError("the orphaned simulator is still running 10 s after its owner was killed")


def test_orphaned_private_instance_removes_its_directory():
    """A private instance whose owner was killed exits and removes the private directory made
    for it (nobody else knows it), so killed test runs leave nothing in the temp dir."""
    import subprocess
    import sys

    code = (
        "import time\n"
        "from xe_eudebug.sim import SimConfig, start_server\n"
        "h = start_server(SimConfig(idle_exit=0), timeout=120)\n"
        "print(h.pid, h.directory, flush=True)\n"
        "time.sleep(60)\n"
    )
    import pathlib
    import shutil
    import tempfile

    # a short base directory: pytest's tmp_path can make the socket path too long for AF_UNIX
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="orphan-"))
    try:
        env = dict(os.environ, TMPDIR=str(tmp_path))
        env.pop("XDG_RUNTIME_DIR", None)
        owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=env, text=True)
        try:
            line = owner.stdout.readline()
            if not line:
                owner.wait(30)
                raise AssertionError(f"the owner exited with {owner.returncode} and printed nothing: {owner.stderr.read()}")
            pid_text, directory = line.split()
            assert os.path.basename(directory).startswith("xe_eudebug-sim-") and os.path.isdir(directory)
        finally:
            owner.kill()
            owner.wait(10)
        wait_for(lambda: not os.path.exists(directory), timeout=15, what="removal of the orphan's directory")
        assert not any(p.name.startswith("xe_eudebug-sim-") for p in tmp_path.iterdir())
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
