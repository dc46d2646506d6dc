"""Client side of the simulator: the seam backend for simulated file descriptors.

A simulated fd (device, debugger or VM file) is the caller's end of a Unix socketpair whose other
end is held by the simulator server.  This module recognises such fds (their peer is a known
simulator process), forwards every system call made through `xe_eudebug.ioctl` to the server over
a per-thread control connection, and serves the server's requests to read and write this
process's memory while the call is blocked (copy_from_user / copy_to_user).

The wire format is shared with `sim/server.py`: every message is a 32-byte header
``<IHHQQQ`` (payload length, kind, flags, a, b, c) followed by the payload; file descriptors travel
as ``SCM_RIGHTS`` on the first byte of a message.  One request is in flight per connection.
"""

from __future__ import annotations

import array
import ctypes
import errno as _errno
import json
import logging
import mmap as _mmap
import os
import socket
import stat
import struct
import threading
import time
from typing import Any, Callable

from .config import SOCKET_ENV, default_socket_dir, default_socket_path

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

# --------------------------------------------------------------------------------------------
# Wire format (shared with server.py)

HEADER = struct.Struct("<IHHQQQ")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 1 << 28
_MAX_RW = MAX_PAYLOAD - 4096  # largest read/write served by one call (short counts beyond)
MASK64 = (1 << 64) - 1
PROTOCOL_VERSION = 1

# port -> server requests
OP_OPEN = 1          # a = device index                         -> new fd
OP_IOCTL = 2         # fd; a = request, b = arg address, c = IOCTL_ARG_UNREADABLE or 0;
                     # payload = struct bytes (none when unreadable)
OP_READ = 3          # fd; a = size                              -> payload
OP_PREAD = 4         # fd; a = size, b = offset                  -> payload
OP_PWRITE = 5        # fd; b = offset; payload = data            -> a = count
OP_LSEEK = 6         # fd; a = offset, b = whence                -> a = position
OP_FSYNC = 7         # fd
OP_MMAP = 8          # fd; a = length, b = offset                -> memfd, a = offset in it
OP_POLL = 9          # fd                                        -> a = poll mask
OP_GET_ENABLED = 10  # fd (device)                               -> a = 0/1
OP_SET_ENABLED = 11  # fd (device); a = value                    -> a = previous
OP_CLONE = 12        #                                           -> a new control connection fd
OP_INFO = 13         #                                           -> payload JSON
OP_FILE_INFO = 14    # fd                                        -> a = device index, c = kind
OP_DEVICE_ENABLED = 15  # no fd; a = device index, b = 1 to set, c = value -> a = value before
OP_SYSFS = 16        # no fd; a = device index, b = 1 to write; payload = path below the device's
                     # sysfs directory, then a NUL and the data written -> payload = contents read,
                     # or a = count written
MAX_OP = OP_SYSFS

IOCTL_ARG_UNREADABLE = 1

# port -> server answers to memory requests
M_DATA = 32          # a = errno (0 ok); payload = bytes read
M_DONE = 33          # a = errno (0 ok)

# server -> port
R_REPLY = 64         # a = result, b = errno, c = readiness bytes to drain; payload; maybe an fd
R_MEMREAD = 65       # a = address, b = size
R_MEMWRITE = 66      # a = address; payload = data

# reply flags
F_FD = 1             # an fd is attached
F_CLOEXEC = 2        # set FD_CLOEXEC on the attached fd

# file kinds (OP_FILE_INFO)
KIND_DEVICE = 1
KIND_DEBUGGER = 2
KIND_VM = 3
KIND_OTHER = 4

_FDS_ANC = socket.CMSG_SPACE(4 * array.array("i").itemsize)
_CREDS_ANC = _FDS_ANC + socket.CMSG_SPACE(12)  # SCM_CREDENTIALS: struct ucred {pid, uid, gid}
_SCM_CREDENTIALS = int(socket.SCM_CREDENTIALS)
_UCRED = struct.Struct("=iII")
RECV_CHUNK = 1 << 20  # a message's buffer grows by at most this much per piece received
# Plain ints: the enum members of the socket module are slow in hot paths.
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_DONTWAIT = int(socket.MSG_DONTWAIT)
_MSG_NOSIGNAL = int(socket.MSG_NOSIGNAL)
_pack_header = HEADER.pack
_pack_header_into = HEADER.pack_into
_unpack_header = HEADER.unpack_from

