"""The numbered observable behaviours of kernel-behaviour.md §14, checked with raw ioctls.

Every test names its behaviour number and quotes it.  Only the system-call seam, the uapi structs
and device opening are used (see tests/kbhelpers.py); debuggees are forked processes driven
step by step, so the same tests run against the simulator and a real Xe device.

    python3 -m pytest tests/test_kernel_behaviour.py                      # the test session's simulator
    XE_EUDEBUG_DEVICE=/dev/dri/renderD128 python3 -m pytest tests/test_kernel_behaviour.py

On hardware the tests that need a simulator configured with short READ_EVENT/fifo timeouts or two
devices are skipped; everything else runs unchanged (debugging is enabled through the sysfs toggle,
which needs the permission to write it).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import select
import struct
import time

import pytest

from kbhelpers import (EV, FL, HDR_SIZE, LR, Debuggee, U, Actions, ack, attach, close_fd, connect,
                       dead_pid, decode, drain, enable_eudebug, eu_control, expect_no_event, find_engine,
                       next_event, open_device, poll_mask, read_event_raw, read_metadata, seam, track,
                       tracked_fds, try_read, vm_open, wait_discovery)

EINVAL, ENOENT, EBUSY = -errno.EINVAL, -errno.ENOENT, -errno.EBUSY
POLLIN, POLLHUP, POLLERR = select.POLLIN, select.POLLHUP, select.POLLERR
CREATE, DESTROY, STATE_CHANGE, NEED_ACK = FL["CREATE"], FL["DESTROY"], FL["STATE_CHANGE"], FL["NEED_ACK"]
READ = U.DRM_XE_EUDEBUG_EVENT_READ
RENDER, COMPUTE, COPY = U.DRM_XE_ENGINE_CLASS_RENDER, U.DRM_XE_ENGINE_CLASS_COMPUTE, U.DRM_XE_ENGINE_CLASS_COPY
MAP, UNMAP, UNMAP_ALL, PREFETCH = (U.DRM_XE_VM_BIND_OP_MAP, U.DRM_XE_VM_BIND_OP_UNMAP,
                                   U.DRM_XE_VM_BIND_OP_UNMAP_ALL, U.DRM_XE_VM_BIND_OP_PREFETCH)
SZ = 0x10000  # BO / mapping granule (covers 64 KiB minimum alignment)
ON_HARDWARE = os.environ.get("XE_EUDEBUG_DEVICE", "").startswith("/")


# --- fixtures ----------------------------------------------------------------------------------

# `fd` and a few tests enable eudebug on the device; the files after this one must not inherit that
pytestmark = pytest.mark.usefixtures("eudebug_as_found")


@pytest.fixture(autouse=True)
def _close_leftovers():
    """Close every device/debugger/vm fd a test left open (a failed test must not leave a
    connection attached for the next one)."""
    before = tracked_fds()
    yield
    for fd in sorted(tracked_fds() - before):
        try:
            close_fd(fd)
        except OSError:
            pass


@pytest.fixture
def fd():
    """A device fd of the test process with eudebug enabled."""
    dev = track(open_device())
    enable_eudebug(dev, True)
    yield dev


@pytest.fixture
def child():
    """A forked debuggee; reaped at the end, its failure reported."""
    with Debuggee() as d:
        yield d


@pytest.fixture
def child2():
    with Debuggee() as d:
        yield d


@pytest.fixture
def local(fd):
    """The debuggee actions run directly in the test process (for ioctls that need no debugger)."""
    return Actions()


@pytest.fixture(scope="module")
def _short_sim_handle(sim_server):
    if ON_HARDWARE:
        pytest.skip("needs a simulator instance with short READ_EVENT/fifo timeouts "
                    "(kernel: 5 s / 25 s), which real hardware cannot be configured for")
    return sim_server(read_event_timeout=0.5, fifo_timeout=0.5, fifo_retry=0.05, enable_default=True)


@pytest.fixture(scope="module")
def _two_device_handle(sim_server):
    if ON_HARDWARE:
        pytest.skip("needs a simulator instance with two devices")
    return sim_server(devices=2, enable_default=True)


@pytest.fixture
def two_devices(_two_device_handle, monkeypatch):
    """Point device opening at a private simulator with devices sim:0 and sim:1."""
    monkeypatch.setenv("XE_EUDEBUG_SIM_SOCKET", _two_device_handle.socket)
    monkeypatch.setenv("XE_EUDEBUG_DEVICE", "sim")
    return _two_device_handle


@pytest.fixture
def short_sim(_short_sim_handle, monkeypatch):
    """Point device opening (here and in debuggees forked later) at a private simulator with
    read_event_timeout = fifo_timeout = 0.5 s."""
    monkeypatch.setenv("XE_EUDEBUG_SIM_SOCKET", _short_sim_handle.socket)
    monkeypatch.setenv("XE_EUDEBUG_DEVICE", "sim")
    return _short_sim_handle


# --- helpers -------------------------------------------------------------------------------------

def eu_class(fd: int) -> int:
    for cls in (RENDER, COMPUTE):
        if find_engine(fd, cls) is not None:
            return cls
    pytest.skip("device has no render or compute engine")


def live(fd: int, child: Debuggee):
    """Connect to `child`, then have it open the device: (debugger fd, child's device fd,
    client handle from the OPEN CREATE event)."""
    dfd = attach(fd, child.pid)
    c = child.do("open")
    ev = next_event(dfd)
    assert ev.is_("OPEN", "CREATE"), ev
    return dfd, c, ev.client_handle


def live_vm(fd: int, child: Debuggee, flags: int = LR):
    dfd, c, ch = live(fd, child)
    ret, vm = child.do("vm_create", c, flags)
    assert ret == 0, f"DRM_IOCTL_XE_VM_CREATE: {errno.errorcode.get(-ret, ret)}"
    vh = None
    if flags & LR:
        ev = next_event(dfd)
        assert ev.is_("VM", "CREATE"), ev
        vh = ev.vm_handle
    return dfd, c, ch, vm, vh


def make_bo(child: Debuggee, c: int, size: int = 2 * SZ) -> int:
    ret, bo = child.do("bo_create", c, size)
    assert ret == 0, f"DRM_IOCTL_XE_GEM_CREATE: {errno.errorcode.get(-ret, ret)}"
    return bo


def sentinel(child: Debuggee, dfd: int, c: int) -> None:
    """Create an LR VM and assert that the very next event is its VM CREATE (proving nothing
    was emitted since the last event read)."""
    ret, _ = child.do("vm_create", c, LR)
    assert ret == 0
    ev = next_event(dfd)
    assert ev.is_("VM", "CREATE"), f"expected the sentinel VM CREATE, got {ev!r}"


def debuggable_queue(fd: int, child: Debuggee):
    """Live: client, LR VM, debuggable exec queue. Returns (dfd, c, ch, vm, vh, eq, EXEC_QUEUE event)."""
    cls = eu_class(fd)
    dfd, c, ch, vm, vh = live_vm(fd, child)
    ret, eq = child.do("exec_queue_create", c, vm, cls, 1)
    assert ret == 0, f"DRM_IOCTL_XE_EXEC_QUEUE_CREATE: {errno.errorcode.get(-ret, ret)}"
    ev = next_event(dfd)
    assert ev.is_("EXEC_QUEUE", "CREATE"), ev
    return dfd, c, ch, vm, vh, eq, ev


SHADER_BATCH, SHADER_TARGET = 0x100000, 0x100000 + SZ   # one BO: the batch, then the target
SHADER_X, SHADER_Y = 4, 2                                 # thread groups: one thread each
SHADER_THREADS = SHADER_X * SHADER_Y
SHADER_CANARY, SHADER_END = 0x01010101, 0xDEADCA11
SHADER_PITCH = 64 * 4                                     # 64 pixels of 32 bits
SHADER_STEERING = SHADER_Y * SHADER_PITCH                 # the dword the loop compares


def running_shader(fd: int, child: Debuggee):
    """A debuggable queue running SHADER_THREADS EU threads that loop until the steering dword
    (row SHADER_Y of the target) holds SHADER_END, with IGT's online SIP (write the AIP, wait
    for the debugger, return).  Returns (dfd, c, ch, eq, EXEC_QUEUE event, last seqno, bo) once
    every thread has written its canary (the threads run)."""
    from xe_eudebug.gpgpu import Target, gpgpu_batch
    from xe_eudebug.isa.gpgpu import GpgpuShader
    shader = GpgpuShader()
    shader.write_dword(SHADER_CANARY, 0)
    shader.label(0)
    shader.jump_neq(0, SHADER_Y, SHADER_END)
    shader.eot()
    sip = GpgpuShader()
    sip.write_aip(0)
    sip.wait()
    sip.end_system_routine(True)
    dfd, c, ch, vm, vh, eq, qev = debuggable_queue(fd, child)
    bo = make_bo(child, c)
    batch = gpgpu_batch(SHADER_BATCH, Target(SHADER_TARGET, SHADER_PITCH // 4, SHADER_Y + 1),
                        SHADER_X, SHADER_Y, shader, sip)
    assert child.do("bo_write", c, bo, 2 * SZ, 0, batch) == 0
    assert child.do("bind", c, vm, [dict(obj=bo, addr=SHADER_BATCH, range=2 * SZ)]) == 0
    evs = drain(dfd)
    assert [e.name for e in evs] == ["VM_BIND", "VM_BIND_OP"], evs
    assert child.do("exec", c, eq, SHADER_BATCH) == 0
    deadline = time.monotonic() + 30
    while True:
        rows = child.do("bo_read", c, bo, 2 * SZ, SZ, SHADER_Y * SHADER_PITCH)
        canaries = [struct.unpack_from("<I", rows, y * SHADER_PITCH + 4 * x)[0]
                    for y in range(SHADER_Y) for x in range(SHADER_X)]
        if all(v == SHADER_CANARY for v in canaries):
            break
        assert time.monotonic() < deadline, f"the shader did not start: {canaries}"
        time.sleep(0.01)
    return dfd, c, ch, eq, qev, evs[-1].seqno, bo


def dss_count(fd: int, gt_id: int = 0) -> int:
    """Enabled DSS of GT `gt_id` (geometry | compute masks of DEVICE_QUERY GT_TOPOLOGY)."""
    q = U.drm_xe_device_query(query=U.DRM_XE_DEVICE_QUERY_GT_TOPOLOGY)
    seam.ioctl(fd, U.DRM_IOCTL_XE_DEVICE_QUERY, q)
    buf = (ctypes.c_uint8 * q.size)()
    q.data = ctypes.addressof(buf)
    seam.ioctl(fd, U.DRM_IOCTL_XE_DEVICE_QUERY, q)
    raw, pos, mask = bytes(buf), 0, 0
    while pos + 8 <= len(raw):
        gt, kind, n = struct.unpack_from("<HHI", raw, pos)
        if gt == gt_id and kind in (U.DRM_XE_TOPO_DSS_GEOMETRY, U.DRM_XE_TOPO_DSS_COMPUTE):
            mask |= int.from_bytes(raw[pos + 8:pos + 8 + n], "little")
        pos += 8 + n
    return bin(mask).count("1")


def reconnect(fd: int, pid: int) -> int:
    """Connect again right after the last close of the previous debugger fd (close(2) ran the
    release before it returned, so no retry is needed)."""
    return connect(fd, pid)[0]


def errno_of(call) -> int:
    try:
        return call()
    except OSError as exc:
        return -exc.errno


# === 1. connect ================================================================================

def test_b01_connect_extensions_einval(fd, child):
    """1. Connect with `extensions != 0` fails EINVAL."""
    assert connect(fd, child.pid, extensions=0xFFFFFFFFFFFFFFFF)[0] == EINVAL
    assert connect(fd, child.pid, extensions=1)[0] == EINVAL


def test_b02_connect_pid_zero_einval(fd):
    """2. Connect with `pid == 0` fails EINVAL."""
    assert connect(fd, 0)[0] == EINVAL


def test_b03_connect_flags_einval(fd, child):
    """3. Connect with `flags != 0` fails EINVAL."""
    assert connect(fd, child.pid, flags=1)[0] == EINVAL
    assert connect(fd, child.pid, flags=0x80000000)[0] == EINVAL


def test_b04_connect_version_checked_and_reads_back_1(fd, child):
    """4. Connect with `version` other than 0 or 1 fails EINVAL; on any later outcome `version`
    reads back 1."""
    assert connect(fd, child.pid, version=0xFFFFFFFF)[0] == EINVAL
    assert connect(fd, child.pid, version=2)[0] == EINVAL
    ret, arg = connect(fd, dead_pid(), version=0)
    assert ret == ENOENT and arg.version == 1
    ret, arg = connect(fd, child.pid, version=0)
    assert ret >= 0 and arg.version == 1
    assert connect(fd, child.pid, version=1)[1].version == 1  # EBUSY, still reads back 1
    close_fd(ret)
    ret = reconnect(fd, child.pid)
    assert ret >= 0  # version 1 is accepted too


def test_b05_connect_dead_pid_enoent(fd):
    """5. Connect to a pid that does not exist fails ENOENT."""
    assert connect(fd, dead_pid())[0] == ENOENT


def test_b05_connect_pid_truncated_to_32_bits(fd, child):
    """5. Connect to a pid that does not exist fails ENOENT.  (The pid is truncated to a 32-bit
    pid_t before the lookup, §1.A step 9: high bits do not make it unknown.)"""
    ret, _ = connect(fd, child.pid | 1 << 32)
    assert ret >= 0


def test_b07_connect_by_thread_id_targets_thread_group(fd, child):
    """7. A second connect to the same thread group on the same device fails EBUSY; after the
    first debugger fd is closed a new connect succeeds.  (Any thread id of the target names its
    whole thread group, §1.A step 9.)"""
    tid = child.do("spawn_thread")
    assert tid != child.pid
    dfd = attach(fd, tid)
    assert connect(fd, child.pid)[0] == EBUSY
    child.do("open")  # opened by the main thread: the same thread group
    assert next_event(dfd).is_("OPEN", "CREATE")


def test_b07_uniqueness_is_per_device(two_devices, child):
    """7. A second connect to the same thread group on the same device fails EBUSY; after the
    first debugger fd is closed a new connect succeeds.  (On another device the same target can
    be debugged at the same time; each connection sees only its device's clients.)"""
    d0, d1 = track(open_device("sim:0")), track(open_device("sim:1"))
    dfd0 = attach(d0, child.pid)
    dfd1 = attach(d1, child.pid)
    assert connect(d1, child.pid)[0] == EBUSY
    child.do("open", "sim:1")
    ev = next_event(dfd1)
    assert ev.is_("OPEN", "CREATE") and ev.seqno == 1
    expect_no_event(dfd0)
    child.do("open", "sim:0")
    assert next_event(dfd0).is_("OPEN", "CREATE")
    expect_no_event(dfd1)


def test_b06_connect_without_ptrace_permission_eacces(fd, child, child2):
    """6. Connect without ptrace-read permission over the target fails EACCES."""
    nobody = 65534
    if os.getuid() == 0:
        # unprivileged user -> root's process: EACCES
        child2.do("setuid", nobody)
        assert child2.do("connect_to", child.pid) == -errno.EACCES
        # user -> own process: allowed
        assert child2.do("connect_to", child2.pid) >= 0
        # root -> user's process: allowed
        ret = reconnect(fd, child2.pid)  # child2's own connection was just closed
        assert ret >= 0
        close_fd(ret)
    else:
        st = os.stat("/proc/1")
        if st.st_uid == os.getuid():
            pytest.skip("needs root (to drop privileges) or a pid 1 owned by another user")
        assert connect(fd, 1)[0] == -errno.EACCES


def test_b07_second_connect_ebusy_until_closed(fd, child):
    """7. A second connect to the same thread group on the same device fails EBUSY; after the
    first debugger fd is closed a new connect succeeds."""
    first = attach(fd, child.pid)
    assert connect(fd, child.pid)[0] == EBUSY
    other = track(open_device())  # another DRM file of the same device: still the same device
    assert connect(other, child.pid)[0] == EBUSY
    close_fd(first)
    # close(2) runs the release (disconnect) before it returns: no retry needed, every time
    failures = 0
    for _ in range(40):
        ret, _ = connect(fd, child.pid)
        if ret < 0:
            failures += 1
            continue
        close_fd(ret)
    assert failures == 0, f"{failures} of 40 connects right after closing the previous debugger fd failed EBUSY"


def test_b08_disabled_connect_enodev_before_arg_checks(fd, child):
    """8. With debugging disabled via sysfs, connect fails ENODEV even with otherwise invalid
    arguments."""
    enable_eudebug(fd, False)
    try:
        assert connect(fd, 0, extensions=~0 & 0xFFFFFFFFFFFFFFFF, flags=1, version=7)[0] == -errno.ENODEV
        assert connect(fd, child.pid)[0] == -errno.ENODEV
    finally:
        enable_eudebug(fd, True)
    ret, _ = connect(fd, child.pid)
    assert ret >= 0


def test_b09_connect_returns_blocking_inheritable_fd(fd, child):
    """9. Connect returns the new fd as the ioctl return value; the fd is not close-on-exec and
    is blocking."""
    ret, _ = connect(fd, child.pid)
    assert ret >= 0 and ret != fd
    os.fstat(ret)  # a real, open file descriptor
    assert not fcntl.fcntl(ret, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert not fcntl.fcntl(ret, fcntl.F_GETFL) & os.O_NONBLOCK


def test_b09_connect_fd_not_tied_to_connection(child):
    """9. Connect returns the new fd as the ioctl return value; the fd is not close-on-exec and
    is blocking.  (The device fd used to connect is not tied to the connection: closing it leaves
    the connection working, §1.B.)"""
    dev = track(open_device())
    enable_eudebug(dev, True)
    dfd = attach(dev, child.pid)
    close_fd(dev)
    child.do("open")
    assert next_event(dfd).is_("OPEN", "CREATE")
    assert poll_mask(dfd, 0) == 0


def test_b09_inherited_debugger_fd_keeps_connection(fd, child):
    """9. Connect returns the new fd as the ioctl return value; the fd is not close-on-exec and
    is blocking.  (A forked process inheriting it keeps the connection alive after the debugger
    closes its copy, §12.1.)"""
    dfd = attach(fd, child.pid)
    r, w = os.pipe()
    holder = os.fork()
    if holder == 0:  # pragma: no cover - holds the inherited debugger fd until told to exit
        try:
            os.close(w)
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    try:
        close_fd(dfd)
        assert connect(fd, child.pid)[0] == EBUSY  # the holder's copy keeps it attached
    finally:
        os.write(w, b"x")
        os.close(w)
        deadline = time.monotonic() + 5
        while os.waitpid(holder, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:
                os.kill(holder, 9)
                os.waitpid(holder, 0)
                break
            time.sleep(0.005)
    assert reconnect(fd, child.pid) >= 0


def test_b10_read_syscall_on_debugger_fd_einval(fd, child):
    """10. `read()` on the debugger fd fails EINVAL."""
    dfd = attach(fd, child.pid)
    assert errno_of(lambda: seam.read(dfd, 64)) == EINVAL


def test_b10_other_file_operations_on_debugger_fd(fd, child):
    """10. `read()` on the debugger fd fails EINVAL.  (And lseek fails ESPIPE, mmap ENODEV, §1.C;
    on a vm fd mmap fails ENODEV, §6.5.)"""
    dfd = attach(fd, child.pid)
    assert errno_of(lambda: seam.lseek(dfd, 0, os.SEEK_SET)) == -errno.ESPIPE
    assert errno_of(lambda: seam.mmap(dfd, 4096, 0)) == -errno.ENODEV
    assert errno_of(lambda: seam.read(dfd, 64)) == EINVAL


UNKNOWN_REQUESTS = (seam._IO(ord("j"), 0x20), seam._IOW(ord("j"), 0, 8), seam._IOWR(ord("j"), 1, 40),
                    U.DRM_IOCTL_XE_VM_CREATE)


def test_b11_unknown_debugger_ioctl_einval(fd, child):
    """11. An unknown request code on the debugger fd fails EINVAL (EBUSY while discovery runs)."""
    dfd, _c, _ch = live(fd, child)  # the child's open returned: discovery is complete
    buf = ctypes.create_string_buffer(64)
    for request in UNKNOWN_REQUESTS:
        assert seam.try_ioctl(dfd, request, buf) == EINVAL, hex(request)


def test_b11_unknown_debugger_ioctl_null_arg_einval(fd, child):
    """11. An unknown request code on the debugger fd fails EINVAL (EBUSY while discovery runs).
    (The kernel rejects the request code before touching the argument, so even a NULL argument
    gives EINVAL, not EFAULT.)"""
    dfd, _c, _ch = live(fd, child)
    for request in UNKNOWN_REQUESTS:
        assert seam.try_ioctl(dfd, request, 0) == EINVAL, hex(request)


# === discovery / seqnos ========================================================================

def build_scene(fd: int, child: Debuggee) -> dict:
    """Resources made before connect: 2 metadata, LR VM A (2 mappings bound in descending
    address order, a debuggable and a plain queue), a non-LR VM with a mapping-free life, LR VM B."""
    cls = eu_class(fd)
    c = child.do("open")
    md = [child.do("md_create", c, 0, b"A" * 10), child.do("md_create", c, 1, b"B" * 20)]
    assert [r for r, _ in md] == [0, 0]
    ra, vm_a = child.do("vm_create", c, LR)
    rn, vm_n = child.do("vm_create", c, 0)
    rb, vm_b = child.do("vm_create", c, LR)
    assert (ra, rn, rb) == (0, 0, 0)
    bo = make_bo(child, c)
    assert child.do("bind", c, vm_a, [dict(obj=bo, offset=0, addr=0x300000, range=SZ),
                                      dict(obj=bo, offset=SZ, addr=0x100000, range=SZ)]) == 0
    assert child.do("exec_queue_create", c, vm_a, cls)[0] == 0
    r, eq = child.do("exec_queue_create", c, vm_a, cls, 1)
    assert r == 0
    return dict(c=c, cls=cls, vm_a=vm_a, vm_b=vm_b)


def read_discovery(dfd: int, count: int = 9) -> list:
    evs = [next_event(dfd) for _ in range(count)]
    expect_no_event(dfd, 0.1)
    return evs


def test_b12_seqnos_start_at_1_and_increase(fd, child):
    """12. The first event of every connection has seqno 1; seqnos are unique and strictly
    increase in allocation order."""
    sc = build_scene(fd, child)
    dfd = attach(fd, child.pid)
    evs = read_discovery(dfd)
    assert child.do("vm_create", sc["c"], LR)[0] == 0
    evs.append(next_event(dfd))
    seqnos = [e.seqno for e in evs]
    assert seqnos[0] == 1
    assert all(a < b for a, b in zip(seqnos, seqnos[1:])), seqnos
    # only EU_CONTROL, dropped binds and lost events leave gaps (§3.1); LRC handles take none
    assert seqnos == list(range(1, len(seqnos) + 1))
    # a new connection restarts at 1
    close_fd(dfd)
    dfd2 = reconnect(fd, child.pid)
    assert dfd2 >= 0
    assert next_event(dfd2).seqno == 1


def test_b13_eu_control_consumes_seqno(fd, child):
    """13. A successful EU_CONTROL consumes a seqno from the same counter, creating a gap in
    event seqnos."""
    dfd, c, ch, eq, qev, last, _bo = running_shader(fd, child)
    ret, arg = eu_control(dfd, ch, U.DRM_XE_EUDEBUG_EU_CONTROL_CMD_INTERRUPT_ALL,
                          exec_queue=qev.exec_queue_handle, lrc=qev.lrc_handles[0])
    assert ret == 0, errno.errorcode.get(-ret, ret)
    assert arg.seqno == last + 1
    assert child.do("vm_create", c, LR)[0] == 0
    assert next_event(dfd).seqno == arg.seqno + 1     # the sentinel, or an EU_ATTENTION


def test_b14_discovery_order(fd, child):
    """14. Discovery sends, per matching client: OPEN CREATE, METADATA CREATEs, then per LR VM:
    VM CREATE followed by one VM_BIND (num_binds = VMA count) and its VM_BIND_OPs in address
    order, then debuggable EXEC_QUEUE CREATEs."""
    sc = build_scene(fd, child)
    dfd = attach(fd, child.pid)
    evs = read_discovery(dfd)
    assert [e.name for e in evs] == ["OPEN", "METADATA", "METADATA", "VM", "VM_BIND", "VM_BIND_OP",
                                     "VM_BIND_OP", "VM", "EXEC_QUEUE"], evs
    op_, md1, md2, vma, bind, o1, o2, vmb, q = evs
    assert (md1.md_type, md1.md_len, md2.md_type, md2.md_len) == (0, 10, 1, 20)
    assert md1.client_handle == md2.client_handle == op_.client_handle
    assert vma.vm_handle != vmb.vm_handle
    assert bind.num_binds == 2 and bind.ev_flags == 0 and bind.vm_handle == vma.vm_handle
    assert [(o.addr, o.range) for o in (o1, o2)] == [(0x100000, SZ), (0x300000, SZ)]
    assert o1.vm_bind_ref_seqno == o2.vm_bind_ref_seqno == bind.seqno
    assert q.vm_handle == vma.vm_handle and q.engine_class == sc["cls"] and q.width == 1


def test_b14_discovery_reports_split_mappings_and_attachments(fd, child):
    """14. Discovery sends, per matching client: OPEN CREATE, METADATA CREATEs, then per LR VM:
    VM CREATE followed by one VM_BIND (num_binds = VMA count) and its VM_BIND_OPs in address
    order, then debuggable EXEC_QUEUE CREATEs.  (A mapping split by a partial unbind is reported
    as its pieces; attachments follow their op as VM_BIND_OP_METADATA, §2.1.)"""
    c = child.do("open")
    r, md = child.do("md_create", c, 0, b"elf!")
    r, vm = child.do("vm_create", c, LR)
    bo = make_bo(child, c, 3 * SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=3 * SZ,
                                         ext=[dict(metadata_id=md, cookie=0x77)])]) == 0
    assert child.do("bind", c, vm, [dict(op=UNMAP, addr=0x100000 + SZ, range=SZ)]) == 0
    dfd = attach(fd, child.pid)
    evs = read_discovery(dfd, 8)
    assert [e.name for e in evs] == ["OPEN", "METADATA", "VM", "VM_BIND", "VM_BIND_OP", "VM_BIND_OP_METADATA",
                     "VM_BIND_OP", "VM_BIND_OP_METADATA"], evs
    bind, o1, m1, o2, m2 = evs[3:8]
    assert bind.num_binds == 2
    assert [(o.addr, o.range, o.num_extensions) for o in (o1, o2)] == [(0x100000, SZ, 1), (0x100000 + 2 * SZ, SZ, 1)]
    assert (m1.vm_bind_op_ref_seqno, m2.vm_bind_op_ref_seqno) == (o1.seqno, o2.seqno)
    assert m1.metadata_handle == m2.metadata_handle == evs[1].metadata_handle
    assert m1.metadata_cookie == m2.metadata_cookie == 0x77


def test_b14_discovery_clients_in_open_order(fd, child, child2):
    """14. Discovery sends, per matching client: OPEN CREATE, METADATA CREATEs, then ...
    (Clients in the order their DRM files were opened; other processes' files are skipped, §2.1.)"""
    c1 = child.do("open")
    child2.do("open")  # not the target
    c2 = child.do("open")
    assert child.do("md_create", c2, 0, b"5" * 5)[0] == 0
    assert child.do("md_create", c1, 0, b"3" * 3)[0] == 0
    dfd = attach(fd, child.pid)
    evs = read_discovery(dfd, 4)
    assert [(e.name, e.f.get("md_len")) for e in evs] == [("OPEN", None), ("METADATA", 3),
                                                          ("OPEN", None), ("METADATA", 5)], evs
    assert evs[1].client_handle == evs[0].client_handle != evs[3].client_handle == evs[2].client_handle


def test_b15_discovery_uses_plain_create_flag(fd, child):
    """15. Discovery events carry the ordinary CREATE flag; there is no discovery flag."""
    build_scene(fd, child)
    dfd = attach(fd, child.pid)
    for ev in read_discovery(dfd):
        expected = STATE_CHANGE if ev.name == "VM_BIND" else CREATE
        assert ev.flags == expected, ev


def test_b16_created_and_destroyed_before_connect_invisible(fd, child):
    """16. Resources created and destroyed before connect produce no events at all."""
    c = child.do("open")
    r, vm = child.do("vm_create", c, LR)
    bo = make_bo(child, c)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ)]) == 0
    assert child.do("vm_destroy", c, vm) == 0
    r, md = child.do("md_create", c, 0, b"x" * 8)
    assert child.do("md_destroy", c, md) == 0
    dfd = attach(fd, child.pid)
    ev = next_event(dfd)
    assert ev.is_("OPEN", "CREATE")
    sentinel(child, dfd, c)


