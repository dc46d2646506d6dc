"""The simulator must not become a way around the kernel's rules (issue 8, items 1-6).

Every test here that needs another user drops privileges in a forked child (uid 65534), so they
need root; they skip without it.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from xe_eudebug.sim import port, procmem
from xe_eudebug.sim import kernel as K
from tests.test_sim_kernel import Env, FakeCaller, op, ufence_sync, types
from tests.test_sim_transport import FAKE_ECHO, FAKE_KERNEL, FAKE_POKE, run_child
from waiting import wait_for

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges and recycling pids need root")
NOBODY = 65534


def _drop_privileges() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


@pytest.fixture(scope="module")
def fake(sim_server):
    return sim_server(kernel=FAKE_KERNEL, enable_default=True, idle_exit=0)


# ------------------------------------------------------------------------------------------------
# 1. identity per call

@needs_root
def test_a_control_connection_handed_to_another_process_acts_as_that_process(fake):
    """A child that drops to uid 65534 and keeps using its root parent's control connection
    is served as itself: the call reports the child's pid and writes the child's memory."""
    dev = fake.open_device()
    link = port.connect(fake.socket)
    sock, _buf = link.thread_conn()
    inherited = os.dup(sock.fileno())          # survives the port's own after-fork cleanup
    secret = ctypes.create_string_buffer(b"parent-secret!!!", 16)
    try:
        def child() -> int:
            _drop_privileges()
            s = socket.socket(fileno=inherited)
            arg = bytes(16)
            port.send_msg(s, port.OP_IOCTL, 0, FAKE_ECHO, 0, 0, arg, dev)
            kind, _f, pid, err, _c, _p, fds = port.recv_msg(s, bytearray(4096))
            port._close_fds(fds)
            if kind != port.R_REPLY or err or pid != os.getpid():
                print(f"echo answered pid {pid} err {err}; this is {os.getpid()}", file=sys.stderr)
                return 1
            poke = struct.pack("<QQ", ctypes.addressof(secret), 0x41)
            port.send_msg(s, port.OP_IOCTL, 0, FAKE_POKE, 0, 0, poke, dev)
            kind, _f, _a, err, _c, _p, fds = port.recv_msg(s, bytearray(4096))
            port._close_fds(fds)
            if kind != port.R_REPLY or err:
                return 2
            return 0 if secret.raw == b"A" * 16 else 3   # written into this process

        assert run_child(child) == 0
        assert secret.raw == b"parent-secret!!!"        # never into the parent's memory
    finally:
        os.close(inherited)
        os.close(dev)


# ------------------------------------------------------------------------------------------------
# 2. pid reuse

def _fork_with_pid(pid: int, body) -> int:
    """Fork a child that gets `pid` (through ns_last_pid); it runs body() and exits."""
    for _attempt in range(200):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        child = os.fork()
        if child == 0:
            code = 1
            try:
                code = body() or 0
            finally:
                os._exit(code)
        if child == pid:
            return child
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    pytest.skip(f"other processes kept taking pid {pid}: could not recycle it")


def _sleeper() -> tuple[int, int]:
    """A child blocked until its pipe closes; returns (pid, write end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    return pid, w


@needs_root
def test_a_recycled_pid_never_inherits_a_dead_process_fences_or_debugger():
    env = Env()
    page = mmap.mmap(-1, 4096, mmap.MAP_PRIVATE)
    fence_addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    target, stop = _sleeper()
    as_target = FakeCaller(pid=target)
    f = env.open(caller=as_target)
    d = env.debugger(f, pid=target)
    env.caller = as_target                      # the bind is the target's (its user fence)
    vm = env.vm_create(f)
    bo = env.bo_create(f)
    assert env.bind(f, vm, [op(K.OP_MAP, 0x100000, 4096, obj=bo)], ufence_sync(fence_addr, 0xDEAD), 1) == 0
    env.caller = FakeCaller()
    assert (K.EV_VM_BIND_UFENCE, 1 | 8) in types(env.events(d))   # the fence is held
    os.close(stop)
    os.waitpid(target, 0)                       # the target has exited and is reaped

    report_r, report_w = os.pipe()
    ask_r, ask_w = os.pipe()

    def recycled() -> int:                      # a new process (root) that got the same pid
        os.close(ask_w)
        os.read(ask_r, 1)
        os.write(report_w, page[:8])
        return 0

    newcomer = _fork_with_pid(target, recycled)
    try:
        # its files are not the dead target's: the old debugger hears nothing
        env.open(caller=FakeCaller(pid=newcomer))
        assert env.events(d) == []
        # the held fence is released with the debugger, and written nowhere
        env.k.release(d)
        os.write(ask_w, b"x")
        assert os.read(report_r, 8) == bytes(8)
        # a new debugger of the newcomer is not refused as "already debugged"
        d2, _ = env.connect(env.open(), pid=newcomer)
        assert isinstance(d2, K.DebuggerFile)
    finally:
        os.close(ask_w)                         # lets the newcomer exit whatever happened
        os.waitpid(newcomer, 0)
        for fd in (report_r, report_w, ask_r):
            os.close(fd)


def test_a_task_of_an_exited_process_refuses_memory_access():
    value = ctypes.c_uint64(7)
    pid, stop = _sleeper()
    task = procmem.task_of(pid)
    assert task.alive() and task is procmem.task_of(pid)
    assert struct.unpack("<Q", task.read(ctypes.addressof(value), 8))[0] == 7
    os.close(stop)
    os.waitpid(pid, 0)
    assert not task.alive()
    with pytest.raises(OSError) as exc:
        task.write(ctypes.addressof(value), bytes(8))
    assert exc.value.errno == errno.ESRCH
    assert procmem.task_of(pid) is not task


# ------------------------------------------------------------------------------------------------
# 3. userptr: the binder's memory

def test_userptr_bound_through_another_process_file_maps_the_binder_memory():
    env = Env()
    page = mmap.mmap(-1, 4096, mmap.MAP_PRIVATE)
    page[:16] = b"opener's bytes.."
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    binder = os.fork()
    if binder == 0:
        page[:16] = b"binder's bytes.."
        os.close(w)
        os.write(ready_w, b"x")
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"              # its bytes are in place
    os.close(ready_r)
    try:
        f = env.open()                              # opened by this process
        d = env.debugger(f)
        vm = env.vm_create(f)
        env.caller = FakeCaller(pid=binder)         # ... bound by the child
        addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
        assert env.bind(f, vm, [op(K.OP_MAP_USERPTR, 0x200000, 4096, offset=addr)]) == 0
        env.caller = FakeCaller()
        env.events(d)
        vf, _ = env.call(d, K.DRM_XE_EUDEBUG_IOCTL_VM_OPEN, env.buf(struct.pack("<QQQQQ", 0, 1, 1, 0, 0)))
        assert isinstance(vf, K.VmFile)
        assert env.k.pread(vf, env.caller, 16, 0x200000) == b"binder's bytes.."
    finally:
        os.close(w)
        os.waitpid(binder, 0)


# ------------------------------------------------------------------------------------------------
# 4. enable_eudebug is root's

@needs_root
def test_enable_toggle_is_refused_to_an_unprivileged_process(sim_server):
    srv = sim_server(enable_default=False)
    dev = srv.open_device()
    try:
        def child() -> int:
            _drop_privileges()
            try:
                port.set_enabled(dev, True)
            except OSError as exc:
                return 0 if exc.errno == errno.EACCES else 2
            return 1

        assert run_child(child) == 0
        assert port.get_enabled(dev) is False
        assert port.set_enabled(dev, True) is False     # root may
        assert port.get_enabled(dev) is True
    finally:
        os.close(dev)


# ------------------------------------------------------------------------------------------------
# 5. non-dumpable targets

PR_SET_DUMPABLE = 4


@needs_root
def test_connect_to_a_non_dumpable_process_of_the_same_user_is_eacces(sim_server):
    from tests.kbhelpers import connect

    srv = sim_server(enable_default=True)
    libc = ctypes.CDLL(None, use_errno=True)
    targets = {}
    pipes = []
    for dumpable in (0, 1):
        r, w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            _drop_privileges()
            libc.prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0)
            os.write(ready_w, b"x")
            os.read(r, 1)
            os._exit(0)
        assert os.read(ready_r, 1) == b"x"
        targets[dumpable] = pid
        pipes += [r, w, ready_r, ready_w]
    try:
        def debugger() -> int:
            for fd in pipes:
                os.close(fd)
            dev = srv.open_device()
            _drop_privileges()
            libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
            refused, _ = connect(dev, targets[0])
            allowed, _ = connect(dev, targets[1])
            print(f"non-dumpable: {refused}, dumpable: {allowed}", file=sys.stderr)
            return 0 if refused == -errno.EACCES and allowed >= 0 else 1

        assert run_child(debugger) == 0
    finally:
        for fd in pipes:
            os.close(fd)
        for pid in targets.values():
            os.waitpid(pid, 0)