_libc = ctypes.CDLL(None, use_errno=True)
# System calls that never block (non-blocking sends, close of a socket copy, process_vm_*,
# getsockopt) are called without releasing the GIL (PyDLL): in the multi-threaded server every
# GIL release under contention costs a thread switch.
_libc_gil = ctypes.PyDLL(None, use_errno=True)


class _iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


_c_sendmsg = _libc_gil.sendmsg
_c_sendmsg.restype = ctypes.c_ssize_t
_c_sendmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_c_close = _libc_gil.close
_c_close.restype = ctypes.c_int
_c_close.argtypes = [ctypes.c_int]
_CMSG_FD_SPACE = socket.CMSG_SPACE(4)
_CMSG_FD_LEN = socket.CMSG_LEN(4)
_CMSG_HDR = struct.Struct("@Nii")  # cmsg_len (size_t), cmsg_level, cmsg_type


class _SendBuf(threading.local):
    """Per-thread message buffer and msghdr for sends without allocation or GIL release."""

    SIZE = 8192

    def __init__(self) -> None:
        self.buf = ctypes.create_string_buffer(self.SIZE)
        self.base = ctypes.addressof(self.buf)
        self.iov = _iovec(self.base, 0)
        self.ctl = ctypes.create_string_buffer(_CMSG_FD_SPACE)
        _CMSG_HDR.pack_into(self.ctl, 0, _CMSG_FD_LEN, _SOL_SOCKET, _SCM_RIGHTS)
        self.ctl_addr = ctypes.addressof(self.ctl)
        self.msg = _msghdr(None, 0, ctypes.addressof(self.iov), 1, None, 0, 0)
        self.pmsg = ctypes.addressof(self.msg)


_sendbuf = _SendBuf()
_memmove = ctypes.memmove

_c_getsockopt = _libc_gil.getsockopt
_c_getsockopt.restype = ctypes.c_int
_c_getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_c_fcntl = _libc_gil.fcntl
_c_fcntl.restype = ctypes.c_int
_c_send = _libc_gil.send
_c_send.restype = ctypes.c_ssize_t
_c_send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_SO_COOKIE = 57


class _KeyBuf(threading.local):
    def __init__(self) -> None:
        self.value = ctypes.c_uint64()
        self.size = ctypes.c_uint32()
        self.pvalue = ctypes.addressof(self.value)
        self.psize = ctypes.addressof(self.size)


_keybuf = _KeyBuf()


def _cookie(fd: int) -> int:
    kb = _keybuf
    kb.size.value = 8
    if _c_getsockopt(fd, _SOL_SOCKET, _SO_COOKIE, kb.pvalue, kb.psize) != 0:
        return -1
    return kb.value.value


def _probe_cookies() -> bool:
    a, b = socket.socketpair()
    with a, b:
        ka, kb = _cookie(a.fileno()), _cookie(b.fileno())
    return ka > 0 and kb > 0 and ka != kb


_HAVE_COOKIES = _probe_cookies()


def file_key(fd: int) -> int:
    """Identity of the socket behind `fd`, shared by all its copies: the socket cookie (unique,
    never reused), or the inode where the kernel has no socket cookies; -1 if not a socket."""
    if _HAVE_COOKIES:
        return _cookie(fd)
    try:
        st = os.fstat(fd)
    except OSError:
        return -1
    return st.st_ino if stat.S_ISSOCK(st.st_mode) else -1


_c_epoll_wait = _libc_gil.epoll_wait
_c_epoll_wait.restype = ctypes.c_int
_c_epoll_wait.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]


class _EpollBuf(threading.local):
    def __init__(self) -> None:
        self.buf = ctypes.create_string_buffer(16 * 8)  # room for 8 epoll_event on any ABI
        self.addr = ctypes.addressof(self.buf)


_epollbuf = _EpollBuf()


def epoll_ready(epfd: int) -> bool:
    """Whether an epoll instance has an event pending right now (no wait, GIL kept)."""
    return _c_epoll_wait(epfd, _epollbuf.addr, 8, 0) > 0


