"""Session: one client and one debugger on a device (IGT ``struct xe_eudebug_session``).

::

    with Session(work) as s:
        s.debugger.add_trigger(EventType.METADATA, on_metadata)
        s.run()
        s.check(match_opposite=True)

Creating a session opens the device (unless an fd is given), enables eudebug on it for the
session's lifetime (the previous state is restored when the last session on that device
closes), forks the client (before any debugger thread exists) and creates the debugger.
Closing reaps everything -- worker thread, client process or thread, fds -- even after a
failure.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable

from .client import DEFAULT_TIMEOUT, Client
from .debugger import STOP_TIMEOUT, Debugger, TriggerError
from .device import device_name, enable_eudebug, open_device

__all__ = ["Session", "enable_eudebug_for", "restore_eudebug", "open_device_elsewhere",
           "TRIGGER_FAILURE_GRACE"]

log = logging.getLogger(__name__)

#: Seconds :meth:`Session.run` keeps waiting for its client to finish after a trigger failed,
#: so that the failure comes with the client's log and every event of the run (see run()).
TRIGGER_FAILURE_GRACE = 2.0

_enable_lock = threading.Lock()
_enable_users: dict[str, tuple[int, bool]] = {}


def open_device_elsewhere(device: str | None = None, timeout: float = 30.0) -> int:
    """Open the device in a short-lived child process and receive the fd (``SCM_RIGHTS``).

    The kernel counts a DRM file as a client of the process that opened it, so a debugger
    attached to its own process (a thread client) does not see this fd as one of its clients."""
    parent_end, child_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            parent_end.close()
            fd = open_device(device)
            socket.send_fds(child_end, [b"f"], [fd])
            status = 0
        except BaseException:
            try:
                child_end.sendall(traceback.format_exc().encode(errors="replace")[-4000:])
            except Exception:
                pass
        finally:
            try:
                sys.stderr.flush()
            except Exception:
                pass
            os._exit(status)
    child_end.close()
    try:
        parent_end.settimeout(timeout)
        msg, fds, _flags, _addr = socket.recv_fds(parent_end, 4096, 1)
    finally:
        parent_end.close()
        os.waitpid(pid, 0)
    if not fds:
        raise OSError(f"opening the device in a helper process failed:\n{msg.decode(errors='replace')}")
    os.set_inheritable(fds[0], False)
    return fds[0]


def _device_key(fd: int) -> str:
    try:
        return device_name(fd)
    except OSError:
        st = os.fstat(fd)
        return f"{st.st_dev}:{st.st_ino}"


def enable_eudebug_for(fd: int) -> str:
    """Enable eudebug on the device of ``fd`` for one user; returns the key to pass to
    :func:`restore_eudebug`.  The state before the first user is restored after the last."""
    key = _device_key(fd)
    with _enable_lock:
        users, previous = _enable_users.get(key, (0, False))
        if users == 0:
            previous = enable_eudebug(fd, True)
        else:
            enable_eudebug(fd, True)
        _enable_users[key] = (users + 1, previous)
    return key


def _disable(fd: int, timeout: float = 2.0) -> None:
    """Disable eudebug, retrying EBUSY for up to ``timeout`` seconds: a debugger fd closed just
    before may still be in its release path (the device refuses to disable while a connection
    is attached)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            enable_eudebug(fd, False)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def restore_eudebug(fd: int, key: str) -> None:
    """Drop one user of :func:`enable_eudebug_for`; the last one restores the previous state."""
    with _enable_lock:
        users, previous = _enable_users.get(key, (1, True))
        if users <= 1:
            _enable_users.pop(key, None)
            if not previous:
                _disable(fd)
        else:
            _enable_users[key] = (users - 1, previous)


