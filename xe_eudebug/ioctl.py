"""Ioctl request encoding and the system-call seam.

Everything that is a system call on a DRM device fd, a debugger fd or a VM fd goes through the
functions of this module: :func:`ioctl`, :func:`try_ioctl`, :func:`read`, :func:`pread`,
:func:`pwrite`, :func:`lseek`, :func:`fsync`, :func:`mmap` and :func:`poll`.

For a real device they are the real system calls. A *backend* (see :func:`register_backend`)
may claim an fd instead; the bundled simulator registers one for the fds it hands out. Nothing
above this module knows which kind of fd it holds.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import logging
import mmap as _mmap
import os
import select
import threading
import time
from typing import Any, Callable, Iterable, Protocol

_calls = logging.getLogger(__name__)  # every seam ioctl at DEBUG (xe-eudebug --debug)
_DEBUG = logging.DEBUG

__all__ = [
    "_IOC", "_IO", "_IOR", "_IOW", "_IOWR",
    "_IOC_DIR", "_IOC_TYPE", "_IOC_NR", "_IOC_SIZE",
    "_IOC_NONE", "_IOC_WRITE", "_IOC_READ",
    "DRM_IOCTL_BASE", "DRM_COMMAND_BASE", "DRM_IO", "DRM_IOR", "DRM_IOW", "DRM_IOWR",
    "Backend", "register_backend", "unregister_backend", "register_request_name", "request_name",
    "address_of", "ioctl", "try_ioctl", "read", "pread", "pwrite", "lseek", "fsync", "mmap", "poll", "close",
]

# --- _IOC encoding (asm-generic/ioctl.h) ------------------------------------------------------

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _type_code(type_: int | str) -> int:
    return ord(type_) if isinstance(type_, str) else int(type_)


def _size_of(size: Any) -> int:
    """Accept a byte count, a ctypes type or a ctypes instance."""
    if isinstance(size, int):
        return size
    return ctypes.sizeof(size)


def _IOC(dir_: int, type_: int | str, nr: int, size: Any) -> int:
    size = _size_of(size)
    t = _type_code(type_)
    if not 0 <= dir_ < (1 << _IOC_DIRBITS):
        raise ValueError(f"ioctl direction {dir_} out of range")
    if not 0 <= t < (1 << _IOC_TYPEBITS):
        raise ValueError(f"ioctl type {t} out of range")
    if not 0 <= nr < (1 << _IOC_NRBITS):
        raise ValueError(f"ioctl number {nr} out of range")
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl size {size} out of range")
    return (dir_ << _IOC_DIRSHIFT) | (t << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _IO(type_: int | str, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int | str, nr: int, size: Any) -> int:
    return _IOC(_IOC_READ, type_, nr, size)


def _IOW(type_: int | str, nr: int, size: Any) -> int:
    return _IOC(_IOC_WRITE, type_, nr, size)


def _IOWR(type_: int | str, nr: int, size: Any) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


def _IOC_DIR(request: int) -> int:
    return (request >> _IOC_DIRSHIFT) & ((1 << _IOC_DIRBITS) - 1)


def _IOC_TYPE(request: int) -> int:
    return (request >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1)


def _IOC_NR(request: int) -> int:
    return (request >> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1)


def _IOC_SIZE(request: int) -> int:
    return (request >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)


DRM_IOCTL_BASE = ord("d")
DRM_COMMAND_BASE = 0x40


def DRM_IO(nr: int) -> int:
    return _IO(DRM_IOCTL_BASE, nr)


def DRM_IOR(nr: int, size: Any) -> int:
    return _IOR(DRM_IOCTL_BASE, nr, size)


def DRM_IOW(nr: int, size: Any) -> int:
    return _IOW(DRM_IOCTL_BASE, nr, size)


def DRM_IOWR(nr: int, size: Any) -> int:
    return _IOWR(DRM_IOCTL_BASE, nr, size)


# --- request names for error messages ------------------------------------------------------

_request_names: dict[int, str] = {}


def register_request_name(request: int, name: str) -> None:
    """Record the symbolic name used in error messages for ``request``.

    The uapi modules register every request macro they define; the first name wins.
    """
    _request_names.setdefault(request, name)


def request_name(request: int) -> str:
    """The symbolic name of ``request`` (``DRM_IOCTL_XE_VM_CREATE``), or its hex value."""
    return _request_names.get(request, f"ioctl 0x{request & 0xFFFFFFFF:08x}")


# --- backends ----------------------------------------------------------------------------------

class Backend(Protocol):
    """Serves the system calls of the fds it claims (the simulator is one)."""

    def claims(self, fd: int, st: os.stat_result) -> bool: ...
    def ioctl(self, fd: int, request: int, addr: int) -> int: ...
    def read(self, fd: int, size: int) -> bytes: ...
    def pread(self, fd: int, size: int, offset: int) -> bytes: ...
    def pwrite(self, fd: int, data: bytes, offset: int) -> int: ...
    def lseek(self, fd: int, offset: int, whence: int) -> int: ...
    def fsync(self, fd: int) -> None: ...
    def mmap(self, fd: int, length: int, offset: int) -> Any: ...
    def poll_mask(self, fd: int) -> int: ...


_backends: list[Backend] = []
_backends_lock = threading.Lock()


def register_backend(backend: Backend) -> None:
    """Add ``backend``; it is asked (after those registered before it) to claim each fd."""
    with _backends_lock:
        if backend not in _backends:
            _backends.append(backend)


def unregister_backend(backend: Backend) -> None:
    with _backends_lock:
        if backend in _backends:
            _backends.remove(backend)


def _backend_for(fd: int) -> Backend | None:
    if not _backends:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        return None  # the real call reports EBADF
    for backend in tuple(_backends):
        if backend.claims(fd, st):
            return backend
    return None


# --- the real system calls -----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc_ioctl = _libc.ioctl
_libc_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc_ioctl.restype = ctypes.c_int


def address_of(arg: Any) -> int:
    """The address passed to the kernel for ``arg``: a ctypes object's address, an int, or 0."""
    if arg is None:
        return 0
    if isinstance(arg, int):
        return arg
    if isinstance(arg, ctypes.c_void_p):
        return arg.value or 0
    try:
        return ctypes.addressof(arg)
    except TypeError:
        raise TypeError(f"ioctl argument must be a ctypes object or an address, not {type(arg).__name__}") from None


