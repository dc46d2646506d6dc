"""The simulator server: hosts the kernel model behind real file descriptors.

One process holds the whole simulated driver state (`sim/kernel/`).  Clients reach it through
control connections on a Unix socket (one per thread, see `sim/port.py`), all served by one event
loop (`sim/loop.py`): its leading thread reads each request and runs it; a call that is about to
sleep in the model hands the loop to another thread first.  Every file the kernel model creates
(device, debugger, VM) is handed out as the client's end of a socketpair; the server keeps the
other end (`sim/files.py`), identifies the file of a call by the socket cookie of the fd passed
with the call, and sees the last close of all copies as end-of-file on its end, which runs
`kernel.release(file)`.  `sim/caller.py` is the calling process: credentials and memory.
"""

from __future__ import annotations

import errno as _errno
import importlib
import json
import logging
import os
import select
import socket
import stat
import sys
import threading
import time
from collections import deque
from typing import Any

from . import procmem, wire
from .caller import (MEMORY_ANSWER_TIMEOUT, MEMORY_CHUNK, Caller, UnreadableArg, _Conn,  # noqa: F401
                     _FallbackKernelError, _make_error)
from .config import SimConfig
from .conns import CLOSE_BATCH, ConnTable
from .files import (OWN_RELEASE_WAIT, RELEASE_BLOCKED_CHECK, RELEASE_ORDER_WAIT,  # noqa: F401
                    RELEASE_SYNC_WAIT, FileTable, _Entry)  # (constants re-exported)
from .loop import EventLoop
from .wire import (OP_DEVICE_ENABLED, OP_SYSFS, OP_VM_GENS, F_CLOEXEC, F_FD, F_GRANT, GRANT, PREAD_GRANT,
                   KIND_DEBUGGER, KIND_DEVICE, KIND_OTHER, KIND_VM, OP_CLONE,
                   OP_FILE_INFO, OP_FSYNC, OP_GET_ENABLED, OP_INFO, OP_IOCTL, OP_LSEEK, OP_MMAP, OP_OPEN, OP_POLL,
                   OP_PREAD, OP_PWRITE, OP_READ, OP_SET_ENABLED, R_REPLY, ProtocolError, epoll_ready, file_key,
                   send_msg, status_flags, to_s64, to_u64)

log = logging.getLogger(__name__)

__all__ = ["Server", "Caller", "DEFAULT_KERNEL"]

DEFAULT_KERNEL = "xe_eudebug.sim.kernel:Kernel"

# Request values that create files with particular fd flags (spec §0.4.1).
_CONNECT = 0xC018644E   # DRM_IOCTL_XE_EUDEBUG_CONNECT: debugger fd, flags 0 (no O_CLOEXEC)
_VM_OPEN = 0x40286A01   # DRM_XE_EUDEBUG_IOCTL_VM_OPEN: vm fd, O_CLOEXEC

OWNER_GONE_IDLE_EXIT = 1.0  # seconds of idleness after which an orphaned private instance exits
HOUSEKEEPING_INTERVAL = 0.2  # seconds between housekeeping rounds (idle exit, freed memfds)
REPLY_INLINE_MAX = 1 << 16  # bytes of reply the loop sends itself; a larger one may block on the caller
_MAX_RW = wire._MAX_RW  # largest read served in one call (short counts beyond, like the VFS)
# Diagnostics: a directory in XE_EUDEBUG_SIM_PROFILE gets a cProfile dump of the server's main
# thread, which then takes part in the event loop (written at exit); read it with `python3 -m pstats`.
PROFILE_ENV = "XE_EUDEBUG_SIM_PROFILE"
_PROFILE_DIR = os.environ.get(PROFILE_ENV, "")


def load_kernel_class(spec: str) -> type:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr or "Kernel")


