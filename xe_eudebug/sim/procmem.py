"""Access to another process's memory for the kernel model.

The kernel writes user-fence values into the memory of the process that issued the bind, and a
debugger's VM fd reads and writes userptr mappings in the client's memory.  The model reaches
that memory with ``process_vm_readv`` / ``process_vm_writev`` (libc through ctypes), which fail
cleanly (EFAULT, ESRCH, EPERM) instead of crashing on a bad address.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os

__all__ = ["read", "write", "MAX_ADDR"]

MAX_ADDR = 1 << 64


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _load() -> tuple[object, object]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fns = []
    for name in ("process_vm_readv", "process_vm_writev"):
        fn = getattr(libc, name)
        fn.restype = ctypes.c_ssize_t
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                       ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
        fns.append(fn)
    return fns[0], fns[1]


_readv, _writev = _load()


def _check(addr: int, size: int) -> None:
    if addr < 0 or size < 0 or addr + size > MAX_ADDR:
        raise OSError(_errno.EFAULT, os.strerror(_errno.EFAULT))


def _fail(done: int, size: int) -> OSError:
    if done < 0:
        err = ctypes.get_errno()
        return OSError(err, os.strerror(err))
    return OSError(_errno.EFAULT, f"partial transfer ({done} of {size} bytes)")


def read(pid: int, addr: int, size: int) -> bytes:
    """`size` bytes at `addr` in process `pid`; OSError (EFAULT, ESRCH, EPERM...) on failure."""
    _check(addr, size)
    if size == 0:
        return b""
    buf = ctypes.create_string_buffer(size)
    local = _Iovec(ctypes.addressof(buf), size)
    remote = _Iovec(addr, size)
    done = _readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if done != size:
        raise _fail(done, size)
    return buf.raw


def write(pid: int, addr: int, data: bytes) -> None:
    """Write `data` at `addr` in process `pid`; OSError on failure."""
    size = len(data)
    _check(addr, size)
    if size == 0:
        return
    buf = ctypes.create_string_buffer(bytes(data), size)
    local = _Iovec(ctypes.addressof(buf), size)
    remote = _Iovec(addr, size)
    done = _writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if done != size:
        raise _fail(done, size)
