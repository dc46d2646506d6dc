"""Client side of the simulator: the seam backend for simulated file descriptors.

A simulated fd (device, debugger or VM file) is the caller's end of a Unix socketpair whose other
end is held by the simulator server.  This module recognises such fds (their peer is a known
simulator process), forwards every system call made through `xe_eudebug.ioctl` to the server over
a per-thread control connection, and serves the server's requests to read and write this
process's memory while the call is blocked (copy_from_user / copy_to_user).

The wire format is in `sim/wire.py` (shared with the server), this process's connections to
servers in `sim/link.py`; both modules' names are re-exported here.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import json
import logging
import mmap as _mmap
import os
import select
import stat
import threading
import time
from typing import Any, Callable

from .config import SOCKET_ENV, default_socket_dir, default_socket_path  # noqa: F401
from .wire import *  # noqa: F401,F403  (the wire protocol's names, for users of this module)
from .wire import (_MAX_RW, _MSG_DONTWAIT, _close_fds, _libc,  # noqa: F401
                   F_CLOEXEC, F_FD, IOCTL_ARG_UNREADABLE, OP_DEVICE_ENABLED, OP_FILE_INFO, OP_FSYNC,
                   OP_GET_ENABLED, OP_INFO, OP_IOCTL, OP_LSEEK, OP_MMAP, OP_OPEN, OP_POLL, OP_PREAD,
                   OP_PWRITE, OP_READ, OP_SET_ENABLED, OP_SYSFS, to_s64, to_u64, vm_read, vm_write)
from .link import *  # noqa: F401,F403
from .link import (_Link, _alive, _claimed, _link_for_fd, _path_connect, _self_pid,  # noqa: F401
                   SimulatorConnectionLost, connect, forget)

log = logging.getLogger(__name__)

__all__ = [
    "SimBackend",
    "backend",
    "open_device",
    "connect",
    "is_simulated",
    "server_pid_of",
    "SimulatorConnectionLost",
]


def _adopt_fd(flags: int, fds: list[int]) -> int:
    if not flags & F_FD or len(fds) != 1:
        _close_fds(fds)
        raise OSError(_errno.EPROTO, "xe_eudebug simulator: reply without the expected fd")
    fd = fds[0]
    os.set_inheritable(fd, not flags & F_CLOEXEC)
    return fd


def _check_node_access(path: str, index: int) -> None:
    """The permission check of open(2) on a device node, with the caller's credentials now:
    the socket stands for the node (its mode, owner and group, see SimConfig.group), so a
    process that dropped privileges cannot open a device through a connection it made before."""
    effective = os.access in os.supports_effective_ids
    if not os.access(path, os.R_OK | os.W_OK, effective_ids=effective):
        raise OSError(_errno.EACCES, f"open of simulated device {index} ({path}): permission denied for "
                      f"uid {os.geteuid()}, groups {sorted(set(os.getgroups()) | {os.getegid()})}")


def open_device(index: int = 0, socket_path: str | None = None) -> int:
    """Open simulated device `index`; returns a new fd (close-on-exec, like open(O_CLOEXEC))."""
    link = connect(socket_path)
    _check_node_access(link.path, index)
    try:
        flags, _a, _c, _p, fds = link.call(OP_OPEN, a=to_u64(index))
    except SimulatorConnectionLost:
        deadline = time.monotonic() + 1.0
        while _alive(link.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if _alive(link.pid):
            raise
        # The server exited (idle) between our connect and this call: connect (or start) anew.
        forget(link)
        link = connect(socket_path)
        flags, _a, _c, _p, fds = link.call(OP_OPEN, a=to_u64(index))
    return _adopt_fd(flags, fds)


def server_info(socket_path: str | None = None) -> dict[str, Any]:
    link = connect(socket_path)
    _f, _a, _c, payload, fds = link.call(OP_INFO)
    _close_fds(fds)
    return json.loads(payload.decode())


def server_pid_of(fd: int) -> int | None:
    """Pid of the simulator serving `fd`, or None if `fd` is not a simulated fd."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    link = _link_for_fd(fd)
    return link.pid if link is not None else None


def is_simulated(fd: int) -> bool:
    """Diagnostics only: whether `fd` is served by a simulator."""
    return server_pid_of(fd) is not None


def _link_or_ebadf(fd: int) -> _Link:
    link = _link_for_fd(fd)
    if link is None:
        raise OSError(_errno.EBADF, f"fd {fd} is not a simulated file")
    return link