def _real_ioctl(fd: int, request: int, addr: int) -> int:
    ret = _libc_ioctl(fd, request, addr)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _named(exc: OSError, name: str) -> OSError:
    err = exc.errno if exc.errno is not None else _errno.EIO
    return OSError(err, f"{name}: {os.strerror(err)}")


def ioctl(fd: int, request: int, arg: Any = None) -> int:
    """Issue ``request`` on ``fd`` with ``arg`` (ctypes object by address, an address, or None).

    Returns the ioctl's return value (the new fd for CONNECT and VM_OPEN). EINTR is retried.
    Failure raises ``OSError(errno, "<REQUEST_NAME>: <strerror>")``.
    """
    addr = address_of(arg)
    while True:
        try:
            backend = _backend_for(fd)
            if backend is not None:
                ret = backend.ioctl(fd, request, addr)
            else:
                ret = _real_ioctl(fd, request, addr)
            if _calls.isEnabledFor(_DEBUG):
                _calls.debug("ioctl(%d, %s, %#x) = %d", fd, request_name(request), addr, ret)
            return ret
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno == _errno.EINTR:
                continue
            if _calls.isEnabledFor(_DEBUG):
                _calls.debug("ioctl(%d, %s, %#x) = -1 %s", fd, request_name(request), addr,
                             _errno.errorcode.get(exc.errno or 0, exc.errno))
            raise _named(exc, request_name(request)) from None


def try_ioctl(fd: int, request: int, arg: Any = None) -> int:
    """Like :func:`ioctl` but returns ``-errno`` on failure instead of raising (IGT's ``__xe_*``)."""
    try:
        return ioctl(fd, request, arg)
    except OSError as exc:
        return -(exc.errno or _errno.EIO)


def _call(fd: int, what: str, backend_call: Callable[[Backend], Any], real_call: Callable[[], Any]) -> Any:
    while True:
        try:
            backend = _backend_for(fd)
            return backend_call(backend) if backend is not None else real_call()
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno == _errno.EINTR:
                continue
            raise _named(exc, what) from None


def read(fd: int, size: int) -> bytes:
    """``read(2)`` on ``fd`` (on a debugger fd the kernel answers EINVAL)."""
    return _call(fd, "read", lambda b: b.read(fd, size), lambda: os.read(fd, size))