def status_flags(fd: int) -> int:
    """fcntl(F_GETFL) without releasing the GIL; 0 on error."""
    flags = _c_fcntl(fd, 3)  # F_GETFL
    return flags if flags > 0 else 0


def send_byte(fd: int, byte: bytes) -> bool:
    """One byte on a socket without blocking (and without releasing the GIL)."""
    return _c_send(fd, byte, 1, _MSG_DONTWAIT | _MSG_NOSIGNAL) == 1


def to_u64(value: int) -> int:
    return value & MASK64


def to_s64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class ProtocolError(Exception):
    """A peer sent bytes that are not a valid message."""


class FdsDropped(ProtocolError):
    """A whole message arrived but the file descriptors sent with it could not be received (the
    receiver's fd table is full): the message is consumed, the connection stays usable."""


def send_msg(sock: socket.socket, kind: int, flags: int = 0, a: int = 0, b: int = 0, c: int = 0,
             payload: bytes | bytearray | memoryview = b"", fd: int = -1) -> None:
    """Send one message (one sendmsg call in the common case)."""
    n = len(payload)
    total = HEADER_SIZE + n
    if total <= _SendBuf.SIZE:
        sb = _sendbuf
        _pack_header_into(sb.buf, 0, n, kind, flags, a, b, c)
        if n:
            _memmove(sb.base + HEADER_SIZE, payload if isinstance(payload, bytes) else bytes(payload), n)
        sb.iov.iov_len = total
        msg = sb.msg
        if fd >= 0:
            struct.pack_into("i", sb.ctl, _CMSG_HDR.size, fd)
            msg.msg_control = sb.ctl_addr
            msg.msg_controllen = _CMSG_FD_SPACE
        else:
            msg.msg_control = None
            msg.msg_controllen = 0
        sent = _c_sendmsg(sock.fileno(), sb.pmsg, _MSG_DONTWAIT | _MSG_NOSIGNAL)
        if sent == total:
            return
        if sent > 0:  # the fd went with the first part
            sock.sendall(ctypes.string_at(sb.base + sent, total - sent))
            return
        err = ctypes.get_errno()
        if err not in (_errno.EAGAIN, _errno.EINTR):
            raise OSError(err, os.strerror(err))
        # The receive queue is full: fall back to a blocking send (which releases the GIL).
    header = _pack_header(n, kind, flags, a, b, c)
    if payload and total <= 4096:
        header += payload
        data: list[Any] = [header]
    else:
        data = [header, payload] if payload else [header]
    if fd >= 0:
        sent = sock.sendmsg(data, [(_SOL_SOCKET, _SCM_RIGHTS, fd.to_bytes(4, "little"))])
    else:
        sent = sock.sendmsg(data)
    if sent < total:
        rest = (header + bytes(payload))[sent:]
        sock.sendall(rest)


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        _c_close(fd)


def _fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, ctype, cdata in ancdata:
        if level == _SOL_SOCKET and ctype == _SCM_RIGHTS:
            for off in range(0, len(cdata) - 3, 4):
                fds.append(int.from_bytes(cdata[off:off + 4], "little", signed=True))
    return fds


def _creds_of(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int, int]:
    for level, ctype, cdata in ancdata:
        if level == _SOL_SOCKET and ctype == _SCM_CREDENTIALS and len(cdata) >= _UCRED.size:
            return _UCRED.unpack_from(cdata)
    return (0, 0, 0)