class Server(FileTable, ConnTable):
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
        self._ended: deque[_Conn] = deque()  # control connections at end-of-file, to close
        self.parked_conns: set[_Conn] = set()  # connections whose call is parked (conns.py)
        self.resume_queue: deque[_Conn] = deque()  # parked calls to run again
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
            if _PROFILE_DIR:  # the main thread leads first (and is the one profiled)
                import cProfile

                profiler = cProfile.Profile()
                try:
                    profiler.runcall(loop.run)
                finally:
                    profiler.dump_stats(os.path.join(_PROFILE_DIR, f"loop-{os.getpid()}.prof"))
            else:
                # The loop runs in threads of its own: this one stays free for signals and stops
                # the server at once, even while calls are parked.
                loop.start()
                while not self.stopping.wait(0.5):
                    pass
        finally:
            self.close()
            if self.owner_pid and not _alive(self.owner_pid):
                _remove_private_dir(os.path.dirname(self.socket_path))

    def _interval(self) -> float:
        """Seconds the loop may wait in epoll: until the next housekeeping, a detached file's
        check, or the next release that waits for the one before it (RELEASE_ORDER_WAIT)."""
        if self._ended or self.resume_queue:
            return 0.0
        left = max(0.0, self._next_housekeeping - time.monotonic())
        if not (self.parked_conns or self.detached or self.release_queue):
            return left
        if self.parked_conns:
            left = self._parked_interval(left)
        if self.detached:
            left = min(left, 0.25)
        if self.release_queue:
            running = self._release_running
            if running is None:
                # a release may start now: a call that scheduled it from a handler and then
                # handed the lead on (waiting for it) wrote no wake-up
                return 0.0
            left = min(left, max(0.0, running[1] + RELEASE_ORDER_WAIT - time.monotonic()))
        return left

    def _tick(self) -> None:
        """Work of the loop between rounds of events: readiness changed outside calls, releases
        of closed files, and a few times a second housekeeping and the idle exit."""
        if self.dirty or self.resume_queue or self.parked_conns or self._ended or self.release_queue:
            if self.dirty:
                self._reconcile_dirty()
            if self.resume_queue or self.parked_conns:
                self._resume_parked()
            ended = self._ended
            for _ in range(min(CLOSE_BATCH, len(ended))):
                self._end_conn(ended.popleft())
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
        if kind == OP_SYSFS:  # the device's other sysfs attributes
            if fds:
                raise ProtocolError(f"request {kind} carries fds")
            self._sysfs(conn, to_s64(a), b, payload)
            return
        if kind == OP_VM_GENS:  # the VM generation counters of read grants
            if fds or payload:
                raise ProtocolError(f"request {kind} carries unexpected data")
            self._vm_gens(conn)
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
                        "socket": self.socket_path, "config": self.config.to_env(),
                        "connections": self.conns,
                        "parked": self.loop.parked() + len(self.parked_conns)}
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
        self._call(conn, entry, kind, a, b, payload, nonblock, c)

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

    def _sysfs(self, conn: _Conn, index: int, write: int, payload: bytes) -> None:
        path, sep, data = bytes(payload).partition(b"\0")
        if not hasattr(self.kernel, "sysfs_read"):  # a kernel model without sysfs attributes
            self._reply(conn, err=_errno.ENOENT)
            return
        try:
            name = path.decode("utf-8")
            if write:
                if not sep:
                    raise ProtocolError("sysfs write without data")
                # the attributes are root-owned 0644 files, as enable_eudebug
                if not procmem.may_write_root_file(conn.creds[0]):
                    raise _make_error(self.error_class, _errno.EACCES)
                count = self.kernel.sysfs_write(index, name, data)
            else:
                text = self.kernel.sysfs_read(index, name)
        except ProtocolError:
            raise
        except UnicodeDecodeError:
            self._reply(conn, err=_errno.ENOENT)
            return
        except Exception as exc:
            self._reply(conn, err=self._errno_of(exc, "sysfs"))
            return
        if write:
            self._reply(conn, result=count)
        else:
            self._reply(conn, payload=text)

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
        caller.park = lambda cv, deadline: self._park(conn, cv, deadline)
        caller.deadline = conn.resume_deadline
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

    def _vm_gens(self, conn: _Conn) -> None:
        """OP_VM_GENS: a read-only descriptor of the kernel model's VM generation counters."""
        fd = -1
        getter = getattr(self.kernel, "vm_generations_fd", None)
        if getter is not None:
            fd = getter()
        if fd < 0:
            self._reply(conn, err=_errno.EOPNOTSUPP)
            return
        try:
            self._reply(conn, result=os.fstat(fd).st_size, fd=fd)
        finally:
            os.close(fd)

    def _grant(self, file: Any, offset: int) -> Any:
        """The kernel model's read grant for a pread that succeeded, or None (a model without
        grants, or one that failed to make one: the pread's answer stands either way)."""
        grant = getattr(self.kernel, "vm_grant", None)
        if grant is None:
            return None
        try:
            return grant(file, offset)
        except Exception:
            log.exception("kernel model failed in vm_grant")
            return None

    def _call(self, conn: _Conn, entry: _Entry, kind: int, a: int, b: int, payload: bytes, nonblock: bool,
              c: int = 0) -> None:
        caller = Caller(conn, self.error_class, 0, nonblock)
        kernel = self.kernel
        file = entry.file
        self.tls.dirty = set()
        result = 0
        data = b""
        fd_out = -1
        flags = 0
        try:
            if kind == OP_READ:
                data = bytes(kernel.read(file, caller, min(a, _MAX_RW)))
            elif kind == OP_PREAD:
                data = bytes(kernel.pread(file, caller, min(a, _MAX_RW), to_s64(b)))
                if c & PREAD_GRANT and data:
                    g = self._grant(file, to_s64(b))
                    if g is not None:  # the caller may read [start, end) itself from now on
                        fd_out, flags = g.fd, F_GRANT
                        data += GRANT.pack(g.start, g.end, g.offset, g.slot, g.gen)
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
        try:
            self._reply(conn, result, 0, drain, data, fd_out, flags)
        finally:
            if flags & F_GRANT:  # the model's fd (OP_MMAP's stays the model's)
                os.close(fd_out)

    # -- files --------------------------------------------------------------------------------


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
