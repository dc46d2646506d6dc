"""This process's control connections to simulator servers (the client side's links).

A process opens one path connection per server and clones one connection per thread over it; a
forked child drops the inherited ones.  The registry maps server pids and socket paths to links,
and recognises a simulated fd by its peer (a known server).
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import socket
import stat
import threading
import time
from typing import Any

from .config import SOCKET_ENV, default_socket_path
from .wire import (FdsDropped, HEADER_SIZE, M_DATA, M_DONE, OP_CLONE, ProtocolError, R_MEMREAD, R_MEMWRITE,
                   R_REPLY, _allow_ptracer, _close_fds, peer_pid, recv_msg, send_msg, vm_read, vm_write)

log = logging.getLogger(__name__)

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


_claimed: dict[int, "_Link"] = {}  # socket inodes seen to be simulated files (SimBackend.claims)
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


def forget(link: _Link) -> None:
    """Drop `link` from the path registry (its server exited): the next connect starts anew."""
    with _registry_lock:
        for path, known in list(_links_by_path.items()):
            if known is link:
                del _links_by_path[path]


def connect(socket_path: str | None = None) -> _Link:
    """The link to a simulator: `socket_path`, else ``XE_EUDEBUG_SIM_SOCKET``, else the per-user
    instance (started on demand)."""
    if socket_path is not None:
        return link_for_path(socket_path, start=False)
    path, may_start = selected_socket_path()
    return link_for_path(path, start=may_start)