def stalled_discovery(fd: int, child: Debuggee, count: int = 80):
    """A client with `count` metadata objects, connected but not read: discovery cannot finish
    while the 64-event fifo is full."""
    c = child.do("open")
    child.do("md_create_many", c, count)
    dfd = attach(fd, child.pid)
    assert poll_mask(dfd, 5000) & POLLIN
    return dfd, c


def test_b17_debugger_ioctls_ebusy_during_discovery(fd, child):
    """17. While discovery is incomplete, VM_OPEN/ACK/EU_CONTROL/READ_METADATA fail EBUSY but
    READ_EVENT works."""
    dfd, c = stalled_discovery(fd, child)
    assert vm_open(dfd, 1, 1) == EBUSY
    assert ack(dfd, 1) == EBUSY
    assert eu_control(dfd, 1, U.DRM_XE_EUDEBUG_EU_CONTROL_CMD_STOPPED, exec_queue=1, lrc=1,
                      bitmask_size=8)[0] == EBUSY
    assert read_metadata(dfd, 1, 1, 0)[0] == EBUSY
    assert seam.try_ioctl(dfd, seam._IO(ord("j"), 0x20), 0) == EBUSY  # behaviour 11's EBUSY
    for request in DEBUGGER_ARG_IOCTLS:  # the discovery check comes before reading the argument
        assert seam.try_ioctl(dfd, request, 4096) == EBUSY, hex(request)
    ret, ev = try_read(dfd)
    assert ret == 0 and ev.is_("OPEN", "CREATE") and ev.seqno == 1
    assert vm_open(dfd, 1, 1) == EBUSY  # still incomplete after one read
    rest = [next_event(dfd) for _ in range(80)]
    assert all(e.is_("METADATA", "CREATE") for e in rest)
    # discovery complete: argument errors instead of EBUSY
    assert vm_open(dfd, 1, 999) == EINVAL
    assert ack(dfd, 999999) == EINVAL


