"""The simulator server: hosts the kernel model behind real file descriptors.

One process holds the whole simulated driver state (`sim/kernel/`).  Clients reach it through
control connections on a Unix socket (one per thread, see `sim/port.py`).  Every file the kernel
model creates (device, debugger, VM) is handed out as the client's end of a socketpair; the server
keeps the other end, identifies the file of a call by the inode of the fd passed with the call, and
sees the last close of all copies as end-of-file on its end, which runs `kernel.release(file)`.

Poll readiness of a debugger fd is a byte kept in the client's receive queue while the kernel
reports POLLIN; a detached connection shuts the server's end down, so raw poll() shows POLLHUP.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import importlib
import json
import logging
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections import deque
from typing import Any

from . import port as wire
from . import procmem
from .config import SimConfig, default_socket_dir, default_socket_path
from .loop import EventLoop
from .port import (OP_DEVICE_ENABLED, F_CLOEXEC, F_FD, KIND_DEBUGGER, KIND_DEVICE, KIND_OTHER, KIND_VM, M_DATA, M_DONE,
                   OP_CLONE, OP_FILE_INFO, OP_FSYNC, OP_GET_ENABLED, OP_INFO, OP_IOCTL, OP_LSEEK, OP_MMAP,
                   OP_OPEN, OP_POLL, OP_PREAD, OP_PWRITE, OP_READ, OP_SET_ENABLED, R_MEMREAD, R_MEMWRITE,
                   R_REPLY, ProtocolError, epoll_ready, file_key, recv_msg, send_byte, send_msg, status_flags, to_s64, to_u64,
                   vm_read, vm_write)

log = logging.getLogger(__name__)

__all__ = ["Server", "ServerHandle", "start_server", "main", "DEFAULT_KERNEL"]

DEFAULT_KERNEL = "xe_eudebug.sim.kernel:Kernel"

# Request values that create files with particular fd flags (spec §0.4.1).
_CONNECT = 0xC018644E   # DRM_IOCTL_XE_EUDEBUG_CONNECT: debugger fd, flags 0 (no O_CLOEXEC)
_VM_OPEN = 0x40286A01   # DRM_XE_EUDEBUG_IOCTL_VM_OPEN: vm fd, O_CLOEXEC

_SIOCOUTQ = 0x5411
OWNER_GONE_IDLE_EXIT = 1.0  # seconds of idleness after which an orphaned private instance exits
RELEASE_ORDER_WAIT = 0.05  # seconds a slow release holds up the next one (see _run_releases)
RELEASE_SYNC_WAIT = 10.0   # seconds a call waits for releases of files closed before it (a release
#                            waiting for a discovery to finish can take that long under load)
RELEASE_BLOCKED_CHECK = 0.005  # seconds between checks whether such a release blocks on a full fifo
OWN_RELEASE_WAIT = 60.0    # seconds a process's call waits for the release of a file it opened, even
#                            one blocked in the kernel (close(2) would still be blocked in it)
HOUSEKEEPING_INTERVAL = 0.2  # seconds between housekeeping rounds (idle exit, freed memfds)
ACCEPT_BATCH = 64          # connections accepted per listener event (then other callers' turn)
REPLY_INLINE_MAX = 1 << 16  # bytes of reply the loop sends itself; a larger one may block on the caller
_CONN_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
_GONE_EVENTS = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0x2000)
MEMORY_CHUNK = 1 << 20  # bytes of caller memory copied (or asked for) at a time
MEMORY_ANSWER_TIMEOUT = 30.0  # seconds a caller may take to answer a memory request
_MAX_RW = wire._MAX_RW  # largest read served in one call (short counts beyond, like the VFS)
# Diagnostics: a directory in XE_EUDEBUG_SIM_PROFILE gets one cProfile dump per control
# connection (written when the connection ends); read them with `python3 -m pstats`.
PROFILE_ENV = "XE_EUDEBUG_SIM_PROFILE"
_PROFILE_DIR = os.environ.get(PROFILE_ENV, "")


class _FallbackKernelError(Exception):
    def __init__(self, errno: int, *args: object) -> None:
        super().__init__(errno, os.strerror(errno), *args)
        self.errno = errno


def load_kernel_class(spec: str) -> type:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr or "Kernel")


class _Conn:
    """One control connection.  `pid`/`uid`/`gid` (SO_PEERCRED of the path connection, shared by
    its clones) only name it in logs: a call's identity is `creds`, the SCM_CREDENTIALS the
    kernel attached to the call's message (SO_PASSCRED), whoever holds the connection."""

    __slots__ = ("sock", "fd", "buf", "pid", "uid", "gid", "direct", "dead", "held", "creds", "sleep", "closed")

    def __init__(self, sock: socket.socket, pid: int, uid: int, gid: int, direct: bool,
                 sleep: Any = None) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray(65536 + wire.HEADER_SIZE)
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.direct = direct
        self.dead = False
        self.held: list[int] = []  # fds received with the call being served
        self.creds: list[int] = [0, 0, 0]  # [pid, uid, gid] of the sender of the call being served
        self.sleep = sleep or (lambda: None)  # the event loop's might_sleep
        self.closed = False