def recv_msg(sock: socket.socket, buf: bytearray, flags: int = _MSG_CMSG_CLOEXEC,
             creds: list[int] | None = None) -> tuple[int, int, int, int, int, bytes, list[int]] | None:
    """Receive one message into `buf` (grown as data arrives). None on a clean end of file.

    `creds`: on a socket with SO_PASSCRED, a list that receives [pid, uid, gid] of the process
    that sent the message, as the kernel attached them (pid 0: none attached); every piece of
    the message must come from that process.

    Raises ProtocolError on a truncated or oversized message; received fds are returned (the
    caller owns them) or closed when the message is malformed.
    """
    nbytes, ancdata, msg_flags, _ = sock.recvmsg_into([buf], _FDS_ANC if creds is None else _CREDS_ANC, flags)
    fds = _fds_of(ancdata) if ancdata else []
    dropped = False
    if creds is not None:
        creds[:] = _creds_of(ancdata)
    if msg_flags & _MSG_CTRUNC:
        _close_fds(fds)
        fds = []
        dropped = True  # read the message all the same, then say so (FdsDropped)
    if nbytes == 0:
        _close_fds(fds)
        return None
    if nbytes >= HEADER_SIZE:
        length, kind, mflags, a, b, c = _unpack_header(buf)
        if nbytes == HEADER_SIZE + length:  # the common case: the whole message at once
            if dropped:
                raise FdsDropped("file descriptors of a message dropped (fd table full)")
            return kind, mflags, a, b, c, bytes(buf[HEADER_SIZE:nbytes]) if length else b"", fds
    try:
        msg = _recv_rest(sock, buf, nbytes, fds, creds)
    except BaseException:
        _close_fds(fds)
        raise
    if dropped:
        raise FdsDropped("file descriptors of a message dropped (fd table full)")
    return msg


def _recv_into(sock: socket.socket, view: memoryview, creds: list[int] | None) -> int:
    if creds is None:
        return sock.recv_into(view)
    got, ancdata, msg_flags, _ = sock.recvmsg_into([view], _CREDS_ANC)
    fds = _fds_of(ancdata) if ancdata else []
    if fds or msg_flags & _MSG_CTRUNC:
        _close_fds(fds)
        raise ProtocolError("file descriptors inside a message")
    if got and list(_creds_of(ancdata)) != creds:
        raise ProtocolError("a message written by two processes")
    return got


def _recv_rest(sock: socket.socket, buf: bytearray, nbytes: int, fds: list[int],
               creds: list[int] | None = None) -> tuple[int, int, int, int, int, bytes, list[int]]:
    if len(buf) < HEADER_SIZE:
        buf.extend(bytes(HEADER_SIZE - len(buf)))
    view = memoryview(buf)
    try:
        while nbytes < HEADER_SIZE:
            got = _recv_into(sock, view[nbytes:HEADER_SIZE], creds)
            if got == 0:
                raise ProtocolError("end of file inside a message header")
            nbytes += got
        length, kind, mflags, a, b, c = _unpack_header(buf)
        if length > MAX_PAYLOAD:
            raise ProtocolError(f"payload of {length} bytes")
        total = HEADER_SIZE + length
        if nbytes > total:
            raise ProtocolError("unexpected bytes after a message")
        while nbytes < total:
            if nbytes == len(buf):
                # grow with the data, never by what a header merely announces
                view.release()
                buf.extend(bytes(min(total - len(buf), max(RECV_CHUNK, len(buf)))))
                view = memoryview(buf)
            got = _recv_into(sock, view[nbytes:min(total, len(buf))], creds)
            if got == 0:
                raise ProtocolError("end of file inside a message")
            nbytes += got
        payload = bytes(view[HEADER_SIZE:total]) if length else b""
    finally:
        view.release()
    if len(buf) > 4 * RECV_CHUNK:
        del buf[RECV_CHUNK:]  # a large message does not pin its buffer for the connection's life
    return kind, mflags, a, b, c, payload, fds


# --------------------------------------------------------------------------------------------
# Safe access to this process's memory (a bad address gives EFAULT, never a crash)



_pvm_read = getattr(_libc_gil, "process_vm_readv", None)
_pvm_write = getattr(_libc_gil, "process_vm_writev", None)
for _fn in (_pvm_read, _pvm_write):
    if _fn is not None:
        _fn.restype = ctypes.c_ssize_t
        _fn.argtypes = [ctypes.c_int, ctypes.POINTER(_iovec), ctypes.c_ulong,
                        ctypes.POINTER(_iovec), ctypes.c_ulong, ctypes.c_ulong]

_getsockopt = _libc.getsockopt
_getsockopt.restype = ctypes.c_int
_getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                        ctypes.POINTER(ctypes.c_uint32)]


class _ucred(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_int32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32)]


class _IoBuf(threading.local):
    """Per-thread scratch buffer and iovecs for small copies (no allocation per call)."""

    SIZE = 16384

    def __init__(self) -> None:
        self.buf = ctypes.create_string_buffer(self.SIZE)
        self.base = ctypes.addressof(self.buf)
        self.local = _iovec(self.base, 0)
        self.remote = _iovec(0, 0)
        self.plocal = ctypes.byref(self.local)
        self.premote = ctypes.byref(self.remote)