DEBUGGER_ARG_IOCTLS = (U.DRM_XE_EUDEBUG_IOCTL_VM_OPEN, U.DRM_XE_EUDEBUG_IOCTL_ACK_EVENT,
                       U.DRM_XE_EUDEBUG_IOCTL_READ_METADATA, U.DRM_XE_EUDEBUG_IOCTL_EU_CONTROL)


def test_b42_b53_b54_b58_unreadable_argument_efault(fd, child):
    """42/53/54/58. ACK_EVENT, READ_METADATA, VM_OPEN and EU_CONTROL validate their arguments
    (flags → EINVAL ...).  (Before any of that, an argument that cannot be read fails EFAULT:
    step 2 of §5.1, §6.1, §7, §8.1.)"""
    dfd, _c, _ch = live(fd, child)
    for request in DEBUGGER_ARG_IOCTLS:
        assert seam.try_ioctl(dfd, request, 4096) == -errno.EFAULT, hex(request)


def test_b18_no_live_event_before_discovery_events(fd, child):
    """18. No live event of a connection precedes any of its discovery events."""
    dfd, c = stalled_discovery(fd, child)
    child.send("vm_create", c, LR)
    evs = [next_event(dfd) for _ in range(82)]
    assert child.result()[0] == 0
    assert [e.name for e in evs[:81]] == ["OPEN"] + ["METADATA"] * 80
    assert evs[81].is_("VM", "CREATE") and evs[81].seqno == max(e.seqno for e in evs)
    expect_no_event(dfd)


def test_b66_resource_ioctls_block_during_discovery(fd, child, child2):
    """66. Connect and the resource ioctls (VM create/destroy/bind, exec-queue create/destroy,
    metadata create/destroy) and DRM file open/close block device-wide while a discovery is
    running."""
    dfd, c = stalled_discovery(fd, child)
    child.send("vm_create", c, LR)
    child2.send("open")  # another process, not debugged: blocked device-wide too
    assert not child.ready(0.3), "VM_CREATE returned while discovery was running"
    assert not child2.ready(0.0), "DRM file open returned while discovery was running"
    for _ in range(82):
        next_event(dfd)
    assert child.result()[0] == 0
    assert child2.result() >= 0


def test_b66_debugger_close_ends_stalled_discovery(fd, child):
    """66. Connect and the resource ioctls (...) block device-wide while a discovery is running.
    (Closing the debugger fd detaches the connection, the stalled discovery stops and the blocked
    ioctl proceeds at once rather than after the 25 s fifo timeout, §2.3, §3.6.)"""
    dfd, c = stalled_discovery(fd, child)
    child.send("vm_create", c, LR)
    assert not child.ready(0.2)
    t0 = time.monotonic()
    close_fd(dfd)
    assert child.result(timeout=10.0)[0] == 0
    assert time.monotonic() - t0 < 3.0


@pytest.mark.xfail(not ON_HARDWARE, strict=True,
                   reason="simulator: close(2) of a simulated fd (a socketpair end) cannot block; the "
                          "release runs later in the server (docs/simulator.md)")
def test_b66_drm_file_close_blocks_during_discovery(fd, child, child2):
    """66. Connect and the resource ioctls (...) and DRM file open/close block device-wide while a
    discovery is running.  (Here: the last close of a DRM file in another process.)"""
    dev2 = child2.do("open")
    dfd, c = stalled_discovery(fd, child)
    child2.send("close", dev2)
    # On hardware the close stays blocked until the discovery ends (25 s fifo timeout at most);
    # on the simulator it returns at once, and the expected failure must not hang on how soon
    # child2 gets to run.
    assert not child2.ready(5.0), "close(2) of a DRM file returned while discovery was running"
    for _ in range(81):
        next_event(dfd)
    assert child2.result() == 0


def test_b66_connect_blocks_during_discovery(fd, child, child2):
    """66. Connect and the resource ioctls (VM create/destroy/bind, exec-queue create/destroy,
    metadata create/destroy) and DRM file open/close block device-wide while a discovery is
    running.  (Here: CONNECT from another process, to another target.)"""
    dev2 = child2.do("open")  # opened before the stall
    dfd, c = stalled_discovery(fd, child)
    child2.send("connect_with", dev2, child2.pid)
    assert not child2.ready(0.3), "CONNECT returned while another discovery was running"
    for _ in range(81):
        next_event(dfd)
    assert child2.result() >= 0
    child2.do("close", dev2)


# === READ_EVENT ================================================================================

def queued_open(fd: int, child: Debuggee) -> int:
    dfd = attach(fd, child.pid)
    child.do("open")
    assert poll_mask(dfd, 5000) & POLLIN
    return dfd


def test_b19_read_event_type_not_read_einval(fd, child):
    """19. READ_EVENT with header type other than READ (e.g. NONE) fails EINVAL."""
    dfd = queued_open(fd, child)
    for t in (U.DRM_XE_EUDEBUG_EVENT_NONE, EV["OPEN"], EV["PAGEFAULT"] + 1, 0xFFFF):
        assert read_event_raw(dfd, type_=t)[0] == EINVAL, t
    assert try_read(dfd)[1].is_("OPEN", "CREATE")  # nothing was consumed


def test_b20_read_event_short_len_einval_len_unchanged(fd, child):
    """20. READ_EVENT with `len < 24` fails EINVAL and leaves `len` unchanged."""
    dfd = queued_open(fd, child)
    for length in (0, 1, 23):
        ret, buf = read_event_raw(dfd, capacity=64, length=length)
        assert ret == EINVAL
        assert int.from_bytes(buf[0:4], "little") == length
    assert try_read(dfd)[1].is_("OPEN", "CREATE")