class Caller:
    """The process blocked in a call: copy_from_user / copy_to_user on its memory."""

    __slots__ = ("_conn", "_error", "pid", "uid", "gid", "arg_addr", "nonblock", "on_return")

    def __init__(self, conn: _Conn, error_class: type, arg_addr: int = 0, nonblock: bool = False) -> None:
        self._conn = conn
        self._error = error_class
        # the process that sent this call, as the kernel vouches for it (never the process that
        # opened the connection: a connection handed to another process acts as that process)
        self.pid, self.uid, self.gid = conn.creds
        self.arg_addr = arg_addr
        self.nonblock = nonblock
        self.on_return: bytes | None = None  # bytes the caller writes at arg_addr as the call returns

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


_KIND_NAMES = {KIND_DEVICE: "device", KIND_DEBUGGER: "debugger", KIND_VM: "vm", KIND_OTHER: "other"}


class _Entry:
    """A simulated file: the server's end of the socketpair and the kernel's File."""

    __slots__ = ("sock", "fd", "key", "file", "device", "kind", "lock", "queued", "hup", "released", "slow",
                 "thread", "owner", "own_slow")

    def __init__(self, sock: socket.socket, key: int, file: Any, device: int, kind: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.key = key
        self.file = file
        self.device = device
        self.kind = kind
        self.lock = threading.Lock()
        self.queued = 0       # readiness bytes in the client's receive queue (sent - drained)
        self.hup = False      # server end shut down after detach
        self.released = False
        self.slow = False     # its release kept a call waiting RELEASE_SYNC_WAIT already
        self.thread = 0       # ident of the thread running its release
        self.owner = int(getattr(file, "owner", 0) or 0)  # the opener (device files)
        self.own_slow = False  # its release kept a call of its owner waiting OWN_RELEASE_WAIT


class Server:
    """A simulator instance listening on `socket_path`."""

    def __init__(self, socket_path: str, config: SimConfig | None = None, kernel: Any = None,
                 kernel_spec: str = DEFAULT_KERNEL) -> None:
        self.config = config or SimConfig.from_env()
        self.socket_path = os.path.abspath(socket_path)
        if kernel is None:
            kernel = load_kernel_class(kernel_spec)(self.config)
        self.kernel = kernel
        module = sys.modules.get(type(kernel).__module__)
        self.error_class: type = getattr(module, "KernelError", _FallbackKernelError)
        self.lock = threading.Lock()
        self.by_key: dict[int, _Entry] = {}
        self.by_file: dict[int, _Entry] = {}
        self.by_fd: dict[int, _Entry] = {}
        self.detached: set[_Entry] = set()
        self.conns = 0
        self.by_conn: dict[int, _Conn] = {}  # control connections by fd
        self.loop = EventLoop(self._tick, self._interval)
        self._idle_since: float | None = None
        self._next_housekeeping = 0.0
        self.epoll = select.epoll()  # the simulated files' server ends (end-of-file: last close)
        self._epfd = self.epoll.fileno()
        self.stopping = threading.Event()
        self.owner_pid = 0  # set for private instances: see serve_forever
        self.release_queue: deque[_Entry] = deque()
        self.release_cv = threading.Condition()
        self.releases_pending: set[_Entry] = set()  # scheduled releases not yet done
        self._release_running: tuple[_Entry, float] | None = None  # the latest release started
        self.dirty: set[int] = set()  # files whose readiness changed outside a call
        self._dirty_lock = threading.Lock()
        self.tls = threading.local()
        self.listener: socket.socket | None = None
        self._listener_ino = 0
        self.direct_default = self.config.memory_access == "auto"
        self.debug = log.isEnabledFor(logging.DEBUG)
        try:
            kernel.on_poll_change = self._on_poll_change
        except AttributeError:
            log.warning("kernel model does not accept on_poll_change; poll readiness disabled")
        try:  # the kernel announces its sleeps: a call about to block leaves the loop first
            kernel.might_sleep = self.loop.might_sleep
        except AttributeError:
            pass

    # -- lifecycle --------------------------------------------------------------------------
    def bind(self) -> None:
        path = self.socket_path
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            # Only a stale socket of ours (our uid, nobody listening) is ever removed; a busy
            # server (full backlog: EAGAIN) is a live one.
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(_errno.EEXIST, f"{path} exists and is not a socket; not removing it")
            if st.st_uid != os.geteuid():
                raise OSError(_errno.EADDRINUSE, f"{path} is a socket of uid {st.st_uid}; not removing it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)  # stale socket of a dead server
            except OSError as exc:
                raise OSError(_errno.EADDRINUSE, f"{path} is in use ({exc.strerror or exc}); not removing it") from None
            else:
                raise OSError(_errno.EADDRINUSE, f"an xe_eudebug simulator is already running on {path}")
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # inherited by accepted connections: credentials on messages sent before accept() too
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        old = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        gid = self.config.group_id()
        if gid is not None:  # the devices' group, as a render node's (see SimConfig.group)
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        listener.listen(socket.SOMAXCONN)  # connect bursts queue rather than fail
        listener.settimeout(0.2)
        self.listener = listener
        self._listener_ino = os.stat(path).st_ino

    def serve_forever(self) -> None:
        if self.listener is None:
            self.bind()
        assert self.listener is not None
        # Calls hand the interpreter lock between threads (a producer wakes a parked READ_EVENT);
        # the default 5 ms switch interval makes each handoff slow.
        sys.setswitchinterval(0.0002)
        loop = self.loop
        self.listener.setblocking(False)
        loop.add(self.listener.fileno(), select.EPOLLIN, self._accept)
        # the files' epoll set is itself watched: readable when a simulated file was closed
        loop.add(self._epfd, select.EPOLLIN, self._files_event)
        log.info("xe_eudebug simulator pid %d listening on %s (%d device%s)", os.getpid(),
                 self.socket_path, self.config.devices, "" if self.config.devices == 1 else "s")
        self._next_housekeeping = time.monotonic()
        try:
            if _PROFILE_DIR:
                import cProfile

                profiler = cProfile.Profile()
                try:
                    profiler.runcall(loop.run)
                finally:
                    profiler.dump_stats(os.path.join(_PROFILE_DIR, f"loop-{os.getpid()}.prof"))
            else:
                loop.run()
        finally:
            self.close()
            if self.owner_pid and not _alive(self.owner_pid):
                _remove_private_dir(os.path.dirname(self.socket_path))

    def _interval(self) -> float:
        """Seconds the loop may wait in epoll: until the next housekeeping, a detached file's
        check, or the next release that waits for the one before it (RELEASE_ORDER_WAIT)."""
        left = max(0.0, self._next_housekeeping - time.monotonic())
        if self.detached:
            left = min(left, 0.25)
        running = self._release_running
        if running is not None and self.release_queue:
            left = min(left, max(0.0, running[1] + RELEASE_ORDER_WAIT - time.monotonic()))
        return left

    def _tick(self) -> None:
        """Work of the loop between rounds of events: readiness changed outside calls, releases
        of closed files, and a few times a second housekeeping and the idle exit."""
        if self.dirty:
            self._reconcile_dirty()
        if self.release_queue:
            self._run_releases()
        now = time.monotonic()
        if now < self._next_housekeeping or not self.loop.is_leader():
            return
        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
        if self.detached:
            self._check_closed([])
        housekeeping = getattr(self.kernel, "housekeeping", None)
        if housekeeping is not None:
            try:
                housekeeping()
            except Exception:
                log.exception("kernel model failed in housekeeping")
        idle_exit = self.config.idle_exit
        if self.owner_pid and not _alive(self.owner_pid):
            # the process that started this private instance is gone (killed without
            # stopping it): nobody else knows its socket, so do not outlive its users
            idle_exit = min(idle_exit, OWNER_GONE_IDLE_EXIT) if idle_exit > 0 else OWNER_GONE_IDLE_EXIT
        if idle_exit > 0:
            with self.lock:
                idle = self.conns == 0 and not self.by_key and not self.detached
            if not idle:
                self._idle_since = None
            elif self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= idle_exit:
                log.info("idle for %.1f s, exiting", idle_exit)
                self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.loop.stop()

    def close(self) -> None:
        self.stop()
        if self.listener is not None:
            try:
                if os.stat(self.socket_path).st_ino == self._listener_ino:
                    os.unlink(self.socket_path)
            except OSError:
                pass
            self.loop.remove(self.listener.fileno())
            self.listener.close()
            self.listener = None
        with self.release_cv:
            self.release_cv.notify_all()

    # -- control connections ----------------------------------------------------------------
    def _accept(self, _fd: int, _mask: int) -> None:
        for _ in range(ACCEPT_BATCH):
            listener = self.listener
            if listener is None:
                return
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # EMFILE and the like: the connection stays in the backlog; try again later
                log.warning("accept failed: %s", exc)
                return
            self._start_conn(sock)
            self._idle_since = None

    def _start_conn(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid, uid, gid = int.from_bytes(creds[0:4], "little"), int.from_bytes(creds[4:8], "little"), \
            int.from_bytes(creds[8:12], "little")
        self._spawn_conn(_Conn(sock, pid, uid, gid, self.direct_default, self.loop.might_sleep))

    def _spawn_conn(self, conn: _Conn) -> None:
        """Watch a new control connection: the loop reads its requests (no thread of its own)."""
        with self.lock:
            self.conns += 1
            self.by_conn[conn.fd] = conn
        self.loop.add(conn.fd, _CONN_EVENTS, self._conn_event)

    def _end_conn(self, conn: _Conn) -> None:
        with self.lock:
            if conn.closed:
                return
            conn.closed = True
            self.conns -= 1
            if self.by_conn.get(conn.fd) is conn:
                del self.by_conn[conn.fd]
                self.loop.remove(conn.fd)
        try:
            conn.sock.close()
        except OSError:
            pass

    def _conn_event(self, fd: int, mask: int) -> None:
        """A control connection is readable (EPOLLONESHOT: no other thread serves it now)."""
        conn = self.by_conn.get(fd)
        if conn is None:
            return
        try:
            queued = int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")
            head = conn.sock.recv(wire.HEADER_SIZE, socket.MSG_PEEK | socket.MSG_DONTWAIT) if queued else b""
        except BlockingIOError:
            self.loop.rearm(fd, _CONN_EVENTS)  # a stale event: nothing to read yet
            return
        except OSError:
            head = b""
        if not head:
            if queued or mask & (select.EPOLLHUP | select.EPOLLRDHUP | select.EPOLLERR):
                self._end_conn(conn)  # end-of-file: the loop closes it, no thread involved
            else:
                self.loop.rearm(fd, _CONN_EVENTS)
            return
        if len(head) < wire.HEADER_SIZE or queued < wire.HEADER_SIZE + wire.HEADER.unpack_from(head)[0]:
            # the rest of the message is still in transit: reading it may block
            self.loop.might_sleep()
        self._serve_one(conn)

    def _serve_one(self, conn: _Conn) -> None:
        """Read and serve one request of `conn`, then watch it again (or close it)."""
        try:
            try:
                msg = recv_msg(conn.sock, conn.buf, creds=conn.creds)
            except wire.FdsDropped:
                # the fd of the call could not be received: the server's fd table is full
                self._reply(conn, err=_errno.EMFILE)
                msg = False
            if msg is None:
                self._end_conn(conn)
                return
            if msg:
                kind, flags, a, b, c, payload, fds = msg
                conn.held = fds
                try:
                    if conn.creds[0] <= 0 and kind != OP_CLONE and kind != OP_INFO:
                        raise ProtocolError(f"request {kind} without sender credentials")
                    self._dispatch(conn, kind, a, b, c, payload, fds)
                finally:
                    wire._close_fds(conn.held)
                    conn.held = []
        except ProtocolError as exc:
            log.warning("closing the control connection of pid %d: malformed message (%s)", conn.pid, exc)
            conn.dead = True
        except OSError as exc:
            log.debug("control connection of pid %d ended: %s", conn.pid, exc)
            conn.dead = True
        except Exception:
            log.exception("closing the control connection of pid %d after an internal error", conn.pid)
            conn.dead = True
        if conn.dead:
            self._end_conn(conn)
            return
        try:
            self.loop.rearm(conn.fd, _CONN_EVENTS)
        except (OSError, ValueError):
            self._end_conn(conn)

    def _reply(self, conn: _Conn, result: int = 0, err: int = 0, drain: int = 0,
               payload: bytes = b"", fd: int = -1, flags: int = 0) -> None:
        # The call's reference to the caller's file ends before the caller sees the result, as the
        # kernel's does: a close() right after the call is then really the last one.
        if conn.held:
            wire._close_fds(conn.held)
            conn.held = []
        if conn.dead:
            return
        if fd >= 0:
            flags |= F_FD
        if len(payload) > REPLY_INLINE_MAX:
            conn.sleep()  # the caller drains a large reply at its own pace
        send_msg(conn.sock, R_REPLY, flags, to_u64(result), err, drain, payload, fd)

    def _dispatch(self, conn: _Conn, kind: int, a: int, b: int, c: int, payload: bytes,
                  fds: list[int]) -> None:
        # Closes that happened before this call are visible to it: collect pending end-of-files
        # (one non-blocking epoll_wait) and wait for releases still running.
        if self.detached or epoll_ready(self._epfd):
            self._check_closed(self.epoll.poll(0))
        if self.releases_pending:
            self._wait_releases(conn.creds[0], fds[0] if len(fds) == 1 and kind >= OP_IOCTL else -1)
        if kind == OP_DEVICE_ENABLED:  # the sysfs toggle: needs no file of the device
            if fds or payload:
                raise ProtocolError(f"request {kind} carries unexpected data")
            self._device_enabled(conn, to_s64(a), b, c)
            return
        if kind == OP_CLONE or kind == OP_INFO or kind == OP_OPEN:
            if fds or payload:
                raise ProtocolError(f"request {kind} carries unexpected data")
            if kind == OP_CLONE:
                try:
                    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                except OSError as exc:
                    self._reply(conn, err=exc.errno or _errno.EMFILE)
                    return
                self._spawn_conn(_Conn(mine, conn.pid, conn.uid, conn.gid, conn.direct, conn.sleep))
                try:
                    self._reply(conn, fd=theirs.fileno())
                finally:
                    theirs.close()
            elif kind == OP_INFO:
                info = {"pid": os.getpid(), "protocol": wire.PROTOCOL_VERSION, "devices": self.config.devices,
                        "socket": self.socket_path, "config": self.config.to_env()}
                self._reply(conn, payload=json.dumps(info).encode())
            else:
                self._open(conn, a)
            return
        if kind < OP_IOCTL or kind > wire.MAX_OP or len(fds) != 1:
            raise ProtocolError(f"request kind {kind} with {len(fds)} fds")
        fd = fds[0]
        entry = self.by_key.get(file_key(fd))
        if entry is None or entry.released:
            self._reply(conn, err=_errno.EBADF)
            return
        if kind == OP_IOCTL:
            self._ioctl(conn, entry, fd, a, b, payload, c == wire.IOCTL_ARG_UNREADABLE)
            return
        if payload and kind != OP_PWRITE:
            raise ProtocolError(f"request kind {kind} carries a payload")
        if kind == OP_FILE_INFO:
            self._reply(conn, result=entry.device, drain=entry.kind)
            return
        nonblock = entry.kind != KIND_DEVICE and bool(status_flags(fd) & os.O_NONBLOCK)
        self._call(conn, entry, kind, a, b, payload, nonblock)

    def _open(self, conn: _Conn, index: int) -> None:
        index = to_s64(index)
        if not 0 <= index < self.config.devices:
            self._reply(conn, err=_errno.ENOENT)
            return
        caller = Caller(conn, self.error_class)
        self.tls.dirty = set()
        try:
            file = self.kernel.open_device(index, caller)
        except Exception as exc:
            self._finish_dirty(None)
            self._reply(conn, err=self._errno_of(exc, "open"))
            return
        try:
            entry, client = self._new_entry(file, index, KIND_DEVICE)
        except OSError as exc:
            self._undo_file(file)
            self._finish_dirty(None)
            self._reply(conn, err=exc.errno or _errno.EMFILE)
            return
        self._finish_dirty(None)
        try:
            self._reply(conn, fd=client.fileno(), flags=F_CLOEXEC)
        finally:
            client.close()

    def _device_enabled(self, conn: _Conn, index: int, write: int, value: int) -> None:
        self.tls.dirty = set()
        try:
            if write:
                # enable_eudebug is a root-owned 0644 sysfs file: opening it to write is EACCES
                if not procmem.may_write_root_file(conn.creds[0]):
                    raise _make_error(self.error_class, _errno.EACCES)
                result = self.kernel.set_enabled(index, bool(value))
            else:
                result = self.kernel.get_enabled(index)
        except Exception as exc:
            self._finish_dirty(None)
            self._reply(conn, err=self._errno_of(exc, "enable_eudebug"))
            return
        self._finish_dirty(None)
        self._reply(conn, result=int(bool(result)))

    def _errno_of(self, exc: Exception, what: str) -> int:
        err = getattr(exc, "errno", None)
        if isinstance(err, int) and err > 0 and not isinstance(exc, (ProtocolError,)):
            return err
        log.error("kernel model failed in %s", what, exc_info=exc)
        return _errno.EIO

    def _ioctl(self, conn: _Conn, entry: _Entry, fd: int, request: int, addr: int, arg: bytes,
               unreadable: bool = False) -> None:
        request &= 0xFFFFFFFF
        size = (request >> 16) & 0x3FFF
        direction = request >> 30
        if unreadable:
            if arg or not direction & 1:
                raise ProtocolError(f"ioctl {request:#x}: unreadable argument with bytes or without _IOC_WRITE")
            arg = UnreadableArg(size, self.error_class)
        elif direction & 1:
            if len(arg) != size:
                raise ProtocolError(f"ioctl {request:#x} with {len(arg)} argument bytes, expected {size}")
        elif arg:
            raise ProtocolError(f"ioctl {request:#x} carries argument bytes")
        else:
            arg = bytes(size)
        # O_NONBLOCK lives in the open file description shared with the caller's fd.
        nonblock = entry.kind != KIND_DEVICE and bool(status_flags(fd) & os.O_NONBLOCK)
        caller = Caller(conn, self.error_class, addr, nonblock)
        self.tls.dirty = set()
        err = 0
        result: Any = 0
        copy_back: bytes = b""
        try:
            result, copy_back = self.kernel.ioctl(entry.file, caller, request, arg)
        except Exception as exc:
            err = self._errno_of(exc, f"ioctl {request:#x}")
            copy_back = getattr(exc, "copy_back", None) or b""
        if copy_back and (not direction & 2 or len(copy_back) > size):
            log.error("kernel model returned %d copy-back bytes for ioctl %#x; ignored", len(copy_back), request)
            copy_back = b""
        if caller.on_return is not None:
            if copy_back:  # both at the argument address: the struct copy-back comes last
                copy_back = bytes(copy_back) + caller.on_return[len(copy_back):]
            else:
                copy_back = caller.on_return
        new: tuple[_Entry, socket.socket] | None = None
        if not err and not isinstance(result, int):
            if request == _CONNECT:
                kind, cloexec = KIND_DEBUGGER, False
            elif request == _VM_OPEN:
                kind, cloexec = KIND_VM, True
            else:
                kind, cloexec = KIND_OTHER, True
            cloexec = bool(getattr(result, "cloexec", cloexec))
            try:
                new = self._new_entry(result, entry.device, kind)
            except OSError as exc:
                # no fd for the new file (EMFILE): the call fails and leaves nothing behind
                self._undo_file(result)
                err = exc.errno or _errno.EMFILE
            flags = 0 if not cloexec else F_CLOEXEC
        drain = self._finish_dirty(entry)
        if new is None:
            self._reply(conn, result if not err else 0, err, drain, bytes(copy_back))
            return
        try:
            self._reply(conn, 0, 0, drain, bytes(copy_back), new[1].fileno(), flags)
        finally:
            new[1].close()

    def _call(self, conn: _Conn, entry: _Entry, kind: int, a: int, b: int, payload: bytes, nonblock: bool) -> None:
        caller = Caller(conn, self.error_class, 0, nonblock)
        kernel = self.kernel
        file = entry.file
        self.tls.dirty = set()
        result = 0
        data = b""
        fd_out = -1
        try:
            if kind == OP_READ:
                data = bytes(kernel.read(file, caller, min(a, _MAX_RW)))
            elif kind == OP_PREAD:
                data = bytes(kernel.pread(file, caller, min(a, _MAX_RW), to_s64(b)))
            elif kind == OP_PWRITE:
                result = int(kernel.pwrite(file, caller, payload, to_s64(b)))
            elif kind == OP_LSEEK:
                result = int(kernel.lseek(file, caller, to_s64(a), to_s64(b)))
            elif kind == OP_FSYNC:
                kernel.fsync(file, caller)
            elif kind == OP_MMAP:
                memfd, offset = kernel.mmap_bo(file, to_s64(b), a)
                fd_out, result = int(memfd), int(offset)
            elif kind == OP_POLL:
                result = int(kernel.poll(file))
            elif kind == OP_GET_ENABLED:
                result = int(bool(kernel.get_enabled(entry.device)))
            elif kind == OP_SET_ENABLED:
                # enable_eudebug is a root-owned 0644 sysfs file: opening it to write is EACCES
                if not procmem.may_write_root_file(caller.pid):
                    raise _make_error(self.error_class, _errno.EACCES)
                result = int(bool(kernel.set_enabled(entry.device, bool(a))))
            else:
                raise ProtocolError(f"unknown request kind {kind}")
        except ProtocolError:
            raise
        except Exception as exc:
            drain = self._finish_dirty(entry)
            self._reply(conn, 0, self._errno_of(exc, f"request {kind}"), drain)
            return
        drain = self._finish_dirty(entry)
        self._reply(conn, result, 0, drain, data, fd_out)

    # -- files --------------------------------------------------------------------------------
    def _undo_file(self, file: Any) -> None:
        """Release a file the kernel created for a call that then failed."""
        try:
            self.kernel.release(file)
        except Exception:
            log.exception("kernel model failed in release")

    def _new_entry(self, file: Any, device: int, kind: int) -> tuple[_Entry, socket.socket]:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        key = file_key(theirs.fileno())
        entry = _Entry(mine, key, file, device, kind)
        with self.lock:
            self.by_key[key] = entry
            self.by_file[id(file)] = entry
            self.by_fd[entry.fd] = entry
        self.epoll.register(entry.fd, select.EPOLLIN | select.EPOLLRDHUP)
        if self.debug:
            log.debug("new %s file %#x on device %d", _KIND_NAMES.get(kind, "?"), key, device)
        # The kernel may have reported readiness before the file had an fd.
        self.tls.dirty.add(id(file))
        return entry, theirs

    def _files_event(self, _fd: int, _mask: int) -> None:
        """Some simulated file's server end is readable: detect last closes (end-of-file)."""
        self._check_closed(self.epoll.poll(0))

    def _check_closed(self, events: list[tuple[int, int]]) -> None:
        for fd, _mask in events:
            entry = self.by_fd.get(fd)
            if entry is None or entry.hup:  # detached files are watched through SIOCOUTQ
                continue
            try:
                data = entry.sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self._schedule_release(entry)
            # Bytes written into a simulated fd by the client are discarded.
        if self.detached:
            for entry in list(self.detached):
                try:
                    pending = int.from_bytes(fcntl.ioctl(entry.fd, _SIOCOUTQ, b"\0\0\0\0"), "little")
                except OSError:
                    pending = 0
                if pending == 0:  # the client's end (and the byte queued in it) is gone
                    self._schedule_release(entry)

    def _wait_releases(self, pid: int, fd: int) -> None:
        """Wait (boundedly) for the releases scheduled so far: with the end-of-files collected at
        the start of each call (`_dispatch`), every close that happened before a call is visible
        to it, as close(2) runs the release before it returns.  `pid` made the call, on simulated
        fd `fd` (-1: an open)."""
        # A release blocked in the kernel (its OPEN DESTROY waits for room in a full fifo, or it
        # waits for a discovery to end) is a close(2) that has not returned in the kernel: the
        # closing process is blocked in it, other processes are not.  So the opener's own later
        # calls wait for it (OWN_RELEASE_WAIT at most), except its calls on debugger and VM fds: a
        # thread-mode debugger's READ_EVENT may be what makes room.  Other callers do not wait
        # for a release blocked on a fifo, and calls on debugger and VM fds not for one waiting
        # for a discovery either (checked every RELEASE_BLOCKED_CHECK).  Any other release is
        # waited for up to RELEASE_SYNC_WAIT, once (then it is marked slow).
        entry = self.by_key.get(file_key(fd)) if fd >= 0 else None
        drains = entry is not None and entry.kind != KIND_DEVICE
        fifo: set[int] = getattr(self.kernel, "fifo_waiters", set())
        gate: set[int] = getattr(self.kernel, "gate_waiters", set())

        def limit(e: _Entry) -> float:  # seconds this call may wait for e
            if not drains and e.owner == pid:
                return 0.0 if e.own_slow else OWN_RELEASE_WAIT
            if e.slow or e.thread in fifo or (drains and e.thread in gate):
                return 0.0
            return RELEASE_SYNC_WAIT

        start = time.monotonic()
        with self.release_cv:
            waiting = list(self.releases_pending)  # the closes before this call, not later ones
            if any(limit(e) > 0 for e in waiting):
                self.loop.might_sleep()  # the loop runs the releases meanwhile
            while True:
                elapsed = time.monotonic() - start
                waiting = [e for e in waiting if e in self.releases_pending and elapsed < limit(e)]
                if not waiting:
                    break
                self.release_cv.wait(RELEASE_BLOCKED_CHECK)
            elapsed = time.monotonic() - start
            for e in self.releases_pending:
                if elapsed >= OWN_RELEASE_WAIT and not drains and e.owner == pid:
                    if not e.own_slow:
                        log.warning("release of a file of pid %d still blocked after %.0f s", pid, elapsed)
                    e.own_slow = True
                elif elapsed >= RELEASE_SYNC_WAIT and limit(e) == RELEASE_SYNC_WAIT:
                    e.slow = True

    def _schedule_release(self, entry: _Entry) -> None:
        # The file becomes "released" and "release pending" in one step, before it leaves the
        # epoll set: a call that finds no end-of-file pending (the file watcher took it) then
        # finds the release pending and waits for it.  Lock order: release_cv, then lock.
        with self.release_cv:
            with self.lock:
                if entry.released:
                    return
                if self.debug:
                    log.debug("last close of %s file %#x", _KIND_NAMES.get(entry.kind, "?"), entry.key)
                entry.released = True
                self.by_key.pop(entry.key, None)
                self.by_file.pop(id(entry.file), None)
                self.by_fd.pop(entry.fd, None)
                self.detached.discard(entry)
            self.releases_pending.add(entry)
            # Out of the epoll set before the release worker can close the socket (it takes the
            # entry from release_queue): once closed, its fd number may serve a new file whose
            # registration this must not remove.
            try:
                self.epoll.unregister(entry.fd)
            except (OSError, ValueError):
                pass
            self.release_queue.append(entry)
            self.release_cv.notify_all()
        if not self.loop.is_leader():
            self.loop.wake()  # the loop runs releases

    def _run_releases(self) -> None:
        """Run releases (on the loop) in the order their last closes were seen.  A release that
        blocks (an OPEN DESTROY event waiting on a full fifo, up to fifo_timeout) must not hold up
        the releases of other processes' files, as it would not in the kernel: it sleeps in its
        own thread (might_sleep), and the next one starts when it finishes or after
        RELEASE_ORDER_WAIT."""
        while self.loop.is_leader():
            with self.release_cv:
                if not self.release_queue:
                    return
                now = time.monotonic()
                running = self._release_running
                if running is not None and now - running[1] < RELEASE_ORDER_WAIT:
                    return  # the loop comes back when it is over (_release_one) or in time
                entry = self.release_queue.popleft()
                self._release_running = (entry, now)
            self._release_one(entry)

    def _release_one(self, entry: _Entry) -> None:
        entry.thread = threading.get_ident()
        self.tls.dirty = None
        try:
            self.kernel.release(entry.file)
        except Exception:
            log.exception("kernel model failed in release")
        finally:
            with entry.lock:
                entry.sock.close()
            with self.release_cv:
                self.releases_pending.discard(entry)
                if self._release_running is not None and self._release_running[0] is entry:
                    self._release_running = None
                self.release_cv.notify_all()
                more = bool(self.release_queue)
            if more and not self.loop.is_leader():
                self.loop.wake()

    # -- poll readiness -------------------------------------------------------------------
    def _on_poll_change(self, file: Any) -> None:
        dirty = getattr(self.tls, "dirty", None)
        if dirty is not None:
            dirty.add(id(file))
            return
        with self._dirty_lock:  # a change outside any call (a job, a discovery): the loop
            self.dirty.add(id(file))  # reconciles it
        self.loop.wake()

    def _finish_dirty(self, current: _Entry | None) -> int:
        """Reconcile the files whose readiness changed during this call; returns the number of
        readiness bytes the caller must drain from `current`."""
        dirty = self.tls.dirty
        self.tls.dirty = None
        drain = 0
        if not dirty:
            return 0
        for key in dirty:
            entry = self.by_file.get(key)
            if entry is None:
                continue
            n = self._reconcile(entry, entry is current)
            if entry is current:
                drain = n
        return drain

    def _reconcile_dirty(self) -> None:
        self.tls.dirty = None
        with self._dirty_lock:
            keys, self.dirty = self.dirty, set()
        for key in keys:
            entry = self.by_file.get(key)
            if entry is not None:
                self._reconcile(entry, False)

    def _reconcile(self, entry: _Entry, may_drain: bool) -> int:
        with entry.lock:
            if entry.released or entry.hup:
                return 0
            try:
                mask = int(self.kernel.poll(entry.file))
            except Exception:
                log.exception("kernel model failed in poll")
                return 0
            if mask & (select.POLLHUP | select.POLLERR):
                # Detached: keep one byte queued (so its last close stays observable through
                # SIOCOUTQ) and shut our end down so raw poll() shows POLLHUP.  The end-of-file
                # our own shutdown causes must not read as the last close: stop watching first.
                entry.hup = True
                try:
                    self.epoll.unregister(entry.fd)
                except (OSError, ValueError):
                    pass
                try:
                    entry.sock.send(b"\0", socket.MSG_DONTWAIT)
                    entry.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                with self.lock:
                    if not entry.released:
                        self.detached.add(entry)
                return 0
            if mask & select.POLLIN:
                if entry.queued == 0 and send_byte(entry.fd, b"\1"):
                    entry.queued = 1
                return 0
            if entry.queued and may_drain:
                n, entry.queued = entry.queued, 0
                return n
            return 0


# ------------------------------------------------------------------------------------------------
# Running servers

class ServerHandle:
    """A simulator running in a child process (see `start_server`)."""

    def __init__(self, proc: subprocess.Popen, socket_path: str, directory: str | None, logfile: str | None) -> None:
        self.proc = proc
        self.socket = socket_path
        self.pid = proc.pid
        self.directory = directory
        self.logfile = logfile

    def alive(self) -> bool:
        return self.proc.poll() is None

    def open_device(self, index: int = 0) -> int:
        """Open simulated device `index` of this instance."""
        return wire.open_device(index, socket_path=self.socket)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout`) and remove its private directory."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.directory is not None:
            for name in os.listdir(self.directory):
                try:
                    os.unlink(os.path.join(self.directory, name))
                except OSError:
                    pass
            try:
                os.rmdir(self.directory)
            except OSError:
                pass
            self.directory = None

    def kill(self) -> None:
        """Kill the server abruptly (as a crash would)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5.0)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerHandle pid={self.pid} socket={self.socket!r}>"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is gone too
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _remove_private_dir(directory: str) -> None:
    """Remove the private directory start_server made for an instance whose owner is gone (no
    one else would): only a `xe_eudebug-sim-*` directory holding nothing but its server.log."""
    try:
        if not os.path.basename(directory).startswith("xe_eudebug-sim-"):
            return
        names = os.listdir(directory)
        if set(names) - {"server.log"}:
            return
        for name in names:
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
    except OSError as exc:
        log.debug("cannot remove %s: %s", directory, exc)


def _runtime_base() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return base if base and os.path.isdir(base) else tempfile.gettempdir()


def start_server(config: SimConfig | None = None, socket: str | None = None, *,
                 kernel: str | None = None, verbose: bool | int = False, timeout: float = 15.0) -> ServerHandle:
    """Start a private simulator instance in a child process and wait until it accepts calls.

    `socket`: path to listen on (default: a fresh private directory).  `config`: its settings
    (default: the environment's).  `kernel`: "module:Class" of the kernel model (testing hook).
    """
    directory = None
    config = config or SimConfig.from_env()
    gid = config.group_id()
    if socket is None:
        # A group-shared instance cannot live in the per-user runtime directory (0700).
        base = tempfile.gettempdir() if gid is not None else _runtime_base()
        directory = tempfile.mkdtemp(prefix="xe_eudebug-sim-", dir=base)
        if gid is not None:
            os.chown(directory, -1, gid)
            os.chmod(directory, 0o710)
        socket = os.path.join(directory, "sock")
    socket = os.path.abspath(socket)
    env = dict(os.environ)
    env.pop(wire.SOCKET_ENV, None)
    env.update(config.to_env())
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-m", "xe_eudebug.sim", "--socket", socket, "--owner-pid", str(os.getpid())]
    if kernel:
        argv += ["--kernel", kernel]
    if verbose:
        argv.append("-" + "v" * int(verbose))
    logdir = directory or os.path.dirname(socket)
    logfile = os.path.join(logdir, "server.log") if os.path.isdir(logdir) else None
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                start_new_session=True, close_fds=True)
    finally:
        if logfile:
            out.close()  # type: ignore[union-attr]
    handle = ServerHandle(proc, socket, directory, logfile)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            detail = _tail(logfile)
            handle.stop()
            raise OSError(_errno.EIO, f"xe_eudebug simulator exited with status {proc.returncode} during start-up{detail}")
        probe = wire.socket.socket(wire.socket.AF_UNIX, wire.socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(socket)
            return handle
        except OSError:
            pass
        finally:
            probe.close()
        if time.monotonic() > deadline:
            handle.stop()
            raise OSError(_errno.ETIMEDOUT, f"xe_eudebug simulator did not come up on {socket} within {timeout:.0f} s")
        time.sleep(0.01)


def _tail(logfile: str | None) -> str:
    if not logfile:
        return ""
    try:
        with open(logfile, "rb") as f:
            text = f.read()[-2000:].decode(errors="replace").strip()
    except OSError:
        return ""
    return f": {text}" if text else ""


KERNEL_ENV = "XE_EUDEBUG_SIM_KERNEL"


def main(argv: list[str] | None = None, prog: str = "python3 -m xe_eudebug.sim") -> int:
    """`python3 -m xe_eudebug.sim`: run a simulator in the foreground."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog,
                                     description="Run the simulated Xe eudebug driver in the foreground.")
    parser.add_argument("--socket", help=f"socket path (default: $XE_EUDEBUG_SIM_SOCKET or {default_socket_path()})")
    parser.add_argument("--devices", type=int, help="number of simulated devices (XE_EUDEBUG_SIM_DEVICES)")
    parser.add_argument("--idle-exit", type=float, help="exit after this many idle seconds; 0 = never (XE_EUDEBUG_SIM_IDLE_EXIT)")
    parser.add_argument("--enable", action="store_true", help="start with eudebug enabled on every device")
    # Testing hook: another kernel model ("module:Class"), also from XE_EUDEBUG_SIM_KERNEL.
    parser.add_argument("--kernel", default=os.environ.get(KERNEL_ENV) or DEFAULT_KERNEL, help=argparse.SUPPRESS)
    parser.add_argument("--owner-pid", type=int, default=0,
                        help="a private instance: once this process is gone, exit when idle for 1 s")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log every call like strace (-vv: with decoded structs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    overrides: dict[str, object] = {}
    if args.devices is not None:
        overrides["devices"] = args.devices
    if args.idle_exit is not None:
        overrides["idle_exit"] = args.idle_exit
    if args.enable:
        overrides["enable_default"] = True
    try:
        config = SimConfig.from_env(**overrides)
    except ValueError as exc:
        parser.error(str(exc))
    path = args.socket or os.environ.get(wire.SOCKET_ENV) or default_socket_path()
    if os.path.abspath(path) == os.path.abspath(default_socket_path()):
        wire._ensure_private_dir(default_socket_dir())
    server = Server(path, config, kernel_spec=args.kernel)
    server.owner_pid = args.owner_pid
    if args.verbose:
        from .trace import install

        install(server, args.verbose)
    try:
        server.bind()
    except OSError as exc:
        print(f"xe_eudebug.sim: {exc}", file=sys.stderr)
        return 1

    def _stop(signum: int, _frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server.serve_forever()
    return 0