_iobuf = _IoBuf()
_string_at = ctypes.string_at


def vm_read(pid: int, addr: int, size: int) -> bytes:
    """Read `size` bytes at `addr` of process `pid`; OSError(EFAULT/EPERM/ESRCH...) on failure."""
    if size == 0:
        return b""
    if addr < 0 or size < 0 or addr + size > MASK64 + 1:
        raise OSError(_errno.EFAULT, os.strerror(_errno.EFAULT))
    if _pvm_read is None:
        return _procmem(pid, addr, size, None)
    if size <= _IoBuf.SIZE:
        io = _iobuf
        io.local.iov_len = size
        io.remote.iov_base = addr
        io.remote.iov_len = size
        done = _pvm_read(pid, io.plocal, 1, io.premote, 1, 0)
        if done == size:
            return _string_at(io.base, size)
    else:
        out = ctypes.create_string_buffer(size)
        local = _iovec(ctypes.addressof(out), size)
        remote = _iovec(addr, size)
        done = _pvm_read(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if done == size:
            return out.raw
    if done < 0:
        err = ctypes.get_errno()
        if err == _errno.ENOSYS:
            return _procmem(pid, addr, size, None)
        raise OSError(err, os.strerror(err))
    raise OSError(_errno.EFAULT, os.strerror(_errno.EFAULT))


def vm_write(pid: int, addr: int, data: bytes | bytearray | memoryview) -> None:
    """Write `data` at `addr` of process `pid`; OSError(EFAULT/EPERM/ESRCH...) on failure."""
    size = len(data)
    if size == 0:
        return
    if addr < 0 or addr + size > MASK64 + 1:
        raise OSError(_errno.EFAULT, os.strerror(_errno.EFAULT))
    if _pvm_write is None:
        _procmem(pid, addr, size, bytes(data))
        return
    if size <= _IoBuf.SIZE:
        io = _iobuf
        ctypes.memmove(io.base, bytes(data), size)
        io.local.iov_len = size
        io.remote.iov_base = addr
        io.remote.iov_len = size
        done = _pvm_write(pid, io.plocal, 1, io.premote, 1, 0)
    else:
        src = (ctypes.c_char * size).from_buffer_copy(data)
        local = _iovec(ctypes.addressof(src), size)
        remote = _iovec(addr, size)
        done = _pvm_write(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if done == size:
        return
    if done < 0:
        err = ctypes.get_errno()
        if err == _errno.ENOSYS:
            _procmem(pid, addr, size, bytes(data))
            return
        raise OSError(err, os.strerror(err))
    raise OSError(_errno.EFAULT, os.strerror(_errno.EFAULT))


def _procmem(pid: int, addr: int, size: int, data: bytes | None) -> bytes:
    """Fallback through /proc/PID/mem when process_vm_* are unavailable."""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDWR if data is not None else os.O_RDONLY)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror) from None
    try:
        if data is None:
            got = os.pread(fd, size, addr)
            if len(got) != size:
                raise OSError(_errno.EFAULT, os.strerror(_errno.EFAULT))
            return got
        if os.pwrite(fd, data, addr) != size:
            raise OSError(_errno.EFAULT, os.strerror(_errno.EFAULT))
        return b""
    except OSError as exc:
        if exc.errno in (_errno.EIO, _errno.EINVAL, _errno.EOVERFLOW):
            raise OSError(_errno.EFAULT, os.strerror(_errno.EFAULT)) from None
        raise
    finally:
        os.close(fd)


def peer_pid(fd: int) -> int:
    """SO_PEERCRED pid of a Unix socket fd, or -1 if it is not one."""
    cred = _ucred()
    size = ctypes.c_uint32(ctypes.sizeof(cred))
    if _getsockopt(fd, socket.SOL_SOCKET, socket.SO_PEERCRED, ctypes.byref(cred), ctypes.byref(size)) != 0:
        return -1
    return cred.pid


_PR_SET_PTRACER = 0x59616D61


