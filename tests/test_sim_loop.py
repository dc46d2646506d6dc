"""The simulator server's event loop (issue 8, item 14): idle connections and their closes cost
no thread, a call that sleeps leaves the loop to another thread, and a handler that holds the
loop without saying it sleeps loses it to the watchdog.  Every assertion is an ordering or a
count, never a duration."""

from __future__ import annotations

import os
import select
import socket
import threading
import time

from xe_eudebug.sim import loop as loop_mod
from xe_eudebug.sim import port

WAIT = 30.0  # seconds any step may take on a loaded machine before the test gives up


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _info_call(sock: socket.socket) -> None:
    """One OP_INFO round trip on a raw control connection (served once the server accepted it)."""
    port.send_msg(sock, port.OP_INFO)
    msg = port.recv_msg(sock, bytearray(4096))
    assert msg is not None and msg[0] == port.R_REPLY and msg[3] == 0
    port._close_fds(msg[6])


def test_idle_connections_and_their_closes_cost_no_server_thread(sim_server):
    """400 served, then idle, control connections: the server's thread count does not grow with
    them (a thread per connection would add 400), and after they all close at once an unrelated
    caller's calls are served by the same few threads."""
    srv = sim_server()
    dev = srv.open_device()
    before = _threads(srv.pid)
    socks = []
    try:
        for _ in range(400):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(WAIT)
            s.connect(srv.socket)
            socks.append(s)
        for s in socks:  # every connection accepted and served once, then left idle
            _info_call(s)
        during = _threads(srv.pid)
        assert during < before + 16, f"{during} server threads with 400 idle connections (before: {before})"
    finally:
        for s in socks:
            s.close()
    for _ in range(20):  # the unrelated caller, while and after the closes are processed
        assert port.file_info(dev)[0] == 0
    after = _threads(srv.pid)
    assert after < before + 16, f"{after} server threads after 400 closes (before: {before})"
    os.close(dev)


class _Pipes:
    """Pipes whose read ends are registered with an EventLoop; `fire(i)` makes pipe i ready."""

    def __init__(self, n: int) -> None:
        self.fds = [os.pipe() for _ in range(n)]

    def fire(self, i: int) -> None:
        os.write(self.fds[i][1], b"x")

    def close(self) -> None:
        for r, w in self.fds:
            os.close(r)
            os.close(w)


def _run_loop(handlers: list) -> tuple[loop_mod.EventLoop, _Pipes, threading.Thread]:
    loop = loop_mod.EventLoop(lambda: None, lambda: 0.5, name="test")
    pipes = _Pipes(len(handlers))
    for (r, _w), handler in zip(pipes.fds, handlers):
        def on_ready(fd: int, _mask: int, handler=handler) -> None:
            os.read(fd, 1)
            handler()
        loop.add(r, select.EPOLLIN, on_ready)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return loop, pipes, thread


def _stop(loop: loop_mod.EventLoop, pipes: _Pipes, thread: threading.Thread) -> None:
    loop.stop()
    thread.join(WAIT)
    loop.close()
    pipes.close()


def test_a_handler_that_announces_its_sleep_leaves_the_loop_to_another_thread(monkeypatch):
    """With the watchdog out of the way, a handler that calls might_sleep() and then blocks does
    not hold up the next handler: the second handler runs while the first still sleeps."""
    monkeypatch.setattr(loop_mod, "STALL", 3600.0)  # the watchdog never steps in
    release = threading.Event()
    order: list[str] = []
    second_ran = threading.Event()
    holder: list[loop_mod.EventLoop] = []

    def sleeper() -> None:
        order.append("sleeping")
        holder[0].might_sleep()
        release.wait(WAIT)
        order.append("woke")

    def other() -> None:
        order.append("other")
        second_ran.set()

    loop, pipes, thread = _run_loop([sleeper, other])
    holder.append(loop)
    try:
        pipes.fire(0)
        pipes.fire(1)
        assert second_ran.wait(WAIT), f"the loop waited for the sleeping handler: {order}"
        assert order == ["sleeping", "other"]  # while the first still sleeps
    finally:
        release.set()
        _stop(loop, pipes, thread)


