"""Raw-ioctl helpers for the kernel-behaviour tests (tests/test_kernel_behaviour.py).

Only the system-call seam (`xe_eudebug.ioctl`), the uapi structs (`xe_eudebug.uapi`) and device
opening/toggling (`xe_eudebug.device`) are used here: no framework objects.  Events are decoded
from their bytes with `struct`, at the offsets of kernel-behaviour.md §0.4.3.

The debuggee is a forked process that performs one action per command received over a pipe and
answers with the action's result (mostly a raw ``-errno`` / return value pair), so a test can
interleave client and debugger steps exactly.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap as _pymmap
import os
import pickle
import select
import signal
import struct
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from xe_eudebug import ioctl as seam
from xe_eudebug import uapi as U
from xe_eudebug.device import enable_eudebug, open_device, query_engines

__all__ = [
    "U", "seam", "Ev", "decode", "Actions", "track", "tracked_fds", "HDR_SIZE", "connect", "attach",
    "read_event_raw", "next_event", "try_read", "wait_discovery",
    "drain", "expect_no_event", "poll_mask", "ack", "vm_open", "read_metadata", "eu_control",
    "set_nonblock", "close_fd", "Debuggee", "find_engine", "enable_eudebug", "set_eudebug", "open_device",
    "LR", "EV", "FL", "dead_pid",
]

LR = U.DRM_XE_VM_CREATE_FLAG_LR_MODE

#: event type values by short name
EV = {
    "OPEN": U.DRM_XE_EUDEBUG_EVENT_OPEN,
    "VM": U.DRM_XE_EUDEBUG_EVENT_VM,
    "EXEC_QUEUE": U.DRM_XE_EUDEBUG_EVENT_EXEC_QUEUE,
    "EU_ATTENTION": U.DRM_XE_EUDEBUG_EVENT_EU_ATTENTION,
    "VM_BIND": U.DRM_XE_EUDEBUG_EVENT_VM_BIND,
    "VM_BIND_OP": U.DRM_XE_EUDEBUG_EVENT_VM_BIND_OP,
    "VM_BIND_UFENCE": U.DRM_XE_EUDEBUG_EVENT_VM_BIND_UFENCE,
    "METADATA": U.DRM_XE_EUDEBUG_EVENT_METADATA,
    "VM_BIND_OP_METADATA": U.DRM_XE_EUDEBUG_EVENT_VM_BIND_OP_METADATA,
    "PAGEFAULT": U.DRM_XE_EUDEBUG_EVENT_PAGEFAULT,
}
TYPE_NAME = {v: k for k, v in EV.items()}

FL = {
    "CREATE": U.DRM_XE_EUDEBUG_EVENT_CREATE,
    "DESTROY": U.DRM_XE_EUDEBUG_EVENT_DESTROY,
    "STATE_CHANGE": U.DRM_XE_EUDEBUG_EVENT_STATE_CHANGE,
    "NEED_ACK": U.DRM_XE_EUDEBUG_EVENT_NEED_ACK,
}

HDR = struct.Struct("<IHHQQ")
HDR_SIZE = HDR.size  # 24

# payload field names (u64 unless noted) by type, at offset 24
_PAYLOAD: dict[int, tuple[str, list[str]]] = {
    EV["OPEN"]: ("<Q", ["client_handle"]),
    EV["VM"]: ("<QQ", ["client_handle", "vm_handle"]),
    EV["EXEC_QUEUE"]: ("<QQQII", ["client_handle", "vm_handle", "exec_queue_handle", "engine_class", "width"]),
    EV["EU_ATTENTION"]: ("<QQQII", ["client_handle", "exec_queue_handle", "lrc_handle", "ev_flags", "bitmask_size"]),
    EV["VM_BIND"]: ("<QQII", ["client_handle", "vm_handle", "ev_flags", "num_binds"]),
    EV["VM_BIND_OP"]: ("<QQQQ", ["vm_bind_ref_seqno", "num_extensions", "addr", "range"]),
    EV["VM_BIND_UFENCE"]: ("<Q", ["vm_bind_ref_seqno"]),
    EV["METADATA"]: ("<QQQQ", ["client_handle", "metadata_handle", "md_type", "md_len"]),
    EV["VM_BIND_OP_METADATA"]: ("<QQQ", ["vm_bind_op_ref_seqno", "metadata_handle", "metadata_cookie"]),
    EV["PAGEFAULT"]: ("<QQQIIQ", ["client_handle", "exec_queue_handle", "lrc_handle", "ev_flags",
                                  "bitmask_size", "pagefault_address"]),
}


@dataclass
class Ev:
    """A decoded event: header fields, payload fields in ``f``, and the raw bytes."""

    len: int
    type: int
    flags: int
    seqno: int
    reserved: int
    raw: bytes
    f: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["f"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def name(self) -> str:
        return TYPE_NAME.get(self.type, str(self.type))

    def is_(self, type_name: str, flag_name: str | None = None) -> bool:
        if self.type != EV[type_name]:
            return False
        return flag_name is None or self.flags == FL[flag_name]

    def __repr__(self) -> str:
        return f"Ev({self.name} flags={self.flags:#x} seqno={self.seqno} len={self.len} {self.f})"


def decode(raw: bytes) -> Ev:
    length, type_, flags, seqno, reserved = HDR.unpack_from(raw, 0)
    raw = bytes(raw[:length])
    ev = Ev(length, type_, flags, seqno, reserved, raw)
    spec = _PAYLOAD.get(type_)
    if spec is not None and length >= HDR_SIZE + struct.calcsize(spec[0]):
        ev.f.update(zip(spec[1], struct.unpack_from(spec[0], raw, HDR_SIZE)))
        if type_ == EV["EXEC_QUEUE"]:
            n = ev.f["width"]
            ev.f["lrc_handles"] = list(struct.unpack_from(f"<{n}Q", raw, 56)) if length >= 56 + 8 * n else None
    return ev


# --- fds the test process holds; a forked debuggee closes them so the test's closes are final --

_parent_fds: set[int] = set()


def tracked_fds() -> set[int]:
    """The device, debugger and vm fds the test process holds (a copy)."""
    return set(_parent_fds)


def track(fd: int) -> int:
    _parent_fds.add(fd)
    return fd


def close_fd(fd: int) -> None:
    _parent_fds.discard(fd)
    os.close(fd)


def set_nonblock(fd: int, on: bool = True) -> None:
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, (fl | os.O_NONBLOCK) if on else (fl & ~os.O_NONBLOCK))


def set_eudebug(fd: int, enable: bool, timeout: float = 5.0) -> bool:
    """`enable_eudebug`, retrying EBUSY for up to `timeout` s (a debugger fd closed just before
    may still be in its release path); returns the previous state."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return enable_eudebug(fd, enable)
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