# ------------------------------------------------------------------------------------------------
# 6. --socket PATH removes only a stale socket of ours

def _run_server(path: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("XE_EUDEBUG_SIM_SOCKET", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root
    return subprocess.run([sys.executable, "-m", "xe_eudebug.sim", "--socket", path, "--idle-exit", "0.2"],
                          env=env, capture_output=True, timeout=60)


def test_socket_option_never_removes_a_file_that_is_not_a_stale_socket(tmp_path):
    victim = tmp_path / "precious"
    victim.write_bytes(b"keep me")
    done = _run_server(str(victim))
    assert done.returncode != 0 and b"not a socket" in done.stderr
    assert victim.read_bytes() == b"keep me"
    # a stale socket of ours (nobody listening) is replaced
    stale = tmp_path / "stale"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    assert _run_server(str(stale)).returncode == 0


def _fill_backlog(path: str) -> list[socket.socket]:
    """Connections queued on a listener that does not accept, until its backlog is full."""
    queued = []
    while True:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect(path)
        except BlockingIOError:
            c.close()
            break
        queued.append(c)
    return queued


def test_a_busy_live_server_is_not_taken_over(tmp_path):
    path = str(tmp_path / "busy")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)                            # never accepts: its backlog fills
    ino = os.stat(path).st_ino
    queued = _fill_backlog(path)
    try:
        done = _run_server(path)
        assert done.returncode != 0
        assert os.path.exists(path) and os.stat(path).st_ino == ino
    finally:
        for c in queued:
            c.close()
        listener.close()


# ------------------------------------------------------------------------------------------------
# 9. connect bursts

def test_connect_waits_out_a_full_backlog_within_its_deadline(tmp_path):
    path = str(tmp_path / "burst")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    queued = _fill_backlog(path)
    result: list = []

    def client() -> None:
        try:
            sock, pid = port._path_connect(path, timeout=10.0)
            result.append(pid)
            sock.close()
        except OSError as exc:
            result.append(exc)

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.3)                                # the client meets a full backlog
    accepted = [listener.accept()[0] for _ in queued]  # the server catches up
    t.join(10)
    try:
        assert result == [os.getpid()]
    finally:
        for c in queued + accepted:
            c.close()
        while True:                                # the client's own connection
            listener.setblocking(False)
            try:
                listener.accept()[0].close()
            except BlockingIOError:
                break
        listener.close()


