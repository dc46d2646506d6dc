"""Device selection, the eudebug toggle, device queries, and the simulator end to end through the
system-call seam with the real kernel model (DRM_IOCTL_VERSION, GEM_CREATE + mmap, VM_CREATE,
CONNECT, READ_EVENT, VM_OPEN)."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import subprocess
import sys
import time

import pytest

seam = pytest.importorskip("xe_eudebug.ioctl", reason="the system-call seam (xe_eudebug.ioctl) is not available")
pytest.importorskip("xe_eudebug.sim.kernel", reason="the simulator's kernel model is not available")
drm = pytest.importorskip("xe_eudebug.uapi.drm", reason="uapi mirrors are not available")
xe = pytest.importorskip("xe_eudebug.uapi.xe_drm", reason="uapi mirrors are not available")
eud = pytest.importorskip("xe_eudebug.uapi.xe_drm_eudebug", reason="uapi mirrors are not available")

from xe_eudebug import device  # noqa: E402
from xe_eudebug.sim import port  # noqa: E402
from xe_eudebug.sim.config import SOCKET_ENV  # noqa: E402

if os.environ.get("XE_EUDEBUG_DEVICE", "").startswith("/"):
    pytest.skip("these tests exercise the simulator's device layer", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_MS = 30000  # ms an event may take to come on a loaded machine (discovery runs in a thread of its own)


@pytest.fixture
def dev():
    fd = device.open_device("sim")
    yield fd
    os.close(fd)


@pytest.fixture
def two_devices(sim_server, monkeypatch):
    """A private two-device simulator selected through XE_EUDEBUG_SIM_SOCKET."""
    srv = sim_server(devices=2, read_event_timeout=0.5)
    monkeypatch.setenv(SOCKET_ENV, srv.socket)
    return srv


def read_event(dbg: int, size: int = 4096) -> bytes:
    buf = ctypes.create_string_buffer(size)
    struct.pack_into("<IHH", buf, 0, size, eud.DRM_XE_EUDEBUG_EVENT_READ, 0)
    seam.ioctl(dbg, eud.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, buf)
    length = struct.unpack_from("<I", buf, 0)[0]
    return buf.raw[:length]


def next_event(dbg: int) -> bytes:
    """The next event, once there is one: a blocking READ_EVENT alone gives up after the
    two_devices instance's short read timeout (0.5 s)."""
    assert seam.poll([(dbg, select.POLLIN)], WAIT_MS) == [(dbg, select.POLLIN)], "no event"
    return read_event(dbg)


def connect_self(fd: int) -> int:
    arg = eud.drm_xe_eudebug_connect()
    arg.pid = os.getpid()
    return seam.ioctl(fd, eud.DRM_IOCTL_XE_EUDEBUG_CONNECT, arg)


def test_open_sim_is_an_xe_device_with_a_real_cloexec_fd(dev):
    assert isinstance(dev, int) and dev >= 0
    assert not os.get_inheritable(dev)
    assert device.driver_name(dev) == "xe"
    assert device.device_name(dev) == "sim:0"
    assert device.is_simulated(dev)


def test_device_selectors(two_devices):
    fd1 = device.open_device("sim:1")
    try:
        assert device.device_name(fd1) == "sim:1"
        again = device.reopen(fd1)
        try:
            assert device.device_name(again) == "sim:1"
            assert os.fstat(again).st_ino != os.fstat(fd1).st_ino  # a new DRM file
        finally:
            os.close(again)
    finally:
        os.close(fd1)
    with pytest.raises(OSError) as info:
        device.open_device("sim:2")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(ValueError):
        device.open_device("simulator")
    with pytest.raises(FileNotFoundError):
        device.open_device("/nonexistent/renderD999")


