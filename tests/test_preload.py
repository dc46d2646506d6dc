"""The route of unmodified C programs to the simulator: the preload library and `xe-eudebug run`.

A small C client (tests/data/preload_probe.c, compiled here) runs through ``python3 -m xe_eudebug
run`` against a private simulator; the tests check what it observed and what the simulator saw,
including a C debugger connecting to a Python client and a Python debugger reading a C client's
BO through its VM file.  Without a C compiler the tests skip; the sysfs test also needs
umockdev-run (sysfs exists only under it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from xe_eudebug import uapi
from xe_eudebug.debugger import Debugger
from xe_eudebug.events import EventFlags, EventType
from xe_eudebug.ioctl import ioctl
from xe_eudebug.sim import port
from xe_eudebug.sim.config import SOCKET_ENV
from xe_eudebug.sim.run import RunError, preload_library, umockdev_description

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_SOURCE = os.path.join(ROOT, "tests", "data", "preload_probe.c")
CC = os.environ.get("CC", "cc").split()
DISCOVERY_WAIT = 30.0  # seconds discovery (a worker thread of its own) may take to start, loaded


def _compiler() -> bool:
    return shutil.which(CC[0]) is not None


pytestmark = pytest.mark.skipif(not _compiler(), reason=f"no C compiler ({CC[0]}) for the C programs")


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("probe") / "preload_probe")
    subprocess.run(CC + ["-O1", "-Wall", "-I", os.path.dirname(PROBE_SOURCE), "-o", out, PROBE_SOURCE], check=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def server(sim_server):  # one private instance, eudebug on: the C programs' simulator
    return sim_server(devices=2, enable_default=True, read_event_timeout=0.5)


def _env(socket_path: str) -> dict[str, str]:
    env = dict(os.environ)
    env[SOCKET_ENV] = socket_path
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run(server, *args: str, run_args: tuple[str, ...] = (), timeout: float = 60,
        check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "xe_eudebug", "run", *run_args, "--", *args],
                          env=_env(server.socket), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{args}: status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "FAIL" not in proc.stdout, proc.stdout
    return proc


def test_both_node_kinds_open_the_simulated_device(server, probe: str) -> None:
    out = run(server, probe, "nodes").stdout
    assert "/dev/dri/card0 226:0" in out and "/dev/dri/renderD128 226:128" in out
    assert "driver xe" in out


def test_dup_dup2_and_close(server, probe: str) -> None:
    assert "dup ok" in run(server, probe, "dup").stdout


def test_reopen_through_proc_self_fd_is_a_new_drm_file(server, probe: str) -> None:
    out = run(server, probe, "reopen").stdout
    assert "link /dev/dri/renderD128" in out
    # a VM belongs to the DRM file that created it: the reopened file does not see it
    assert "destroy on the reopened file: -2" in out  # ENOENT
    assert "destroy on the first file: 0" in out


def _discovered_vms(debugger: Debugger) -> list:
    """The VM create events of discovery: waits for the first; the others were queued with it (a
    discovery reports all it finds at once) and are read without a wait for more."""
    def vm_create(e) -> bool:
        return e.type == EventType.VM and bool(e.flags & EventFlags.CREATE)

    first = next((e for e in debugger.events(timeout=DISCOVERY_WAIT) if vm_create(e)), None)
    if first is None:
        return []
    return [first] + [e for e in debugger.events(timeout=0.1) if vm_create(e)]


def _attach_and_find_vms(server, pid: int) -> list:
    """VM create events a debugger attached to `pid` sees in discovery."""
    fd = port.open_device(0, socket_path=server.socket)
    try:
        debugger = Debugger(fd)
        debugger.attach(pid)
        try:
            return _discovered_vms(debugger)
        finally:
            debugger.close()
    finally:
        os.close(fd)


def test_fork_then_use_in_the_child(server, probe: str) -> None:
    """The child uses its inherited fd, and the DRM file it opens is its own: a debugger attached
    to the child's pid sees its VM."""
    proc = subprocess.Popen([sys.executable, "-m", "xe_eudebug", "run", "--", probe, "fork"],
                            env=_env(server.socket), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line.startswith("child "), line
        pid, vm_id = int(line.split()[1]), int(line.split()[3])
        assert [e.vm_handle for e in _attach_and_find_vms(server, pid)] == [vm_id]
        proc.stdin.close()
        rest = proc.stdout.read()
    finally:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(30)
    assert "child status 0" in rest and "FAIL" not in rest
    assert proc.returncode == 0


def test_exit_status_and_signals_as_a_shell_reports_them(server, probe: str) -> None:
    assert run(server, probe, "exit", "7", check=False).returncode == 7
    assert run(server, probe, "signal", str(int(signal.SIGTERM)), check=False).returncode == 128 + signal.SIGTERM


def test_enable_turns_eudebug_on_first(sim_server, probe: str) -> None:
    off = sim_server(devices=1, enable_default=False)
    run(off, probe, "exit", "0", run_args=("--enable",))
    assert port.device_enabled(0, socket_path=off.socket) is True


def test_devices_must_match_the_named_instance(server, probe: str) -> None:
    proc = run(server, probe, "exit", "0", run_args=("--devices", "3"), check=False)
    assert proc.returncode == 2 and "2 device(s), not 3" in proc.stderr


@pytest.mark.skipif(shutil.which("umockdev-run") is None, reason="umockdev-run not installed: no sysfs for C programs")
def test_sysfs_toggle_reaches_the_simulator(sim_server, probe: str) -> None:
    off = sim_server(devices=1, enable_default=False)
    out = run(off, probe, "sysfs", "1").stdout
    assert "before 0" in out and "after 1" in out
    assert port.device_enabled(0, socket_path=off.socket) is True
    out = run(off, probe, "sysfs", "0").stdout
    assert "before 1" in out and "after 0" in out
    assert port.device_enabled(0, socket_path=off.socket) is False


def test_c_debugger_connects_to_a_python_client(server, probe: str) -> None:
    fd = port.open_device(0, socket_path=server.socket)
    try:
        arg = uapi.drm_xe_vm_create()
        arg.flags = uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE  # the debugger sees LR VMs only
        ioctl(fd, uapi.DRM_IOCTL_XE_VM_CREATE, arg)
        out = run(server, probe, "debugger", str(os.getpid())).stdout
    finally:
        os.close(fd)
    assert "connected" in out
    assert f"event {int(uapi.DRM_XE_EUDEBUG_EVENT_OPEN)} flags {int(uapi.DRM_XE_EUDEBUG_EVENT_CREATE)}" in out
    assert (f"event {int(uapi.DRM_XE_EUDEBUG_EVENT_VM)} flags {int(uapi.DRM_XE_EUDEBUG_EVENT_CREATE)} "
            f"client ") in out and f" vm {arg.vm_id}" in out


def test_python_debugger_reads_a_c_clients_bo_through_the_vm_fd(server, probe: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "xe_eudebug", "run", "--", probe, "client"],
                            env=_env(server.socket), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    fd = -1
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line.startswith("ready "), line
        pid, vm_id = int(line.split()[1]), int(line.split()[3])
        fd = port.open_device(0, socket_path=server.socket)
        debugger = Debugger(fd)
        debugger.attach(pid)
        try:
            vms = _discovered_vms(debugger)
            assert [e.vm_handle for e in vms] == [vm_id]
            vm = debugger.vm_open(vms[0].client_handle, vm_id)
            try:
                data = vm.pread(4096, 0x100000)
            finally:
                vm.close()
        finally:
            debugger.close()
        # the client filled it through a write-only mapping of the BO
        assert data == bytes((i * 7 + 1) & 0xFF for i in range(4096))
    finally:
        if fd >= 0:
            os.close(fd)
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(30)


def test_preload_library_is_cached_by_source_hash(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = preload_library()
    assert first.startswith(str(tmp_path)) and os.path.exists(first)
    mtime = os.stat(first).st_mtime_ns
    time.sleep(0.01)
    assert preload_library() == first and os.stat(first).st_mtime_ns == mtime


def test_no_compiler_is_one_clear_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(RunError) as info:
        preload_library(cc="/nonexistent/cc")
    message = str(info.value)
    assert "\n" not in message and "no C compiler" in message


def test_umockdev_description_names_every_node() -> None:
    text = umockdev_description(2, 0x64A0)
    for name, minor in (("card0", 0), ("renderD128", 128), ("card1", 1), ("renderD129", 129)):
        assert f"E: DEVNAME=/dev/dri/{name}" in text and f"E: MINOR={minor}" in text
    assert text.count("E: PCI_ID=8086:64A0") == 2 and text.count("A: enable_eudebug=0") == 2
    assert text.count("A: tile0/gt0/engines/ccs/job_timeout_ms=") == 2 and "tile1/" not in text
    two = umockdev_description(1, 0xE20B, tiles=2)
    assert "A: tile1/gt1/engines/rcs/.defaults/preempt_timeout_us=" in two


@pytest.mark.skipif(shutil.which("umockdev-run") is None, reason="umockdev-run not installed: no sysfs for C programs")
def test_c_program_reads_and_writes_job_timeout_ms(sim_server, probe: str) -> None:
    """IGT's route (xe_sysfs_engine_open + openat): the simulator's value, a write it honours,
    the default beside it, and the kernel's bounds."""
    two = sim_server(devices=1, tiles=2, job_timeout_ms=700)
    out = run(two, probe, "engine", "1", "ccs").stdout
    assert "job_timeout_ms 700" in out and "default 700" in out
    out = run(two, probe, "engine", "1", "ccs", "1234").stdout
    assert "write 1234 ok" in out and "job_timeout_ms 1234" in out and "default 700" in out
    assert port.sysfs(0, "tile1/gt1/engines/ccs/job_timeout_ms", socket_path=two.socket) == b"1234\n"
    assert port.sysfs(0, "tile0/gt0/engines/ccs/job_timeout_ms", socket_path=two.socket) == b"700\n"
    out = run(two, probe, "engine", "0", "rcs", "0").stdout                   # below job_timeout_min
    assert "write 0 Invalid argument" in out and "job_timeout_ms 700" in out


def test_c_program_sees_the_vram_of_a_discrete_device(sim_server, probe: str) -> None:
    dgfx = sim_server(devices=1, discrete=True, tiles=2, vram_size=1 << 30)
    out = run(dgfx, probe, "regions").stdout
    assert "region 0 class 0" in out
    assert f"region 1 class 1 size {1 << 30} visible {1 << 30}" in out
    assert f"region 2 class 1 size {1 << 30} visible {1 << 30}" in out
    assert "devid 0xe20b flags 1" in out
    proc = run(dgfx, probe, "exit", "0", run_args=("--tiles", "1"), check=False)
    assert proc.returncode == 2 and "--tiles" in proc.stderr


def test_run_starts_a_discrete_private_instance(probe: str) -> None:
    env = _env("")
    env.pop(SOCKET_ENV)
    proc = subprocess.run([sys.executable, "-m", "xe_eudebug", "run", "--discrete", "--", probe, "regions"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "region 1 class 1" in proc.stdout and "devid 0xe20b flags 1" in proc.stdout


def test_c_program_resets_a_gt_through_debugfs(sim_server, probe: str) -> None:
    """IGT's xe_force_gt_reset_async: debugfs looks mounted, dri/<minor>/gtN/force_reset exists, and
    the write resets that GT: its running LR job stops and its queue is banned; GT 0's runs on."""
    from gpuexec import ERR, GpuClient, spin

    two = sim_server(devices=1, tiles=2)
    batch, batch0 = 0x1A0000, 0x1A0040                                  # GT 1's and GT 0's loops
    with GpuClient(fd=two.open_device(0)) as c:
        vm = c.vm()                                                     # LR: no job timeout
        bo = c.bo()
        c.bind(vm, bo, batch)
        c.write(bo, 0, spin(batch, batch + 0x100))                      # marks its start, then loops
        c.write(bo, 0x40, spin(batch0, batch + 0x108))
        on_gt1 = c.queue(vm, engine_class=uapi.DRM_XE_ENGINE_CLASS_COMPUTE, gt=1)
        on_gt0 = c.queue(vm, engine_class=uapi.DRM_XE_ENGINE_CLASS_COMPUTE, gt=0)
        assert c.exec(on_gt1, batch) == 0 and c.exec(on_gt0, batch0) == 0
        c.wait_started(bo, 0x100, "GT 1's loop")                        # a reset stops a running job
        c.wait_started(bo, 0x108, "GT 0's loop")
        out = run(two, probe, "reset", "/dev/dri/card0", "1").stdout
        assert "mountpoint 1" in out and "reset ok" in out
        deadline = time.monotonic() + 30
        while c.exec(on_gt1, batch) == 0:                              # queued behind the loop until banned
            assert time.monotonic() < deadline, "GT 1's queue was not banned by the reset"
            time.sleep(0.1)
        assert c.exec(on_gt1, batch) == ERR["ECANCELED"]
        assert c.exec(on_gt0, batch0) == 0                              # GT 0 was not reset
        c.queue_destroy(on_gt0)