def test_b21_read_event_flags_or_reserved_einval(fd, child):
    """21. READ_EVENT with `flags != 0` or `reserved != 0` fails EINVAL."""
    dfd = queued_open(fd, child)
    assert read_event_raw(dfd, flags=1)[0] == EINVAL
    assert read_event_raw(dfd, flags=0x8000)[0] == EINVAL
    assert read_event_raw(dfd, reserved=1)[0] == EINVAL
    assert try_read(dfd)[1].is_("OPEN", "CREATE")


def test_b22_read_event_emsgsize_keeps_event(fd, child):
    """22. READ_EVENT with a buffer smaller than the pending event fails EMSGSIZE, writes the
    needed size into `len`, and keeps the event queued."""
    dfd = queued_open(fd, child)
    ret, buf = read_event_raw(dfd, capacity=24)
    assert ret == -errno.EMSGSIZE
    need = int.from_bytes(buf[0:4], "little")
    assert need == 32
    ret, buf = read_event_raw(dfd, capacity=need - 1)
    assert ret == -errno.EMSGSIZE and int.from_bytes(buf[0:4], "little") == need
    ret, buf = read_event_raw(dfd, capacity=need)
    assert ret == 0
    ev = decode(buf)
    assert ev.is_("OPEN", "CREATE") and ev.seqno == 1 and ev.len == need


def test_b22_read_event_faulting_buffers(fd, child):
    """22. READ_EVENT with a buffer smaller than the pending event fails EMSGSIZE, writes the
    needed size into `len`, and keeps the event queued.  (An unreadable header fails EFAULT and
    keeps the event; a buffer whose body faults fails EFAULT and the event is lost, §4.2.)"""
    dfd = queued_open(fd, child)
    assert seam.try_ioctl(dfd, U.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, 4096) == -errno.EFAULT
    child.do("open")  # a second event, so the fifo is not empty after the loss
    page = mmap.PAGESIZE
    region = mmap.mmap(-1, 2 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(base + page), ctypes.c_size_t(page), 0) == 0  # PROT_NONE
    try:
        hdr = base + page - HDR_SIZE  # header readable/writable, the payload is not
        ctypes.memmove(hdr, struct.pack("<IHHQQ", 64, READ, 0, 0, 0), HDR_SIZE)
        assert seam.try_ioctl(dfd, U.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, hdr) == -errno.EFAULT
    finally:
        libc.mprotect(ctypes.c_void_p(base + page), ctypes.c_size_t(page), 3)
    ev = try_read(dfd)[1]
    assert ev is not None and ev.is_("OPEN", "CREATE") and ev.seqno == 2  # seqno 1 was lost


def test_b23_blocking_read_event_enoent_after_timeout(short_sim, child):
    """23. Blocking READ_EVENT with nothing queued returns ENOENT after ~5 s (0.5 s on this
    simulator instance)."""
    dev = track(open_device())
    dfd = attach(dev, child.pid, nonblock=False)
    t0 = time.monotonic()
    ret, _ = read_event_raw(dfd)
    elapsed = time.monotonic() - t0
    assert ret == ENOENT
    assert 0.4 <= elapsed < 3.0, elapsed


def test_b23_blocking_read_event_wakes_on_event(fd, child):
    """23. Blocking READ_EVENT with nothing queued returns ENOENT after ~5 s.  (Until then it
    returns as soon as an event is queued.)"""
    dfd = attach(fd, child.pid, nonblock=False)
    child.send("open_after", 0.2)
    t0 = time.monotonic()
    ret, buf = read_event_raw(dfd)
    elapsed = time.monotonic() - t0
    assert ret == 0 and decode(buf).is_("OPEN", "CREATE")
    assert elapsed < 3.0, elapsed
    child.result()


def test_b24_nonblocking_read_event_eagain_after_target_exit(fd, child):
    """24. Non-blocking READ_EVENT with nothing queued fails EAGAIN, also after the target
    process exited."""
    dfd = attach(fd, child.pid)
    assert try_read(dfd)[0] == -errno.EAGAIN
    child.do("open")
    child.exit()
    assert next_event(dfd).is_("OPEN", "CREATE")
    assert next_event(dfd).is_("OPEN", "DESTROY")
    assert try_read(dfd)[0] == -errno.EAGAIN


def fifo_timeout_scene(child: Debuggee):
    """On the short-timeout simulator: a client produces 65 events into a 64-event fifo that
    nobody reads.  Returns (debugger fd, seconds the client's ioctls took)."""
    dev = track(open_device())
    dfd = attach(dev, child.pid)
    c = child.do("open")
    t0 = time.monotonic()
    child.do("md_create_many", c, 64)
    return dfd, time.monotonic() - t0


def test_b25_detached_read_event_drains_then_enotconn(short_sim, child):
    """25. READ_EVENT on a detached connection first drains queued events, then fails ENOTCONN."""
    dfd, _ = fifo_timeout_scene(child)
    evs = drain(dfd)
    assert len(evs) == 64
    assert try_read(dfd)[0] == -errno.ENOTCONN
    assert ack(dfd, 1) == -errno.ENOTCONN
    assert vm_open(dfd, 1, 1) == -errno.ENOTCONN


def test_b25_detached_other_ioctls_check_arguments_first(short_sim, child):
    """25. READ_EVENT on a detached connection first drains queued events, then fails ENOTCONN.
    (The other debugger ioctls fail ENOTCONN after their own earlier argument checks, §5.1, §6.1,
    §7, §8.1, §12.1.)"""
    dfd, _ = fifo_timeout_scene(child)
    client = drain(dfd)[0].client_handle
    assert ack(dfd, 12345, flags=1) == EINVAL
    assert ack(dfd, 12345) == -errno.ENOTCONN
    assert vm_open(dfd, 1, 1, flags=1) == EINVAL
    assert vm_open(dfd, 1, 1, timeout_ns=U.DRM_XE_EUDEBUG_VM_SYNC_MAX_TIMEOUT_NSECS + 1) == EINVAL
    assert vm_open(dfd, 999, 999) == -errno.ENOTCONN
    assert read_metadata(dfd, 1, 1, 0, flags=1)[0] == EINVAL
    assert read_metadata(dfd, 999, 999, 0)[0] == -errno.ENOTCONN
    assert eu_control(dfd, 999, STOPPED, bitmask_size=8)[0] == EINVAL  # client checked first
    assert eu_control(dfd, client, STOPPED, bitmask_size=8)[0] == -errno.ENOTCONN


def test_b26_poll_pollin_exactly_when_queued(fd, child):
    """26. poll reports POLLIN exactly when an event is queued; POLLHUP when detached; POLLERR
    when detached by an error.  (Here: POLLIN only while queued, nothing on a live empty fd.)"""
    dfd = attach(fd, child.pid)
    assert poll_mask(dfd, 0, POLLIN | select.POLLOUT) == 0
    c = child.do("open")
    assert poll_mask(dfd, 5000) == POLLIN
    # never POLLOUT, no POLLRDNORM (§4.4)
    assert poll_mask(dfd, 0, POLLIN | select.POLLOUT | select.POLLRDNORM | select.POLLWRNORM) == POLLIN
    next_event(dfd)
    assert poll_mask(dfd, 0) == 0
    child.do("close", c)
    assert poll_mask(dfd, 5000) == POLLIN
    next_event(dfd)
    assert poll_mask(dfd, 50) == 0


def test_b26_poll_hup_err_after_error_detach(short_sim, child):
    """26. poll reports POLLIN exactly when an event is queued; POLLHUP when detached; POLLERR
    when detached by an error.  (Here: a fifo-timeout detach gives HUP|ERR, plus IN while events
    remain.)"""
    dfd, _ = fifo_timeout_scene(child)
    assert poll_mask(dfd, 0) == POLLIN | POLLHUP | POLLERR
    drain(dfd)
    assert poll_mask(dfd, 0) == POLLHUP | POLLERR


# === clients, VMs, handles =====================================================================

def test_b27_open_create_and_destroy_same_handle(fd, child):
    """27. Opening the xe device from the target emits OPEN CREATE; the final release of that
    DRM file emits OPEN DESTROY with the same client handle."""
    dfd, c, ch = live(fd, child)
    assert ch >= 1
    copy = child.do("dup", c)
    child.do("close", c)  # not the final release: a duplicate is still open
    expect_no_event(dfd, 0.3)
    child.do("close", copy)
    ev = next_event(dfd)
    assert ev.is_("OPEN", "DESTROY") and ev.client_handle == ch and ev.len == 32


def test_b28_client_close_emits_only_open_destroy(fd, child):
    """28. Closing a client DRM file emits only OPEN DESTROY — no VM/EXEC_QUEUE/METADATA DESTROY
    for what it still owned."""
    dfd, c, ch, vm, vh, eq, _ = debuggable_queue(fd, child)
    assert child.do("md_create", c, 0, b"m" * 4)[0] == 0
    assert next_event(dfd).is_("METADATA", "CREATE")
    child.do("close", c)
    ev = next_event(dfd)
    assert ev.is_("OPEN", "DESTROY") and ev.client_handle == ch
    c2 = child.do("open")
    ev = next_event(dfd)
    assert ev.is_("OPEN", "CREATE"), f"expected only OPEN DESTROY before the next open, got {ev!r}"
    assert child.do("vm_create", c2, LR)[0] == 0
    assert next_event(dfd).is_("VM", "CREATE")


def test_b29_vm_events_only_for_lr(fd, child):
    """29. VM CREATE/DESTROY events are emitted only for LR-mode VMs."""
    dfd, c, ch = live(fd, child)
    r, plain = child.do("vm_create", c, 0)
    assert r == 0
    bo = make_bo(child, c, SZ)
    assert child.do("bind", c, plain, [dict(obj=bo, addr=0x100000, range=SZ)]) == 0  # nothing bound in it is evented
    assert child.do("vm_destroy", c, plain) == 0
    r, lr = child.do("vm_create", c, LR)
    ev = next_event(dfd)
    assert ev.is_("VM", "CREATE") and ev.client_handle == ch
    assert child.do("vm_destroy", c, lr) == 0
    ev2 = next_event(dfd)
    assert ev2.is_("VM", "DESTROY") and ev2.vm_handle == ev.vm_handle and ev2.len == 40


def test_b30_handles_per_connection_lowest_free(fd, child, child2):
    """30. Handles are per connection and per type, start at 1, and the lowest free number is
    reused after a DESTROY."""
    dfd, c1, ch1 = live(fd, child)
    assert ch1 == 1
    c2 = child.do("open")
    assert next_event(dfd).client_handle == 2
    vms, handles = [], []
    for _ in range(3):
        r, vm = child.do("vm_create", c1, LR)
        vms.append(vm)
        handles.append(next_event(dfd).vm_handle)
    assert handles == [1, 2, 3]
    r, md = child.do("md_create", c1, 0, b"z")
    assert next_event(dfd).metadata_handle == 1  # independent of the VM numbers
    assert child.do("vm_destroy", c1, vms[1]) == 0
    assert next_event(dfd).vm_handle == 2
    child.do("vm_create", c2, LR)
    ev = next_event(dfd)
    assert ev.vm_handle == 2 and ev.client_handle == 2
    child.do("close", c1)
    assert next_event(dfd).is_("OPEN", "DESTROY")
    child.do("open")
    assert next_event(dfd).client_handle == 1
    # another connection numbers from 1 on its own
    dfd2, _c, ch = live(fd, child2)
    assert ch == 1
    child2.do("vm_create", _c, LR)
    assert next_event(dfd2).vm_handle == 1


def test_b30_stale_handles_of_closed_client_stay_allocated(fd, child):
    """30. Handles are per connection and per type, start at 1, and the lowest free number is
    reused after a DESTROY.  (Only a DESTROY frees a number: a VM that went away with its
    client's DRM file keeps its handle allocated, §3.2.)"""
    dfd, c1, ch1 = live(fd, child)
    child.do("vm_create", c1, LR)
    assert next_event(dfd).vm_handle == 1
    child.do("close", c1)
    assert next_event(dfd).is_("OPEN", "DESTROY")
    c2 = child.do("open")
    assert next_event(dfd).client_handle == ch1  # the client handle was freed by OPEN DESTROY
    child.do("vm_create", c2, LR)
    assert next_event(dfd).vm_handle == 2


