"""The simulated files of a server: their table, last closes, releases and poll readiness.

Each file the kernel model creates is the server's end of a socketpair (`_Entry`); the caller
holds the other end.  End-of-file on the server's end is the last close: the event loop runs
`kernel.release(file)` for it, in the order the closes were seen.  Readiness (POLLIN, POLLHUP) is
mirrored into the caller's end (a queued byte, a shutdown).  `FileTable` is mixed into `Server`.
"""

from __future__ import annotations

import fcntl
import logging
import select
import socket
import threading
import time
from typing import Any

from .wire import KIND_DEBUGGER, KIND_DEVICE, KIND_OTHER, KIND_VM, file_key, send_byte

log = logging.getLogger("xe_eudebug.sim.server")

_SIOCOUTQ = 0x5411
RELEASE_ORDER_WAIT = 0.05  # seconds a slow release holds up the next one (see _run_releases)
RELEASE_SYNC_WAIT = 10.0   # seconds a call waits for releases of files closed before it (a release
#                            waiting for a discovery to finish can take that long under load)
RELEASE_BLOCKED_CHECK = 0.005  # seconds between checks whether such a release blocks on a full fifo
OWN_RELEASE_WAIT = 60.0    # seconds a process's call waits for the release of a file it opened, even
#                            one blocked in the kernel (close(2) would still be blocked in it)


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


class FileTable:
    """The file methods of `Server` (see the module docstring)."""

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