def test_unset_device_falls_back_to_the_simulator_once(simulator_session):
    if os.path.isdir("/dev/dri") and any(n.startswith("renderD") for n in os.listdir("/dev/dri")):
        pytest.skip("this machine has render nodes; the fallback is not taken")
    env = dict(os.environ)
    env.pop("XE_EUDEBUG_DEVICE", None)
    env["PYTHONPATH"] = ROOT
    code = ("import os, xe_eudebug.device as d\n"
            "a = d.open_device(); b = d.open_device()\n"
            "print(d.device_name(a), d.device_name(b))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["sim:0", "sim:0"]
    lines = [line for line in out.stderr.splitlines() if "simulator" in line]
    assert len(lines) == 1, out.stderr


def test_enable_reads_the_value_back(dev, monkeypatch):
    """IGT's __xe_eudebug_enable_getset reads the toggle back after writing it (lib L:1838):
    a write that does not stick is an error, not a silent success."""
    before = device.eudebug_enabled(dev)
    try:
        assert device.enable_eudebug(dev, True) is before
        assert device.eudebug_enabled(dev) is True
        real_set = port.set_enabled
        monkeypatch.setattr(port, "set_enabled", lambda fd, value: real_set(fd, not value))
        with pytest.raises(AssertionError, match=r"enable_eudebug of simulated device sim:0: wrote 0, reads back 1"):
            device.enable_eudebug(dev, False)
    finally:
        monkeypatch.undo()
        device.enable_eudebug(dev, before)


def test_enable_toggle_defaults_off_returns_previous_and_refuses_disable_while_attached(two_devices):
    fd = device.open_device("sim:0")
    try:
        assert device.eudebug_enabled(fd) is False  # the kernel starts disabled
        with pytest.raises(OSError) as info:
            connect_self(fd)
        assert info.value.errno == errno.ENODEV
        assert device.enable_eudebug(fd, True) is False
        assert device.enable_eudebug(fd, True) is True  # writing the current value succeeds
        dbg = connect_self(fd)
        try:
            with pytest.raises(OSError) as info:
                device.enable_eudebug(fd, False)
            assert info.value.errno == errno.EBUSY
        finally:
            os.close(dbg)
        deadline = time.monotonic() + 5
        while True:  # the debugger's release runs when the server sees the last close
            try:
                assert device.enable_eudebug(fd, False) is True
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        other = device.open_device("sim:1")
        try:
            assert device.eudebug_enabled(other) is False  # per device
        finally:
            os.close(other)
    finally:
        os.close(fd)


def test_queries(dev):
    engines = device.query_engines(dev)
    classes = {e.engine_class for e in engines}
    assert {xe.DRM_XE_ENGINE_CLASS_RENDER, xe.DRM_XE_ENGINE_CLASS_COPY, xe.DRM_XE_ENGINE_CLASS_COMPUTE} <= classes
    config = device.query_config(dev)
    assert config["min_alignment"] == 4096
    assert config["va_bits"] == 48
    assert device.min_alignment(dev) == 4096


def test_debugger_fd_flags_blocking_read_event_and_poll(two_devices):
    fd = device.open_device("sim:0")
    device.enable_eudebug(fd, True)
    dbg = connect_self(fd)
    try:
        assert os.get_inheritable(dbg)  # §1.B: no O_CLOEXEC
        import fcntl
        assert not fcntl.fcntl(dbg, fcntl.F_GETFL) & os.O_NONBLOCK
        # Discovery reports our own DRM file.
        p = select.poll()
        p.register(dbg, select.POLLIN)
        assert p.poll(WAIT_MS) == [(dbg, select.POLLIN)]
        ev = read_event(dbg)
        assert struct.unpack_from("<HH", ev, 4) == (eud.DRM_XE_EUDEBUG_EVENT_OPEN, eud.DRM_XE_EUDEBUG_EVENT_CREATE)
        assert p.poll(0) == []
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            read_event(dbg)
        assert info.value.errno == errno.ENOENT
        assert time.monotonic() - start >= 0.4
        # An LR VM created by the target produces an event and POLLIN.
        vm = xe.drm_xe_vm_create()
        vm.flags = xe.DRM_XE_VM_CREATE_FLAG_LR_MODE
        seam.ioctl(fd, xe.DRM_IOCTL_XE_VM_CREATE, vm)
        assert p.poll(WAIT_MS) == [(dbg, select.POLLIN)]
        ev = read_event(dbg)
        assert struct.unpack_from("<HH", ev, 4) == (eud.DRM_XE_EUDEBUG_EVENT_VM, eud.DRM_XE_EUDEBUG_EVENT_CREATE)
        with pytest.raises(OSError) as info:
            seam.read(dbg, 16)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(dbg)
        os.close(fd)


def _read_byte(fd: int, timeout: float = 10.0) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        raise AssertionError("timed out waiting for the other process")
    return os.read(fd, 1)


def test_closing_the_device_in_a_child_emits_open_destroy(two_devices):
    fd = device.open_device("sim:0")
    device.enable_eudebug(fd, True)
    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child_fd = device.open_device("sim:0")
            os.write(to_parent_w, b"o")
            _read_byte(to_child_r)
            os.close(child_fd)
            _read_byte(to_child_r)  # exits when the parent is done
            code = 0
        finally:
            os._exit(code)
    try:
        assert _read_byte(to_parent_r) == b"o"
        arg = eud.drm_xe_eudebug_connect()
        arg.pid = pid
        dbg = seam.ioctl(fd, eud.DRM_IOCTL_XE_EUDEBUG_CONNECT, arg)
        try:
            ev = next_event(dbg)
            assert struct.unpack_from("<HH", ev, 4) == (eud.DRM_XE_EUDEBUG_EVENT_OPEN, eud.DRM_XE_EUDEBUG_EVENT_CREATE)
            handle = struct.unpack_from("<Q", ev, 24)[0]
            os.write(to_child_w, b"x")
            ev = next_event(dbg)  # the child's close (last copy) runs the release path
            assert struct.unpack_from("<HH", ev, 4) == (eud.DRM_XE_EUDEBUG_EVENT_OPEN, eud.DRM_XE_EUDEBUG_EVENT_DESTROY)
            assert struct.unpack_from("<Q", ev, 24)[0] == handle
        finally:
            os.close(dbg)
    finally:
        os.write(to_child_w, b"xx")
        deadline = time.monotonic() + 10
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        for x in (to_parent_r, to_parent_w, to_child_r, to_child_w, fd):
            os.close(x)


def test_bo_mmap_shares_memory_with_the_debugger_vm_fd(two_devices):
    fd = device.open_device("sim:0")
    device.enable_eudebug(fd, True)
    dbg = connect_self(fd)
    try:
        assert struct.unpack_from("<H", next_event(dbg), 4)[0] == eud.DRM_XE_EUDEBUG_EVENT_OPEN
        client_handle = None
        vm = xe.drm_xe_vm_create()
        vm.flags = xe.DRM_XE_VM_CREATE_FLAG_LR_MODE
        seam.ioctl(fd, xe.DRM_IOCTL_XE_VM_CREATE, vm)
        ev = next_event(dbg)
        client_handle, vm_handle = struct.unpack_from("<QQ", ev, 24)
        bo = xe.drm_xe_gem_create()
        bo.size = 8192
        bo.placement = 1
        bo.cpu_caching = xe.DRM_XE_GEM_CPU_CACHING_WB
        seam.ioctl(fd, xe.DRM_IOCTL_XE_GEM_CREATE, bo)
        mo = xe.drm_xe_gem_mmap_offset()
        mo.handle = bo.handle
        seam.ioctl(fd, xe.DRM_IOCTL_XE_GEM_MMAP_OFFSET, mo)
        m = seam.mmap(fd, 8192, mo.offset)
        try:
            m[0:6] = b"abcdef"
            bind = xe.drm_xe_vm_bind()
            bind.vm_id = vm.vm_id
            bind.num_binds = 1
            bind.bind.obj = bo.handle
            bind.bind.pat_index = 2                   # write-back, coherent (Xe2)
            bind.bind.range = 8192
            bind.bind.addr = 0x100000
            bind.bind.op = xe.DRM_XE_VM_BIND_OP_MAP
            seam.ioctl(fd, xe.DRM_IOCTL_XE_VM_BIND, bind)
            opened = eud.drm_xe_eudebug_vm_open()
            opened.client_handle = client_handle
            opened.vm_handle = vm_handle
            vmfd = seam.ioctl(dbg, eud.DRM_XE_EUDEBUG_IOCTL_VM_OPEN, opened)
            try:
                assert not os.get_inheritable(vmfd)  # §6.1: O_CLOEXEC
                assert seam.pread(vmfd, 6, 0x100000) == b"abcdef"
                assert seam.pwrite(vmfd, b"XY", 0x100000 + 4096) == 2
                assert m[4096:4098] == b"XY"
            finally:
                os.close(vmfd)
        finally:
            m.close()
    finally:
        os.close(dbg)
        os.close(fd)


def test_cli_lists_the_simulator(simulator_session):
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "xe_eudebug", "devices"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "sim:0" in out.stdout
    assert port.server_info()["devices"] >= 1


def test_error_detach_shows_hup_raw_and_hup_err_through_the_seam(sim_server, monkeypatch):
    """A full fifo that is not read detaches the connection with ETIMEDOUT (§3.6, §12.1): raw
    poll shows POLLHUP, the seam's poll gives the kernel's exact POLLIN|POLLHUP|POLLERR."""
    srv = sim_server(fifo_capacity=2, fifo_timeout=0.3, fifo_retry=0.05, enable_default=True)
    monkeypatch.setenv(SOCKET_ENV, srv.socket)
    fd = device.open_device("sim")
    dbg = connect_self(fd)
    try:
        deadline = time.monotonic() + 10
        while seam.poll([(dbg, select.POLLIN)], 0) != [(dbg, select.POLLIN | select.POLLHUP | select.POLLERR)]:
            assert time.monotonic() < deadline, "the connection was not detached"
            vm = xe.drm_xe_vm_create()
            vm.flags = xe.DRM_XE_VM_CREATE_FLAG_LR_MODE
            seam.ioctl(fd, xe.DRM_IOCTL_XE_VM_CREATE, vm)  # blocks up to fifo_timeout when full
        raw = select.poll()
        raw.register(dbg, select.POLLIN)
        assert dict(raw.poll(1000))[dbg] & select.POLLHUP
        events = 0
        while True:  # queued events stay readable, then ENOTCONN
            try:
                read_event(dbg)
                events += 1
            except OSError as exc:
                assert exc.errno == errno.ENOTCONN
                break
        assert events == 2
        assert seam.poll([(dbg, select.POLLIN)], 0) == [(dbg, select.POLLHUP | select.POLLERR)]
    finally:
        os.close(dbg)
        os.close(fd)


def test_toggle_without_a_device_file_is_the_same_toggle(two_devices):
    """The sysfs toggle of a device needs no open DRM file (port.device_enabled, what C programs
    reach through /sys/dev/char/226:M/device/enable_eudebug): same value, same EBUSY rule."""
    sock = two_devices.socket
    assert port.device_enabled(1, socket_path=sock) is False
    assert port.device_enabled(1, True, socket_path=sock) is False
    fd = device.open_device("sim:1")
    try:
        assert device.eudebug_enabled(fd) is True
        assert port.device_enabled(0, socket_path=sock) is False  # per device
        dbg = connect_self(fd)
        try:
            with pytest.raises(OSError) as info:
                port.device_enabled(1, False, socket_path=sock)
            assert info.value.errno == errno.EBUSY
        finally:
            os.close(dbg)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        port.device_enabled(2, socket_path=sock)
    assert info.value.errno == errno.ENODEV



def test_engine_class_properties_read_write_and_refuse_out_of_range(sim_server, dev):
    """set_engine_class_property writes a scheduling property through the fd's simulator (not
    the one XE_EUDEBUG_SIM_SOCKET names), reads it back and returns the old value; a value out
    of the attribute's bounds is EINVAL naming the attribute and the value."""
    fd = sim_server().open_device(0)
    try:
        ccs = xe.DRM_XE_ENGINE_CLASS_COMPUTE
        maximum = device.engine_class_property(fd, 0, ccs, "preempt_timeout_max")
        old = device.set_engine_class_property(fd, 0, ccs, "preempt_timeout_us", maximum)
        assert device.engine_class_property(fd, 0, ccs, "preempt_timeout_us") == maximum != old
        with pytest.raises(OSError) as info:
            device.set_engine_class_property(fd, 0, ccs, "preempt_timeout_us", maximum + 1)
        assert info.value.errno == errno.EINVAL
        assert "tile0/gt0/engines/ccs/preempt_timeout_us" in str(info.value) and str(maximum + 1) in str(info.value)
        assert device.engine_class_property(dev, 0, ccs, "preempt_timeout_us") == old   # the run's own simulator
        assert device.set_engine_class_property(fd, 0, ccs, "preempt_timeout_us", old) == maximum
    finally:
        os.close(fd)