# --- debugger-side ioctls ----------------------------------------------------------------------

def connect(fd: int, pid: int, *, extensions: int = 0, flags: int = 0, version: int = 0
            ) -> tuple[int, Any]:
    """Raw CONNECT: (return value or -errno, the struct as copied back)."""
    arg = U.drm_xe_eudebug_connect(extensions=extensions, pid=pid, flags=flags, version=version)
    ret = seam.try_ioctl(fd, U.DRM_IOCTL_XE_EUDEBUG_CONNECT, arg)
    if ret >= 0:
        track(ret)
    return ret, arg


def attach(fd: int, pid: int, nonblock: bool = True) -> int:
    """Connect or fail the test with the errno."""
    ret, _ = connect(fd, pid)
    assert ret >= 0, f"DRM_IOCTL_XE_EUDEBUG_CONNECT to pid {pid} failed: {errno.errorcode.get(-ret, ret)}"
    if nonblock:
        set_nonblock(ret)
    return ret


def read_event_raw(dfd: int, capacity: int = 4096, *, type_: int | None = None, flags: int = 0,
                   reserved: int = 0, length: int | None = None) -> tuple[int, bytearray]:
    """Raw READ_EVENT into a `capacity`-byte buffer whose header says `length` (default capacity).

    Returns (ret or -errno, the buffer after the call)."""
    buf = (ctypes.c_uint8 * max(capacity, HDR_SIZE))()
    HDR.pack_into(buf, 0, capacity if length is None else length,
                  U.DRM_XE_EUDEBUG_EVENT_READ if type_ is None else type_, flags, 0, reserved)
    ret = seam.try_ioctl(dfd, U.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, ctypes.addressof(buf))
    return ret, bytearray(buf)