def test_b30_exec_queue_and_lrc_handles(fd, child):
    """30. Handles are per connection and per type, start at 1, and the lowest free number is
    reused after a DESTROY.  (Exec-queue and LRC handles too.)"""
    cls = eu_class(fd)
    dfd, c, ch, vm, vh = live_vm(fd, child)
    qs, evs = [], []
    for _ in range(2):
        r, eq = child.do("exec_queue_create", c, vm, cls, 1)
        assert r == 0
        qs.append(eq)
        evs.append(next_event(dfd))
    assert [(e.exec_queue_handle, e.lrc_handles) for e in evs] == [(1, [1]), (2, [2])]
    assert child.do("exec_queue_destroy", c, qs[0]) == 0
    assert next_event(dfd).exec_queue_handle == 1
    child.do("exec_queue_create", c, vm, cls, 1)
    ev = next_event(dfd)
    assert (ev.exec_queue_handle, ev.lrc_handles) == (1, [1])


# === exec queues ===============================================================================

@pytest.mark.parametrize("cls", [RENDER, COMPUTE], ids=["render", "compute"])
def test_b31_exec_queue_events_only_debuggable(fd, child, cls):
    """31. EXEC_QUEUE events are emitted only for queues created with the EUDEBUG property
    (render/compute), with `len = 56 + 8·width`, engine_class 0 or 4."""
    if find_engine(fd, cls) is None:
        pytest.skip(f"device has no engine of class {cls}")
    dfd, c, ch, vm, vh = live_vm(fd, child)
    r, plain = child.do("exec_queue_create", c, vm, cls)
    assert r == 0
    assert child.do("exec_queue_destroy", c, plain) == 0
    r, eq = child.do("exec_queue_create", c, vm, cls, U.DRM_XE_EXEC_QUEUE_EUDEBUG_FLAG_ENABLE)
    assert r == 0
    ev = next_event(dfd)
    assert ev.is_("EXEC_QUEUE", "CREATE"), ev
    assert ev.len == 56 + 8 * ev.width and ev.width == 1
    assert ev.engine_class == cls and ev.engine_class in (0, 4)
    assert (ev.client_handle, ev.vm_handle) == (ch, vh) and ev.exec_queue_handle >= 1
    assert ev.lrc_handles[0] >= 1
    assert child.do("exec_queue_destroy", c, eq) == 0
    ev2 = next_event(dfd)
    assert ev2.is_("EXEC_QUEUE", "DESTROY")
    assert ev2.f == ev.f


def test_b32_eudebug_property_non_render_compute_einval(fd, local):
    """32. EUDEBUG property on a non-render/compute queue fails EINVAL for any value."""
    if find_engine(fd, COPY) is None:
        pytest.skip("device has no copy engine")
    r, vm = local.vm_create(fd, LR)
    assert r == 0
    for value in (0, 1, 2, 3, 1 << 63):
        assert local.exec_queue_create(fd, vm, COPY, value)[0] == EINVAL, value
    assert local.exec_queue_create(fd, vm, COPY)[0] == 0


def test_b33_eudebug_property_bad_value_einval(fd, local):
    """33. EUDEBUG property value 0 or any bit other than bit 0 fails EINVAL."""
    cls = eu_class(fd)
    r, vm = local.vm_create(fd, LR)
    for value in (0, 2, 3, 1 << 31, 1 << 63):
        assert local.exec_queue_create(fd, vm, cls, value)[0] == EINVAL, value
    assert local.exec_queue_create(fd, vm, cls, 1)[0] == 0


def test_b34_eudebug_property_non_lr_vm_einval(fd, local):
    """34. EUDEBUG property on a queue whose VM is not LR fails EINVAL."""
    cls = eu_class(fd)
    r, vm = local.vm_create(fd, 0)
    assert r == 0
    assert local.exec_queue_create(fd, vm, cls, 1)[0] == EINVAL
    assert local.exec_queue_create(fd, vm, cls)[0] == 0


def test_b35_eudebug_property_disabled_eperm(fd, local):
    """35. EUDEBUG property while debugging is disabled fails EPERM."""
    cls = eu_class(fd)
    r, vm = local.vm_create(fd, LR)
    enable_eudebug(fd, False)
    try:
        assert local.exec_queue_create(fd, vm, cls, 1)[0] == -errno.EPERM
        assert local.exec_queue_create(fd, vm, cls, 2)[0] == EINVAL  # value checked first
        assert local.exec_queue_create(fd, vm, cls)[0] == 0  # plain queues are unaffected
        assert local.md_create(fd, 0, b"still works")[0] == 0  # metadata ioctls have no gate (§12.2)
    finally:
        enable_eudebug(fd, True)
    assert local.exec_queue_create(fd, vm, cls, 1)[0] == 0


# === binds =====================================================================================

def test_b36_map_bind_events_before_return(fd, child):
    """36. A MAP bind emits VM_BIND(STATE_CHANGE, num_binds=n) followed by n VM_BIND_OP(CREATE)
    whose `vm_bind_ref_seqno` equals the VM_BIND seqno, all before the bind ioctl returns."""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    bo = make_bo(child, c, 2 * SZ)
    ops = [dict(obj=bo, offset=0, addr=0x200000, range=SZ), dict(obj=bo, offset=SZ, addr=0x400000, range=SZ)]
    assert child.do("bind", c, vm, ops) == 0
    evs = drain(dfd)  # no waiting: everything is queued when the ioctl returned
    assert [e.name for e in evs] == ["VM_BIND", "VM_BIND_OP", "VM_BIND_OP"], evs
    b, o1, o2 = evs
    assert b.flags == STATE_CHANGE and b.num_binds == 2 and b.ev_flags == 0 and b.len == 48
    assert (b.client_handle, b.vm_handle) == (ch, vh)
    for o, op in zip((o1, o2), ops):
        assert o.flags == CREATE and o.len == 56 and o.vm_bind_ref_seqno == b.seqno
        assert (o.addr, o.range, o.num_extensions) == (op["addr"], op["range"], 0)
    assert b.seqno < o1.seqno < o2.seqno


def test_b36_num_binds_counts_evented_ops(fd, child):
    """36. A MAP bind emits VM_BIND(STATE_CHANGE, num_binds=n) followed by n VM_BIND_OP(CREATE)
    whose `vm_bind_ref_seqno` equals the VM_BIND seqno, all before the bind ioctl returns.
    (n counts the ops that produce events: a PREFETCH in the same ioctl is not one, §10.2.)"""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    bo = make_bo(child, c, 2 * SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ)]) == 0
    drain(dfd)
    assert child.do("bind", c, vm, [dict(op=PREFETCH, addr=0x100000, range=SZ, region=0),
                                    dict(obj=bo, offset=SZ, addr=0x300000, range=SZ)]) == 0
    b, o = drain(dfd)
    assert b.num_binds == 1 and o.is_("VM_BIND_OP", "CREATE") and o.addr == 0x300000


def test_b37_one_unmap_op_event_per_user_op(fd, child):
    """37. An UNMAP emits VM_BIND_OP with DESTROY and the user's addr/range; UNMAP_ALL reports
    addr 0 / range 0.  (One event per user op, even when it covers several mappings, §10.1.)"""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    bo = make_bo(child, c, 2 * SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ),
                                    dict(obj=bo, offset=SZ, addr=0x100000 + SZ, range=SZ)]) == 0
    drain(dfd)
    assert child.do("bind", c, vm, [dict(op=UNMAP, addr=0x100000, range=2 * SZ)]) == 0
    b, o = drain(dfd)
    assert b.num_binds == 1 and o.is_("VM_BIND_OP", "DESTROY") and (o.addr, o.range) == (0x100000, 2 * SZ)


def test_b37_unmap_and_unmap_all_events(fd, child):
    """37. An UNMAP emits VM_BIND_OP with DESTROY and the user's addr/range; UNMAP_ALL reports
    addr 0 / range 0."""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    bo = make_bo(child, c, 2 * SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=2 * SZ)]) == 0
    drain(dfd)
    assert child.do("bind", c, vm, [dict(op=UNMAP, addr=0x100000 + SZ, range=SZ)]) == 0
    b, o = drain(dfd)
    assert b.is_("VM_BIND", "STATE_CHANGE") and b.num_binds == 1
    assert o.is_("VM_BIND_OP", "DESTROY") and (o.addr, o.range) == (0x100000 + SZ, SZ)
    assert o.vm_bind_ref_seqno == b.seqno
    assert child.do("bind", c, vm, [dict(op=UNMAP_ALL, obj=bo, addr=0, range=0)]) == 0
    b, o = drain(dfd)
    assert b.is_("VM_BIND") and o.is_("VM_BIND_OP", "DESTROY") and (o.addr, o.range) == (0, 0)


def test_b38_prefetch_only_bind_no_events(fd, child):
    """38. PREFETCH-only binds emit no VM_BIND/VM_BIND_OP."""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    bo = make_bo(child, c, SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ)]) == 0
    drain(dfd)
    assert child.do("bind", c, vm, [dict(op=PREFETCH, addr=0x100000, range=SZ, region=0)]) == 0
    sentinel(child, dfd, c)


def test_b38_prefetch_only_bind_with_ufence(fd, child):
    """38. PREFETCH-only binds emit no VM_BIND/VM_BIND_OP.  (With a user fence the fence is still
    held: a VM_BIND_UFENCE arrives naming the undelivered VM_BIND, §10.3.)"""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    bo = make_bo(child, c, SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ)]) == 0
    seen = {e.seqno for e in drain(dfd)}
    assert child.do("bind", c, vm, [dict(op=PREFETCH, addr=0x100000, range=SZ, region=0)],
                    ufence=("p", 5)) == 0
    uf = next_event(dfd)
    assert uf.is_("VM_BIND_UFENCE") and uf.flags == CREATE | NEED_ACK
    assert uf.vm_bind_ref_seqno not in seen and uf.vm_bind_ref_seqno > max(seen)
    assert child.do("wait_ufence", c, "p", 5, 100_000_000) == (-errno.ETIME, 0)
    assert ack(dfd, uf.seqno) == 0
    assert child.do("wait_ufence", c, "p", 5, 2_000_000_000) == (0, 5)


def ufence_bind(fd: int, child: Debuggee, value: int = 0xC0FFEE):
    """Live LR VM and a MAP bind carrying a user fence; returns (dfd, c, VM_BIND, UFENCE event)."""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    bo = make_bo(child, c, SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ)], ufence=("f", value)) == 0
    b = next_event(dfd)
    assert b.is_("VM_BIND") and next_event(dfd).is_("VM_BIND_OP")
    uf = next_event(dfd)
    return dfd, c, b, uf


def test_b39_ufence_bind_flag_and_event(fd, child):
    """39. A bind carrying a user fence sets VM_BIND.flags bit 0 and later emits VM_BIND_UFENCE
    with flags CREATE|NEED_ACK referencing the VM_BIND seqno."""
    dfd, c, b, uf = ufence_bind(fd, child)
    assert b.ev_flags & U.DRM_XE_EUDEBUG_EVENT_VM_BIND_FLAG_UFENCE
    assert uf.is_("VM_BIND_UFENCE") and uf.flags == CREATE | NEED_ACK and uf.len == 32
    assert uf.vm_bind_ref_seqno == b.seqno and uf.seqno > b.seqno


def test_b40_unacked_ufence_wait_times_out(fd, child):
    """40. Until that UFENCE event is acked, the client's wait-user-fence on the bind fence times
    out (ETIME) and the fence memory keeps its old value."""
    dfd, c, b, uf = ufence_bind(fd, child)
    assert child.do("wait_ufence", c, "f", 0xC0FFEE, 200_000_000) == (-errno.ETIME, 0)
    assert child.do("fence_value", "f") == 0


def test_b40_unbind_allowed_while_fence_held(fd, child):
    """40. Until that UFENCE event is acked, the client's wait-user-fence on the bind fence times
    out (ETIME) and the fence memory keeps its old value.  (Unbinding the mapping meanwhile is
    allowed, and the fence stays held, §10.4.)"""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    bo = make_bo(child, c, SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ)], ufence=("f", 0xC0FFEE)) == 0
    uf = [next_event(dfd) for _ in range(3)][-1]
    assert uf.is_("VM_BIND_UFENCE")
    assert child.do("bind", c, vm, [dict(op=UNMAP, addr=0x100000, range=SZ)]) == 0
    assert [e.name for e in drain(dfd)] == ["VM_BIND", "VM_BIND_OP"]
    assert child.do("wait_ufence", c, "f", 0xC0FFEE, 50_000_000) == (-errno.ETIME, 0)
    assert ack(dfd, uf.seqno) == 0
    assert child.do("wait_ufence", c, "f", 0xC0FFEE, 2_000_000_000) == (0, 0xC0FFEE)


