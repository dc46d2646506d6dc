"""The process in a call: its control connection, its identity and its memory.

`Caller` is what the kernel model calls copy_from_user / copy_to_user on.  Its identity is the
SCM_CREDENTIALS the kernel attached to the call's message, never the process that opened the
connection.  Memory goes through process_vm_readv/writev where permitted, else through memory
requests answered by the caller's side of the connection (in chunks of MEMORY_CHUNK).
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import select
import socket
import threading
from typing import Any

from . import wire
from .wire import M_DATA, M_DONE, R_MEMREAD, R_MEMWRITE, ProtocolError, recv_msg, send_msg, vm_read, vm_write

log = logging.getLogger("xe_eudebug.sim.server")

_GONE_EVENTS = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0x2000)
MEMORY_CHUNK = 1 << 20  # bytes of caller memory copied (or asked for) at a time
MEMORY_ANSWER_TIMEOUT = 30.0  # seconds a caller may take to answer a memory request


class _FallbackKernelError(Exception):
    def __init__(self, errno: int, *args: object) -> None:
        super().__init__(errno, os.strerror(errno), *args)
        self.errno = errno


class _Conn:
    """One control connection.  `pid`/`uid`/`gid` (SO_PEERCRED of the path connection, shared by
    its clones) only name it in logs: a call's identity is `creds`, the SCM_CREDENTIALS the
    kernel attached to the call's message (SO_PASSCRED), whoever holds the connection."""

    __slots__ = ("sock", "fd", "buf", "pid", "uid", "gid", "direct", "dead", "held", "creds", "sleep", "closed",
                 "msg", "parked", "busy", "resume_deadline")

    def __init__(self, sock: socket.socket, pid: int, uid: int, gid: int, direct: bool,
                 sleep: Any = None) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray(4096 + wire.HEADER_SIZE)  # grows with a larger message
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.direct = direct
        self.dead = False
        self.held: list[int] = []  # fds received with the call being served
        self.creds: list[int] = [0, 0, 0]  # [pid, uid, gid] of the sender of the call being served
        self.sleep = sleep or (lambda: None)  # the event loop's might_sleep
        self.closed = False
        self.msg: tuple | None = None        # the request being served
        self.parked: Parked | None = None     # its call, parked (see Parked)
        self.busy = False                     # a thread serves a request of it now
        self.resume_deadline: float | None = None  # the deadline of a parked call run again