def poll_mask(fd: int, timeout_ms: int = 0, events: int = select.POLLIN) -> int:
    return dict(seam.poll([(fd, events)], timeout_ms)).get(fd, 0)


def try_read(dfd: int) -> tuple[int, Ev | None]:
    """One READ_EVENT (the fd should be non-blocking): (ret, event or None)."""
    ret, buf = read_event_raw(dfd)
    return ret, (decode(buf) if ret == 0 else None)


def next_event(dfd: int, timeout: float = 5.0) -> Ev:
    """Wait (poll) up to `timeout` s for the next event and read it; fail the test otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        mask = poll_mask(dfd, max(0, int(left * 1000)))
        if mask & select.POLLIN:
            ret, ev = try_read(dfd)
            if ret == 0:
                assert ev is not None
                return ev
            if ret != -errno.EAGAIN:
                raise AssertionError(f"READ_EVENT failed: {errno.errorcode.get(-ret, ret)}")
        elif mask & select.POLLHUP:
            raise AssertionError(f"debugger fd detached (poll mask {mask:#x}) while waiting for an event")
        if time.monotonic() >= deadline:
            raise AssertionError(f"no event within {timeout} s")


def drain(dfd: int) -> list[Ev]:
    """Read every event queued right now (non-blocking fd)."""
    out = []
    while True:
        ret, ev = try_read(dfd)
        if ret != 0:
            assert ret in (-errno.EAGAIN, -errno.ENOTCONN), f"READ_EVENT: {errno.errorcode.get(-ret, ret)}"
            return out
        assert ev is not None
        out.append(ev)


def expect_no_event(dfd: int, timeout: float = 0.1) -> None:
    mask = poll_mask(dfd, int(timeout * 1000))
    if mask & select.POLLIN:
        ret, ev = try_read(dfd)
        raise AssertionError(f"unexpected event: {ev!r} (ret {ret})")


def ack(dfd: int, seqno: int, *, flags: int = 0, type_: int | None = None) -> int:
    arg = U.drm_xe_eudebug_ack_event(type=EV["VM_BIND_UFENCE"] if type_ is None else type_,
                                     flags=flags, seqno=seqno)
    return seam.try_ioctl(dfd, U.DRM_XE_EUDEBUG_IOCTL_ACK_EVENT, arg)


def wait_discovery(dfd: int, timeout: float = 5.0) -> None:
    """Wait (poll) up to `timeout` s for the connection's discovery to complete: until then every
    debugger ioctl but READ_EVENT fails EBUSY (behaviour 17); then an ACK of no event fails EINVAL."""
    deadline = time.monotonic() + timeout
    while (ret := ack(dfd, 0)) == -errno.EBUSY:
        assert time.monotonic() < deadline, f"discovery not complete within {timeout} s"
        time.sleep(0.01)
    assert ret == -errno.EINVAL, f"ACK_EVENT of seqno 0: {errno.errorcode.get(-ret, ret)}"


def vm_open(dfd: int, client: int, vm: int, *, flags: int = 0, timeout_ns: int = 0,
            extensions: int = 0) -> int:
    arg = U.drm_xe_eudebug_vm_open(extensions=extensions, client_handle=client, vm_handle=vm,
                                   flags=flags, timeout_ns=timeout_ns)
    ret = seam.try_ioctl(dfd, U.DRM_XE_EUDEBUG_IOCTL_VM_OPEN, arg)
    if ret >= 0:
        track(ret)
    return ret


def read_metadata(dfd: int, client: int, md: int, size: int, *, flags: int = 0, capacity: int | None = None,
                  fill: int = 0xA5) -> tuple[int, Any, bytes]:
    """Raw READ_METADATA into a buffer of `capacity` (default `size`) bytes pre-filled with `fill`.

    Returns (ret, the struct after the call, the buffer contents)."""
    cap = max(1, size if capacity is None else capacity)
    buf = (ctypes.c_uint8 * cap)(*([fill] * cap))
    arg = U.drm_xe_eudebug_read_metadata(client_handle=client, metadata_handle=md, flags=flags,
                                         ptr=ctypes.addressof(buf), size=size)
    ret = seam.try_ioctl(dfd, U.DRM_XE_EUDEBUG_IOCTL_READ_METADATA, arg)
    return ret, arg, bytes(buf)


def eu_control(dfd: int, client: int, cmd: int, *, exec_queue: int = 0, lrc: int = 0, flags: int = 0,
               bitmask_size: int | None = None, seqno: int = 0, bitmask: bytes = b"",
               out: bytearray | None = None) -> tuple[int, Any]:
    """EU_CONTROL; `bitmask` fills the buffer (its length is the size unless `bitmask_size`
    says otherwise); `out` receives the buffer after the call."""
    size = len(bitmask) if bitmask_size is None else bitmask_size
    buf = (ctypes.c_uint8 * max(size, len(bitmask), 8))(*bitmask)
    arg = U.drm_xe_eudebug_eu_control(client_handle=client, cmd=cmd, flags=flags, seqno=seqno,
                                      exec_queue_handle=exec_queue, lrc_handle=lrc,
                                      bitmask_size=size, bitmask_ptr=ctypes.addressof(buf))
    ret = seam.try_ioctl(dfd, U.DRM_XE_EUDEBUG_IOCTL_EU_CONTROL, arg)
    if out is not None:
        out[:] = bytes(buf)[:size]
    return ret, arg


def find_engine(fd: int, engine_class: int, gt: int | None = None) -> Any | None:
    for inst in query_engines(fd):
        if inst.engine_class == engine_class and gt in (None, inst.gt_id):
            return inst
    return None


def dead_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    deadline = time.monotonic() + 5.0
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.001)
    return pid


# --- the debuggee ------------------------------------------------------------------------------

class Actions:
    """What a debuggee can do; every method returns plain data (ints, bytes, tuples)."""

    def __init__(self) -> None:
        self.keep: dict[Any, Any] = {}   # ctypes objects and mappings that must stay alive

    # device files
    def open(self, device: str | None = None) -> int:
        return open_device(device)

    def open_after(self, delay: float) -> int:
        time.sleep(delay)
        return open_device()

    def close(self, fd: int) -> int:
        os.close(fd)
        return 0

    def dup(self, fd: int) -> int:
        return os.dup(fd)

    # VMs
    def vm_create(self, fd: int, flags: int = LR) -> tuple[int, int]:
        arg = U.drm_xe_vm_create(flags=flags)
        ret = seam.try_ioctl(fd, U.DRM_IOCTL_XE_VM_CREATE, arg)
        return ret, int(arg.vm_id)

    def vm_destroy(self, fd: int, vm: int) -> int:
        return seam.try_ioctl(fd, U.DRM_IOCTL_XE_VM_DESTROY, U.drm_xe_vm_destroy(vm_id=vm))

    # memory
    def bo_create(self, fd: int, size: int) -> tuple[int, int]:
        arg = U.drm_xe_gem_create(size=size, placement=1, cpu_caching=U.DRM_XE_GEM_CPU_CACHING_WB)
        ret = seam.try_ioctl(fd, U.DRM_IOCTL_XE_GEM_CREATE, arg)
        return ret, int(arg.handle)

    def _bo_map(self, fd: int, handle: int, size: int) -> Any:
        key = ("bo", fd, handle)
        if key not in self.keep:
            arg = U.drm_xe_gem_mmap_offset(handle=handle)
            seam.ioctl(fd, U.DRM_IOCTL_XE_GEM_MMAP_OFFSET, arg)
            self.keep[key] = seam.mmap(fd, size, int(arg.offset))
        return self.keep[key]

    def bo_write(self, fd: int, handle: int, size: int, offset: int, data: bytes) -> int:
        m = self._bo_map(fd, handle, size)
        m[offset:offset + len(data)] = data
        return 0

    def bo_read(self, fd: int, handle: int, size: int, offset: int, n: int) -> bytes:
        return bytes(self._bo_map(fd, handle, size)[offset:offset + n])

    def alloc(self, key: str, size: int, fill: bytes = b"") -> int:
        """Anonymous page-aligned memory (userptr backing); returns its address."""
        m = _pymmap.mmap(-1, size)
        if fill:
            m[:len(fill)] = fill
        self.keep[("mem", key)] = m
        return ctypes.addressof(ctypes.c_char.from_buffer(m))

    def mem_read(self, key: str, offset: int, n: int) -> bytes:
        return bytes(self.keep[("mem", key)][offset:offset + n])

    # binds
    def _ext_chain(self, exts: list[dict]) -> int:
        if not exts:
            return 0
        arr = (U.drm_xe_vm_bind_op_ext_attach_debug * len(exts))()
        self.keep[("ext", id(arr))] = arr
        size = ctypes.sizeof(U.drm_xe_vm_bind_op_ext_attach_debug)
        for i, e in enumerate(exts):
            arr[i].base.name = e.get("name", U.XE_VM_BIND_OP_EXTENSIONS_ATTACH_DEBUG)
            arr[i].base.pad = e.get("pad", 0)
            arr[i].base.next_extension = ctypes.addressof(arr) + (i + 1) * size if i + 1 < len(exts) else 0
            arr[i].metadata_id = e["metadata_id"]
            arr[i].flags = e.get("flags", 0)
            arr[i].cookie = e.get("cookie", 0)
        return ctypes.addressof(arr)

    def bind(self, fd: int, vm: int, ops: list[dict], ufence: tuple[str, int] | None = None) -> int:
        """VM_BIND with `ops` (dicts: op, obj, offset|userptr_key, addr, range, flags, ext, region)
        and optionally a user fence (key of an 8-byte cell created on demand, value to signal)."""
        n = len(ops)
        arr = (U.drm_xe_vm_bind_op * n)()
        for i, o in enumerate(ops):
            b = arr[i]
            b.op = o.get("op", U.DRM_XE_VM_BIND_OP_MAP)
            b.obj = o.get("obj", 0)
            if "userptr_key" in o:
                m = self.keep[("mem", o["userptr_key"])]
                b.userptr = ctypes.addressof(ctypes.c_char.from_buffer(m)) + o.get("offset", 0)
            else:
                b.obj_offset = o.get("offset", 0)
            b.addr = o.get("addr", 0)
            b.range = o.get("range", 0)
            b.flags = o.get("flags", 0)
            b.pat_index = o.get("pat", 2)     # Xe2's write-back, coherent index
            b.prefetch_mem_region_instance = o.get("region", 0)
            b.extensions = self._ext_chain(o.get("ext", []))
        arg = U.drm_xe_vm_bind(vm_id=vm, num_binds=n)
        if n == 1:
            arg.bind = arr[0]
        else:
            arg.vector_of_binds = ctypes.addressof(arr)
        sync = U.drm_xe_sync()
        if ufence is not None:
            cell = self.keep.setdefault(("fence", ufence[0]), ctypes.c_uint64(0))
            sync.type = U.DRM_XE_SYNC_TYPE_USER_FENCE
            sync.flags = U.DRM_XE_SYNC_FLAG_SIGNAL
            sync.addr = ctypes.addressof(cell)
            sync.timeline_value = ufence[1]
            arg.num_syncs = 1
            arg.syncs = ctypes.addressof(sync)
        return seam.try_ioctl(fd, U.DRM_IOCTL_XE_VM_BIND, arg)

    def fence_value(self, key: str) -> int:
        return int(self.keep[("fence", key)].value)

    def wait_ufence(self, fd: int, key: str, value: int, timeout_ns: int) -> tuple[int, int]:
        cell = self.keep[("fence", key)]
        arg = U.drm_xe_wait_user_fence(addr=ctypes.addressof(cell), op=U.DRM_XE_UFENCE_WAIT_OP_EQ,
                                       value=value, mask=0xFFFFFFFFFFFFFFFF, timeout=timeout_ns)
        ret = seam.try_ioctl(fd, U.DRM_IOCTL_XE_WAIT_USER_FENCE, arg)
        return ret, int(cell.value)

    # exec queues
    def exec_queue_create(self, fd: int, vm: int, engine_class: int, eudebug: int | None = None,
                          gt: int | None = None) -> tuple[int, int]:
        inst = find_engine(fd, engine_class, gt)
        if inst is None:
            return -errno.ENODEV, 0
        ext = U.drm_xe_ext_set_property()
        ext.base.name = U.DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY
        ext.property = U.DRM_XE_EXEC_QUEUE_SET_PROPERTY_EUDEBUG
        ext.value = eudebug or 0
        arg = U.drm_xe_exec_queue_create(width=1, num_placements=1, vm_id=vm,
                                         instances=ctypes.addressof(inst),
                                         extensions=ctypes.addressof(ext) if eudebug is not None else 0)
        ret = seam.try_ioctl(fd, U.DRM_IOCTL_XE_EXEC_QUEUE_CREATE, arg)
        return ret, int(arg.exec_queue_id)

    def exec(self, fd: int, eq: int, address: int) -> int:
        """DRM_IOCTL_XE_EXEC of one batch at `address`, no syncs; 0 or -errno."""
        arg = U.drm_xe_exec(exec_queue_id=eq, num_batch_buffer=1, address=address)
        return seam.try_ioctl(fd, U.DRM_IOCTL_XE_EXEC, arg)

    def exec_queue_destroy(self, fd: int, eq: int) -> int:
        return seam.try_ioctl(fd, U.DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, U.drm_xe_exec_queue_destroy(exec_queue_id=eq))

    # debug metadata
    def md_create(self, fd: int, type_: int, data: bytes, *, user_addr: int | None = None,
                  length: int | None = None, extensions: int = 0) -> tuple[int, int]:
        buf = ctypes.create_string_buffer(data, max(1, len(data)))
        arg = U.drm_xe_debug_metadata_create(
            extensions=extensions, type=type_,
            user_addr=ctypes.addressof(buf) if user_addr is None else user_addr,
            len=len(data) if length is None else length)
        ret = seam.try_ioctl(fd, U.DRM_IOCTL_XE_DEBUG_METADATA_CREATE, arg)
        return ret, int(arg.metadata_id)

    def md_destroy(self, fd: int, md: int, extensions: int = 0) -> int:
        arg = U.drm_xe_debug_metadata_destroy(extensions=extensions, metadata_id=md)
        return seam.try_ioctl(fd, U.DRM_IOCTL_XE_DEBUG_METADATA_DESTROY, arg)

    def md_create_many(self, fd: int, count: int) -> list[int]:
        out = []
        for i in range(count):
            ret, md = self.md_create(fd, 0, bytes([i & 0xFF]) * 16)
            if ret != 0:
                raise OSError(-ret, f"DRM_IOCTL_XE_DEBUG_METADATA_CREATE #{i}: {os.strerror(-ret)}")
            out.append(md)
        return out

    # threads
    def spawn_thread(self) -> int:
        """Start an idle thread (it lives until the process exits); returns its thread id."""
        import threading
        got = threading.Event()
        box: list[int] = []

        def idle() -> None:
            box.append(threading.get_native_id())
            got.set()
            threading.Event().wait()

        threading.Thread(target=idle, daemon=True).start()
        if not got.wait(5.0):
            raise TimeoutError("thread did not start")
        return box[0]

    # permissions
    def setuid(self, uid: int) -> int:
        # A DRM file opened before dropping privileges stays usable, as on hardware; a new open
        # after it would need the node's group (connect_to uses this one).
        self.kept_fd = open_device()
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        return 0

    def connect_with(self, fd: int, pid: int) -> int:
        """CONNECT on `fd` to `pid`; the debugger fd (if any) is closed again."""
        ret, _ = connect(fd, pid)
        if ret >= 0:
            close_fd(ret)
        return ret

    def connect_to(self, pid: int) -> int:
        kept = getattr(self, "kept_fd", -1)
        if kept >= 0:
            return self.connect_with(kept, pid)
        fd = open_device()
        try:
            return self.connect_with(fd, pid)
        finally:
            os.close(fd)


def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj)
    data = struct.pack("<I", len(data)) + data
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _recv(fd: int, timeout: float | None) -> Any:
    deadline = None if timeout is None else time.monotonic() + timeout
    buf = b""
    need = 4
    header = True
    while True:
        while len(buf) < need:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise TimeoutError
            chunk = os.read(fd, need - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        if header:
            need = 4 + struct.unpack_from("<I", buf)[0]
            header = False
            continue
        return pickle.loads(buf[4:need])


class Debuggee:
    """A forked process that runs `Actions` methods on command.

    ``do(name, *args)`` runs one and returns its result (an exception in the child fails the
    test with the child's traceback); ``send``/``result`` split that for actions expected to
    block.  Use as a context manager: the child is always reaped, and a child that did not exit
    cleanly fails the test."""

    def __init__(self) -> None:
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(cmd_w)
                os.close(rep_r)
                for fd in list(_parent_fds):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                _parent_fds.clear()
                code = _serve(cmd_r, rep_w)
            finally:
                os._exit(code)
        os.close(cmd_r)
        os.close(rep_w)
        self.pid = pid
        self._cmd = cmd_w
        self._rep = rep_r
        self._pending: str | None = None
        self.status: int | None = None

    def send(self, name: str, *args: Any, **kwargs: Any) -> None:
        assert self._pending is None, f"debuggee still busy with {self._pending}"
        self._pending = name
        _send(self._cmd, (name, args, kwargs))

    def result(self, timeout: float = 10.0) -> Any:
        name = self._pending
        try:
            kind, value = _recv(self._rep, timeout)
        except TimeoutError:
            raise AssertionError(f"debuggee action {name} did not finish within {timeout} s") from None
        except EOFError:
            self._pending = None
            self._reap(1.0)
            raise AssertionError(f"debuggee died during {name} (status {self.status})") from None
        self._pending = None
        if kind == "exc":
            raise AssertionError(f"debuggee action {name} raised:\n{value}")
        return value

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether the pending action has answered (without consuming the answer)."""
        return bool(select.select([self._rep], [], [], timeout)[0])

    def do(self, name: str, *args: Any, timeout: float = 10.0, **kwargs: Any) -> Any:
        self.send(name, *args, **kwargs)
        return self.result(timeout)

    def exit(self, timeout: float = 5.0) -> None:
        """Ask the child to exit and reap it; fail if it did not exit with status 0."""
        if self._pending is not None and self.status is None:
            name = self._pending
            if not self.ready(2.0):
                self._reap(0.0)
                raise AssertionError(f"debuggee was still busy with {name} at the end of the test")
            self.result()
        if self.status is None:
            try:
                _send(self._cmd, ("__exit__", (), {}))
            except OSError:
                pass
            self._reap(timeout)
        assert os.WIFEXITED(self.status) and os.WEXITSTATUS(self.status) == 0, \
            f"debuggee {self.pid} ended with status {self.status:#x}"

    def _reap(self, timeout: float) -> None:
        if self.status is not None:
            return
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                break
            if time.monotonic() >= deadline:
                os.kill(self.pid, signal.SIGKILL)
                _, self.status = os.waitpid(self.pid, 0)
                break
            time.sleep(0.005)
        for fd in (self._cmd, self._rep):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "Debuggee":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.exit()
        else:
            if self._pending is None:
                try:
                    _send(self._cmd, ("__exit__", (), {}))
                except OSError:
                    pass
            self._reap(2.0 if self._pending is None else 0.0)


def _serve(cmd_r: int, rep_w: int) -> int:  # pragma: no cover - runs in the child
    actions = Actions()
    while True:
        try:
            name, args, kwargs = _recv(cmd_r, None)
        except EOFError:
            return 3
        if name == "__exit__":
            return 0
        try:
            value = getattr(actions, name)(*args, **kwargs)
            _send(rep_w, ("ok", value))
        except BaseException:
            _send(rep_w, ("exc", traceback.format_exc()))
