"""Ports of IGT ``tests/intel/xe_eudebug.c``: connection, events of clients/VMs/exec queues.

Each test names the IGT subtest it ports; ``docs/subtests.md`` maps every subtest.  They run on
the run's private simulator or on real hardware (``XE_EUDEBUG_DEVICE=/dev/dri/renderD*``).
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import pwd
import random
import select
import threading
import warnings
from typing import Any, Callable

from . import clients as ic
from .registry import Skip, subtest
from xe_eudebug import ioctl as seam
from xe_eudebug import uapi
from xe_eudebug.client import Client, exec_queue_args
from xe_eudebug.debugger import connect
from xe_eudebug.device import enable_eudebug, open_device, query_engines, reopen
from xe_eudebug.events import HEADER, EventFlags, EventType, decode
from xe_eudebug.session import Session





def _connect_self(fd: int) -> int:
    ret = connect(fd, os.getpid())
    if ret >= 0:
        os.close(ret)
    return ret


# ------------------------------------------------------------------------------------------------

@subtest("sysfs-toggle")
def test_sysfs_toggle(fd: int) -> None:
    """IGT sysfs-toggle: the enable_eudebug toggle gates CONNECT and is idempotent."""
    enable_eudebug(fd, False)
    assert _connect_self(fd) < 0, "CONNECT succeeded with eudebug disabled"
    enable_eudebug(fd, True)
    assert _connect_self(fd) >= 0
    enable_eudebug(fd, True)
    assert _connect_self(fd) >= 0
    enable_eudebug(fd, False)
    assert _connect_self(fd) < 0
    enable_eudebug(fd, False)
    assert _connect_self(fd) < 0
    enable_eudebug(fd, True)
    assert _connect_self(fd) >= 0


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


@subtest("basic-connect")
def test_basic_connect(fd: int) -> None:
    """IGT basic-connect: CONNECT argument validation."""
    pid = _dead_pid()
    ret = ic.connect_raw(fd, pid)
    assert ret == (-errno.EINVAL if pid == 0 else -errno.ENOENT), f"CONNECT(dead pid {pid}) returned {ret}"
    assert ic.connect_raw(fd, 0) == -errno.EINVAL
    me = os.getpid()
    assert ic.connect_raw(fd, me, version=0xFFFFFFFF) == -errno.EINVAL
    assert ic.connect_raw(fd, me, flags=0xFFFFFFFF) == -errno.EINVAL
    assert ic.connect_raw(fd, me, extensions=(1 << 64) - 1) == -errno.EINVAL
    ret = ic.connect_raw(fd, me)
    assert ret >= 0, f"CONNECT to own pid failed: {os.strerror(-ret)}"
    os.close(ret)


# ------------------------------------------------------------------------------------------------
# connect-user

def _switch_user(uid: int, gid: int, video_gid: int) -> None:
    """IGT's switch_user (T:604-625): only the video group, then the gid and the uid, each
    checked after the switch; dumpable again (setuid cleared it), so CONNECT can reach us."""
    os.setgroups([video_gid])
    os.setgid(gid)
    os.setuid(uid)
    assert os.getgroups() == [video_gid], f"supplementary groups {os.getgroups()}, expected [{video_gid}]"
    assert os.getgid() == gid, f"getgid() {os.getgid()}, expected {gid}"
    assert os.getuid() == uid, f"getuid() {os.getuid()}, expected {uid}"
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_DUMPABLE = 4
    if libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")


def _connect_user_case(app_user: pwd.struct_passwd | None, dbg_user: pwd.struct_passwd | None,
                       video_gid: int, expected: int, open_node: Callable[[], int]) -> None:
    """Fork an app (optionally as ``app_user``) and a debugger (optionally as ``dbg_user``).
    The debugger switches user first and then opens the DRM node (T:737,742), so the node must
    be usable by a member of group video; its CONNECT result must be ``expected`` (0 = success)."""
    pid_r, pid_w = os.pipe()
    rel_r, rel_w = os.pipe()

    def app() -> None:
        os.close(pid_r)
        os.close(rel_w)
        if app_user is not None:
            _switch_user(app_user.pw_uid, app_user.pw_gid, video_gid)
        os.write(pid_w, os.getpid().to_bytes(8, "little"))
        ready, _, _ = select.select([rel_r], [], [], 30)
        assert ready, "app: never released"

    app_proc = ic.run_forked(app, 40)

    def debugger() -> None:
        os.close(pid_w)
        os.close(rel_r)
        if dbg_user is not None:
            _switch_user(dbg_user.pw_uid, dbg_user.pw_gid, video_gid)
        ready, _, _ = select.select([pid_r], [], [], 30)
        assert ready, "debugger: no pid from the app"
        target = int.from_bytes(os.read(pid_r, 8), "little")
        try:
            dfd = open_node()
            ret = connect(dfd, target)
        finally:
            os.write(rel_w, b"x")  # then release the app, whatever happened (IGT: after CONNECT)
        if ret >= 0:
            os.close(ret)
            ret = 0
        assert ret == expected, f"CONNECT to {target}: got {ret}, expected {expected}"

    dbg_proc = ic.run_forked(debugger, 40)
    for end in (pid_r, pid_w, rel_r, rel_w):
        os.close(end)
    try:
        dbg_proc.join()
    finally:
        app_proc.join()


def _video_node(sim_server: Callable[..., Any]) -> tuple[Callable[[], int], Callable[[], None]]:
    """How a process opens the DRM node after the switch, and how to release it.  Hardware: the
    render node, which the video group can open.  Simulator: a private instance whose socket
    belongs to group video (mode 0660 in a 0710 directory, SimConfig.group), as a render node."""
    if os.environ.get("XE_EUDEBUG_DEVICE", "").startswith("/"):
        return open_device, lambda: None
    handle = sim_server(group="video", enable_default=True)
    return (lambda: handle.open_device(0)), handle.stop


def _users() -> tuple[pwd.struct_passwd, int]:
    if os.geteuid() != 0:
        raise Skip("connect-user switches users: needs root")
    try:
        lp = pwd.getpwnam("lp")
    except KeyError:
        raise Skip("user 'lp' does not exist")
    try:
        video = grp.getgrnam("video").gr_gid
    except KeyError:
        raise AssertionError("group 'video' does not exist")
    return lp, video


@subtest("connect-user")
def test_connect_user(fd: int, sim_server: Callable[..., Any]) -> None:
    """IGT connect-user: CONNECT permission model across uids (ptrace-like), each debugger
    opening the node only after it dropped privileges."""
    lp, video = _users()
    node, release = _video_node(sim_server)
    try:
        _connect_user_case(None, lp, video, -errno.EACCES, node)   # non-root debugger -> root app
        _connect_user_case(lp, lp, video, 0, node)                  # lp -> lp
        _connect_user_case(lp, None, video, 0, node)                # root -> lp
        try:
            mail = pwd.getpwnam("mail")
        except KeyError:
            warnings.warn("user 'mail' does not exist: case mail -> lp skipped")
            return
        _connect_user_case(lp, mail, video, -errno.EACCES, node)    # mail -> lp
    finally:
        release()


# ------------------------------------------------------------------------------------------------

@subtest("basic-close")
def test_basic_close(fd: int) -> None:
    """IGT basic-close: one debugger per target; closing the connection frees the slot."""
    first = connect(fd, os.getpid())
    assert first >= 0, f"CONNECT to own pid failed: {os.strerror(-first)}"
    try:
        assert connect(fd, os.getpid()) == -errno.EBUSY
    finally:
        os.close(first)
    fd2 = reopen(fd)
    try:
        again = connect(fd2, os.getpid())
        assert again >= 0, f"CONNECT after close failed: {os.strerror(-again)}"
        os.close(again)
    finally:
        os.close(fd2)


def _read_event(dfd: int, length: int, type_: int = EventType.READ) -> tuple[int, int, bytes]:
    """A raw READ_EVENT with header ``len``/``type``; (result, len after the call, bytes)."""
    buf = ctypes.create_string_buffer(max(length, HEADER.size, 32 * 1024))
    HEADER.pack_into(buf, 0, length, int(type_), 0, 0, 0)
    ret = seam.try_ioctl(dfd, uapi.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, buf)
    out_len = HEADER.unpack_from(buf, 0)[0]
    return ret, out_len, buf.raw[: max(HEADER.size, min(out_len, len(buf)))]


@subtest("basic-read-event")
def test_basic_read_event(fd: int) -> None:
    """IGT basic-read-event: READ_EVENT/poll error codes and size negotiation."""
    with Session(ic.basic_client, 0, device=fd) as s:
        c, d = s.client, s.debugger
        assert c is not None and d is not None
        d.attach(c)
        dfd = d.fd
        assert ic.poll_in(dfd, 500) == 0, "poll reported an event before the client ran"
        ret, _, _ = _read_event(dfd, 32 * 1024)
        assert ret == -errno.ENOENT, f"blocking READ_EVENT with nothing queued returned {ret}"

        c.start()
        assert ic.poll_in(dfd, 5000) & select.POLLIN
        ret, _, raw = _read_event(dfd, 32 * 1024)
        assert ret == 0
        e = decode(raw)
        assert e.type == EventType.OPEN and e.flags == EventFlags.CREATE, str(e)
        assert ic.poll_in(dfd, 5000) & select.POLLIN, "the OPEN DESTROY is not queued"

        assert _read_event(dfd, 32 * 1024, EventType.NONE)[0] == -errno.EINVAL
        ret, ln, _ = _read_event(dfd, 0)
        assert (ret, ln) == (-errno.EINVAL, 0)
        assert _read_event(dfd, 23)[0] == -errno.EINVAL
        ret, need, _ = _read_event(dfd, 24)
        assert ret == -errno.EMSGSIZE and need > 24, (ret, need)
        ret, need2, _ = _read_event(dfd, need - 1)
        assert ret == -errno.EMSGSIZE and need2 == need, (ret, need2)

        ret, _, raw = _read_event(dfd, need)
        assert ret == 0
        e = decode(raw)
        assert e.type == EventType.OPEN and e.flags == EventFlags.DESTROY, str(e)

        os.set_blocking(dfd, False)
        assert ic.poll_in(dfd, 500) == 0
        assert _read_event(dfd, 32 * 1024)[0] == -errno.EAGAIN
        c.wait_done()
        c.stop()
        assert ic.poll_in(dfd, 500) == 0
        assert _read_event(dfd, 32 * 1024)[0] == -errno.EAGAIN


@subtest("basic-client")
def test_basic_client(fd: int) -> None:
    """IGT basic-client: OPEN create/destroy events with a stable client handle."""
    ic.run_basic_sessions(fd, 0, 1, True)


def _threaded_vm_client(c: Client) -> None:
    rng = random.Random(os.getpid())
    dfd = c.open_driver()
    errors: list[BaseException] = []

    def body(count: int) -> None:
        try:
            vms = [c.vm_create(dfd, ic.LR) for _ in range(count)]
            for vm in vms:
                c.vm_destroy(dfd, vm)
        except BaseException as exc:  # re-raised in the client's main thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(rng.randint(2, 17),)) for _ in range(rng.randint(2, 17))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a VM thread did not finish"
    if errors:
        raise errors[0]
    c.close_driver(dfd)


@subtest("basic-client-th")
def test_basic_client_th(fd: int) -> None:
    """IGT basic-client-th: VM events from many client threads sharing one DRM client."""
    ic.run_client_with_trigger(fd, 0, _threaded_vm_client, match_opposite=True, filter=0)


@subtest("multiple-sessions")
def test_multiple_sessions(fd: int) -> None:
    """IGT multiple-sessions: 4 client/debugger pairs (VMs and exec queues), forked first,
    run one after the other, then all checked."""
    ic.run_basic_sessions(fd, ic.CREATE_VMS | ic.CREATE_EXEC_QUEUES, 4, True)


@subtest("basic-vms")
def test_basic_vms(fd: int) -> None:
    """IGT basic-vms: VM create/destroy events, including a scratch-page VM."""
    ic.run_basic_sessions(fd, ic.CREATE_VMS, 1, True)


@subtest("basic-exec-queues")
def test_basic_exec_queues(fd: int) -> None:
    """IGT basic-exec-queues: EXEC_QUEUE create/destroy events of eudebug-enabled queues."""
    ic.run_basic_sessions(fd, ic.CREATE_EXEC_QUEUES, 1, True)


def _exec_queue_create(fd: int, vm: int, hwe: object, value: int) -> tuple[int, int]:
    """(result, exec queue id) of EXEC_QUEUE_CREATE with the EUDEBUG property set to ``value``."""
    prop = uapi.drm_xe_ext_set_property()
    prop.base.name = uapi.DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY
    prop.property = uapi.DRM_XE_EXEC_QUEUE_SET_PROPERTY_EUDEBUG
    prop.value = value
    create = exec_queue_args(vm, hwe, eudebug=False, extensions=prop)
    ret = seam.try_ioctl(fd, uapi.DRM_IOCTL_XE_EXEC_QUEUE_CREATE, create)
    return ret, int(create.exec_queue_id)


def _exec_queue_destroy(fd: int, qid: int) -> None:
    arg = uapi.drm_xe_exec_queue_destroy()
    arg.exec_queue_id = qid
    seam.ioctl(fd, uapi.DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, arg)


def igt_exec_queue_values() -> list[int]:
    """The property values IGT's loop tries (T:2758-2761): 0, then ``1 << (i - 1)`` for i = 1..64
    evaluated as a 32-bit int and stored in the u64 ``value``.  ``1 << 31`` is INT_MIN, which
    sign-extends to 0xFFFFFFFF80000000; shifts of 32 and more are undefined in C, and x86 (the
    hardware IGT runs on) masks the count to 5 bits, so i = 33..64 repeat i = 1..32."""
    out = [0]
    for i in range(1, 65):
        v32 = (1 << ((i - 1) % 32)) & 0xFFFFFFFF
        out.append(v32 | 0xFFFFFFFF00000000 if v32 & 0x80000000 else v32)
    return out


@subtest("basic-exec-queues-enable")
def test_basic_exec_queues_enable(fd: int) -> None:
    """IGT basic-exec-queues-enable: the EUDEBUG exec-queue property is accepted only on
    render/compute engines, only with exactly ENABLE, only on LR VMs, and -EPERM while eudebug
    is disabled.  The values are IGT's (including 0xFFFFFFFF80000000, its ``1 << 31``) followed
    by the genuine 64-bit single bits 1 << 32 .. 1 << 63 that IGT's int shift never reaches; the
    kernel refuses every value with a bit other than ENABLE (-EINVAL)."""
    vm_non_lr = ic.vm_create_raw(fd, 0)
    vm_lr = ic.vm_create_raw(fd, ic.LR)
    enable = uapi.DRM_XE_EXEC_QUEUE_EUDEBUG_FLAG_ENABLE
    values = igt_exec_queue_values() + [1 << n for n in range(32, 64)]
    try:
        for hwe in query_engines(fd):
            debuggable = hwe.engine_class in ic.RENDER_COMPUTE
            for value in values:
                ret, qid = _exec_queue_create(fd, vm_lr, hwe, value)
                where = f"engine class {hwe.engine_class}:{hwe.engine_instance} value {value:#x}"
                if not debuggable or value != enable:
                    assert ret == -errno.EINVAL, f"{where}: {ret}"
                    continue
                assert ret == 0, f"{where}: {ret}"
                _exec_queue_destroy(fd, qid)
                assert _exec_queue_create(fd, vm_non_lr, hwe, value)[0] == -errno.EINVAL, f"{where}, non-LR VM"
                enable_eudebug(fd, False)
                try:
                    assert _exec_queue_create(fd, vm_lr, hwe, value)[0] == -errno.EPERM, f"{where}, disabled"
                finally:
                    enable_eudebug(fd, True)
    finally:
        ic.vm_destroy_raw(fd, vm_lr)
        ic.vm_destroy_raw(fd, vm_non_lr)
