"""The simulator's call trace (``xe-eudebug sim -v``, ``-vv``): one line per call, like strace.

::

    14:02:11.532 pid 4242 open("sim:0") = drm#1 <0.000210>
    14:02:11.533 pid 4242 ioctl(drm#1, DRM_IOCTL_XE_VM_CREATE, {...}) = 0 <0.000088>
    14:02:11.540 pid 4243 ioctl(debugger#3, DRM_XE_EUDEBUG_IOCTL_READ_EVENT, {...}) = -1 ENOENT (No such file or directory) <1.001511>

``-vv`` replaces ``{...}`` with the argument struct decoded from :mod:`xe_eudebug.uapi` -- what the
caller passed, and after ``=>`` what the call copied back when that differs (for READ_EVENT the
event, decoded by its type) -- and also shows polls that found nothing, which ``-v`` leaves out
(a debugger's worker polls every few milliseconds).

The caller's fd numbers are not known to the simulator (an fd travels as a file, not a number),
so files are named by kind and a serial number in order of creation: ``drm#1``, ``debugger#3``,
``vm#4``.  The time in ``<...>`` is how long the server took, blocking included.

:func:`install` wraps one server's ``_dispatch`` and ``_reply`` on the instance, so a server
without tracing runs exactly the code it runs without this module.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import logging
import os
import select
import sys
import threading
import time
from typing import Any

from .. import uapi as _uapi
from ..ioctl import _IOC_SIZE, request_name
from .port import (KIND_DEBUGGER, KIND_DEVICE, KIND_VM, OP_CLONE, OP_FILE_INFO, OP_FSYNC, OP_GET_ENABLED,
                   OP_INFO, OP_IOCTL, OP_LSEEK, OP_MMAP, OP_OPEN, OP_POLL, OP_PREAD, OP_PWRITE, OP_READ,
                   OP_SET_ENABLED, OP_VM_GENS, F_GRANT, GRANT, file_key)

__all__ = ["install", "Tracer", "format_struct"]

log = logging.getLogger(__name__)

_KIND_LABELS = {KIND_DEVICE: "drm", KIND_DEBUGGER: "debugger", KIND_VM: "vm"}
_OP_NAMES = {OP_OPEN: "open", OP_READ: "read", OP_PREAD: "pread", OP_PWRITE: "pwrite", OP_LSEEK: "lseek",
             OP_FSYNC: "fsync", OP_MMAP: "mmap", OP_POLL: "poll", OP_GET_ENABLED: "get_enable_eudebug",
             OP_SET_ENABLED: "set_enable_eudebug", OP_CLONE: "clone_connection", OP_INFO: "info",
             OP_FILE_INFO: "file_info", OP_VM_GENS: "vm_generations"}
_WHENCE = {os.SEEK_SET: "SEEK_SET", os.SEEK_CUR: "SEEK_CUR", os.SEEK_END: "SEEK_END"}
#: How each request kind shows its arguments (after the file), from the wire message's fields.
_OP_ARGS = {
    OP_OPEN: lambda t, a, b, p: f'"sim:{a}"',
    OP_CLONE: lambda t, a, b, p: "",
    OP_INFO: lambda t, a, b, p: "",
    OP_READ: lambda t, a, b, p: f"{t}, {a}",
    OP_PREAD: lambda t, a, b, p: f"{t}, {a}, {b:#x}",
    OP_PWRITE: lambda t, a, b, p: f"{t}, {len(p)}, {b:#x}",
    OP_LSEEK: lambda t, a, b, p: f"{t}, {a:#x}, {_WHENCE.get(b, b)}",
    OP_MMAP: lambda t, a, b, p: f"{t}, {a}, {b:#x}",
    OP_SET_ENABLED: lambda t, a, b, p: f"{t}, {a}",
}
_POLL_BITS = [(select.POLLIN, "POLLIN"), (select.POLLOUT, "POLLOUT"), (select.POLLERR, "POLLERR"),
              (select.POLLHUP, "POLLHUP"), (select.POLLNVAL, "POLLNVAL")]
_EVENT_HEADER = "drm_xe_eudebug_event"


def _struct_name(request_macro: str) -> str | None:
    """``DRM_IOCTL_XE_VM_CREATE`` -> ``drm_xe_vm_create``; ``DRM_XE_EUDEBUG_IOCTL_VM_OPEN`` ->
    ``drm_xe_eudebug_vm_open`` (the uapi's naming rule)."""
    if request_macro.startswith("DRM_IOCTL_"):
        return "drm_" + request_macro[len("DRM_IOCTL_"):].lower()
    prefix, sep, rest = request_macro.partition("_IOCTL_")
    return f"{prefix.lower()}_{rest.lower()}" if sep else None


def _request_structs() -> dict[int, type]:
    """Request value -> argument struct, for every request macro of the uapi whose struct
    exists under the matching name with the size the request encodes."""
    table: dict[int, type] = {}
    for name in dir(_uapi):
        value = getattr(_uapi, name)
        if not isinstance(value, int) or "IOCTL_" not in name or name.endswith("_BASE"):
            continue
        sname = _struct_name(name)
        cls = getattr(_uapi, sname, None) if sname else None
        if isinstance(cls, type) and issubclass(cls, (ctypes.Structure, ctypes.Union)) \
                and ctypes.sizeof(cls) == _IOC_SIZE(value):
            table[value & 0xFFFFFFFF] = cls
    return table


def format_struct(obj: Any) -> str:
    """``{field=value, ...}``: a uapi struct in strace's braces (nested structs keep their
    names)."""
    text = repr(obj)
    head, paren, body = text.partition("(")
    return "{" + body[:-1] + "}" if paren and text.endswith(")") else text


def _decode(cls: type, data: bytes) -> str:
    size = ctypes.sizeof(cls)
    if len(data) < size:
        return f"<{len(data)} bytes>"
    return format_struct(cls.from_buffer_copy(bytes(data[:size])))


def _decode_event(data: bytes) -> str:
    header = getattr(_uapi, _EVENT_HEADER, None)
    if header is None or len(data) < ctypes.sizeof(header):
        return f"<{len(data)} bytes>"
    etype = int(header.from_buffer_copy(bytes(data[: ctypes.sizeof(header)])).type)
    cls = _uapi.EVENT_STRUCTS.get(etype, header)
    return _decode(cls, data)


def _errno_text(err: int) -> str:
    return f"-1 {_errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


def _poll_text(mask: int) -> str:
    names = [n for bit, n in _POLL_BITS if mask & bit]
    return "|".join(names) if names else "0"


class _Call(threading.local):
    reply: tuple[int, int, bytes, int] | None = None


class Tracer:
    """Formats the calls of one :class:`~xe_eudebug.sim.server.Server` (see :func:`install`)."""

    def __init__(self, server: Any, verbosity: int = 1, logger: logging.Logger | None = None) -> None:
        self.server = server
        self.verbose = verbosity >= 2
        self.log = logger or log
        self.structs = _request_structs() if self.verbose else {}
        self._labels: dict[int, str] = {}
        self._serial = 0
        self._lock = threading.Lock()
        self._call = _Call()
        self._dispatch = server._dispatch
        self._reply = server._reply

    # -- the two wrapped server methods -------------------------------------------------------
    def dispatch(self, conn: Any, kind: int, a: int, b: int, c: int, payload: bytes, fds: list[int]) -> None:
        target = self._label_fd(fds[0]) if fds else ""
        self._call.reply = None
        start = time.monotonic()
        try:
            self._dispatch(conn, kind, a, b, c, payload, fds)
        except Exception as exc:
            self.log.info("pid %d %s = protocol error: %s", conn.pid, self._call_text(kind, target, a, b, c, payload), exc)
            raise
        reply = self._call.reply
        if reply is None:
            return
        result, err, out, fd, flags = reply
        if flags & F_GRANT:  # the fd is the granted BO's memory, not a simulated file
            out, fd = out[:-GRANT.size], "+ read grant [%#x, %#x)" % GRANT.unpack_from(out, len(out) - GRANT.size)[:2]
        if kind == OP_POLL and not err and not result and not self.verbose:
            return
        text = self._call_text(kind, target, a, b, c, payload)
        if err:
            res = _errno_text(err)
        else:
            res = self._result_text(kind, a, result, out, fd)
        self.log.info("pid %d %s = %s <%.6f>", conn.pid, text, res, time.monotonic() - start)

    def reply(self, conn: Any, result: int = 0, err: int = 0, drain: int = 0, payload: bytes = b"",
              fd: int = -1, flags: int = 0) -> None:
        self._call.reply = (result, err, payload, self._label_fd(fd, new=True) if fd >= 0 else "", flags)
        self._reply(conn, result, err, drain, payload, fd, flags)

    # -- formatting ----------------------------------------------------------------------------
    def _label_fd(self, fd: Any, new: bool = False) -> str:
        try:
            key = file_key(fd)
        except OSError:
            return "?"
        entry = self.server.by_key.get(key)
        if entry is None:
            return "?"
        with self._lock:
            label = self._labels.get(key)
            if label is None:
                self._serial += 1
                label = f"{_KIND_LABELS.get(entry.kind, 'file')}#{self._serial}"
                self._labels[key] = label
        return label

    def _call_text(self, kind: int, target: str, a: int, b: int, c: int, payload: bytes) -> str:
        if kind == OP_IOCTL:
            request = a & 0xFFFFFFFF
            return f"ioctl({target}, {request_name(request)}, {self._arg_text(request, payload, c)})"
        name = _OP_NAMES.get(kind, f"op{kind}")
        args = _OP_ARGS.get(kind)
        return f"{name}({args(target, a, b, payload) if args else target})"

    def _arg_text(self, request: int, payload: bytes, unreadable: int) -> str:
        if not self.verbose:
            return "{...}"
        if unreadable:
            return "<unreadable>"
        cls = self.structs.get(request)
        if cls is not None and payload:
            return _decode(cls, payload)
        return "{...}"

    def _result_text(self, kind: int, request: int, result: int, out: bytes, fd: str) -> str:
        if kind == OP_MMAP:
            res = f"{result:#x} (offset in a memfd)"
        elif kind == OP_CLONE:
            res = "a new control connection"
        elif kind in (OP_READ, OP_PREAD):
            res = f"{len(out)} {fd}" if fd else str(len(out))
        elif fd:
            res = fd
        elif kind == OP_POLL:
            res = _poll_text(result)
        elif kind == OP_INFO:
            res = out.decode(errors="replace") if self.verbose else f"<{len(out)} bytes>"
        else:
            res = str(result)
        if kind == OP_IOCTL and self.verbose and out:
            request &= 0xFFFFFFFF
            if request == _uapi.DRM_XE_EUDEBUG_IOCTL_READ_EVENT:
                return f"{res} => {_decode_event(out)}"
            cls = self.structs.get(request)
            if cls is not None:
                return f"{res} => {_decode(cls, out)}"
        return res


def install(server: Any, verbosity: int = 1, stream: Any = None) -> Tracer:
    """Trace ``server``'s calls at ``verbosity`` (1: calls, 2: decoded structs) to ``stream``
    (stderr) through the ``xe_eudebug.sim.trace`` logger, one line per call."""
    tracer = Tracer(server, verbosity)
    if not log.handlers:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO)
    server._dispatch = tracer.dispatch
    server._reply = tracer.reply
    return tracer