class Caller:
    """The process blocked in a call: copy_from_user / copy_to_user on its memory."""

    __slots__ = ("_conn", "_error", "pid", "uid", "gid", "arg_addr", "nonblock", "on_return", "park", "deadline")

    def __init__(self, conn: _Conn, error_class: type, arg_addr: int = 0, nonblock: bool = False) -> None:
        self._conn = conn
        self._error = error_class
        # the process that sent this call, as the kernel vouches for it (never the process that
        # opened the connection: a connection handed to another process acts as that process)
        self.pid, self.uid, self.gid = conn.creds
        self.arg_addr = arg_addr
        self.nonblock = nonblock
        self.on_return: bytes | None = None  # bytes the caller writes at arg_addr as the call returns
        self.park: Any = None                # set where the server can continue the call later
        self.deadline: float | None = None   # the deadline of the call's first run (a continued call)

    def _fault(self) -> Exception:
        return _make_error(self._error, _errno.EFAULT)

    def gone(self) -> bool:
        """The process blocked in this call is gone (its end of the connection closed): the
        kernel's fatal-signal check for a sleeping call."""
        conn = self._conn
        if conn.dead:
            return True
        waiter = select.poll()
        waiter.register(conn.sock.fileno(), _GONE_EVENTS)
        events = waiter.poll(0)
        return bool(events and events[0][1] & _GONE_EVENTS)

    def read(self, addr: int, size: int) -> bytes:
        addr = int(addr)
        size = int(size)
        if size < 0 or addr < 0 or addr + size > wire.MASK64 + 1:
            raise self._fault()
        if size == 0:
            return b""
        if size <= MEMORY_CHUNK:
            return self._read(addr, size)
        # Copied piece by piece: memory grows only with what was really read, a bad range
        # faults at its first bad piece, and no answer of the caller's side exceeds the cap.
        out = bytearray()
        for off in range(0, size, MEMORY_CHUNK):
            out += self._read(addr + off, min(MEMORY_CHUNK, size - off))
        return bytes(out)

    def _read(self, addr: int, size: int) -> bytes:
        conn = self._conn
        if conn.direct:
            try:
                return vm_read(self.pid, addr, size)
            except OSError as exc:
                if exc.errno == _errno.EFAULT:
                    raise self._fault() from None
                conn.direct = False  # not permitted: ask the caller from now on
        return self._ask(R_MEMREAD, M_DATA, addr, size, b"")

    def write(self, addr: int, data: bytes) -> None:
        addr = int(addr)
        size = len(data)
        if addr < 0 or addr + size > wire.MASK64 + 1:
            raise self._fault()
        if size == 0:
            return
        if size > MEMORY_CHUNK:
            view = memoryview(data)
            for off in range(0, size, MEMORY_CHUNK):
                self._write(addr + off, view[off:off + MEMORY_CHUNK])
            return
        self._write(addr, data)

    def _write(self, addr: int, data: bytes | memoryview) -> None:
        conn = self._conn
        if conn.direct:
            try:
                vm_write(self.pid, addr, data)
                return
            except OSError as exc:
                if exc.errno == _errno.EFAULT:
                    raise self._fault() from None
                conn.direct = False
        self._ask(R_MEMWRITE, M_DONE, addr, 0, data)

    def write_on_return(self, addr: int, data: bytes) -> None:
        """copy_to_user as the last act of an ioctl, at its argument address: the port writes the
        bytes into its own memory before the call returns (a fault fails the call with EFAULT),
        which spares the server a cross-process copy.  Anywhere else, a plain write()."""
        if addr != self.arg_addr or self.on_return is not None or not data:
            self.write(addr, data)
            return
        if addr <= 0 or addr + len(data) > wire.MASK64 + 1:
            raise self._fault()
        self.on_return = bytes(data)

    def _ask(self, kind: int, answer: int, addr: int, size: int, data: bytes) -> bytes:
        """Ask the blocked caller's side of the connection to copy (read `size` or write `data`)."""
        conn = self._conn
        if conn.dead:
            raise self._fault()
        conn.sleep()  # the answer takes a round trip through the caller: not on the loop
        try:
            send_msg(conn.sock, kind, 0, addr, size, 0, data)
            # The caller answers at once while blocked in its call; a stopped or wedged process
            # costs this call an EFAULT, never a server thread.
            waiter = select.poll()
            waiter.register(conn.sock.fileno(), select.POLLIN)
            if not waiter.poll(MEMORY_ANSWER_TIMEOUT * 1000):
                raise ProtocolError(f"no answer to a memory request within {MEMORY_ANSWER_TIMEOUT:.0f} s")
            creds = [0, 0, 0]
            msg = recv_msg(conn.sock, conn.buf, creds=creds)
            if msg is None:
                raise ProtocolError("end of file during a memory request")
            got, _flags, err, _b, _c, reply, fds = msg
            wire._close_fds(fds)
            if creds[0] != self.pid:
                # only the process blocked in the call may hand over its memory
                raise ProtocolError(f"memory answer from pid {creds[0]} for a call of pid {self.pid}")
            if got != answer or (not err and answer == M_DATA and len(reply) != size):
                raise ProtocolError("bad answer to a memory request")
        except (OSError, ProtocolError) as exc:
            log.debug("memory request to pid %d failed: %s", conn.pid, exc)
            conn.dead = True
            raise self._fault() from None
        if err:
            raise self._fault()
        return reply


class Parked(BaseException):
    """A call parked in the kernel model instead of sleeping (Caller.park): it holds its request
    and its fds, and runs again from the start when the condition it waited on is notified or at
    its deadline.  Raised through the model (a BaseException: no model code catches it)."""

    def __init__(self, deadline: float, msg: tuple) -> None:
        super().__init__()
        self.deadline = deadline
        self.msg = msg
        self.lock = threading.Lock()
        self.armed = False      # the parking call has unwound: the record may be resumed
        self.fired = False      # its condition was notified
        self.scheduled = False  # queued to run again (once)


class UnreadableArg(bytes):
    """The argument of a call whose struct the caller could not read: `bytes(arg)` - the
    model's copy_from_user - fails with EFAULT at the point the kernel would fault, after the
    checks that come first (an unknown debugger ioctl is still EINVAL).  Direct access sees
    zeros."""

    def __new__(cls, size: int, error_class: type) -> "UnreadableArg":
        obj = super().__new__(cls, size)
        obj._error = error_class  # type: ignore[attr-defined]
        return obj

    def __bytes__(self) -> bytes:
        raise _make_error(self._error, _errno.EFAULT)  # type: ignore[attr-defined]


def _make_error(cls: type, errno: int) -> Exception:
    try:
        exc = cls(errno)
    except Exception:
        exc = _FallbackKernelError(errno)
    if getattr(exc, "errno", None) != errno:
        try:
            exc.errno = errno  # type: ignore[attr-defined]
        except Exception:
            return _FallbackKernelError(errno)
    return exc