def test_the_watchdog_takes_the_loop_from_a_handler_that_blocks_without_saying_so():
    """A handler that blocks without might_sleep() (a model that does not announce a sleep)
    loses the lead: the next handler runs while it is still blocked."""
    release = threading.Event()
    second_ran = threading.Event()
    order: list[str] = []

    def blocker() -> None:
        order.append("blocked")
        release.wait(WAIT)
        order.append("unblocked")

    def other() -> None:
        order.append("other")
        second_ran.set()

    loop, pipes, thread = _run_loop([blocker, other])
    try:
        pipes.fire(0)
        pipes.fire(1)
        assert second_ran.wait(WAIT), f"the loop stayed with the blocked handler: {order}"
        assert order == ["blocked", "other"]
    finally:
        release.set()
        _stop(loop, pipes, thread)


def test_blocking_read_events_park_without_a_thread_and_get_the_events_made_later(sim_server):
    """Eight threads block in READ_EVENT on one debugger fd: all eight calls park in the server
    without a server thread each; eight VM_CREATEs made afterwards each wake one of them with
    its VM event (the producer's calls complete while the readers are parked)."""
    from tests.kbhelpers import U, connect, drain, next_event, read_event_raw, seam, set_nonblock

    srv = sim_server(enable_default=True, read_event_timeout=60)
    dev = srv.open_device()
    dfd, _ = connect(dev, os.getpid())
    assert dfd >= 0
    set_nonblock(dfd)
    # discovery (a worker of its own, maybe not started yet) reports this process's one open
    # device, and nothing else: no reader may get that event instead of parking
    assert next_event(dfd, WAIT).is_("OPEN", "CREATE")
    assert drain(dfd) == []
    set_nonblock(dfd, False)
    before = _threads(srv.pid)
    results: list[tuple[int, int]] = []

    def reader() -> None:
        ret, buf = read_event_raw(dfd)
        results.append((ret, int.from_bytes(buf[4:6], "little")))

    readers = [threading.Thread(target=reader) for _ in range(8)]
    try:
        for t in readers:
            t.start()
        deadline_ok = False
        for _ in range(1500):
            if port.server_info(srv.socket)["parked"] == 8:
                deadline_ok = True
                break
            threading.Event().wait(0.02)
        assert deadline_ok, "the READ_EVENTs did not all park"
        assert _threads(srv.pid) < before + 4, "parked READ_EVENTs took server threads"
        for _ in range(8):
            vm = U.drm_xe_vm_create(flags=U.DRM_XE_VM_CREATE_FLAG_LR_MODE)
            assert seam.try_ioctl(dev, U.DRM_IOCTL_XE_VM_CREATE, vm) == 0
    finally:
        for t in readers:
            t.join(WAIT)
    assert results == [(0, U.DRM_XE_EUDEBUG_EVENT_VM)] * 8
    assert port.server_info(srv.socket)["parked"] == 0
    os.close(dfd)
    os.close(dev)


class _ReleaseKernel:
    """A kernel model that only records its releases."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.on_poll_change = None
        self.might_sleep = None

    def release(self, _file: object) -> None:
        self.released.set()


def test_a_release_scheduled_by_a_call_that_then_hands_the_loop_on_runs_at_once(tmp_path, monkeypatch):
    """A call collects a last close (it schedules the release on the leading thread, so it writes
    no wake-up) and then waits for that release, handing the loop to another thread: the new
    leader runs the release instead of sleeping in epoll until the next housekeeping round
    (pushed out of reach here).  Otherwise a close was invisible to a debugger's poll(2) for up
    to a housekeeping interval: IGT's multigpu-basic-client-many lost OPEN destroy events."""
    from xe_eudebug.sim import server as server_mod
    from xe_eudebug.sim.files import _Entry

    monkeypatch.setattr(loop_mod, "STALL", 3600.0)  # the watchdog never steps in
    kernel = _ReleaseKernel()
    server = server_mod.Server(str(tmp_path / "sim.sock"), kernel=kernel)
    mine, theirs = socket.socketpair()
    entry = _Entry(mine, 1, object(), 0, port.KIND_DEVICE)
    server.by_fd[entry.fd] = entry
    server.epoll.register(entry.fd, select.EPOLLIN)
    waited: list[bool] = []

    def call() -> None:  # what _dispatch does with an end-of-file it collected
        server._schedule_release(entry)
        server.loop.might_sleep()
        waited.append(kernel.released.wait(WAIT))

    r, w = os.pipe()
    server.loop.add(r, select.EPOLLIN, lambda fd, _mask: (os.read(fd, 1), call()))
    server._next_housekeeping = time.monotonic() + 3600.0
    server.loop.start()
    try:
        os.write(w, b"x")
        assert kernel.released.wait(WAIT), "the release waited for the next housekeeping round"
    finally:
        server.loop.stop()
        theirs.close()
        os.close(r)
        os.close(w)
