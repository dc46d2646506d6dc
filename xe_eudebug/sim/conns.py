"""The control connections of a server: accepted, read and closed by the event loop, and the
calls parked on them.  `ConnTable` is mixed into `Server`."""

from __future__ import annotations

import errno as _errno
import logging
import select
import socket
import time
from typing import Any

from . import wire
from .caller import Parked, _Conn
from .wire import OP_CLONE, OP_INFO, ProtocolError, recv_msg

log = logging.getLogger("xe_eudebug.sim.server")

ACCEPT_BATCH = 16          # connections accepted per listener event (then other callers' turn)
CLOSE_BATCH = 16           # ended control connections closed per round of the loop
_CONN_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
_PARKED_EVENTS = select.EPOLLRDHUP | select.EPOLLONESHOT  # a parked call's connection: its end only
_RECV_FLAGS = socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT  # the rest of a message is waited for


class ConnTable:
    """The control-connection methods of `Server` (see the module docstring)."""

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
        """A control connection is readable (EPOLLONESHOT: no other thread serves it now), or the
        caller of a parked call is gone."""
        conn = self.by_conn.get(fd)
        if conn is None or conn.busy:
            return  # busy: the thread serving it re-arms it when its call is over
        if conn.parked is not None:  # only end-of-file or an error wakes a parked connection
            self._cancel_parked(conn)
            return
        conn.busy = True
        try:
            msg = recv_msg(conn.sock, conn.buf, _RECV_FLAGS, conn.creds)
        except BlockingIOError:
            msg = False  # nothing to read (a stale event)
        except wire.FdsDropped:
            # the fd of the call could not be received: the server's fd table is full
            msg = False
            self._call_over(conn, self._guard(conn, self._reply, conn, 0, _errno.EMFILE))
            return
        except (OSError, ProtocolError) as exc:
            log.warning("closing the control connection of pid %d: %s", conn.pid, exc)
            msg = None
        if msg is None:
            # End-of-file.  Closed between rounds, a few at a time: requests of other
            # connections ready now go first, so a burst of closes delays no caller by more
            # than a round.
            conn.busy = False
            self._ended.append(conn)
            return
        if not msg:
            self._call_over(conn, False)
            return
        self._call_over(conn, self._run(conn, msg))

    def _guard(self, conn: _Conn, fn: Any, *args: Any) -> bool:
        """Run fn(*args) for a call of `conn`; True if it parked.  A malformed request or a
        broken connection marks the connection dead."""
        try:
            fn(*args)
            return False
        except Parked:
            raise
        except ProtocolError as exc:
            log.warning("closing the control connection of pid %d: malformed message (%s)", conn.pid, exc)
        except OSError as exc:
            log.debug("control connection of pid %d ended: %s", conn.pid, exc)
        except Exception:
            log.exception("closing the control connection of pid %d after an internal error", conn.pid)
        conn.dead = True
        return False

    def _run(self, conn: _Conn, msg: tuple) -> bool:
        """Serve one request; True if its call parked (its fds stay held until it runs again)."""
        kind, _flags, a, b, c, payload, fds = msg
        conn.held = fds
        conn.msg = msg
        try:
            if conn.creds[0] <= 0 and kind != OP_CLONE and kind != OP_INFO:
                raise ProtocolError(f"request {kind} without sender credentials")
            return self._guard(conn, self._dispatch, conn, kind, a, b, c, payload, fds)
        except Parked as rec:
            self._finish_dirty(None)
            with self.lock:
                self.parked_conns.add(conn)
            conn.busy = False
            self.loop.rearm(conn.fd, _PARKED_EVENTS)  # watched for its caller's end only
            with rec.lock:
                rec.armed = True
                go = rec.fired and not rec.scheduled
                rec.scheduled = rec.scheduled or go
            if go:
                self._queue_resume(conn)
            return True
        except ProtocolError as exc:
            log.warning("closing the control connection of pid %d: malformed message (%s)", conn.pid, exc)
            conn.dead = True
            return False
        finally:
            if conn.parked is None and conn.held:
                wire._close_fds(conn.held)
                conn.held = []

    def _call_over(self, conn: _Conn, parked: bool) -> None:
        """Watch `conn` for its next request (or close it) once its call is over."""
        if parked:
            return
        conn.busy = False
        if conn.dead:
            self._end_conn(conn)
            return
        try:
            self.loop.rearm(conn.fd, _CONN_EVENTS)
        except (OSError, ValueError):
            self._end_conn(conn)

    # -- parked calls ---------------------------------------------------------------------------
    # A blocking READ_EVENT does not sleep in a thread: Caller.park records the call and raises
    # Parked; the condition it would have slept on calls back at its next notify (or the loop at
    # its deadline), and the loop runs the call again from the start.  Meanwhile the connection
    # is watched for its caller's end only, and the call keeps its fds (the file reference).

    def _park(self, conn: _Conn, cv: Any, deadline: float) -> None:
        """Caller.park (kernel lock held): park the call being served on `conn`."""
        rec = Parked(deadline, conn.msg or ())
        conn.parked = rec
        cv.when_notified(lambda: self._wake_parked(conn, rec))
        raise rec

    def _wake_parked(self, conn: _Conn, rec: Parked) -> None:
        with rec.lock:
            rec.fired = True
            if not rec.armed or rec.scheduled:
                return
            rec.scheduled = True
        self._queue_resume(conn)

    def _queue_resume(self, conn: _Conn) -> None:
        self.resume_queue.append(conn)
        if not self.loop.is_leader():
            self.loop.wake()

    def _resume_parked(self) -> None:
        """Run parked calls whose condition was notified or whose deadline passed (on the loop)."""
        if self.parked_conns:
            now = time.monotonic()
            for conn in list(self.parked_conns):
                rec = conn.parked
                if rec is not None and rec.deadline <= now:
                    self._wake_parked(conn, rec)
        queue = self.resume_queue
        while queue and self.loop.is_leader():
            conn = queue.popleft()
            rec = conn.parked
            if rec is None or conn.closed:
                continue
            with self.lock:
                self.parked_conns.discard(conn)
            conn.parked = None
            conn.busy = True
            conn.resume_deadline = rec.deadline
            try:
                parked = self._run(conn, rec.msg)
            finally:
                conn.resume_deadline = None
            self._call_over(conn, parked)

    def _parked_interval(self, left: float) -> float:
        if self.resume_queue:
            return 0.0
        now = time.monotonic()
        for conn in list(self.parked_conns):
            rec = conn.parked
            if rec is not None:
                left = min(left, max(0.0, rec.deadline - now))
        return left

    def _cancel_parked(self, conn: _Conn) -> None:
        """The caller of a parked call is gone (its connection ended): drop the call."""
        with self.lock:
            self.parked_conns.discard(conn)
        conn.parked = None
        wire._close_fds(conn.held)
        conn.held = []
        conn.dead = True
        self._ended.append(conn)