def test_b40_fence_not_held_without_debugger_or_lr_vm(fd, child):
    """40. Until that UFENCE event is acked, the client's wait-user-fence on the bind fence times
    out (ETIME) and the fence memory keeps its old value.  (Only then: with no debugger attached,
    or for a bind in a non-LR VM, the value is written at once, §10.3, §10.4.)"""
    c = child.do("open")
    r, vm = child.do("vm_create", c, LR)
    bo = make_bo(child, c, 2 * SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ)], ufence=("a", 11)) == 0
    assert child.do("wait_ufence", c, "a", 11, 2_000_000_000) == (0, 11)
    dfd = attach(fd, child.pid)
    evs = read_discovery(dfd, 4)  # OPEN, VM, VM_BIND, VM_BIND_OP: no UFENCE from discovery
    assert [e.name for e in evs] == ["OPEN", "VM", "VM_BIND", "VM_BIND_OP"]
    r, plain = child.do("vm_create", c, 0)
    assert child.do("bind", c, plain, [dict(obj=bo, offset=SZ, addr=0x100000, range=SZ)], ufence=("b", 12)) == 0
    assert child.do("wait_ufence", c, "b", 12, 2_000_000_000) == (0, 12)
    expect_no_event(dfd)


def test_b41_ack_releases_ufence(fd, child):
    """41. ACK_EVENT with the UFENCE seqno returns 0 and the client's wait then completes with
    the value written."""
    dfd, c, b, uf = ufence_bind(fd, child)
    assert ack(dfd, uf.seqno, type_=uf.type) == 0
    assert child.do("wait_ufence", c, "f", 0xC0FFEE, 2_000_000_000) == (0, 0xC0FFEE)


def test_b42_ack_flags_einval_type_ignored(fd, child):
    """42. ACK_EVENT with `flags != 0` fails EINVAL; the `type` field is ignored."""
    dfd, c, b, uf = ufence_bind(fd, child)
    assert ack(dfd, uf.seqno, flags=1) == EINVAL
    assert ack(dfd, uf.seqno, flags=1 << 31) == EINVAL
    assert ack(dfd, uf.seqno, type_=0xDEAD) == 0
    assert child.do("wait_ufence", c, "f", 0xC0FFEE, 2_000_000_000) == (0, 0xC0FFEE)


def test_b43_ack_unknown_or_repeated_seqno_einval(fd, child):
    """43. ACK_EVENT with an unknown or already-acked seqno fails EINVAL."""
    dfd, c, b, uf = ufence_bind(fd, child)
    assert ack(dfd, uf.seqno + 1000) == EINVAL
    assert ack(dfd, b.seqno) == EINVAL  # an event that needs no ack
    assert ack(dfd, uf.seqno) == 0
    assert ack(dfd, uf.seqno) == EINVAL


def test_b44_debugger_close_releases_fences(fd, child):
    """44. Closing the debugger fd releases every held user fence (client waits complete)."""
    dfd, c, b, uf = ufence_bind(fd, child)
    assert child.do("wait_ufence", c, "f", 0xC0FFEE, 50_000_000)[0] == -errno.ETIME
    close_fd(dfd)
    assert child.do("wait_ufence", c, "f", 0xC0FFEE, 2_000_000_000) == (0, 0xC0FFEE)


def test_b44_error_detach_releases_fences(short_sim, child):
    """44. Closing the debugger fd releases every held user fence (client waits complete).
    (Every detach does, also one by a fifo timeout; acking the UFENCE then fails ENOTCONN, §5.3.)"""
    dev = track(open_device())
    dfd = attach(dev, child.pid)
    c = child.do("open")
    r, vm = child.do("vm_create", c, LR)
    bo = make_bo(child, c, SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ)], ufence=("f", 9)) == 0
    evs = [next_event(dfd) for _ in range(5)]  # OPEN, VM, VM_BIND, VM_BIND_OP, VM_BIND_UFENCE
    assert evs[-1].is_("VM_BIND_UFENCE"), evs
    assert child.do("wait_ufence", c, "f", 9, 10_000_000) == (-errno.ETIME, 0)
    child.do("md_create_many", c, 65)  # the 65th finds the fifo full: detach with ETIMEDOUT
    assert poll_mask(dfd, 0) == POLLIN | POLLHUP | POLLERR
    assert child.do("wait_ufence", c, "f", 9, 2_000_000_000) == (0, 9)
    assert len(drain(dfd)) == 64
    assert ack(dfd, evs[-1].seqno) == -errno.ENOTCONN


# === debug metadata ============================================================================

def test_b45_attach_debug_events(fd, child):
    """45. A MAP bind with k ATTACH_DEBUG extensions has `num_extensions = k` and is followed by
    k VM_BIND_OP_METADATA events (CREATE) carrying the op seqno, the metadata handle and the
    cookie."""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    ids, mh = [], []
    for i in range(2):
        r, md = child.do("md_create", c, i, b"meta" * (i + 1))
        ids.append(md)
        mh.append(next_event(dfd).metadata_handle)
    bo = make_bo(child, c, SZ)
    exts = [dict(metadata_id=ids[0], cookie=0xAAAA), dict(metadata_id=ids[1], cookie=0xBBBB)]
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ, ext=exts)]) == 0
    evs = drain(dfd)
    assert [e.name for e in evs] == ["VM_BIND", "VM_BIND_OP", "VM_BIND_OP_METADATA", "VM_BIND_OP_METADATA"]
    b, o, m1, m2 = evs
    assert b.num_binds == 1 and o.num_extensions == 2 and o.vm_bind_ref_seqno == b.seqno
    for m, h, cookie in ((m1, mh[0], 0xAAAA), (m2, mh[1], 0xBBBB)):
        assert m.flags == CREATE and m.len == 48
        assert (m.vm_bind_op_ref_seqno, m.metadata_handle, m.metadata_cookie) == (o.seqno, h, cookie)


def test_b46_attach_debug_errors(fd, child):
    """46. ATTACH_DEBUG on a non-MAP op, with non-zero flags, or with a bad extension name/pad
    fails EINVAL; an unknown metadata id fails ENOENT; a chain longer than 16 fails E2BIG."""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    r, md = child.do("md_create", c, 0, b"x" * 8)
    next_event(dfd)
    bo = make_bo(child, c, 2 * SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ)]) == 0
    assert len(drain(dfd)) == 2
    ok = dict(metadata_id=md, cookie=7)

    def bind(ext, op=MAP):
        o = dict(obj=bo, offset=SZ, addr=0x300000, range=SZ, ext=ext) if op == MAP else \
            dict(op=op, addr=0x100000, range=SZ, ext=ext)
        return child.do("bind", c, vm, [o])

    assert bind([ok], op=UNMAP) == EINVAL
    assert bind([dict(ok, flags=1)]) == EINVAL
    assert bind([dict(ok, name=1)]) == EINVAL
    assert bind([dict(ok, pad=1)]) == EINVAL
    assert bind([dict(ok, metadata_id=md + 100)]) == ENOENT
    c2 = child.do("open")
    next_event(dfd)
    r, md_other = child.do("md_create", c2, 0, b"y" * 8)
    next_event(dfd)
    assert md_other == 1
    r, md_other2 = child.do("md_create", c2, 0, b"y" * 8)  # id 2: only the other client has it
    assert md_other2 == 2 and md == 1
    next_event(dfd)
    assert bind([dict(ok, metadata_id=md_other2)]) == ENOENT  # ids are the client's own
    assert bind([ok] * 17) == -errno.E2BIG
    expect_no_event(dfd, 0.05)
    assert bind([ok] * 16) == 0
    evs = drain(dfd)
    assert [e.name for e in evs[:2]] == ["VM_BIND", "VM_BIND_OP"], "failed binds must not emit events"
    assert evs[1].num_extensions == 16 and len(evs) == 18


def test_b47_metadata_create_checks_and_ids(fd, local):
    """47. DEBUG_METADATA_CREATE with type ≥ 5, `user_addr == 0`, `len == 0` or
    `extensions != 0` fails EINVAL; ids start at 1."""
    dev = track(open_device())
    assert local.md_create(dev, U.WORK_IN_PROGRESS_DRM_XE_DEBUG_METADATA_NUM, b"abc")[0] == EINVAL
    assert local.md_create(dev, 1 << 40, b"abc")[0] == EINVAL
    assert local.md_create(dev, 0, b"abc", user_addr=0)[0] == EINVAL
    assert local.md_create(dev, 0, b"abc", length=0)[0] == EINVAL
    assert local.md_create(dev, 0, b"abc", extensions=1)[0] == EINVAL
    assert [local.md_create(dev, t, b"abc") for t in (0, 4)] == [(0, 1), (0, 2)]
    assert local.md_destroy(dev, 1) == 0
    assert local.md_create(dev, 2, b"abc") == (0, 1)  # lowest free id is reused
    other = track(open_device())
    assert local.md_create(other, 0, b"abc") == (0, 1)  # ids are per client
    assert local.md_create(dev, 0, b"x" * 16, user_addr=4096)[0] == -errno.EFAULT  # §9.1 step 5


def test_b48_metadata_destroy_unknown_enoent_attached_ok(fd, local):
    """48. DEBUG_METADATA_DESTROY of an unknown id fails ENOENT; destroying metadata that is
    attached to a mapping succeeds."""
    dev = track(open_device())
    assert local.md_destroy(dev, 1) == ENOENT
    r, md = local.md_create(dev, 0, b"payload")
    assert local.md_destroy(dev, md + 5) == ENOENT
    assert local.md_destroy(dev, md, extensions=1) == EINVAL  # §9.2
    r, vm = local.vm_create(dev, LR)
    r, bo = local.bo_create(dev, SZ)
    assert local.bind(dev, vm, [dict(obj=bo, addr=0x100000, range=SZ, ext=[dict(metadata_id=md, cookie=1)])]) == 0
    assert local.md_destroy(dev, md) == 0
    assert local.md_destroy(dev, md) == ENOENT


def test_b48_destroyed_attached_metadata_breaks_discovery(fd, child):
    """48. DEBUG_METADATA_DESTROY of an unknown id fails ENOENT; destroying metadata that is
    attached to a mapping succeeds.  (The mapping keeps the stale id: a later discovery of it
    disconnects the new connection with ENOENT, §2.2, §9.4.)"""
    c = child.do("open")
    r, md = child.do("md_create", c, 0, b"gone")
    r, vm = child.do("vm_create", c, LR)
    bo = make_bo(child, c, SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ,
                                         ext=[dict(metadata_id=md, cookie=1)])]) == 0
    assert child.do("md_destroy", c, md) == 0
    dfd = attach(fd, child.pid)
    deadline = time.monotonic() + 5
    while not poll_mask(dfd, 100) & POLLHUP:
        assert time.monotonic() < deadline, "discovery of the stale attachment did not disconnect"
        drain(dfd)
    assert poll_mask(dfd, 0) & (POLLHUP | POLLERR) == POLLHUP | POLLERR
    evs = drain(dfd)
    assert try_read(dfd)[0] == -errno.ENOTCONN
    assert not any(e.is_("VM_BIND_OP_METADATA") for e in evs)


def test_b49_metadata_events_type_and_len(fd, child):
    """49. METADATA CREATE/DESTROY events carry the metadata's type and len."""
    dfd, c, ch = live(fd, child)
    r, md = child.do("md_create", c, 3, b"q" * 37)
    ev = next_event(dfd)
    assert ev.is_("METADATA", "CREATE") and ev.len == 56
    assert (ev.client_handle, ev.md_type, ev.md_len) == (ch, 3, 37) and ev.metadata_handle >= 1
    assert child.do("md_destroy", c, md) == 0
    ev2 = next_event(dfd)
    assert ev2.is_("METADATA", "DESTROY") and ev2.f == ev.f


PAYLOAD = bytes(range(37))


