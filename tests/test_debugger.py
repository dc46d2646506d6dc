"""Debugger worker, triggers, stop/drain, signals and the event iterator.

These tests need no device: a stand-in seam backend (`FakeBackend`) serves READ_EVENT on an fd
of its own, so the worker loop is exercised exactly as it runs against a kernel.  The same
backend is used by the client tests for ioctl-order checks.  End-to-end tests against the
simulator are in test_session.py.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import itertools
import os
import select
import signal
import socket
import stat
import threading
import time
from typing import Any, Callable

import pytest

from xe_eudebug import ioctl as seam
from xe_eudebug import uapi
from xe_eudebug import debugger as debugger_mod
from xe_eudebug.debugger import Debugger, TriggerError, WorkerState
from xe_eudebug.events import HEADER, EventFlags, EventType, make

from waiting import wait_for


class FakeFile:
    """An fd served by `FakeBackend`: ``handler(request, addr) -> int`` answers ioctls; an event
    queue answers READ_EVENT (len/type checks as the kernel, ENOENT when empty)."""

    def __init__(self, fd: int, peer: socket.socket, handler: Callable[[int, int], int] | None) -> None:
        self.fd = fd
        self.peer = peer
        self.handler = handler
        self.events: collections.deque[bytes] = collections.deque()
        self.lock = threading.Lock()
        self.reads = 0

    def push(self, *events: Any) -> None:
        with self.lock:
            for e in events:
                self.events.append(bytes(e))
                self.peer.send(b"\0")  # raw readiness, as the simulator keeps it

    def read_event(self, addr: int) -> int:
        size, etype, flags, _seqno, reserved = HEADER.unpack(ctypes.string_at(addr, HEADER.size))
        if etype != int(EventType.READ) or flags or reserved or size < HEADER.size:
            raise OSError(errno.EINVAL, "bad READ_EVENT header")
        with self.lock:
            if not self.events:
                raise OSError(errno.ENOENT, "no event")
            ev = self.events[0]
            if len(ev) > size:
                ctypes.memmove(addr, len(ev).to_bytes(4, "little"), 4)
                raise OSError(errno.EMSGSIZE, "event too big")
            self.events.popleft()
            os.read(self.fd, 1)
            self.reads += 1
        ctypes.memmove(addr, ev, len(ev))
        return 0


class FakeBackend:
    """A seam backend for fds it made itself (socketpair ends)."""

    def __init__(self) -> None:
        self.files: dict[int, FakeFile] = {}

    def new_file(self, handler: Callable[[int, int], int] | None = None) -> FakeFile:
        a, b = socket.socketpair()
        fd = a.detach()
        f = FakeFile(fd, b, handler)
        self.files[os.fstat(fd).st_ino] = f
        return f

    def _file(self, fd: int) -> FakeFile:
        return self.files[os.fstat(fd).st_ino]

    def claims(self, fd: int, st: os.stat_result) -> bool:
        return stat.S_ISSOCK(st.st_mode) and st.st_ino in self.files

    def ioctl(self, fd: int, request: int, addr: int) -> int:
        f = self._file(fd)
        if request == uapi.DRM_XE_EUDEBUG_IOCTL_READ_EVENT:
            return f.read_event(addr)
        if f.handler is None:
            raise OSError(errno.ENOTTY, "unexpected ioctl")
        return f.handler(request, addr)

    def poll_mask(self, fd: int) -> int:
        f = self._file(fd)
        return select.POLLIN if f.events else 0

    def close(self) -> None:
        for f in self.files.values():
            f.peer.close()
            try:
                os.close(f.fd)
            except OSError:
                pass


@pytest.fixture
def fake() -> Any:
    backend = FakeBackend()
    seam.register_backend(backend)
    try:
        yield backend
    finally:
        seam.unregister_backend(backend)
        backend.close()


def vm_event(seqno: int, flags: int = EventFlags.CREATE, vm: int = 1) -> Any:
    return make(EventType.VM, flags, seqno, client_handle=1, vm_handle=vm)


def attached(fake: FakeBackend) -> tuple[Debugger, FakeFile]:
    """A debugger whose debug fd is a fake file (attributes set as a test may set them)."""
    f = fake.new_file()
    d = Debugger(-1)
    d.fd = f.fd
    d.target_pid = os.getpid()
    fake.files[os.fstat(f.fd).st_ino] = f
    return d, f


def close(d: Debugger) -> None:
    try:
        d.close()
    except TriggerError:
        pass


# ------------------------------------------------------------------------------------------------

def test_worker_logs_counts_and_dispatches_in_insertion_order(fake: FakeBackend) -> None:
    d, f = attached(fake)
    calls: list[tuple[str, int]] = []
    d.add_trigger(EventType.VM, lambda dbg, e: calls.append(("first", e.seqno)))
    d.add_trigger(EventType.OPEN, lambda dbg, e: calls.append(("open", e.seqno)))
    d.add_trigger(EventType.VM, lambda dbg, e: calls.append(("second", e.seqno)))
    # the trigger sees its event already logged, so references can be resolved
    d.add_trigger(EventType.VM, lambda dbg, e: calls.append(("logged", int(dbg.log.find_seqno(e.seqno) is not None))))
    try:
        d.start_worker()
        f.push(vm_event(1), make(EventType.OPEN, EventFlags.CREATE, 2, client_handle=1), vm_event(3, vm=2))
        assert wait_for(lambda: d.event_count == 3)
        d.stop_worker()
        assert calls == [("first", 1), ("second", 1), ("logged", 1), ("open", 2),
                         ("first", 3), ("second", 3), ("logged", 1)]
        assert [e.seqno for e in d.log] == [1, 2, 3]
        assert d.worker_state == WorkerState.INACTIVE
    finally:
        close(d)


def test_stop_drains_queued_events_then_sorts(fake: FakeBackend) -> None:
    d, f = attached(fake)
    try:
        d.start_worker()
        f.push(*[vm_event(s, vm=s) for s in (5, 2, 9, 1, 7, 3)])
        d.stop_worker(timeout=5.0)  # QUITTING keeps reading while polls return something
        assert f.reads == 6 and d.event_count == 6
        assert d.log.seqnos() == [1, 2, 3, 5, 7, 9]
    finally:
        close(d)


def test_stop_drains_everything_queued_even_when_draining_takes_longer_than_the_timeout(fake: FakeBackend) -> None:
    """A worker that drains slowly (here: triggers of 0.3 s, as a starved worker on a loaded
    machine) still reads every queued event before it stops: the timeout bounds one trigger call,
    not the drain, so nothing the kernel queued is left unread."""
    d, f = attached(fake)
    d.add_trigger(EventType.VM, lambda dbg, e: time.sleep(0.3))
    try:
        d.start_worker()
        f.push(*[vm_event(s, vm=s) for s in range(1, 9)])   # 8 × 0.3 s = 2.4 s of triggers
        d.stop_worker(timeout=1.0)
        assert f.reads == 8 and d.event_count == 8
        assert d.log.seqnos() == list(range(1, 9))
    finally:
        close(d)


def test_stop_without_drain_is_igts_forced_stop(fake: FakeBackend) -> None:
    """drain=False: forced after the timeout whatever is still queued (IGT's stop_worker)."""
    d, f = attached(fake)
    d.add_trigger(EventType.VM, lambda dbg, e: time.sleep(0.3))
    try:
        d.start_worker()
        f.push(*[vm_event(s, vm=s) for s in range(1, 9)])   # 8 × 0.3 s = 2.4 s of triggers
        d.stop_worker(timeout=0.5, drain=False)
        assert 1 <= d.event_count < 8 and f.reads == d.event_count
    finally:
        close(d)


def test_quit_request_during_a_poll_gets_one_more_poll(fake: FakeBackend) -> None:
    """stop_worker while the worker's poll is finding nothing: an event queued before the quit
    request (after the poll looked) is still read, since "nothing queued" must come from a poll
    that began after the request (a starved worker lost the client's last events this way)."""
    d, f = attached(fake)
    in_poll, go = threading.Event(), threading.Event()
    stall = [True]
    plain = FakeBackend.poll_mask

    def poll_mask(self: FakeBackend, fd: int) -> int:
        mask = plain(self, fd)
        if stall[0] and fd == f.fd:
            stall[0] = False
            in_poll.set()
            go.wait(10)
            time.sleep(0.15)          # past the worker's 100 ms poll: this answer is its last
        return mask

    fake.poll_mask = poll_mask.__get__(fake)  # type: ignore[method-assign]
    stopper: threading.Thread | None = None
    try:
        d.start_worker()
        assert in_poll.wait(10)
        f.push(vm_event(1))                       # queued after the poll looked
        stopper = threading.Thread(target=d.stop_worker, kwargs={"timeout": 5.0}, daemon=True)
        stopper.start()
        assert wait_for(lambda: d.worker_state == WorkerState.QUITTING)
        go.set()
        stopper.join(10)
        assert not stopper.is_alive()
        assert d.event_count == 1 and f.reads == 1
    finally:
        go.set()
        if stopper is not None:
            stopper.join(10)
        close(d)


def test_stop_forces_a_worker_whose_trigger_blocks(fake: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trigger blocked beyond STOP_TRIGGER_LIMIT (0.5 s here) makes stop_worker give up on the
    drain (IGT's forced stop): the worker quits after that trigger and the rest stays unread."""
    import xe_eudebug.debugger as debugger_module

    monkeypatch.setattr(debugger_module, "STOP_TRIGGER_LIMIT", 0.5)
    release = threading.Event()
    d, f = attached(fake)
    d.add_trigger(EventType.VM, lambda dbg, e: release.wait(10) if e.seqno == 1 else None)
    try:
        d.start_worker()
        f.push(*[vm_event(s, vm=s) for s in range(1, 5)])
        assert wait_for(lambda: d.event_count == 1)
        timer = threading.Timer(1.5, release.set)
        timer.start()
        t0 = time.monotonic()
        d.stop_worker(timeout=0.5)
        timer.join()
        assert time.monotonic() - t0 < 5
        assert d.event_count == 1 and f.reads == 1
    finally:
        release.set()
        close(d)


def test_remove_trigger_inside_dispatch_is_a_live_walk() -> None:
    d = Debugger(-1)
    seen: list[str] = []

    def a(dbg: Debugger, e: Any) -> None:
        seen.append("a")
        dbg.remove_trigger(EventType.VM, b)

    def b(dbg: Debugger, e: Any) -> None:
        seen.append("b")

    def c(dbg: Debugger, e: Any) -> None:
        seen.append("c")
        dbg.remove_trigger(EventType.VM, c)

    for fn in (a, b, c):
        d.add_trigger(EventType.VM, fn)
    d.dispatch(vm_event(1))
    d.dispatch(vm_event(2))
    assert seen == ["a", "c", "a"]
    d.remove_trigger(EventType.VM, b)  # not in the list: nothing happens
    close(d)


def test_trigger_exception_surfaces_with_its_event(fake: FakeBackend) -> None:
    d, f = attached(fake)
    after: list[int] = []

    def bad(dbg: Debugger, e: Any) -> None:
        if e.seqno == 2:
            raise ValueError("trigger went wrong")

    d.add_trigger(EventType.VM, bad)
    d.add_trigger(EventType.VM, lambda dbg, e: after.append(e.seqno))
    try:
        d.start_worker()
        f.push(vm_event(1), vm_event(2, vm=2), vm_event(3, vm=3))
        assert wait_for(lambda: d.event_count == 3)
        with pytest.raises(TriggerError) as info:
            d.stop_worker()
        msg = str(info.value)
        assert "trigger went wrong" in msg and "bad" in msg and "(2)" in msg and "vm(3)" in msg
        assert "Traceback" in msg
        assert info.value.event.seqno == 2 and isinstance(info.value.exception, ValueError)
        assert after == [1, 2, 3]  # the worker went on; later triggers still ran
        d.raise_trigger_failures()  # already reported: nothing left
    finally:
        close(d)


def test_sigterm_interrupts_poll_and_worker_continues(fake: FakeBackend) -> None:
    d, f = attached(fake)
    try:
        d.start_worker()
        d.kill(signal.SIGTERM)
        assert wait_for(lambda: not d.received_signal)  # consumed by the worker
        f.push(vm_event(1))
        assert wait_for(lambda: d.event_count == 1)
        assert d.worker_running and not d.handled_sigint
        d.stop_worker()
    finally:
        close(d)


def _syscall_of(tid: int) -> list[int] | None:
    """The system call thread ``tid`` of this process is blocked in, as /proc shows it: the
    number and the six arguments (``[-1]`` when blocked outside one, ``[]`` while it runs); None
    when the file cannot be read (a kernel without it, a sandbox)."""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as fh:
            fields = fh.read().split()
    except OSError:
        return None
    if not fields or fields[0] == "running":
        return []
    return [int(x, 0) for x in fields[:7]]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_kill_interrupts_the_system_call_the_worker_is_in(fake: FakeBackend, sig: int) -> None:
    """IGT's pthread_sigqueue (lib L:1433) interrupts the worker's blocking system call, not
    only its poll: a trigger blocked in read(2) on a silent pipe returns with EINTR."""
    if not debugger_mod.KILL_SIGNAL:
        pytest.skip("no real-time signal handler could be installed (module imported off the main thread)")
    if _syscall_of(threading.get_native_id()) is None:
        pytest.skip("/proc/<pid>/task/<tid>/syscall is not readable: cannot tell when the worker blocks")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    libc.read.restype = ctypes.c_ssize_t
    r, w = os.pipe()
    buf = ctypes.create_string_buffer(1)
    worker: list[int] = []
    result: list[tuple[int, int]] = []

    def blocking(dbg: Debugger, e: Any) -> None:
        if e.seqno != 1:
            return
        worker.append(threading.get_native_id())
        ret = libc.read(r, buf, 1)
        result.append((ret, ctypes.get_errno()))

    def in_read() -> bool:
        # blocked in a system call with read's arguments: (r, buf, 1), whatever the number
        call = _syscall_of(worker[0]) if worker else None
        return call is not None and call[1:4] == [r, ctypes.addressof(buf), 1]

    d, f = attached(fake)
    d.add_trigger(EventType.VM, blocking)
    try:
        d.start_worker()
        f.push(vm_event(1))
        # A signal sent before the worker is in read(2) would interrupt nothing.
        assert wait_for(in_read), "the trigger never blocked in read(2)"
        d.kill(sig)
        interrupted = wait_for(lambda: bool(result))
        if not interrupted:
            os.write(w, b"x")  # release it, so the worker can stop
        assert interrupted, "kill() left the worker blocked in its system call"
        assert result == [(-1, errno.EINTR)]
        if sig == signal.SIGINT:
            assert wait_for(lambda: not d.worker_running) and d.handled_sigint
        else:
            f.push(vm_event(2, vm=2))
            assert wait_for(lambda: d.event_count == 2) and d.worker_running
    finally:
        close(d)
        os.close(r)
        os.close(w)


def test_sigint_stops_worker_at_once_leaving_state(fake: FakeBackend) -> None:
    d, f = attached(fake)
    try:
        d.start_worker()
        t0 = time.monotonic()
        d.kill(signal.SIGINT)
        assert wait_for(lambda: not d.worker_running, timeout=2.0)
        assert time.monotonic() - t0 < 1.0
        assert d.handled_sigint and d.received_sigint
        assert d.worker_state == WorkerState.ACTIVE  # untouched, as IGT's thread exit
        f.push(vm_event(1))
        time.sleep(0.15)
        assert d.event_count == 0  # nobody reads any more
        with pytest.raises(ValueError):
            d.kill(signal.SIGUSR1)
    finally:
        close(d)


def test_events_iterator_reads_without_worker(fake: FakeBackend) -> None:
    d, f = attached(fake)
    try:
        f.push(vm_event(1), vm_event(2, vm=2))
        t0 = time.monotonic()
        got = [e.seqno for e in d.events(timeout=0.2)]
        assert got == [1, 2] and d.event_count == 2 and len(d.log) == 2
        assert time.monotonic() - t0 < 2.0
    finally:
        close(d)


def test_events_iterator_follows_running_worker(fake: FakeBackend) -> None:
    d, f = attached(fake)
    try:
        d.start_worker()
        events = d.events(timeout=5.0)

        def push() -> None:
            # the iterator subscribes to the worker on its first next(): push after that
            if wait_for(lambda: d._subscribers):
                f.push(vm_event(1), vm_event(2, vm=2))

        pusher = threading.Thread(target=push)
        pusher.start()
        got = [e.seqno for e in itertools.islice(events, 2)]
        events.close()
        pusher.join()
        assert got == [1, 2] and not d._subscribers
        assert list(d.events(timeout=0.2)) == []  # ends once nothing came for `timeout`
        d.stop_worker()
    finally:
        close(d)


def test_detached_worker_keeps_running_and_picks_up_new_fd(fake: FakeBackend) -> None:
    d, f = attached(fake)
    try:
        d.start_worker()
        f.push(vm_event(1))
        assert wait_for(lambda: d.event_count == 1)
        d.detach()
        assert d.fd == -1 and d.target_pid == 0
        time.sleep(0.15)
        g = fake.new_file()
        d.fd, d.target_pid = g.fd, os.getpid()
        g.push(vm_event(2, vm=2))
        assert wait_for(lambda: d.event_count == 2)
        d.stop_worker()
        assert d.log.seqnos() == [1, 2]
    finally:
        close(d)


def test_read_event_too_small_buffer_names_the_ioctl(fake: FakeBackend) -> None:
    d, f = attached(fake)
    try:
        f.push(vm_event(1))
        with pytest.raises(OSError) as info:
            d.read_event(ctypes.create_string_buffer(HEADER.size))
        assert info.value.errno == errno.EMSGSIZE and "READ_EVENT" in str(info.value)
        assert d.read_event().seqno == 1  # the event stayed queued
    finally:
        close(d)


def test_stage_and_attach_need_a_client() -> None:
    d = Debugger(-1)
    with pytest.raises(RuntimeError):
        d.signal_stage(1)
    with pytest.raises(RuntimeError):
        d.stop_worker()
    with pytest.raises(RuntimeError):
        d.detach()
    close(d)


def test_ptr_aliases_data() -> None:
    d = Debugger(-1, flags=3, data={"x": 1})
    assert d.ptr == {"x": 1} and d.flags == 3
    d.ptr = "y"
    assert d.data == "y"
    close(d)


def test_attach_wakes_worker_so_an_immediate_stop_still_drains(fake: FakeBackend) -> None:
    conn = fake.new_file()
    conn.push(vm_event(1), vm_event(2, vm=2))
    fresh = os.dup(conn.fd)  # what CONNECT hands out: a new fd on the connection
    master = fake.new_file(lambda request, addr: fresh if request == uapi.DRM_IOCTL_XE_EUDEBUG_CONNECT else 0)
    d = Debugger(master.fd)
    try:
        d.start_worker()
        time.sleep(0.02)               # the worker now sits in a 100 ms poll without a debug fd
        d.attach(os.getpid())
        assert d.fd == fresh and d.target_pid == os.getpid()
        d.stop_worker()                # without the wake-up this poll would time out and quit
        assert d.log.seqnos() == [1, 2]
    finally:
        close(d)


def test_a_closed_debugger_never_attaches_again(fake: FakeBackend) -> None:
    """A thread still racing attach/detach after its test closed the debugger (a failed test's
    leftover) must not leave a connection behind: it would keep the target debugged and the
    eudebug toggle busy for the tests after it."""
    conn = fake.new_file()
    connected = threading.Event()
    proceed = threading.Event()

    def on_connect(request: int, addr: int) -> int:
        connected.set()
        proceed.wait(10)                         # the debugger is closed during this CONNECT
        return os.dup(conn.fd)

    master = fake.new_file(lambda request, addr: on_connect(request, addr)
                           if request == uapi.DRM_IOCTL_XE_EUDEBUG_CONNECT else 0)
    d = Debugger(master.fd)
    outcome: list[BaseException | int] = []

    def attach() -> None:
        try:
            outcome.append(d.try_attach(os.getpid()))
        except BaseException as exc:  # noqa: BLE001 - examined below
            outcome.append(exc)

    t = threading.Thread(target=attach, daemon=True)
    t.start()
    try:
        assert connected.wait(10)
        close(d)
        proceed.set()
        t.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError), outcome
        assert d.fd == -1 and d.target_pid == 0
        with pytest.raises(RuntimeError, match="closed"):
            d.try_attach(os.getpid())
        with pytest.raises(RuntimeError, match="closed"):
            d.start_worker()
    finally:
        proceed.set()
        t.join(10)