# ------------------------------------------------------------------------------------------------
# 7, 8. bounded allocation; large copies in caller mode

def _hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_huge_copy_over_a_small_buffer_faults_without_allocating_it(sim_server):
    from tests.kbhelpers import U, seam

    srv = sim_server()
    dev = srv.open_device()
    try:
        small = mmap.mmap(-1, 1 << 20)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(small))
        before = _hwm_mib(srv.pid)
        arg = U.drm_xe_debug_metadata_create(type=0, user_addr=addr, len=(512 << 20))
        assert seam.try_ioctl(dev, U.DRM_IOCTL_XE_DEBUG_METADATA_CREATE, arg) == -errno.EFAULT
        assert _hwm_mib(srv.pid) - before < 64, "the server allocated the announced length"
    finally:
        os.close(dev)


def test_a_header_announcing_a_huge_payload_allocates_nothing_before_it_arrives(sim_server):
    srv = sim_server(kernel=FAKE_KERNEL)
    before = _hwm_mib(srv.pid)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(srv.socket)
    try:
        s.sendall(port.HEADER.pack(256 << 20, port.OP_INFO, 0, 0, 0, 0) + bytes(4096))
        time.sleep(0.5)                                     # the server has read what there is
        assert _hwm_mib(srv.pid) - before < 64
    finally:
        s.close()