def live_metadata(fd: int, child: Debuggee):
    dfd, c, ch = live(fd, child)
    r, md = child.do("md_create", c, 1, PAYLOAD)
    ev = next_event(dfd)
    assert ev.is_("METADATA", "CREATE")
    return dfd, c, ch, md, ev.metadata_handle


def test_b50_read_metadata_size_zero_query(fd, child):
    """50. READ_METADATA with `size == 0` copies nothing and returns `size = len`."""
    dfd, c, ch, md, mh = live_metadata(fd, child)
    ret, arg, buf = read_metadata(dfd, ch, mh, 0, capacity=64)
    assert ret == 0 and arg.size == len(PAYLOAD)
    assert buf == b"\xa5" * 64


def test_b51_read_metadata_short_size_einval(fd, child):
    """51. READ_METADATA with `0 < size < len` fails EINVAL without writing back."""
    dfd, c, ch, md, mh = live_metadata(fd, child)
    for size in (1, len(PAYLOAD) - 1):
        ret, arg, buf = read_metadata(dfd, ch, mh, size, capacity=64)
        assert ret == EINVAL and arg.size == size
        assert buf == b"\xa5" * 64


def test_b52_read_metadata_copies_exactly_len(fd, child):
    """52. READ_METADATA with `size ≥ len` copies exactly `len` bytes and returns `size = len`."""
    dfd, c, ch, md, mh = live_metadata(fd, child)
    for size in (len(PAYLOAD), 64):
        ret, arg, buf = read_metadata(dfd, ch, mh, size, capacity=64)
        assert ret == 0 and arg.size == len(PAYLOAD)
        assert buf[:len(PAYLOAD)] == PAYLOAD and buf[len(PAYLOAD):] == b"\xa5" * (64 - len(PAYLOAD))


def test_b53_read_metadata_bad_handles_or_flags_einval(fd, child):
    """53. READ_METADATA with unknown client or metadata handle, or non-zero flags, fails EINVAL."""
    dfd, c, ch, md, mh = live_metadata(fd, child)
    assert read_metadata(dfd, ch + 100, mh, 64)[0] == EINVAL
    assert read_metadata(dfd, ch, mh + 100, 64)[0] == EINVAL
    assert read_metadata(dfd, 0, mh, 64)[0] == EINVAL
    assert read_metadata(dfd, ch, mh, 64, flags=1)[0] == EINVAL
    assert read_metadata(dfd, ch, mh, 64)[0] == 0
    # lookups use the low 32 bits of the handles (§3.2)
    assert read_metadata(dfd, ch | 1 << 32, mh | 1 << 40, 64)[0] == 0
    # an invalid destination is EFAULT (§7 step 4/9)
    arg = U.drm_xe_eudebug_read_metadata(client_handle=ch, metadata_handle=mh, ptr=4096, size=64)
    assert seam.try_ioctl(dfd, U.DRM_XE_EUDEBUG_IOCTL_READ_METADATA, arg) == -errno.EFAULT
    # destroyed metadata: the handle is freed (§7)
    assert child.do("md_destroy", c, md) == 0
    assert next_event(dfd).is_("METADATA", "DESTROY")
    assert read_metadata(dfd, ch, mh, 64)[0] == EINVAL


# === VM_OPEN and vm fds ========================================================================

def mapped_vm(fd: int, child: Debuggee, size: int = SZ, addr: int = 0x100000):
    dfd, c, ch, vm, vh = live_vm(fd, child)
    bo = make_bo(child, c, size)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=addr, range=size)]) == 0
    drain(dfd)
    return dfd, c, ch, vm, vh, bo


def test_b54_vm_open_checks(fd, child):
    """54. VM_OPEN with unknown client or VM handle, or non-zero flags, fails EINVAL;
    `timeout_ns > 10 s` fails EINVAL."""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    limit = U.DRM_XE_EUDEBUG_VM_SYNC_MAX_TIMEOUT_NSECS
    assert vm_open(dfd, ch + 100, vh) == EINVAL
    assert vm_open(dfd, ch, vh + 100) == EINVAL
    assert vm_open(dfd, ch, 0) == EINVAL
    assert vm_open(dfd, ch, vh, flags=1) == EINVAL
    assert vm_open(dfd, ch, vh, timeout_ns=limit + 1) == EINVAL
    vfd = vm_open(dfd, ch, vh, timeout_ns=limit)
    assert vfd >= 0
    # the VM is not checked to belong to the client; extensions are ignored (§6.1)
    c2 = child.do("open")
    ch2 = next_event(dfd).client_handle
    assert vm_open(dfd, ch2, vh) >= 0
    assert vm_open(dfd, ch, vh, extensions=0xDEAD) >= 0


def test_b55_vm_open_cloexec_and_transfers(fd, child):
    """55. VM_OPEN returns a close-on-exec fd; pread/pwrite at a GPU VA inside a mapping transfer
    the requested bytes."""
    dfd, c, ch, vm, vh, bo = mapped_vm(fd, child)
    child.do("bo_write", c, bo, SZ, 0x100, b"written by the client")
    vfd = vm_open(dfd, ch, vh)
    assert vfd >= 0
    assert fcntl.fcntl(vfd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert seam.pread(vfd, 21, 0x100000 + 0x100) == b"written by the client"
    assert seam.pwrite(vfd, b"debugger", 0x100000 + 0x800) == 8
    assert child.do("bo_read", c, bo, SZ, 0x800, 8) == b"debugger"
    assert seam.pread(vfd, 8, 0x100000 + 0x800) == b"debugger"


def test_b55_vm_fd_file_position_fsync_ioctl(fd, child):
    """55. VM_OPEN returns a close-on-exec fd; pread/pwrite at a GPU VA inside a mapping transfer
    the requested bytes.  (read() uses and advances the file position set by lseek; fsync
    returns 0; ioctl fails ENOTTY, §6.2-6.5.)"""
    dfd, c, ch, vm, vh, bo = mapped_vm(fd, child)
    child.do("bo_write", c, bo, SZ, 0x40, b"0123456789")
    vfd = vm_open(dfd, ch, vh)
    assert seam.lseek(vfd, 0x100000 + 0x40, os.SEEK_SET) == 0x100040
    assert seam.read(vfd, 4) == b"0123"
    assert seam.read(vfd, 4) == b"4567"
    assert seam.lseek(vfd, 0, os.SEEK_CUR) == 0x100048
    seam.fsync(vfd)
    assert seam.try_ioctl(vfd, U.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, 0) == -errno.ENOTTY
    assert seam.lseek(vfd, 0, os.SEEK_END) == 0  # relative to size 0 (§6.3)
    assert errno_of(lambda: seam.mmap(vfd, 4096, 0)) == -errno.ENODEV


def test_b55_vm_fd_userptr_mapping(fd, child):
    """55. VM_OPEN returns a close-on-exec fd; pread/pwrite at a GPU VA inside a mapping transfer
    the requested bytes.  (Also for MAP_USERPTR mappings, which reach the client's memory and are
    reported as CREATE with the user's addr/range, §6.2, §10.1.)"""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    child.do("alloc", "u", SZ, b"userptr data")
    assert child.do("bind", c, vm, [dict(op=U.DRM_XE_VM_BIND_OP_MAP_USERPTR, userptr_key="u",
                                         addr=0x500000, range=SZ)]) == 0
    b, o = drain(dfd)
    assert o.is_("VM_BIND_OP", "CREATE") and (o.addr, o.range) == (0x500000, SZ)
    vfd = vm_open(dfd, ch, vh)
    assert seam.pread(vfd, 12, 0x500000) == b"userptr data"
    assert seam.pwrite(vfd, b"DEBUG", 0x500000 + 100) == 5
    assert child.do("mem_read", "u", 100, 5) == b"DEBUG"


def test_b55_vm_fd_keeps_working_after_detach(short_sim, child):
    """55. VM_OPEN returns a close-on-exec fd; pread/pwrite at a GPU VA inside a mapping transfer
    the requested bytes.  (A vm fd has no connection-state check: it keeps working after the
    connection was detached by an error, §6.2.)"""
    dev = track(open_device())
    dfd = attach(dev, child.pid)
    c = child.do("open")
    r, vm = child.do("vm_create", c, LR)
    bo = make_bo(child, c, SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ)]) == 0
    evs = [next_event(dfd) for _ in range(4)]
    vfd = vm_open(dfd, evs[0].client_handle, evs[1].vm_handle)
    assert vfd >= 0
    child.do("md_create_many", c, 65)  # overflow the fifo: detach with ETIMEDOUT
    assert poll_mask(dfd, 0) & POLLHUP
    assert seam.pwrite(vfd, b"after", 0x100000) == 5
    assert child.do("bo_read", c, bo, SZ, 0, 5) == b"after"


def test_b56_vm_fd_bounds(fd, child):
    """56. pread/pwrite starting outside any mapping fail EINVAL; a range running past the end of
    a mapping into unmapped space returns a short count; zero length returns 0."""
    start = 0x100000
    dfd, c, ch, vm, vh, bo = mapped_vm(fd, child, SZ, start)
    vfd = vm_open(dfd, ch, vh)
    assert errno_of(lambda: seam.pread(vfd, 1, start - 1)) == EINVAL
    assert errno_of(lambda: seam.pread(vfd, 16, start - 8)) == EINVAL  # starts in a hole
    assert errno_of(lambda: seam.pread(vfd, 1, start + SZ)) == EINVAL
    assert errno_of(lambda: seam.pread(vfd, 8, 0)) == EINVAL
    assert errno_of(lambda: seam.pwrite(vfd, b"x", start + SZ)) == EINVAL
    assert len(seam.pread(vfd, SZ + 1, start)) == SZ
    assert len(seam.pread(vfd, 64, start + SZ - 16)) == 16
    assert seam.pwrite(vfd, b"y" * 64, start + SZ - 16) == 16
    assert seam.pread(vfd, 0, start) == b""
    assert errno_of(lambda: seam.pwrite(vfd, b"x", -1)) == EINVAL
    assert seam.pwrite(vfd, b"", start) == 0


def test_b56_vm_fd_spans_adjacent_mappings(fd, child):
    """56. pread/pwrite starting outside any mapping fail EINVAL; a range running past the end of
    a mapping into unmapped space returns a short count; zero length returns 0.  (A range over
    adjacent mappings is transferred completely, §6.2.)"""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    bo = make_bo(child, c, 2 * SZ)
    child.do("bo_write", c, bo, 2 * SZ, SZ - 4, b"abcdefgh")
    assert child.do("bind", c, vm, [dict(obj=bo, offset=0, addr=0x100000, range=SZ),
                                    dict(obj=bo, offset=SZ, addr=0x100000 + SZ, range=SZ)]) == 0
    vfd = vm_open(dfd, ch, vh)
    assert seam.pread(vfd, 8, 0x100000 + SZ - 4) == b"abcdefgh"
    assert len(seam.pread(vfd, 2 * SZ + 64, 0x100000)) == 2 * SZ


def test_b57_vm_fd_einval_after_vm_destroy(fd, child):
    """57. vm fd accesses fail EINVAL after the VM's DESTROY event was generated."""
    dfd, c, ch, vm, vh, bo = mapped_vm(fd, child)
    vfd = vm_open(dfd, ch, vh)
    assert len(seam.pread(vfd, 8, 0x100000)) == 8
    assert child.do("vm_destroy", c, vm) == 0
    assert next_event(dfd).is_("VM", "DESTROY")
    assert errno_of(lambda: seam.pread(vfd, 8, 0x100000)) == EINVAL
    assert errno_of(lambda: seam.pwrite(vfd, b"z", 0x100000)) == EINVAL
    assert errno_of(lambda: seam.pread(vfd, 0, 0x100000)) == EINVAL  # before the zero-length check
    assert vm_open(dfd, ch, vh) == EINVAL  # the handle is gone


def test_b57_vm_fd_einval_when_handle_names_another_vm(fd, child):
    """57. vm fd accesses fail EINVAL after the VM's DESTROY event was generated.  (Also once the
    freed handle number names a new VM: the vm fd stays bound to the destroyed one, §6.2.)"""
    dfd, c, ch, vm, vh, bo = mapped_vm(fd, child)
    vfd = vm_open(dfd, ch, vh)
    assert child.do("vm_destroy", c, vm) == 0
    assert next_event(dfd).is_("VM", "DESTROY")
    r, vm2 = child.do("vm_create", c, LR)
    ev = next_event(dfd)
    assert ev.vm_handle == vh  # lowest free number reused
    assert child.do("bind", c, vm2, [dict(obj=bo, addr=0x100000, range=SZ)]) == 0
    drain(dfd)
    assert errno_of(lambda: seam.pread(vfd, 8, 0x100000)) == EINVAL
    assert len(seam.pread(vm_open(dfd, ch, vh), 8, 0x100000)) == 8