def pread(fd: int, size: int, offset: int) -> bytes:
    """``pread(2)``: on a VM fd the offset is a GPU virtual address."""
    return _call(fd, "pread", lambda b: b.pread(fd, size, offset), lambda: os.pread(fd, size, offset))


def pwrite(fd: int, data: bytes, offset: int) -> int:
    """``pwrite(2)``: returns the number of bytes written (may be short)."""
    data = bytes(data)
    return _call(fd, "pwrite", lambda b: b.pwrite(fd, data, offset), lambda: os.pwrite(fd, data, offset))


def lseek(fd: int, offset: int, whence: int = os.SEEK_SET) -> int:
    return _call(fd, "lseek", lambda b: b.lseek(fd, offset, whence), lambda: os.lseek(fd, offset, whence))


def fsync(fd: int) -> None:
    _call(fd, "fsync", lambda b: b.fsync(fd), lambda: os.fsync(fd))


def close(fd: int) -> None:
    """close(2) of a DRM, debugger or VM fd.  The kernel runs a file's release (OPEN DESTROY
    and the rest) before close returns; a backend whose release runs elsewhere (the simulator)
    returns only once the release of a last reference is done, so nothing the caller does next
    (a later call, a message to another process, exit) can overtake its events.  A backend
    provides this as ``close_fd(fd)``; without it the fd is closed with os.close."""
    backend = _backend_for(fd)
    closer = getattr(backend, "close_fd", None) if backend is not None else None
    if closer is None:
        os.close(fd)
    else:
        closer(fd)


def mmap(fd: int, length: int, offset: int) -> Any:
    """Map ``length`` bytes of ``fd`` at ``offset`` shared and read-write.

    Returns an object that supports slicing, ``len()`` and ``close()`` (an :class:`mmap.mmap`).
    """
    return _call(
        fd, "mmap",
        lambda b: b.mmap(fd, length, offset),
        lambda: _mmap.mmap(fd, length, _mmap.MAP_SHARED, _mmap.PROT_READ | _mmap.PROT_WRITE, offset=offset),
    )


def poll(fds: Iterable[tuple[int, int]], timeout_ms: int | None) -> list[tuple[int, int]]:
    """Wait for events on ``fds`` (pairs of fd and event mask) like ``poll(2)``.

    ``timeout_ms`` of None or a negative value waits without limit, 0 does not wait. Returns the
    ``(fd, revents)`` pairs with a non-zero mask. For fds served by a backend the mask is the
    backend's exact answer (e.g. ``POLLHUP|POLLERR`` for a debugger fd detached by an error),
    which a raw ``select.poll`` on such an fd can only approximate.
    """
    fds = list(fds)
    always = select.POLLHUP | select.POLLERR | select.POLLNVAL
    claimed = [(fd, events, b) for fd, events in fds if (b := _backend_for(fd)) is not None]
    claimed_fds = {fd for fd, _, _ in claimed}
    poller = select.poll()
    for fd, events in fds:
        poller.register(fd, events)
    if not claimed:
        return [(fd, mask) for fd, mask in poller.poll(timeout_ms if timeout_ms is None or timeout_ms >= 0 else None)]

    deadline = None if timeout_ms is None or timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
    while True:
        raw = dict(poller.poll(0))
        result: list[tuple[int, int]] = []
        for fd, events in fds:
            if fd in claimed_fds:
                backend = next(b for cfd, _, b in claimed if cfd == fd)
                mask = backend.poll_mask(fd) & (events | always)
            else:
                mask = raw.get(fd, 0)
            if mask:
                result.append((fd, mask))
        now = time.monotonic()
        if result or (deadline is not None and now >= deadline):
            return result
        # Sleep on the raw readiness of every fd, in short slices: a backend's fd may become
        # ready in ways its raw readiness does not show (an error without data).
        slice_ms = _POLL_SLICE_MS if deadline is None else max(0, min(_POLL_SLICE_MS, int((deadline - now) * 1000) + 1))
        started = time.monotonic()
        if poller.poll(slice_ms) and time.monotonic() - started < 0.001:
            time.sleep(0.002)  # stale raw readiness: do not spin


_POLL_SLICE_MS = 20