def _allow_ptracer(pid: int) -> None:
    """Under Yama ptrace_scope=1, let the server reach this process's memory directly."""
    try:
        _libc.prctl(_PR_SET_PTRACER, ctypes.c_ulong(pid), 0, 0, 0)
    except Exception:  # pragma: no cover - prctl always exists on Linux
        pass


# --------------------------------------------------------------------------------------------
# Errors

LOST_MESSAGE = "xe_eudebug simulator connection lost"


class SimulatorConnectionLost(ConnectionResetError):
    """The simulator server went away while (or before) serving a call."""

    def __init__(self, detail: str = "") -> None:
        msg = LOST_MESSAGE + (f" ({detail})" if detail else "")
        super().__init__(_errno.ECONNRESET, msg)


# --------------------------------------------------------------------------------------------
# One simulator server as seen from this process

CONNECT_TIMEOUT = 5.0
START_TIMEOUT = 15.0


class _Link:
    """Control connections of this process to one simulator server."""

    def __init__(self, path: str, master: socket.socket, pid: int) -> None:
        self.path = path
        self.pid = pid
        self.master: socket.socket | None = master
        self.lock = threading.Lock()
        self.tls = threading.local()
        self._mbuf = bytearray(4096)
        self.info: dict[str, Any] | None = None

    # -- connections ---------------------------------------------------------------------
    def thread_conn(self) -> tuple[socket.socket, bytearray]:
        """The calling thread's own connection, cloned over the process connection."""
        conn = getattr(self.tls, "conn", None)
        if conn is not None:
            return conn
        with self.lock:
            if self.master is None:
                self.master = self._reconnect(CONNECT_TIMEOUT)
            try:
                send_msg(self.master, OP_CLONE)
                msg = recv_msg(self.master, self._mbuf)
            except (OSError, ProtocolError) as exc:
                self._drop_master()
                raise SimulatorConnectionLost(str(exc)) from None
            if msg is None:
                self._drop_master()
                raise SimulatorConnectionLost("server closed the connection")
            kind, _f, result, err, _c, _p, fds = msg
            if kind != R_REPLY or err or len(fds) != 1:
                _close_fds(fds)
                self._drop_master()
                raise SimulatorConnectionLost("bad reply to a connection request")
        sock = socket.socket(fileno=fds[0])
        os.set_inheritable(sock.fileno(), False)
        conn = (sock, bytearray(65536 + HEADER_SIZE))
        self.tls.conn = conn
        return conn

    def _reconnect(self, timeout: float) -> socket.socket:
        """A new process connection to this link's server (the same server process only)."""
        try:
            sock, pid = _path_connect(self.path, timeout)
        except OSError as exc:
            raise SimulatorConnectionLost(f"cannot reach {self.path}: {exc.strerror or exc}") from None
        if pid != self.pid:
            sock.close()
            raise SimulatorConnectionLost(f"the simulator (pid {self.pid}) serving this file has exited")
        return sock

    def _drop_master(self) -> None:
        if self.master is not None:
            try:
                self.master.close()
            except OSError:
                pass
            self.master = None

    def drop_thread_conn(self) -> None:
        conn = getattr(self.tls, "conn", None)
        if conn is not None:
            self.tls.conn = None
            try:
                conn[0].close()
            except OSError:
                pass

    def after_fork_in_child(self) -> None:
        # Inherited connections belong to the parent's identity: never use them here.
        if self.master is not None:
            try:
                os.close(self.master.detach())
            except OSError:
                pass
        self.master = None
        old = getattr(self.tls, "conn", None)
        if old is not None:
            try:
                os.close(old[0].detach())
            except OSError:
                pass
        self.lock = threading.Lock()
        self.tls = threading.local()
        # Connect now, while this process still has the privileges it was forked with.
        try:
            self.master = self._reconnect(1.0)
        except OSError:
            self.master = None

    # -- calls ---------------------------------------------------------------------------
    def call(self, op: int, fd: int = -1, a: int = 0, b: int = 0, c: int = 0,
             payload: bytes | bytearray | memoryview = b"") -> tuple[int, int, int, bytes, list[int]]:
        """Run one call; returns (flags, a, c, payload, fds) of a successful reply and raises
        OSError(errno) for a failed one."""
        flags, ra, err, rc, data, fds = self.raw_call(op, fd, a, b, c, payload)
        if err:
            _close_fds(fds)
            raise OSError(err, os.strerror(err))
        return flags, ra, rc, data, fds

    def raw_call(self, op: int, fd: int = -1, a: int = 0, b: int = 0, c: int = 0,
                 payload: bytes | bytearray | memoryview = b"") -> tuple[int, int, int, int, bytes, list[int]]:
        """Run one call; returns the reply's (flags, a, errno, c, payload, fds)."""
        sock, buf = self.thread_conn()
        try:
            send_msg(sock, op, 0, a, b, c, payload, fd)
            while True:
                msg = recv_msg(sock, buf)
                if msg is None:
                    raise SimulatorConnectionLost("server closed the connection")
                kind, flags, ra, rb, rc, data, fds = msg
                if kind == R_REPLY:
                    break
                _close_fds(fds)
                if kind == R_MEMREAD:
                    try:
                        got = vm_read(_self_pid(), ra, rb)
                        send_msg(sock, M_DATA, 0, 0, 0, 0, got)
                    except OSError as exc:
                        send_msg(sock, M_DATA, 0, _memerr(exc))
                elif kind == R_MEMWRITE:
                    try:
                        vm_write(_self_pid(), ra, data)
                        send_msg(sock, M_DONE)
                    except OSError as exc:
                        send_msg(sock, M_DONE, 0, _memerr(exc))
                else:
                    raise ProtocolError(f"unexpected message kind {kind}")
        except OSError as exc:
            if isinstance(exc, SimulatorConnectionLost):
                self.drop_thread_conn()
                raise
            if exc.errno in (_errno.ECONNRESET, _errno.EPIPE, _errno.ENOTCONN):
                self.drop_thread_conn()
                raise SimulatorConnectionLost(os.strerror(exc.errno or 0)) from None
            raise
        except FdsDropped:
            # the reply's new fd did not fit in this process's fd table, as open(2) would say
            raise OSError(_errno.EMFILE, os.strerror(_errno.EMFILE)) from None
        except ProtocolError as exc:
            self.drop_thread_conn()
            raise OSError(_errno.EPROTO, f"xe_eudebug simulator protocol error: {exc}") from None
        except BaseException:
            # Interrupted mid-call (KeyboardInterrupt...): the connection's state is unknown.
            self.drop_thread_conn()
            raise
        return flags, ra, rb, rc, data, fds


