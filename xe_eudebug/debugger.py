"""The debugger: a connection to a target process and the worker that reads its events
(IGT ``struct xe_eudebug_debugger``).

A :class:`Debugger` connects (``DRM_IOCTL_XE_EUDEBUG_CONNECT``) to a target pid through a DRM
device fd, and a worker thread reads every event from the debug fd into :attr:`Debugger.log`
and runs the *triggers* registered for its type, in insertion order.  Triggers run on the worker
thread and may block (acks, VM access, stages).  An exception raised by a trigger does not stop
the worker; it is recorded and raised in the caller's thread as :class:`TriggerError` (naming the
event and carrying the traceback) by :meth:`Debugger.stop_worker` and by ``Session.check``.

Worker loop (IGT's, exactly): poll the debug fd (re-read every iteration) for 100 ms; when it is
readable issue READ_EVENT into a 32 KiB buffer, count, log, dispatch; keep going while ACTIVE, or
while QUITTING and the last poll returned something (the drain after a stop request).

Signals (IGT ``xe_eudebug_debugger_kill``, ``pthread_sigqueue`` to the worker): Python runs
signal handlers in the main thread only, so SIGINT/SIGTERM themselves are not sent.  Instead
:meth:`Debugger.kill` records the signal, wakes the worker's poll through a wake-up pipe in the
poll set, and interrupts whatever system call the worker is blocked in by sending it
:data:`KILL_SIGNAL`, a real-time signal whose (no-op) handler is installed without SA_RESTART
when this module is imported in the main thread.  As with IGT's signal, the interrupted call
fails with EINTR: calls that retry EINTR (the seam's ioctl, like ``igt_ioctl``; Python's own
wrappers) carry on, others (a trigger's raw ``read``/``pause``) return.  ``kill(SIGTERM)``
interrupts the current poll and the loop carries on; ``kill(SIGINT)`` additionally makes the
worker exit at once after that poll with :attr:`handled_sigint` set and :attr:`worker_state`
left unchanged.  A real SIGINT still raises ``KeyboardInterrupt`` in the main thread.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import queue
import select
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable, Iterator

from . import eucontrol as _eu
from . import ioctl as _seam
from . import uapi as _uapi
from .client import (
    Client,
    data_alias,
    register_private_fds,
    retry_ioctl,
    try_retry_ioctl,
    unregister_private_fds,
)
from .events import HEADER, MAX_EVENT_SIZE, Event, EventType, decode
from .log import EventLog

__all__ = [
    "KILL_SIGNAL",
    "Debugger",
    "WorkerState",
    "TriggerError",
    "VmFile",
    "connect",
    "debugger_available",
    "ack_ufence",
    "POLL_TIMEOUT_MS",
]

#: The signal :meth:`Debugger.kill` sends to the worker thread to interrupt its system call
#: (0 when no handler could be installed: then only the poll is woken).
KILL_SIGNAL = 0


def _install_kill_signal() -> int:
    """Install a no-op handler (CPython installs it without SA_RESTART, so a blocked system
    call of the receiving thread fails with EINTR) for a free real-time signal; 0 if none."""
    sig = int(signal.SIGRTMAX) - 2
    try:
        if signal.getsignal(sig) not in (signal.SIG_DFL, None):
            return 0
        signal.signal(sig, lambda _s, _f: None)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no RT signals
        return 0
    return sig


if threading.current_thread() is threading.main_thread():
    KILL_SIGNAL = _install_kill_signal()

log = logging.getLogger(__name__)

#: Worker poll timeout (IGT: 100 ms).
POLL_TIMEOUT_MS = 100
#: Default stop-worker timeout, seconds (IGT uses 1 s almost everywhere).
STOP_TIMEOUT = 1.0
#: Upper bound, seconds, of a stopping worker's drain (see stop_worker).
STOP_DRAIN_LIMIT = 60.0
#: A trigger call running this many seconds (or the stop timeout, if longer) counts as blocked
#: when the worker is stopped (see stop_worker).
STOP_TRIGGER_LIMIT = 10.0
#: How long stop_worker waits for a forced (INACTIVE) worker to finish the call it is in; IGT
#: joins without limit.  Twice the longest call the worker makes: a READ_EVENT (the kernel's
#: 5 s) behind the simulator's wait of up to 10 s for earlier releases.
STOP_FORCE_WAIT = 30.0

Trigger = Callable[["Debugger", Event], Any]


class WorkerState(IntEnum):
    """``worker_state`` values (IGT)."""

    INACTIVE = 0
    ACTIVE = 1
    QUITTING = 2


@dataclass
class TriggerFailure:
    """One exception raised by a trigger: the trigger, the event it ran for, the exception, its
    formatted traceback and when it was recorded (``time.monotonic()``)."""

    trigger: Trigger
    event: Event
    exception: BaseException
    traceback: str
    when: float = field(default_factory=time.monotonic)


class TriggerError(AssertionError):
    """Raised in the caller's thread for exceptions raised by triggers on the worker thread.
    ``failures`` lists them all (:class:`TriggerFailure`); the message names the first one's
    trigger and event and carries its traceback."""

    def __init__(self, failures: list[TriggerFailure]) -> None:
        first = failures[0]
        name = getattr(first.trigger, "__qualname__", repr(first.trigger))
        more = f" (and {len(failures) - 1} more trigger failure(s))" if len(failures) > 1 else ""
        super().__init__(
            f"trigger {name} raised {type(first.exception).__name__}: {first.exception} "
            f"for event {first.event}{more}\n--- trigger traceback ---\n{first.traceback.rstrip()}"
        )
        self.failures = failures
        self.event = first.event
        self.exception = first.exception


# ------------------------------------------------------------------------------------------------
# Module-level functions (IGT names in docs/porting.md)

def connect(fd: int, pid: int, flags: int = 0, version: int = 0) -> int:
    """``DRM_IOCTL_XE_EUDEBUG_CONNECT`` to ``pid`` through DRM fd ``fd``; returns the debug fd or
    ``-errno`` (IGT ``xe_eudebug_connect``)."""
    arg = _uapi.drm_xe_eudebug_connect()
    arg.extensions = 0
    arg.pid = pid
    arg.flags = flags
    arg.version = version
    return try_retry_ioctl(fd, _uapi.DRM_IOCTL_XE_EUDEBUG_CONNECT, arg)


def debugger_available(fd: int) -> bool:
    """Whether CONNECT to the caller's own pid succeeds (IGT ``xe_eudebug_debugger_available``)."""
    dfd = connect(fd, os.getpid())
    if dfd >= 0:
        os.close(dfd)
    return dfd >= 0