def file_info(fd: int) -> tuple[int, int]:
    """(device index, kind) of a simulated fd."""
    _f, a, c, _p, fds = _link_or_ebadf(fd).call(OP_FILE_INFO, fd)
    _close_fds(fds)
    return a, c


def get_enabled(fd: int) -> bool:
    _f, a, _c, _p, fds = _link_or_ebadf(fd).call(OP_GET_ENABLED, fd)
    _close_fds(fds)
    return bool(a)


def set_enabled(fd: int, value: bool) -> bool:
    _f, a, _c, _p, fds = _link_or_ebadf(fd).call(OP_SET_ENABLED, fd, a=1 if value else 0)
    _close_fds(fds)
    return bool(a)


def device_enabled(index: int, value: bool | None = None, socket_path: str | None = None) -> bool:
    """Device `index`'s enable_eudebug toggle without a device file (what sysfs gives): read it,
    or set it to `value`; returns the value before the call."""
    _f, a, _c, _p, fds = connect(socket_path).call(
        OP_DEVICE_ENABLED, a=to_u64(index), b=0 if value is None else 1, c=1 if value else 0)
    _close_fds(fds)
    return bool(a)


def sysfs(index: int, path: str, data: bytes | None = None, socket_path: str | None = None) -> bytes | int:
    """Device `index`'s sysfs attribute `path` (relative to its PCI directory, for example
    ``tile0/gt0/engines/ccs/job_timeout_ms``): its contents, or, with `data`, the count written.
    OSError(ENOENT) when the simulator does not serve that attribute."""
    return _sysfs_call(connect(socket_path), index, path, data)


def _sysfs_call(link: _Link, index: int, path: str, data: bytes | None) -> bytes | int:
    body = path.encode() + (b"\0" + bytes(data) if data is not None else b"")
    _f, a, _c, payload, fds = link.call(OP_SYSFS, a=to_u64(index), b=0 if data is None else 1, payload=body)
    _close_fds(fds)
    return payload if data is None else int(a)


def sysfs_of(fd: int, path: str, data: bytes | None = None) -> bytes | int:
    """As `sysfs`, for the device behind the simulated fd `fd`, on the simulator serving it."""
    return _sysfs_call(_link_or_ebadf(fd), file_info(fd)[0], path, data)


def reopen(fd: int) -> int:
    """A new DRM file on the same simulated device as `fd`."""
    link = _link_or_ebadf(fd)
    index, _kind = file_info(fd)
    flags, _a, _c, _p, fds = link.call(OP_OPEN, a=index)
    return _adopt_fd(flags, fds)


# --------------------------------------------------------------------------------------------
# The seam backend

_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_WRITE = 1
_IOC_READ = 2


_recv = _libc.recv
_recv.restype = ctypes.c_ssize_t
_recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_drain_buf = ctypes.create_string_buffer(64)


def _drain(fd: int, count: int) -> None:
    """Consume `count` readiness bytes from a debugger fd's receive queue (never blocks)."""
    if 0 < count <= 64:
        _recv(fd, _drain_buf, count, _MSG_DONTWAIT)


class _LastClaim(threading.local):
    fd = -1
    link: "_Link | None" = None


