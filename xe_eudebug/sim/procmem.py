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
import select
import threading

__all__ = ["read", "write", "MAX_ADDR", "Task", "task_of"]

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


# ------------------------------------------------------------------------------------------------
# Processes held across calls

class Task:
    """A process held by a pidfd, as the kernel holds a task reference, never by a bare pid: a
    pid is recycled once its process is reaped, a pidfd keeps naming the process it was opened
    on (readable once that process has exited).  `task_of` hands out one Task per live process,
    so two Tasks are the same process exactly when they are the same object."""

    __slots__ = ("pid", "fd", "__weakref__")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.fd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno not in (_errno.ESRCH, _errno.EINVAL):
                raise  # EMFILE, ENFILE, ENOMEM: the caller's call fails with it
            self.fd = -1  # no such process: a Task that is never alive

    def alive(self) -> bool:
        """The process has not exited (a zombie has)."""
        fd = self.fd
        if fd < 0:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return not poller.poll(0)

    def _check(self) -> None:
        if not self.alive():
            raise OSError(_errno.ESRCH, f"process {self.pid} has exited")

    def read(self, addr: int, size: int) -> bytes:
        """`size` bytes at `addr` of this process; OSError(ESRCH) once it has exited."""
        self._check()
        return read(self.pid, addr, size)

    def write(self, addr: int, data: bytes) -> None:
        """Write into this process; OSError(ESRCH) once it has exited (never into another
        process that got its pid)."""
        self._check()
        write(self.pid, addr, data)

    def __del__(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    def __repr__(self) -> str:
        return f"<Task pid={self.pid}{'' if self.alive() else ' exited'}>"


_tasks: dict[int, Task] = {}
_tasks_lock = threading.Lock()
_SWEEP_AT = 256


def task_of(pid: int) -> Task:
    """The Task of process `pid` (the same object for every call of that process, until it is
    reaped); a fresh Task with no pidfd (fd -1), never alive, if there is no such process.  OSError(EMFILE...) if no pidfd can be
    opened."""
    global _SWEEP_AT
    pid = int(pid)
    with _tasks_lock:
        task = _tasks.get(pid)
        if task is not None and task.alive():
            return task
        new = Task(pid)
        if task is not None and task.fd >= 0 and new.fd >= 0 and not new.alive():
            # An exited process not yet reaped (a zombie) keeps its pid, so this is the same
            # process: keep its Task (a pid is only reused once reaped).
            new.__del__()
            return task
        task = new
        _tasks[pid] = task
        if len(_tasks) >= _SWEEP_AT:
            # forget exited processes (what still holds their Task keeps it, dead)
            for key in [k for k, t in _tasks.items() if not t.alive()]:
                del _tasks[key]
            _SWEEP_AT = max(256, 2 * len(_tasks))
        return task


_CAP_DAC_OVERRIDE = 1


def may_write_root_file(pid: int) -> bool:
    """Whether process `pid` may open a root-owned 0644 file (a sysfs attribute such as
    enable_eudebug) for writing: filesystem uid 0, or CAP_DAC_OVERRIDE.  False if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return False
    fields = dict(line.partition(":")[::2] for line in text.splitlines())
    try:
        fsuid = int(fields.get("Uid", "").split()[3])
        caps = int(fields.get("CapEff", "0").strip(), 16)
    except (ValueError, IndexError):
        return False
    return fsuid == 0 or bool(caps >> _CAP_DAC_OVERRIDE & 1)