def test_caller_mode_copies_large_ranges_in_bounded_pieces(sim_server):
    from tests.test_sim_transport import FAKE_PEEK

    srv = sim_server(kernel=FAKE_KERNEL, memory_access="caller")
    dev = srv.open_device()
    size = 3 << 20
    data = mmap.mmap(-1, size)
    data[:] = b"\x01" * size
    base = ctypes.addressof(ctypes.c_char.from_buffer(data))
    sock, buf = port.connect(srv.socket).thread_conn()
    asked = []
    try:
        port.send_msg(sock, port.OP_IOCTL, 0, FAKE_PEEK, 0, 0, struct.pack("<QQ", base, size), dev)
        while True:
            kind, _f, a, b, _c, _p, fds = port.recv_msg(sock, buf)
            port._close_fds(fds)
            if kind == port.R_REPLY:
                break
            assert kind == port.R_MEMREAD
            asked.append(b)
            port.send_msg(sock, port.M_DATA, 0, 0, 0, 0, data[a - base:a - base + b])
        assert (a, b) == (size, 0)                          # every byte read, no error
        assert sum(asked) == size and max(asked) <= 1 << 20
    finally:
        os.close(dev)


# ------------------------------------------------------------------------------------------------
# 11, 12. a caller killed in a sleeping call