class Session:
    """A client running ``work`` plus a debugger, created with the same ``flags`` and ``data``.

    ``Session(work, flags=0, *, device=None, client_thread=False, data=None, timeout=60.0,
    enable=True)``: ``device`` is a selector (``None`` = ``XE_EUDEBUG_DEVICE`` / auto, a path,
    ``"sim"``) or an open DRM fd (borrowed, not closed).  ``client_thread`` runs the work
    function in a thread of this process instead of a forked process; the debugger then
    targets this process, so every DRM file this process opens counts as a client (the
    session opens its own device fd in a helper process so that it does not).  ``enable=False`` leaves
    the device's eudebug toggle alone.

    Attributes: ``fd`` (the device), ``flags``, ``client`` (:class:`Client`), ``debugger``
    (:class:`Debugger`).
    """

    def __init__(self, work: Callable[[Client], Any] | None, flags: int = 0, *, device: str | int | None = None,
                 client_thread: bool = False, data: Any = None, timeout: float = DEFAULT_TIMEOUT,
                 enable: bool = True) -> None:
        self.flags = flags
        self.client: Client | None = None
        self.debugger: Debugger | None = None
        self._own_fd = not isinstance(device, int)
        if not self._own_fd:
            self.fd = int(device)  # type: ignore[arg-type]
        elif client_thread:
            # the target is this process: keep the session's own DRM file out of its clients
            self.fd = open_device_elsewhere(device)  # type: ignore[arg-type]
        else:
            self.fd = open_device(device)  # type: ignore[arg-type]
        self._enable_key: str | None = None
        self._closed = False
        self._finishing = False  # run() waits for the client to finish
        try:
            if enable:
                self._enable_key = enable_eudebug_for(self.fd)
            self.client = Client(self.fd, work, flags, data, thread=client_thread, timeout=timeout)
            self.debugger = Debugger(self.fd, flags, data)
            self.debugger.client = self.client
            self.client.idle_hooks.append(self._raise_trigger_failures)
        except BaseException:
            self.close()
            raise

    def _raise_trigger_failures(self) -> None:
        """The client's idle hook: raise the trigger failures recorded so far, so that a wait
        for a stage a failed trigger never released ends within a second.  While :meth:`run`
        waits for the client to finish, the client first gets TRIGGER_FAILURE_GRACE seconds from
        the first failure to do so."""
        d = self.debugger
        assert d is not None
        failures = d.trigger_failures
        if self._finishing and failures and time.monotonic() - failures[0].when < TRIGGER_FAILURE_GRACE:
            return
        d.raise_trigger_failures()

    def run(self) -> None:
        """Attach, start the worker, start the client, wait for it to finish, stop the worker
        (1 s, drain + sort), print both logs at debug level (IGT ``xe_eudebug_session_run``).

        A failed trigger raises :class:`TriggerError` here.  The client gets
        TRIGGER_FAILURE_GRACE seconds from the failure to finish first (its stages released in
        the triggers' ``finally:``): then the client's log has been read and the worker has
        read every event of the run, for the report.  A client still busy after that (one
        waiting for a stage the failed trigger never released) is not waited for: the worker
        stops with what has been queued, and the client's log is not read."""
        c, d = self.client, self.debugger
        assert c is not None and d is not None
        d.attach(c)
        d.start_worker()
        c.start()
        self._finishing = True
        try:
            c.wait_done()
        except TriggerError as first:
            # The first trigger failure is what the run reports: failures recorded while the
            # worker stops are added to it, not raised in its place.
            try:
                d.stop_worker(STOP_TIMEOUT)
            except TriggerError as later:
                first.failures.extend(later.failures)
            raise
        except BaseException:
            d.stop_worker(STOP_TIMEOUT)
            raise
        finally:
            self._finishing = False
        d.stop_worker(STOP_TIMEOUT)            # raises the failures of a client that finished
        d.log.print(debug=True)
        c.log.print(debug=True)

    def check(self, match_opposite: bool = True, filter: int = 0, strict: bool = False) -> None:
        """Compare the client log with the debugger log (``EventLogMismatch`` on a difference);
        with ``match_opposite`` also check every creation in the debugger log has its
        destruction (IGT ``xe_eudebug_session_check``).  Pending trigger failures are raised
        first."""
        c, d = self.client, self.debugger
        assert c is not None and d is not None
        d.raise_trigger_failures()
        c.log.compare(d.log, filter, strict)
        if match_opposite:
            d.log.match_opposite(filter)

    def wait_stage(self, stage: int) -> None:
        """IGT ``xe_eudebug_debugger_wait_stage(s, stage)``."""
        assert self.debugger is not None
        self.debugger.wait_stage(stage)

    def close(self) -> None:
        """Destroy the debugger, then the client, restore the eudebug toggle, close the device
        (IGT ``xe_eudebug_session_destroy``).  Idempotent; every step runs even if one fails."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.debugger is not None:
                self.debugger.close()
        finally:
            try:
                if self.client is not None:
                    self.client.close()
            finally:
                try:
                    if self._enable_key is not None:
                        restore_eudebug(self.fd, self._enable_key)
                finally:
                    if self._own_fd and self.fd >= 0:
                        os.close(self.fd)
                        self.fd = -1

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception as close_exc:  # the original failure matters more
            log.debug("session close after failure: %s", close_exc)