def ack_ufence(debug_fd: int, event: Event) -> None:
    """ACK_EVENT for a VM_BIND_UFENCE event; must succeed (IGT ``xe_eudebug_ack_ufence``)."""
    ack = _uapi.drm_xe_eudebug_ack_event()
    ack.type = int(event.type)
    ack.flags = 0
    ack.seqno = int(event.seqno)
    log.debug("delivering ack for event: %s", event)
    retry_ioctl(debug_fd, _uapi.DRM_XE_EUDEBUG_IOCTL_ACK_EVENT, ack)


class VmFile:
    """A VM fd from VM_OPEN: ``pread(size, offset)``, ``pwrite(data, offset)``, ``lseek``,
    ``fsync``, ``close``; offsets are GPU virtual addresses.  A context manager."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        return _seam.pread(self._check(), size, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        return _seam.pwrite(self._check(), bytes(data), offset)

    def lseek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return _seam.lseek(self._check(), offset, whence)

    def fsync(self) -> None:
        _seam.fsync(self._check())

    def fileno(self) -> int:
        return self._check()

    def _check(self) -> int:
        if self.fd < 0:
            raise ValueError("VM file is closed")
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def __enter__(self) -> "VmFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<VmFile fd={self.fd}>"


class Debugger:
    """IGT's debugger.  ``Debugger(device_fd, flags=0, data=None)`` makes no connection.

    Plain mutable attributes, as IGT tests use them: ``fd`` (debug fd, -1 when detached),
    ``master_fd``, ``flags``, ``data``/``ptr``, ``log`` (:class:`EventLog` named
    ``debugger``), ``event_count``, ``target_pid`` (0 when detached), ``worker_state``
    (:class:`WorkerState`), ``received_sigint``, ``handled_sigint``, ``received_signal``,
    ``client`` (the :class:`Client` whose pipes carry stages; set by ``attach(client)`` or by
    the Session), ``trigger_failures``.
    """

    def __init__(self, device_fd: int, flags: int = 0, data: Any = None) -> None:
        self.master_fd = device_fd
        self.flags = flags
        self.data = data
        self.log = EventLog("debugger")
        self.fd = -1
        self.target_pid = 0
        self.event_count = 0
        self.worker_state = WorkerState.INACTIVE
        self.received_sigint = False
        self._trigger_since: float | None = None  # when the running trigger call started
        self.handled_sigint = False
        self.received_signal = False
        self.client: Client | None = None
        self.trigger_failures: list[TriggerFailure] = []
        self._triggers: list[tuple[int, Trigger]] = []
        self._worker: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        register_private_fds(self, self._wake_r, self._wake_w)
        self._subscribers: list[queue.SimpleQueue[Event]] = []
        self._sub_lock = threading.Lock()
        self._closed = False
        self._kill_lock = threading.Lock()
        self._worker_ident = 0  # the running worker's thread ident (signal target), else 0

    ptr = data_alias()

    def __repr__(self) -> str:
        return (f"<Debugger fd={self.fd} target={self.target_pid} state={self.worker_state.name} "
                f"events={self.event_count}>")

    # -- connection ------------------------------------------------------------------------
    def try_attach(self, target: Client | int, flags: int = 0) -> int:
        """CONNECT to ``target`` (a :class:`Client` or a pid); 0 or ``-errno`` (IGT
        ``xe_eudebug_debugger_attach``; tests retry on ``-EBUSY``).  A Client also becomes
        :attr:`client`, the peer of :meth:`signal_stage` / :meth:`wait_stage`."""
        if self.fd != -1:
            raise RuntimeError(f"debugger already attached to {self.target_pid}")
        if self._closed:
            raise RuntimeError("debugger is closed")
        pid = target.pid if isinstance(target, Client) else int(target)
        if not pid:
            raise ValueError("attach needs a running target (pid 0)")
        ret = connect(self.master_fd, pid, flags)
        if ret < 0:
            return ret
        if self._closed:  # closed by another thread meanwhile: the connection must not outlive it
            os.close(ret)
            raise RuntimeError("debugger closed while it connected")
        self.fd = ret
        self.target_pid = pid
        register_private_fds(self, self._wake_r, self._wake_w, ret)
        self._poke()
        if isinstance(target, Client):
            self.client = target
        log.info("debugger connected to pid %d (debug fd %d)", pid, ret)
        return 0

    def attach(self, target: Client | int, flags: int = 0) -> None:
        """Like :meth:`try_attach` but raises ``OSError`` naming DRM_IOCTL_XE_EUDEBUG_CONNECT."""
        ret = self.try_attach(target, flags)
        if ret < 0:
            pid = target.pid if isinstance(target, Client) else target
            raise OSError(-ret, f"DRM_IOCTL_XE_EUDEBUG_CONNECT (pid {pid}): {os.strerror(-ret)}")

    def detach(self) -> None:
        """Close the connection (the worker keeps running and picks up a later attach)."""
        if not self.target_pid:
            raise RuntimeError("debugger is not attached")
        fd, self.fd = self.fd, -1
        log.info("debugger detached from pid %d", self.target_pid)
        self.target_pid = 0
        register_private_fds(self, self._wake_r, self._wake_w)
        if fd >= 0:
            os.close(fd)
        self._poke()

    @property
    def attached(self) -> bool:
        return self.fd >= 0

    # -- triggers --------------------------------------------------------------------------
    def add_trigger(self, type: int, fn: Trigger) -> None:
        """Call ``fn(debugger, event)`` for every event of ``type`` (after it is logged)."""
        self._triggers.append((int(type), fn))

    def remove_trigger(self, type: int, fn: Trigger) -> None:
        """Remove the first ``(type, fn)`` entry, if any (callable from inside a trigger)."""
        for i, (t, f) in enumerate(self._triggers):
            if t == int(type) and f == fn:
                del self._triggers[i]
                log.debug("removed trigger %r for type %d", fn, type)
                return
        log.debug("trigger %r for type %d not in the list", fn, type)

    def dispatch(self, event: Event) -> None:
        """Run the triggers of ``event.type`` in insertion order (live walk: a trigger that
        removes a later entry prevents its call).  Failures are recorded."""
        etype = int(event.type)
        i = 0
        while i < len(self._triggers):
            entry = self._triggers[i]
            t, fn = entry
            if t == etype:
                try:
                    self._trigger_since = time.monotonic()
                    fn(self, event)
                except BaseException as exc:  # noqa: BLE001 -- surfaced in the main thread
                    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                    log.error("trigger %r failed on event %s:\n%s", fn, event, text)
                    self.trigger_failures.append(TriggerFailure(fn, event, exc, text))
                finally:
                    self._trigger_since = None
            # advance past entry (it may have removed itself or earlier entries)
            if i < len(self._triggers) and self._triggers[i] is entry:
                i += 1
            else:
                try:
                    i = self._triggers.index(entry) + 1
                except ValueError:
                    pass

    def raise_trigger_failures(self) -> None:
        """Raise :class:`TriggerError` for the trigger failures recorded so far (then forget
        them)."""
        if self.trigger_failures:
            failures, self.trigger_failures = self.trigger_failures, []
            raise TriggerError(failures) from failures[0].exception

    # -- stages ----------------------------------------------------------------------------
    def _peer(self) -> Client:
        if self.client is None:
            raise RuntimeError("no client to exchange stages with (attach to a Client first)")
        return self.client

    def signal_stage(self, stage: int) -> None:
        """Send CLIENT_STAGE ``stage`` to the client (released: ``Client.wait_stage``)."""
        log.debug("debugger: signalling client stage %d", stage)
        self._peer().send_client_stage(stage)

    def wait_stage(self, stage: int) -> None:
        """Wait for the client's DEBUGGER_STAGE and assert it is ``stage``
        (``Client.signal_stage`` sends it)."""
        self._peer().wait_debugger_stage(stage)

    # -- kernel requests -------------------------------------------------------------------
    def read_event(self, buf: Any | None = None, fd: int | None = None) -> Event:
        """One READ_EVENT (into ``buf``, 32 KiB by default; header re-initialised to READ with
        the buffer's size, flags and reserved 0), retrying EAGAIN as IGT does; the decoded
        event.  Nothing is logged.  Raises ``OSError`` naming DRM_XE_EUDEBUG_IOCTL_READ_EVENT."""
        if buf is None:
            buf = ctypes.create_string_buffer(MAX_EVENT_SIZE)
        HEADER.pack_into(buf, 0, len(buf), int(EventType.READ), 0, 0, 0)
        retry_ioctl(self.fd if fd is None else fd, _uapi.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, buf)
        ln = HEADER.unpack_from(buf, 0)[0]
        return decode(ctypes.string_at(buf, max(HEADER.size, min(ln, len(buf)))))

    def _record(self, event: Event) -> None:
        self.event_count += 1
        log.debug("event: %s", event)
        self.log.append(event)

    def ack_ufence(self, event: Event) -> None:
        """ACK_EVENT for a VM_BIND_UFENCE event (releases the client's user fence)."""
        ack_ufence(self.fd, event)

    def read_metadata(self, client_handle: int, metadata_handle: int, size: int) -> bytes:
        """READ_METADATA: the metadata's payload, as many bytes as the size the kernel reports
        (``size`` must be at least its length; 0 reads nothing).  Raises ``OSError`` naming
        DRM_XE_EUDEBUG_IOCTL_READ_METADATA, also when the kernel reports more than ``size``
        bytes (EOVERFLOW: a kernel bug, never hidden by a shorter result)."""
        reported, data = self.read_metadata_sized(client_handle, metadata_handle, size)
        if size and reported > size:
            raise OSError(errno.EOVERFLOW, f"DRM_XE_EUDEBUG_IOCTL_READ_METADATA: the kernel reported size "
                                           f"{reported} for a {size}-byte buffer")
        return data

    def read_metadata_sized(self, client_handle: int, metadata_handle: int, size: int) -> tuple[int, bytes]:
        """READ_METADATA as IGT checks it: ``(size the kernel reported, the bytes of the buffer
        up to that size)``; a reported size beyond ``size`` is returned as it is, with the
        ``size`` bytes of the buffer.  Raises ``OSError`` naming DRM_XE_EUDEBUG_IOCTL_READ_METADATA."""
        buf = ctypes.create_string_buffer(max(1, size))
        arg = _uapi.drm_xe_eudebug_read_metadata()
        arg.client_handle = client_handle
        arg.metadata_handle = metadata_handle
        arg.flags = 0
        arg.ptr = ctypes.addressof(buf) if size else 0
        arg.size = size
        retry_ioctl(self.fd, _uapi.DRM_XE_EUDEBUG_IOCTL_READ_METADATA, arg)
        reported = int(arg.size)
        return reported, buf.raw[: min(reported, size)]

    def vm_open(self, client_handle: int, vm_handle: int, timeout_ns: int = 0, flags: int = 0) -> VmFile:
        """VM_OPEN: a :class:`VmFile` giving access to the client's VM (raises ``OSError``
        naming DRM_XE_EUDEBUG_IOCTL_VM_OPEN)."""
        arg = _uapi.drm_xe_eudebug_vm_open()
        arg.extensions = 0
        arg.client_handle = client_handle
        arg.vm_handle = vm_handle
        arg.flags = flags
        arg.timeout_ns = timeout_ns
        return VmFile(retry_ioctl(self.fd, _uapi.DRM_XE_EUDEBUG_IOCTL_VM_OPEN, arg))

    # -- EU control (xe_eudebug.eucontrol on this connection) ------------------------------------
    def eu_control(self, client_handle: int, exec_queue_handle: int, lrc_handle: int, cmd: int,
                   bitmask: bytes | bytearray | None = None, bitmask_size: int | None = None) -> Any:
        """EU_CONTROL that must succeed (an ``eucontrol.EuControl``); raises ``OSError`` naming
        the ioctl, the command, the handles and the errno.  ``try_eu_control`` returns the
        ``-errno`` in ``.ret`` instead."""
        return _eu.eu_control(self.fd, client_handle, exec_queue_handle, lrc_handle, cmd, bitmask, bitmask_size)

    def try_eu_control(self, client_handle: int, exec_queue_handle: int, lrc_handle: int, cmd: int,
                       bitmask: bytes | bytearray | None = None, bitmask_size: int | None = None) -> Any:
        return _eu.try_eu_control(self.fd, client_handle, exec_queue_handle, lrc_handle, cmd, bitmask, bitmask_size)

    def interrupt_all(self, client_handle: int, exec_queue_handle: int, lrc_handle: int) -> int:
        """EU_CONTROL INTERRUPT_ALL; the command's seqno."""
        return _eu.interrupt_all(self.fd, client_handle, exec_queue_handle, lrc_handle)

    def eu_stopped(self, client_handle: int, exec_queue_handle: int, lrc_handle: int,
                   bitmask_size: int) -> tuple[int, bytes]:
        """EU_CONTROL STOPPED: ``(seqno, bitmask of the threads stopped in the SIP)``."""
        return _eu.stopped(self.fd, client_handle, exec_queue_handle, lrc_handle, bitmask_size)

    def eu_resume(self, client_handle: int, exec_queue_handle: int, lrc_handle: int,
                  bitmask: bytes | bytearray) -> int:
        """EU_CONTROL RESUME of the threads set in ``bitmask``; the command's seqno."""
        return _eu.resume(self.fd, client_handle, exec_queue_handle, lrc_handle, bitmask)

    # -- worker ----------------------------------------------------------------------------
    def start_worker(self) -> None:
        """Mark ACTIVE and start the reader thread."""
        if self._worker is not None and self._worker.is_alive():
            raise RuntimeError("debugger worker already running")
        if self._closed:
            raise RuntimeError("debugger is closed")
        self.worker_state = WorkerState.ACTIVE
        self._worker = threading.Thread(target=self._work, name="xe_eudebug-debugger", daemon=True)
        self._worker.start()

    @property
    def worker_running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    def _work(self) -> None:
        with self._kill_lock:
            self._worker_ident = threading.get_ident()
        try:
            self._work_loop()
        finally:
            with self._kill_lock:  # no signal is sent to this thread once it is past here
                self._worker_ident = 0

    def _work_loop(self) -> None:
        buf = ctypes.create_string_buffer(MAX_EVENT_SIZE)
        wake = self._wake_r
        rd = select.POLLIN
        try:
            while True:
                fd = self.fd
                # A quit request that comes while this poll runs needs one more poll: "nothing
                # queued" must come from a poll that began after it, or events queued before the
                # request (the client's last ones) would be left unread.
                asked_to_quit = self.worker_state != WorkerState.ACTIVE
                fds = [(wake, rd)] + ([(fd, rd)] if fd >= 0 else [])
                try:
                    ready = dict(_seam.poll(fds, POLL_TIMEOUT_MS))
                    # HUP without IN (a detached connection, drained) has nothing more to read
                    r = sum(1 for f, m in ready.items() if f != wake and m & (rd | select.POLLNVAL))
                except OSError as exc:
                    if exc.errno != errno.EBADF and fd == self.fd:
                        log.warning("debugger worker stops: poll failed with errno %d", exc.errno or 0)
                        break
                    # the fd was closed (and maybe its number reused) by a concurrent detach or
                    # attach: the kernel's poll reports POLLNVAL for a closed fd, which is a
                    # non-zero result with nothing to read
                    ready, r = {}, 1
                if self.received_sigint:
                    self.handled_sigint = True
                    return  # the state is left as it is, as IGT's thread exit does
                if wake in ready:
                    # a signal (kill) or a changed connection (attach/detach): like an
                    # interrupted poll, go straight to the loop condition with a non-zero
                    # result, so a quitting worker polls the current fd once more
                    self._drain_wake()
                    self.received_signal = False
                    r = -1
                if r > 0 and fd >= 0 and ready.get(fd, 0) & rd:
                    self._read_one(fd, buf)
                state = self.worker_state
                if state == WorkerState.QUITTING and r == 0 and not asked_to_quit:
                    continue
                if not (state == WorkerState.ACTIVE or (state == WorkerState.QUITTING and r != 0)):
                    break
            self.worker_state = WorkerState.INACTIVE
        except BaseException as exc:  # noqa: BLE001
            text = "".join(traceback.format_exc())
            log.error("debugger worker failed:\n%s", text)
            self.trigger_failures.append(TriggerFailure(self._work, decode(bytes(HEADER.size)), exc, text))
            self.worker_state = WorkerState.INACTIVE

    def _read_one(self, fd: int, buf: Any) -> None:
        try:
            event = self.read_event(buf, fd)
        except OSError as exc:
            log.debug("xe_eudebug_read_event returned %d (%s)", -(exc.errno or 0), exc)
            return
        self._record(event)
        self.dispatch(event)
        if self._subscribers:
            with self._sub_lock:
                for q in self._subscribers:
                    q.put(event)

    def stop_worker(self, timeout: float = STOP_TIMEOUT, *, drain: bool = True) -> None:
        """Request quit, let the worker drain what is queued, force it once a trigger call has
        run ``max(timeout, STOP_TRIGGER_LIMIT)`` seconds (or after STOP_DRAIN_LIMIT), join,
        sort the log; then raise :class:`TriggerError` if triggers failed.  ``drain=False`` is
        IGT's stop: forced after ``timeout`` whatever is still queued (for a worker stopped
        while events keep coming, as in the discovery races)."""
        if self.worker_state == WorkerState.INACTIVE and not self.worker_running:
            raise RuntimeError("debugger worker is not running")
        self.worker_state = WorkerState.QUITTING
        t = self._worker
        if t is not None:
            # The quitting worker reads until a poll finds nothing queued.  IGT forces it after
            # `timeout` (1 s, plenty in C); here, on a loaded machine or with hundreds of
            # debuggers in one process, a worker can get so little CPU that a forced stop would
            # leave events the kernel queued unread.  So it is forced only when a trigger call
            # seems blocked (running max(timeout, STOP_TRIGGER_LIMIT)) or after STOP_DRAIN_LIMIT.
            start = time.monotonic()
            blocked = max(timeout, STOP_TRIGGER_LIMIT)
            while True:
                t.join(timeout)
                if not t.is_alive() or not drain:
                    break
                since, now = self._trigger_since, time.monotonic()
                if (since is not None and now - since >= blocked) or now - start > STOP_DRAIN_LIMIT:
                    break
            if t.is_alive():
                self.worker_state = WorkerState.INACTIVE
                t.join(max(STOP_FORCE_WAIT, timeout))
                if t.is_alive():
                    raise RuntimeError(f"debugger worker did not stop within {timeout + max(STOP_FORCE_WAIT, timeout):g} s "
                                       "(a trigger is blocked?)")
        self._worker = None
        self.worker_state = WorkerState.INACTIVE if not self.handled_sigint else self.worker_state
        self.log.sort()
        self.raise_trigger_failures()

    def kill(self, sig: int) -> None:
        """IGT ``xe_eudebug_debugger_kill``: interrupts the worker's blocking system call (see
        the module text) and its poll; after SIGTERM it carries on, after SIGINT it exits with
        :attr:`handled_sigint` set."""
        if sig not in (signal.SIGINT, signal.SIGTERM):
            raise ValueError(f"only SIGINT and SIGTERM are delivered to the worker, not {sig}")
        if sig == signal.SIGINT:
            self.received_sigint = True
        self.received_signal = True
        self._poke()
        with self._kill_lock:
            if self._worker_ident and KILL_SIGNAL:
                signal.pthread_kill(self._worker_ident, KILL_SIGNAL)

    def _poke(self) -> None:
        """Wake the worker's poll (it then re-reads :attr:`fd`)."""
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass

    # -- iteration without triggers --------------------------------------------------------
    def events(self, timeout: float = 1.0) -> Iterator[Event]:
        """Yield events as they arrive until none came for ``timeout`` seconds.

        With the worker running, events are taken from it (after logging and triggers);
        without, this reads the debug fd itself (counting and logging each event)."""
        if self.worker_running:
            q: queue.SimpleQueue[Event] = queue.SimpleQueue()
            with self._sub_lock:
                self._subscribers.append(q)
            try:
                while True:
                    try:
                        yield q.get(timeout=timeout)
                    except queue.Empty:
                        return
            finally:
                with self._sub_lock:
                    self._subscribers.remove(q)
        if self.fd < 0:
            raise RuntimeError("debugger is not attached")
        buf = ctypes.create_string_buffer(MAX_EVENT_SIZE)
        while True:
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                ready = dict(_seam.poll([(self.fd, select.POLLIN)], int(left * 1000) + 1))
                if ready.get(self.fd, 0) & select.POLLIN:
                    break
                if ready.get(self.fd, 0) & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    return
            event = self.read_event(buf)
            self._record(event)
            yield event

    # -- teardown --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker (1 s) if running, detach if attached, release the wake pipe
        (IGT ``xe_eudebug_debugger_destroy``).  Trigger failures not yet raised are raised."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.worker_running or self.worker_state != WorkerState.INACTIVE:
                try:
                    self.stop_worker(STOP_TIMEOUT)
                except TriggerError:
                    raise
                except RuntimeError as exc:
                    log.warning("%s", exc)
        finally:
            if self.target_pid or self.fd >= 0:
                fd, self.fd = self.fd, -1
                self.target_pid = 0
                register_private_fds(self, self._wake_r, self._wake_w)
                if fd >= 0:
                    os.close(fd)
            if not self.worker_running:
                unregister_private_fds(self)
                for fd in (self._wake_r, self._wake_w):
                    os.close(fd)
                self._wake_r = self._wake_w = -1

    def __del__(self) -> None:
        try:
            if not self._closed and not self.worker_running:
                self._closed = True
                unregister_private_fds(self)
                for fd in (self.fd, self._wake_r, self._wake_w):
                    if fd >= 0:
                        os.close(fd)
        except Exception:
            pass

    def __enter__(self) -> "Debugger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def assert_(self, cond: Any, message: str = "") -> None:
        """IGT ``xe_eudebug_assert[_f]``: on a false ``cond`` print the log (debug), then fail."""
        if not cond:
            self.log.print(debug=True)
            raise AssertionError(message or "debugger assertion failed")