def _blocked_child(body) -> int:
    """Fork a child that runs body() (a call that sleeps) and reports through a pipe just before."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            body(lambda: os.write(w, b"x"))
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    time.sleep(0.3)                                  # now asleep in the call
    return pid



def test_a_debugger_killed_in_read_event_is_detached_at_once(sim_server):
    from tests.kbhelpers import connect, read_event_raw

    srv = sim_server(enable_default=True, read_event_timeout=120)
    target, stop = _sleeper()
    dev = srv.open_device()
    try:
        def debugger(ready) -> None:
            dfd, _ = connect(dev, target)
            assert dfd >= 0
            ready()
            read_event_raw(dfd)                       # sleeps: no event will come

        child = _blocked_child(debugger)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)

        def attachable() -> bool:
            dfd, _ = connect(dev, target)
            if dfd >= 0:
                os.close(dfd)
            return dfd >= 0

        assert wait_for(attachable, 10.0), "the killed debugger stayed attached (EBUSY)"
    finally:
        os.close(dev)
        os.close(stop)
        os.waitpid(target, 0)


def test_a_caller_interrupted_in_an_endless_wait_user_fence_frees_its_server_thread(sim_server):
    """SIGINT in a WAIT_USER_FENCE with an infinite timeout: the caller's side abandons the call
    (KeyboardInterrupt drops the thread's connection) while the process lives on, its memory still
    readable; the server must not keep waiting for it (its parked call ends)."""
    from tests.kbhelpers import U, seam

    srv = sim_server()
    dev = srv.open_device()
    parked = lambda: port.server_info(srv.socket)["parked"]  # noqa: E731  calls asleep in the server
    stop_r, stop_w = os.pipe()
    try:
        assert parked() == 0

        def waiter(ready) -> None:
            os.close(stop_w)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            cell = ctypes.c_uint64(0)
            arg = U.drm_xe_wait_user_fence(addr=ctypes.addressof(cell), op=U.DRM_XE_UFENCE_WAIT_OP_EQ,
                                           value=1, mask=0xFFFFFFFFFFFFFFFF, timeout=-1)
            ready()
            try:
                seam.try_ioctl(dev, U.DRM_IOCTL_XE_WAIT_USER_FENCE, arg)
            except KeyboardInterrupt:
                os.read(stop_r, 1)                   # alive, until the test is done

        child = _blocked_child(waiter)
        try:
            parks = wait_for(lambda: parked() == 1, 10.0)
            os.kill(child, signal.SIGINT if parks else signal.SIGKILL)
            assert parks, "the call did not park in the server"
            assert wait_for(lambda: parked() == 0, 10.0), "the server still waits in the abandoned call"
        finally:
            os.close(stop_w)
            stop_w = -1
            os.waitpid(child, 0)
    finally:
        os.close(dev)
        os.close(stop_r)
        if stop_w >= 0:
            os.close(stop_w)


# ------------------------------------------------------------------------------------------------
# 10. fd exhaustion in the server

@needs_root
def test_a_full_server_fd_table_fails_connect_with_emfile_and_leaves_nothing_behind(sim_server):
    import resource

    from tests.kbhelpers import connect

    srv = sim_server(enable_default=True)
    target, stop = _sleeper()
    dev = srv.open_device()
    saved = resource.prlimit(srv.pid, resource.RLIMIT_NOFILE)
    try:
        for room in (0, 1, 2, 3):                   # the call's fd, the new file's socketpair
            used = len(os.listdir(f"/proc/{srv.pid}/fd"))
            resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (used + room, saved[1]))
            ret, _ = connect(dev, target)
            resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, saved)
            if ret >= 0:
                os.close(ret)                       # enough room: attached, and detached again
            else:
                assert ret == -errno.EMFILE, f"room for {room} fds: {errno.errorcode.get(-ret, ret)}"

            def attachable() -> bool:
                again, _ = connect(dev, target)
                if again >= 0:
                    os.close(again)
                return again >= 0

            # no ghost attachment: a CONNECT works (at once after a failure, after the release
            # of the closed fd after a success), and debugging can be switched off after it
            assert attachable() if ret < 0 else wait_for(attachable, 5.0), f"room for {room} fds"
            assert wait_for(lambda: _disable_enable(dev), 5.0)
    finally:
        resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, saved)
        os.close(dev)
        os.close(stop)
        os.waitpid(target, 0)


def _disable_enable(dev: int) -> bool:
    try:
        port.set_enabled(dev, False)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise
    port.set_enabled(dev, True)
    return True


# ------------------------------------------------------------------------------------------------
# 14, 15. prompt release in an idle server; the documented release wait

def test_an_idle_server_closes_the_memory_of_freed_buffer_objects(sim_server):
    from tests.kbhelpers import U, seam

    srv = sim_server()

    def fds() -> int:
        """The server's open BO memfds (its other fds come and go with its threads and calls)."""
        n = 0
        for fd in os.listdir(f"/proc/{srv.pid}/fd"):
            try:
                n += os.readlink(f"/proc/{srv.pid}/fd/{fd}").startswith("/memfd:xe-bo-")
            except FileNotFoundError:
                pass
        return n

    dev = srv.open_device()
    baseline = fds()
    handles = []
    for _ in range(8):
        arg = U.drm_xe_gem_create(size=1 << 16, placement=1, cpu_caching=U.DRM_XE_GEM_CPU_CACHING_WB)
        assert seam.try_ioctl(dev, U.DRM_IOCTL_XE_GEM_CREATE, arg) == 0
        handles.append(int(arg.handle))
    assert fds() == baseline + 8
    for h in handles:
        assert seam.try_ioctl(dev, U.DRM_IOCTL_GEM_CLOSE, U.drm_gem_close(handle=h)) == 0
    try:
        # no further call: the server frees them on its own
        assert wait_for(lambda: fds() <= baseline, 10.0), f"{fds() - baseline} memfds still open"
    finally:
        os.close(dev)


def test_the_documented_release_wait_is_the_one_in_the_code():
    from xe_eudebug.sim.server import RELEASE_SYNC_WAIT

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "simulator.md")) as f:
        text = " ".join(f.read().split())
    assert f"waits (up to {RELEASE_SYNC_WAIT:g} s" in text


def test_an_exited_but_unreaped_process_keeps_its_task():
    pid, stop = _sleeper()
    task = procmem.task_of(pid)
    os.close(stop)                                 # it exits; not reaped yet: a zombie
    assert wait_for(lambda: not task.alive(), 5.0)
    assert procmem.task_of(pid) is task            # same process: its pid cannot be reused yet
    os.waitpid(pid, 0)
    gone = procmem.task_of(pid)
    assert gone is not task and gone.fd < 0 and not gone.alive()