# === EU_CONTROL ================================================================================

STOPPED = U.DRM_XE_EUDEBUG_EU_CONTROL_CMD_STOPPED
INTERRUPT_ALL = U.DRM_XE_EUDEBUG_EU_CONTROL_CMD_INTERRUPT_ALL


def test_b58_eu_control_flags_and_size_einval(fd, child):
    """58. EU_CONTROL with `flags != 0` fails EINVAL; `bitmask_size` not a multiple of 4 fails
    EINVAL."""
    dfd, c, ch, vm, vh, eq, q = debuggable_queue(fd, child)
    args = dict(exec_queue=q.exec_queue_handle, lrc=q.lrc_handles[0])
    assert eu_control(dfd, ch, STOPPED, flags=1, bitmask_size=8, **args)[0] == EINVAL
    for size in (1, 3, 6):
        assert eu_control(dfd, ch, STOPPED, bitmask_size=size, **args)[0] == EINVAL, size


def test_b59_eu_control_bad_handles_einval(fd, child):
    """59. EU_CONTROL with an invalid client, exec-queue or LRC handle fails EINVAL."""
    dfd, c, ch, vm, vh, eq, q = debuggable_queue(fd, child)
    qh, lrc = q.exec_queue_handle, q.lrc_handles[0]
    assert eu_control(dfd, ch + 100, STOPPED, exec_queue=qh, lrc=lrc, bitmask_size=8)[0] == EINVAL
    assert eu_control(dfd, ch, STOPPED, exec_queue=qh + 100, lrc=lrc, bitmask_size=8)[0] == EINVAL
    assert eu_control(dfd, ch, STOPPED, exec_queue=qh, lrc=lrc + 100, bitmask_size=8)[0] == EINVAL
    assert eu_control(dfd, ch, STOPPED, exec_queue=0, lrc=lrc, bitmask_size=8)[0] == EINVAL
    # a queue whose VM belongs to another client (§8.1 step 8)
    child.do("open")
    other = next_event(dfd).client_handle
    assert eu_control(dfd, other, STOPPED, exec_queue=qh, lrc=lrc, bitmask_size=8)[0] == EINVAL


def test_b60_eu_control_interrupt_all_bitmask_and_bad_cmd_einval(fd, child):
    """60. EU_CONTROL INTERRUPT_ALL with a non-zero bitmask size fails EINVAL; an unknown cmd
    fails EINVAL."""
    dfd, c, ch, vm, vh, eq, q = debuggable_queue(fd, child)
    args = dict(exec_queue=q.exec_queue_handle, lrc=q.lrc_handles[0])
    assert eu_control(dfd, ch, INTERRUPT_ALL, bitmask_size=8, **args)[0] == EINVAL
    assert eu_control(dfd, ch, 3, **args)[0] == EINVAL
    assert eu_control(dfd, ch, 0xFFFFFFFF, bitmask_size=8, **args)[0] == EINVAL


def test_b61_eu_control_reports_hw_bitmask_size(fd, child):
    """61. EU_CONTROL returns the hardware bitmask size in `bitmask_size` whenever the caller
    passed a different size."""
    dfd, c, ch, eq, q, _last, bo = running_shader(fd, child)
    args = dict(exec_queue=q.exec_queue_handle, lrc=q.lrc_handles[0])
    ret, arg = eu_control(dfd, ch, INTERRUPT_ALL, **args)
    assert ret == 0, errno.errorcode.get(-ret, ret)
    hw = arg.bitmask_size
    assert hw > 0 and hw % 8 == 0
    for size in (4, hw + 64):
        ret, arg = eu_control(dfd, ch, STOPPED, bitmask_size=size, **args)
        assert ret == 0 and arg.bitmask_size == hw, (size, ret, arg.bitmask_size)
    ret, arg = eu_control(dfd, ch, STOPPED, bitmask_size=hw, **args)
    assert ret == 0 and arg.bitmask_size == hw


def test_b62_eu_attention_events(fd, child):
    """62. EU_ATTENTION events have STATE_CHANGE, `flags` 0, `bitmask_size` = 8 × DSS count, and
    repeat every scan (~100 ms) while threads remain halted."""
    dfd, c, ch, eq, q, _last, bo = running_shader(fd, child)
    args = dict(exec_queue=q.exec_queue_handle, lrc=q.lrc_handles[0])
    assert eu_control(dfd, ch, INTERRUPT_ALL, **args)[0] == 0
    dss = dss_count(fd)
    seen = []
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        ev = next_event(dfd)
        if ev.is_("EU_ATTENTION"):
            seen.append(ev)
    assert len(seen) == 3, seen
    bitmaps = [ev.raw[HDR_SIZE + 32:] for ev in seen]
    for ev, bits in zip(seen, bitmaps):
        assert ev.flags == STATE_CHANGE and ev.ev_flags == 0
        assert ev.bitmask_size == 8 * dss == len(bits)
        assert (ev.client_handle, ev.exec_queue_handle, ev.lrc_handle) == \
            (ch, q.exec_queue_handle, q.lrc_handles[0])
    # the threads stay halted: the same bitmap again, one bit per thread
    assert bitmaps[0] == bitmaps[1] == bitmaps[2]
    assert sum(bin(b).count("1") for b in bitmaps[0]) == SHADER_THREADS
    assert seen[0].seqno < seen[1].seqno < seen[2].seqno
    # resuming every halted thread stops the repetition once the loop is told to end
    child.do("bo_write", c, bo, 2 * SZ, SZ + SHADER_STEERING, struct.pack("<I", SHADER_END))
    ret, arg = eu_control(dfd, ch, U.DRM_XE_EUDEBUG_EU_CONTROL_CMD_RESUME, bitmask=bitmaps[2],
                          **args)
    assert ret == 0, errno.errorcode.get(-ret, ret)


# === fifo, disconnect ==========================================================================

def test_b63_full_fifo_blocks_then_detaches_etimedout(short_sim, child):
    """63. A full fifo (64 events) blocks the producing client ioctl; after 25 s (0.5 s here)
    without room the event is dropped and the connection is detached with ETIMEDOUT."""
    dfd, elapsed = fifo_timeout_scene(child)
    assert elapsed >= 0.4, f"the 65th event did not block its producer ({elapsed:.3f} s)"
    assert poll_mask(dfd, 0) == POLLIN | POLLHUP | POLLERR
    evs = drain(dfd)
    assert [e.seqno for e in evs] == list(range(1, 65))  # the 65th was dropped
    assert try_read(dfd)[0] == -errno.ENOTCONN
    # detached: the target can be connected again
    dev = track(open_device())
    assert attach(dev, child.pid) >= 0


def test_b63_reading_unblocks_full_fifo_producer(fd, child):
    """63. A full fifo (64 events) blocks the producing client ioctl; after 25 s without room the
    event is dropped and the connection is detached with ETIMEDOUT.  (Here: reading one event in
    time lets the blocked producer finish; nothing is dropped, §3.6, §4.2.)"""
    dfd = attach(fd, child.pid)
    c = child.do("open")
    child.send("md_create_many", c, 64)  # 1 + 64 events: the last one finds the fifo full
    assert not child.ready(0.3), "the producer of the 65th event did not block"
    assert try_read(dfd)[0] == 0
    assert len(child.result(timeout=10.0)) == 64
    assert poll_mask(dfd, 0) == POLLIN  # still attached
    evs = drain(dfd)
    assert [e.seqno for e in evs] == list(range(2, 66))


def test_b64_disconnect_keeps_queued_events(short_sim, child):
    """64. Disconnect does not discard queued events."""
    dfd, _ = fifo_timeout_scene(child)
    assert poll_mask(dfd, 0) & POLLHUP
    evs = drain(dfd)
    assert evs[0].is_("OPEN", "CREATE") and all(e.is_("METADATA", "CREATE") for e in evs[1:])
    assert len(evs) == 64


def test_b65_toggle_busy_while_attached(fd, child):
    """65. Writing 0 to `enable_eudebug` while a connection is attached fails EBUSY; writing the
    current value succeeds."""
    dfd = attach(fd, child.pid)
    with pytest.raises(OSError) as info:
        enable_eudebug(fd, False)
    assert info.value.errno == errno.EBUSY
    assert enable_eudebug(fd, True) is True
    assert connect(fd, child.pid)[0] == EBUSY  # still attached and enabled
    close_fd(dfd)
    assert enable_eudebug(fd, False) is True  # no connection left: disabling works at once
    try:
        assert enable_eudebug(fd, False) is False
    finally:
        enable_eudebug(fd, True)


def test_b67_target_exit_keeps_connection(fd, child):
    """67. Target process exit does not end the connection; only the debugger fd's last close or
    an error does."""
    dfd, c, ch = live(fd, child)
    child.exit()
    ev = next_event(dfd)
    assert ev.is_("OPEN", "DESTROY") and ev.client_handle == ch
    assert poll_mask(dfd, 100) == 0  # no POLLHUP
    assert try_read(dfd)[0] == -errno.EAGAIN
    assert vm_open(dfd, 100, 100) == EINVAL  # not ENOTCONN
    assert ack(dfd, 12345) == EINVAL


def test_b68_self_debug(fd):
    """68. A process may debug itself; its own xe DRM files then show up as clients."""
    dfd = attach(fd, os.getpid())
    new = track(open_device())
    # The open either waited for the discovery (66) and was reported live, or came before the
    # discovery took the device and was discovered, last (clients go in open order): either way,
    # once discovery is complete every event of both is queued, the new file's OPEN last.
    wait_discovery(dfd)
    *discovered, ev = drain(dfd)
    assert discovered and all(e.is_("OPEN", "CREATE") for e in discovered)  # at least `fd`
    assert ev.is_("OPEN", "CREATE") and ev.client_handle not in {e.client_handle for e in discovered}
    close_fd(new)
    ev2 = next_event(dfd)
    assert ev2.is_("OPEN", "DESTROY") and ev2.client_handle == ev.client_handle


def test_b69_vm_destroy_without_unbind_events(fd, child):
    """69. VM DESTROY is sent without unbind events for remaining mappings."""
    dfd, c, ch, vm, vh = live_vm(fd, child)
    bo = make_bo(child, c, 2 * SZ)
    assert child.do("bind", c, vm, [dict(obj=bo, addr=0x100000, range=SZ),
                                    dict(obj=bo, offset=SZ, addr=0x200000, range=SZ)]) == 0
    assert len(drain(dfd)) == 3
    assert child.do("vm_destroy", c, vm) == 0
    ev = next_event(dfd)
    assert ev.is_("VM", "DESTROY") and ev.vm_handle == vh
    sentinel(child, dfd, c)


def test_b70_reserved_always_zero(fd, child):
    """70. Event `reserved` is always 0 in delivered events."""
    sc = build_scene(fd, child)
    dfd = attach(fd, child.pid)
    evs = read_discovery(dfd)
    c = sc["c"]
    r, md = child.do("md_create", c, 2, b"r" * 9)
    bo = make_bo(child, c, SZ)
    assert child.do("bind", c, sc["vm_b"], [dict(obj=bo, addr=0x100000, range=SZ,
                                                 ext=[dict(metadata_id=md, cookie=3)])],
                    ufence=("r", 1)) == 0
    assert child.do("md_destroy", c, md) == 0
    assert child.do("vm_destroy", c, sc["vm_b"]) == 0
    child.do("close", c)
    deadline = time.monotonic() + 5
    while not any(e.is_("OPEN", "DESTROY") for e in evs) and time.monotonic() < deadline:
        evs.append(next_event(dfd))
    names = {e.name for e in evs}
    assert {"OPEN", "METADATA", "VM", "VM_BIND", "VM_BIND_OP", "VM_BIND_OP_METADATA",
            "VM_BIND_UFENCE", "EXEC_QUEUE"} <= names, names
    for e in evs:
        assert e.reserved == 0 and e.raw[16:24] == bytes(8), e