class SimBackend:
    """The `xe_eudebug.ioctl` backend for simulated fds."""

    def __init__(self) -> None:
        self._last = _LastClaim()

    def claims(self, fd: int, st: os.stat_result) -> bool:
        if not stat.S_ISSOCK(st.st_mode):
            return False
        # Socket inodes are not reused until a 32-bit counter wraps: a socket once seen to be a
        # simulated file stays one.
        link = _claimed.get(st.st_ino)
        if link is None:
            link = _link_for_fd(fd)
            if link is not None:
                if len(_claimed) >= 4096:
                    _claimed.clear()
                _claimed[st.st_ino] = link
        last = self._last
        last.fd = fd if link is not None else -1
        last.link = link
        return link is not None

    def _link(self, fd: int) -> _Link:
        # The seam has just asked claims() about this fd in this thread: reuse its answer.
        last = self._last
        if last.fd == fd and last.link is not None:
            last.fd = -1
            return last.link
        return _link_or_ebadf(fd)

    def ioctl(self, fd: int, request: int, addr: int) -> int:
        link = self._link(fd)
        request &= 0xFFFFFFFF
        size = (request >> _IOC_SIZESHIFT) & 0x3FFF
        direction = (request >> _IOC_DIRSHIFT) & 3
        addr = addr or 0
        arg: bytes = b""
        unreadable = 0
        if size and direction & _IOC_WRITE:
            try:
                arg = vm_read(_self_pid(), addr, size)
            except OSError:
                # The kernel decides when this faults (after its own earlier checks).
                unreadable = IOCTL_ARG_UNREADABLE
        flags, result, err, drain, copy_back, fds = link.raw_call(OP_IOCTL, fd, request, to_u64(addr), unreadable, arg)
        if drain:
            _drain(fd, drain)
        if copy_back:
            # Written back even when the call failed, as the DRM dispatcher does.
            try:
                vm_write(_self_pid(), addr, copy_back)
            except OSError:
                err = err or _errno.EFAULT
        if err:
            _close_fds(fds)
            raise OSError(err, os.strerror(err))
        if flags & F_FD:
            return _adopt_fd(flags, fds)
        _close_fds(fds)
        return to_s64(result)

    def read(self, fd: int, size: int) -> bytes:
        return self._data(OP_READ, fd, size, 0)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return self._data(OP_PREAD, fd, size, offset)

    def _data(self, op: int, fd: int, size: int, offset: int) -> bytes:
        if size < 0:
            raise OSError(_errno.EINVAL, os.strerror(_errno.EINVAL))
        _f, _a, drain, data, fds = self._link(fd).call(op, fd, min(size, _MAX_RW), to_u64(offset))
        _close_fds(fds)
        if drain:
            _drain(fd, drain)
        return data

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        # At most _MAX_RW bytes per call: a short count, as the VFS gives for huge writes.
        chunk = bytes(memoryview(data)[:_MAX_RW])
        _f, a, _c, _p, fds = self._link(fd).call(OP_PWRITE, fd, 0, to_u64(offset), 0, chunk)
        _close_fds(fds)
        return to_s64(a)

    def lseek(self, fd: int, offset: int, whence: int) -> int:
        _f, a, _c, _p, fds = self._link(fd).call(OP_LSEEK, fd, to_u64(offset), to_u64(whence))
        _close_fds(fds)
        return to_s64(a)

    def close_fd(self, fd: int) -> None:
        """close(2), then one call that the server serves only after the releases of this
        process's closes (the seam's `close`)."""
        link = self._link(fd)
        os.close(fd)
        _f, _a, _c, _p, fds = link.call(OP_INFO)
        _close_fds(fds)

    def fsync(self, fd: int) -> None:
        _f, _a, _c, _p, fds = self._link(fd).call(OP_FSYNC, fd)
        _close_fds(fds)

    def mmap(self, fd: int, length: int, offset: int) -> _mmap.mmap:
        if length <= 0:
            raise OSError(_errno.EINVAL, os.strerror(_errno.EINVAL))
        flags, a, _c, _p, fds = self._link(fd).call(OP_MMAP, fd, to_u64(length), to_u64(offset))
        if not flags & F_FD or len(fds) != 1:
            _close_fds(fds)
            raise OSError(_errno.EPROTO, "xe_eudebug simulator: mmap reply without a memory fd")
        memfd = fds[0]
        try:
            return _mmap.mmap(memfd, length, flags=_mmap.MAP_SHARED,
                              prot=_mmap.PROT_READ | _mmap.PROT_WRITE, offset=a)
        finally:
            os.close(memfd)

    def poll_mask(self, fd: int) -> int:
        # The server keeps one byte in a debugger fd's receive queue while its event fifo is not
        # empty, and that alone is what the preload's poll() sees: a queued byte with no hang-up
        # is the server's POLLIN (its reader drains the byte in the call that empties the
        # fifo), so no round trip.  Anything else (nothing queued, a detach) is asked for.
        raw = select.poll()
        raw.register(fd, select.POLLIN)
        if raw.poll(0) == [(fd, select.POLLIN)]:
            return select.POLLIN
        _f, a, _c, _p, fds = self._link(fd).call(OP_POLL, fd)
        _close_fds(fds)
        return a


backend = SimBackend()


def _register_with_seam() -> None:
    try:
        from .. import ioctl as seam
    except ImportError as exc:  # the seam is not importable: nothing to register with
        log.debug("xe_eudebug.ioctl unavailable (%s); simulator backend not registered", exc)
        return
    register: Callable[[Any], None] | None = getattr(seam, "register_backend", None)
    if register is not None:
        register(backend)


_register_with_seam()