def _memerr(exc: OSError) -> int:
    return exc.errno if exc.errno in (_errno.EFAULT,) else _errno.EFAULT


def _path_connect(path: str, timeout: float = CONNECT_TIMEOUT) -> tuple[socket.socket, int]:
    """Connect to a server socket; returns the socket and the server's pid."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock.connect(path)
                break
            except BlockingIOError:
                # The listen backlog is full (a burst of connects): the server is busy, not
                # gone.  Retry until the caller's deadline.
                if time.monotonic() + pause > deadline:
                    raise OSError(_errno.ETIMEDOUT, f"{path}: listen backlog full for {timeout:.1f} s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        sock.settimeout(None)
        pid = peer_pid(sock.fileno())
        if pid <= 0:
            raise OSError(_errno.EPROTO, f"xe_eudebug simulator at {path}: no peer credentials")
    except BaseException:
        sock.close()
        raise
    _allow_ptracer(pid)
    return sock, pid


# --------------------------------------------------------------------------------------------
# The registry of servers known to this process

_registry_lock = threading.Lock()
_links_by_pid: dict[int, _Link] = {}
_links_by_path: dict[str, _Link] = {}
_not_servers: set[int] = set()
_probed_paths: set[str] = set()


def _register(path: str, master: socket.socket, pid: int) -> _Link:
    old = _links_by_pid.get(pid)
    if old is not None:
        master.close()
        _links_by_path[path] = old
        return old
    link = _Link(path, master, pid)
    _links_by_pid[pid] = link
    _links_by_path[path] = link
    _not_servers.discard(pid)
    return link


def link_for_path(path: str, start: bool = False) -> _Link:
    """The link to the server at `path`, connecting (and, if `start`, starting it) as needed."""
    path = os.path.abspath(path)
    with _registry_lock:
        link = _links_by_path.get(path)
        if link is not None and _alive(link.pid):
            return link
        try:
            master, pid = _path_connect(path)
        except OSError as exc:
            if not start or exc.errno not in (_errno.ENOENT, _errno.ECONNREFUSED):
                raise OSError(exc.errno, f"xe_eudebug simulator at {path}: {exc.strerror}") from None
            master, pid = _start_and_connect(path)
        return _register(path, master, pid)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def selected_socket_path() -> tuple[str, bool]:
    """The socket `sim` devices use, and whether it may be started on demand."""
    env = os.environ.get(SOCKET_ENV)
    if env:
        return env, False
    return default_socket_path(), True


def _start_and_connect(path: str) -> tuple[socket.socket, int]:
    """Start the per-user simulator (under a lock against races) and connect to it."""
    import fcntl
    import subprocess
    import sys

    directory = os.path.dirname(path)
    _ensure_private_dir(directory)
    lock_fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(_errno.ETIMEDOUT, f"xe_eudebug simulator: timed out waiting for the start lock in {directory}") from None
                time.sleep(0.02)
        # Someone else may have started it while we waited for the lock.
        try:
            return _path_connect(path)
        except OSError:
            pass
        env = dict(os.environ)
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        logfile = os.path.join(directory, "server.log")
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "xe_eudebug.sim", "--socket", path],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                start_new_session=True, close_fds=True,
            )
        log.info("started xe_eudebug simulator pid %d on %s", proc.pid, path)
        while True:
            try:
                return _path_connect(path)
            except OSError:
                pass
            if proc.poll() is not None:
                raise OSError(_errno.EIO, f"xe_eudebug simulator failed to start (exit status {proc.returncode}); see {logfile}")
            if time.monotonic() > deadline:
                raise OSError(_errno.ETIMEDOUT, f"xe_eudebug simulator did not come up on {path} within {START_TIMEOUT:.0f} s; see {logfile}")
            time.sleep(0.02)
    finally:
        os.close(lock_fd)


def _ensure_private_dir(directory: str) -> None:
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(_errno.EPERM, f"xe_eudebug simulator: {directory} must be a directory owned by uid {os.getuid()} with mode 0700")


def _link_for_fd(fd: int) -> _Link | None:
    pid = peer_pid(fd)
    if pid <= 0:
        return None
    link = _links_by_pid.get(pid)
    if link is not None:
        return link
    if pid in _not_servers:
        return None
    # An fd inherited across exec, or from a server we have not talked to yet: ask the
    # configured servers who they are (without starting anything).
    with _registry_lock:
        for path in (os.environ.get(SOCKET_ENV), default_socket_path()):
            if not path or path in _probed_paths or not os.path.exists(path):
                continue
            _probed_paths.add(path)
            try:
                master, spid = _path_connect(path, timeout=1.0)
            except OSError:
                continue
            _register(os.path.abspath(path), master, spid)
        link = _links_by_pid.get(pid)
        if link is None:
            if len(_not_servers) > 4096:
                _not_servers.clear()
            _not_servers.add(pid)
        return link


_pid = os.getpid()


def _self_pid() -> int:
    return _pid


def _after_fork_in_child() -> None:
    global _registry_lock, _pid
    _pid = os.getpid()
    _claimed.clear()
    _registry_lock = threading.Lock()
    _probed_paths.clear()
    for link in list(_links_by_pid.values()):
        link.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------------------------
# Public helpers

def connect(socket_path: str | None = None) -> _Link:
    """The link to a simulator: `socket_path`, else ``XE_EUDEBUG_SIM_SOCKET``, else the per-user
    instance (started on demand)."""
    if socket_path is not None:
        return link_for_path(socket_path, start=False)
    path, may_start = selected_socket_path()
    return link_for_path(path, start=may_start)


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
        with _registry_lock:
            for path, known in list(_links_by_path.items()):
                if known is link:
                    del _links_by_path[path]
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
    body = path.encode() + (b"\0" + bytes(data) if data is not None else b"")
    _f, a, _c, payload, fds = connect(socket_path).call(
        OP_SYSFS, a=to_u64(index), b=0 if data is None else 1, payload=body)
    _close_fds(fds)
    return payload if data is None else int(a)


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


_claimed: dict[int, "_Link"] = {}


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
