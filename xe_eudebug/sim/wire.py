"""The wire protocol between simulated fds and the simulator server (both sides use it).

Every message is a 32-byte header ``<IHHQQQ`` (payload length, kind, flags, a, b, c) followed by
the payload; file descriptors travel as ``SCM_RIGHTS`` on the first byte of a message.  One
request is in flight per connection.  Also here: the identity of a socket behind an fd (socket
cookie), and copies of a process's memory that fault cleanly (process_vm_readv/writev), which
the server uses on callers and the port on its own process.  See docs/architecture.md, "Wire
protocol".
"""

from __future__ import annotations

import array
import ctypes
import errno as _errno
import os
import socket
import stat
import struct
import threading
from typing import Any

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
OP_PREAD = 4         # fd; a = size, b = offset, c = PREAD_GRANT or 0 -> payload (with F_GRANT:
                     # the data, then a GRANT record; the read-only BO memfd attached)
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
OP_VM_GENS = 17      # no fd                                     -> the VM generation counters'
                     # memfd (read-only), a = its size in bytes
MAX_OP = OP_VM_GENS

IOCTL_ARG_UNREADABLE = 1
PREAD_GRANT = 1      # OP_PREAD's c: the caller takes a read grant (sim/kernel/xe_eudebug_vm.py)
# A read grant, at the end of an F_GRANT reply's payload: the GPU VA window [start, end), the
# offset of `start` in the attached BO memfd, the VM's generation counter (index in the
# OP_VM_GENS memfd, 8 bytes each) and its value when granted.
GRANT = struct.Struct("<QQQQQ")

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
F_GRANT = 4          # OP_PREAD: the payload ends with a GRANT record, the attached fd is its BO

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
