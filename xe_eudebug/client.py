"""The client: the debuggee side of a session (IGT ``struct xe_eudebug_client``).

A :class:`Client` runs a *work function* -- by default in a forked child process, optionally in
a thread of the current process -- and records in its :attr:`Client.log` the events it
**expects** the kernel to send to a debugger attached to it.  The recording helpers
(:meth:`Client.open_driver`, :meth:`Client.vm_create`, :meth:`Client.vm_bind`, ...) issue the
ioctl and log exactly the events IGT's helpers log, in IGT's order relative to the ioctl.

Parent and client talk over two pipes with IGT's token protocol: every message is a 64-bit token
followed by a 64-bit value (native byte order).  Tokens: ``CLIENT_PID`` (child → parent, right
after the fork), ``CLIENT_RUN`` (parent → child, releases the work function), ``CLIENT_FINI``
(child → parent, the next unused seqno; followed by the client log), ``CLIENT_STOP`` (parent →
child, exit), ``CLIENT_STAGE`` (debugger → client stage) and ``DEBUGGER_STAGE`` (client →
debugger stage).  Every wait has a timeout (:attr:`Client.timeout`, 60 s by default); a peer
that went away or stayed silent yields :data:`DEAD_CLIENT`, which is an error unless
:attr:`Client.allow_dead_client` is set.

A client that fails (its work function raised, it exited non-zero or was killed) is reported in
the parent as :class:`ClientError` naming the exit status and carrying the child's traceback.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import logging
import os
import select
import signal
import struct
import sys
import threading
import time
import traceback
from enum import IntEnum
from typing import Any, Callable, Iterable

from . import ioctl as _seam
from . import uapi as _uapi
from .device import device_id, graphics_version, query_engines, reopen
from .events import EventFlags, EventType, make
from .log import EventLog

__all__ = [
    "Client",
    "ClientError",
    "Token",
    "DEAD_CLIENT",
    "DEFAULT_TIMEOUT",
    "ExtensionChain",
    "eudebug_engines",
    "attach_debug_chain",
    "exec_queue_args",
    "retry_ioctl",
    "try_retry_ioctl",
    "user_fence_sync",
    "wb_pat_index",
    "pat_index_wb",
    "PVC_DEVICE_IDS",
]

log = logging.getLogger(__name__)

#: Sentinel returned by token waits when the peer is gone or silent (IGT ``DEAD_CLIENT``).
DEAD_CLIENT = 0xCCCCDEAD
#: Default timeout of every token wait, in seconds (IGT ``XE_EUDEBUG_DEFAULT_TIMEOUT_SEC``).
DEFAULT_TIMEOUT = 60.0
#: Poll slice of a token wait, in seconds; exited children are checked after every empty slice.
POLL_SLICE = 1.0

_MASK64 = (1 << 64) - 1
_TOKEN = struct.Struct("=Q")
_MESSAGE = struct.Struct("=QQ")
_ERR_TEXT_MAX = 32 * 1024
_PIPE_ENDS = ("_in_r", "_in_w", "_out_r", "_out_w", "_err_r", "_err_w")


class Token(IntEnum):
    """Pipe tokens of the client protocol (IGT values)."""

    CLIENT_PID = 1
    CLIENT_RUN = 2
    CLIENT_FINI = 3
    CLIENT_STOP = 4
    CLIENT_STAGE = 5
    DEBUGGER_STAGE = 6


class ClientError(AssertionError):
    """The client failed: its work function raised, it exited non-zero, was killed, or did not
    answer within the timeout.  ``status`` is the exit code (negative: killed by that signal,
    None: unknown/still running); ``details`` the client's traceback text when available."""

    def __init__(self, message: str, status: int | None = None, details: str = "") -> None:
        super().__init__(message + (f"\n--- client traceback ---\n{details.rstrip()}" if details else ""))
        self.status = status
        self.details = details


# ------------------------------------------------------------------------------------------------
# ioctl helpers

def retry_ioctl(fd: int, request: int, arg: Any = None) -> int:
    """IGT's ``igt_ioctl``: the seam's :func:`~xe_eudebug.ioctl.ioctl` (which retries EINTR),
    also re-issued while it fails with EAGAIN.  Raises ``OSError`` naming the request."""
    while True:
        try:
            return _seam.ioctl(fd, request, arg)
        except OSError as exc:
            if exc.errno != _errno.EAGAIN:
                raise


def try_retry_ioctl(fd: int, request: int, arg: Any = None) -> int:
    """:func:`retry_ioctl` returning ``-errno`` instead of raising."""
    try:
        return retry_ioctl(fd, request, arg)
    except OSError as exc:
        return -(exc.errno or _errno.EIO)


#: Ponte Vecchio's PCI device ids (IGT ``INTEL_PVC_IDS`` of lib/pciids.h and
#: lib/i915_pciids_local.h).  PVC predates the GMD_ID register, so the kernel reports graphics
#: IP 0.0 for it as for every older platform; IGT's table tells it apart by device id only.
PVC_DEVICE_IDS = frozenset({0x0B69, 0x0B6E, 0x0BD0, 0x0BD1, 0x0BD2, 0x0BD4, 0x0BD5, 0x0BD6, 0x0BD7,
                            0x0BD8, 0x0BD9, 0x0BDA, 0x0BDB, 0x0BE0, 0x0BE1, 0x0BE5})


def pat_index_wb(ip_major: int, ip_minor: int, devid: int) -> int:
    """IGT ``intel_get_pat_idx_wb`` (lib/intel_pat.c): the write-back, 1-way-coherent PAT index
    from the graphics IP version the kernel reports (see :func:`device.graphics_version`).

    Graphics 20 (Lunar Lake, Battlemage) and 30 (Panther Lake): 2.  12.70-12.74 (Meteor Lake,
    Arrow Lake): 3.  A platform without GMD_ID (reported 0.0, all of graphics 12.60 and older):
    3 for Ponte Vecchio (12.60), else 0.  Any other version has no PAT settings in IGT, which
    complains and uses 0; so does this, with a warning."""
    if ip_major in (20, 30):
        return 2
    if ip_major == 12 and 70 <= ip_minor <= 74:
        return 3
    if ip_major == 0:
        return 3 if devid in PVC_DEVICE_IDS else 0
    if (ip_major, ip_minor) == (12, 60):
        return 3
    if (ip_major, ip_minor) < (12, 60):
        return 0
    log.warning("no PAT settings for graphics IP %d.%02d (device %#06x): using PAT index 0",
                ip_major, ip_minor, devid)
    return 0


def eudebug_engines(fd: int) -> list[Any]:
    """The device's engines that can run debuggable exec queues: class RENDER or COMPUTE
    (IGT ``xe_eudebug_for_each_engine``)."""
    classes = (_uapi.DRM_XE_ENGINE_CLASS_RENDER, _uapi.DRM_XE_ENGINE_CLASS_COMPUTE)
    return [e for e in query_engines(fd) if e.engine_class in classes]


def wb_pat_index(fd: int) -> int:
    """The device's write-back, CPU-coherent PAT index, as vm_bind wrappers use it: IGT's
    ``intel_get_pat_idx_wb`` from the graphics version the device reports (:func:`pat_index_wb`)."""
    major, minor, _rev = graphics_version(fd)
    return pat_index_wb(major, minor, device_id(fd))


# ------------------------------------------------------------------------------------------------
# Extension chains (user pointers, kept alive by their owner object)

class ExtensionChain:
    """A chain of ``drm_xe_user_extension``-headed structs linked by ``next_extension``.

    ``address`` is the head's address (0 for an empty chain); the chain keeps every node alive.
    Build with :func:`attach_debug_chain` or ``ExtensionChain(nodes)`` from ctypes structs whose
    first member is the 16-byte extension header (``base``).
    """

    def __init__(self, nodes: Iterable[Any] = ()) -> None:
        self.nodes = list(nodes)
        for node, nxt in zip(self.nodes, self.nodes[1:] + [None]):
            node.base.next_extension = ctypes.addressof(nxt) if nxt is not None else 0

    @property
    def address(self) -> int:
        return ctypes.addressof(self.nodes[0]) if self.nodes else 0

    def __len__(self) -> int:
        return len(self.nodes)


def attach_debug_chain(items: Iterable[Any]) -> ExtensionChain:
    """An ATTACH_DEBUG (vm-bind-op extension 0) chain from ``(metadata_id, cookie)`` pairs or
    ready ``drm_xe_vm_bind_op_ext_attach_debug`` structs, in the given order."""
    nodes = []
    for item in items:
        if isinstance(item, _uapi.drm_xe_vm_bind_op_ext_attach_debug):
            node = item
        else:
            metadata_id, cookie = item
            node = _uapi.drm_xe_vm_bind_op_ext_attach_debug()
            node.base.name = _uapi.XE_VM_BIND_OP_EXTENSIONS_ATTACH_DEBUG
            node.metadata_id = metadata_id
            node.cookie = cookie
        nodes.append(node)
    return ExtensionChain(nodes)


def _ext_address(ext: Any) -> tuple[int, Any]:
    """(head address, keep-alive object) of an extension argument: None/0, an int address, an
    :class:`ExtensionChain`, one ctypes extension struct, or a sequence of ATTACH_DEBUG items."""
    if ext is None or ext == 0:
        return 0, None
    if isinstance(ext, int):
        return ext, None
    if isinstance(ext, ExtensionChain):
        return ext.address, ext
    if isinstance(ext, ctypes.Structure):
        return ctypes.addressof(ext), ext
    chain = attach_debug_chain(ext)
    return chain.address, chain


def _walk_extensions(address: int, limit: int = 4096) -> Iterable[int]:
    """Addresses of the nodes of a user-extension chain (``next_extension`` user pointers)."""
    seen = 0
    while address and seen < limit:
        yield address
        address = _uapi.drm_xe_user_extension.from_address(address).next_extension
        seen += 1



def _attach_debug_nodes(address: int) -> list[tuple[int, int]]:
    """(metadata_id, cookie) of every ATTACH_DEBUG node of a vm-bind-op extension chain, in
    chain order (other extension names are skipped, not counted)."""
    name = _uapi.XE_VM_BIND_OP_EXTENSIONS_ATTACH_DEBUG
    out = []
    for a in _walk_extensions(address):
        if _uapi.drm_xe_user_extension.from_address(a).name == name:
            node = _uapi.drm_xe_vm_bind_op_ext_attach_debug.from_address(a)
            out.append((int(node.metadata_id), int(node.cookie)))
    return out


def _eudebug_enabled_queue(create: Any) -> bool:
    """Whether an exec-queue create's extension chain sets the EUDEBUG property with ENABLE
    (every node is read as a set-property extension, as IGT does)."""
    for a in _walk_extensions(int(create.extensions)):
        ext = _uapi.drm_xe_ext_set_property.from_address(a)
        if (ext.base.name == _uapi.DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY
                and ext.property == _uapi.DRM_XE_EXEC_QUEUE_SET_PROPERTY_EUDEBUG
                and ext.value & _uapi.DRM_XE_EXEC_QUEUE_EUDEBUG_FLAG_ENABLE):
            return True
    return False


def exec_queue_args(vm: int, engine: Any, *, width: int = 1, eudebug: bool = True,
                    extensions: Any = None) -> Any:
    """A ``drm_xe_exec_queue_create`` for one placement on ``engine`` (a
    ``drm_xe_engine_class_instance`` or ``(engine_class, engine_instance, gt_id)``) of ``vm``,
    with the SET_PROPERTY/EUDEBUG/ENABLE extension when ``eudebug``.  Extra ``extensions``
    (an :class:`ExtensionChain`, a struct or an address) follow it.  The returned struct keeps
    its instance array and extensions alive; pass the same struct to
    :meth:`Client.exec_queue_create` and :meth:`Client.exec_queue_destroy`."""
    inst_type = _uapi.drm_xe_engine_class_instance * max(1, width)
    instances = inst_type()
    if isinstance(engine, _uapi.drm_xe_engine_class_instance):
        src = engine
    else:
        src = _uapi.drm_xe_engine_class_instance()
        src.engine_class, src.engine_instance, src.gt_id = (tuple(engine) + (0, 0))[:3]
    for i in range(max(1, width)):
        ctypes.memmove(ctypes.byref(instances, i * ctypes.sizeof(src)), ctypes.byref(src), ctypes.sizeof(src))
    create = _uapi.drm_xe_exec_queue_create()
    create.width = width
    create.num_placements = 1
    create.vm_id = vm
    create.instances = ctypes.addressof(instances)
    keep: list[Any] = [instances]
    tail, tail_keep = _ext_address(extensions)
    keep.append(tail_keep)
    if eudebug:
        prop = _uapi.drm_xe_ext_set_property()
        prop.base.name = _uapi.DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY
        prop.base.next_extension = tail
        prop.property = _uapi.DRM_XE_EXEC_QUEUE_SET_PROPERTY_EUDEBUG
        prop.value = _uapi.DRM_XE_EXEC_QUEUE_EUDEBUG_FLAG_ENABLE
        keep.append(prop)
        create.extensions = ctypes.addressof(prop)
    else:
        create.extensions = tail
    create._keepalive = keep  # ctypes structs accept extra attributes
    return create


def user_fence_sync(addr: int, value: int) -> Any:
    """A ``drm_xe_sync`` of type USER_FENCE with SIGNAL: the kernel writes ``value`` (64-bit) at
    user address ``addr`` when the operation completes (held while a debugger holds the
    VM_BIND_UFENCE event)."""
    sync = _uapi.drm_xe_sync()
    sync.type = _uapi.DRM_XE_SYNC_TYPE_USER_FENCE
    sync.flags = _uapi.DRM_XE_SYNC_FLAG_SIGNAL
    sync.addr = addr
    sync.timeline_value = value
    return sync


def _sync_array(syncs: Any) -> tuple[int, int, Any]:
    """(address, count, keep-alive) of a syncs argument: None, a ctypes array of
    ``drm_xe_sync``, one ``drm_xe_sync`` or a sequence of them."""
    if syncs is None:
        return 0, 0, None
    if isinstance(syncs, _uapi.drm_xe_sync):
        return ctypes.addressof(syncs), 1, syncs
    if isinstance(syncs, ctypes.Array):
        return (ctypes.addressof(syncs) if len(syncs) else 0), len(syncs), syncs
    items = list(syncs)
    if not items:
        return 0, 0, None
    arr = (_uapi.drm_xe_sync * len(items))(*items)
    return ctypes.addressof(arr), len(items), arr


def _sync_list(addr: int, count: int) -> list[Any]:
    if not addr or not count:
        return []
    return list((_uapi.drm_xe_sync * count).from_address(addr))


# ------------------------------------------------------------------------------------------------
# Pipe helpers

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def data_alias() -> Any:
    """A ``ptr`` property aliasing ``data`` (IGT's name for the private pointer)."""

    def get(self: Any) -> Any:
        return self.data

    def set_(self: Any, value: Any) -> None:
        self.data = value

    return property(get, set_, doc="IGT's name for :attr:`data`.")


def _describe_status(status: int | None) -> str:
    if status is None:
        return "is still running"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = str(-status)
        return f"was killed by signal {name}"
    return f"exited with status {status}"


class Client:
    """IGT's client: runs ``work(client)`` in a forked process (or a thread with
    ``thread=True``) and records the events it expects.

    ``Client(device_fd, work=None, flags=0, data=None, *, thread=False, timeout=60.0)`` forks at
    once (IGT ``xe_eudebug_client_create``); the work function starts when :meth:`start` is
    called.  Create clients before starting any debugger worker thread.

    Attributes (plain, mutable, as in IGT): ``pid`` (0 when not running), ``flags``,
    ``data``/``ptr`` (a user object; in fork mode the child works on a *copy* made at fork
    time, share memory with an ``mmap(-1, ...)`` created before the client), ``log`` (the
    client's :class:`EventLog`, filled in the client, received by the parent after the work
    function returns), ``seqno`` (next client seqno; in the parent the value carried by FINI),
    ``done``, ``master_fd``, ``timeout`` (seconds per token wait), ``allow_dead_client``,
    ``pat_index`` (used by the vm_bind wrappers), ``status`` (exit code once reaped).
    """

    def __init__(self, device_fd: int, work: Callable[["Client"], Any] | None = None, flags: int = 0,
                 data: Any = None, *, thread: bool = False, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.master_fd = device_fd
        self.work = work
        self.flags = flags
        self.data = data
        self.threaded = thread
        self.timeout = float(timeout)
        self.allow_dead_client = False
        self.pid = 0
        self.seqno = 1
        self.done = False
        self.status: int | None = None
        self.log = EventLog("client")
        #: Why the log cannot be read (a dead client's wait_done), else "".
        self.log_lost = ""
        self.pat_index: int | None = None
        #: Callables run in the parent after every empty 1 s slice of a token wait; an
        #: exception they raise ends the wait (the Session surfaces trigger failures this way).
        self.idle_hooks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._in_client = False
        self._started = False
        self._closed = False
        self._reaped = False
        self._thread: threading.Thread | None = None
        self._thread_error: str = ""
        self._err_text = ""
        self._last_read_error = ""
        self._failed = False
        self._child_pid = 0
        # p_in: parent -> client; p_out: client -> parent; p_err: client traceback -> parent
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        self._in_r, self._in_w = in_r, in_w
        self._out_r, self._out_w = out_r, out_w
        self._err_r, self._err_w = err_r, err_w
        try:
            if thread:
                register_private_fds(self, *(getattr(self, n) for n in _PIPE_ENDS))
                self._thread = threading.Thread(target=self._thread_main, name="xe_eudebug-client", daemon=True)
                self._thread.start()
            else:
                self._fork()
            value = self._parent_wait(Token.CLIENT_PID)
            if value == DEAD_CLIENT:
                raise self._failure("did not report its pid")
            self.pid = int(value)
            log.info("client running with pid %d", self.pid)
        except BaseException:
            self._abandon()
            raise

    # -- properties ------------------------------------------------------------------------
    ptr = data_alias()

    @property
    def log(self) -> EventLog:
        """The client's event log; reading it after :meth:`wait_done` found the client dead
        raises :class:`ClientError` (IGT's log read asserts then)."""
        if self.log_lost:
            raise ClientError(self.log_lost)
        return self._log

    @log.setter
    def log(self, value: EventLog) -> None:
        self._log = value
        self.log_lost = ""

    @property
    def timeout_ms(self) -> int:
        return int(self.timeout * 1000)

    def __repr__(self) -> str:
        mode = "thread" if self.threaded else "process"
        return f"<Client pid={self.pid} ({mode}) seqno={self.seqno} done={self.done}>"

    # -- creation --------------------------------------------------------------------------
    def _fork(self) -> None:
        own = {self._in_r, self._out_w, self._err_w}
        others = _private_fds_now() - own
        pid = os.fork()
        if pid == 0:
            # child: never return into the caller's stack
            status = 70
            try:
                for fd in others | {self._in_w, self._out_r, self._err_r}:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                self._in_w = self._out_r = self._err_r = -1
                status = self._client_main()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                except Exception:
                    pass
                os._exit(status)
        self._child_pid = pid
        for fd in (self._in_r, self._out_w, self._err_w):
            os.close(fd)
        self._in_r = self._out_w = self._err_w = -1
        register_private_fds(self, *(getattr(self, n) for n in _PIPE_ENDS))

    def _thread_main(self) -> None:
        self._client_main()

    def _client_main(self) -> int:
        """The client side: PID, wait RUN, work, FINI + log, wait STOP.  Returns the exit code."""
        self._in_client = True
        pid = os.getpid()
        try:
            self._send(self._out_w, Token.CLIENT_PID, pid)
            run = self._client_wait(Token.CLIENT_RUN, quiet=True)
            if run == DEAD_CLIENT:
                return 3  # the parent went away before starting us: nothing to report
            if run != pid:
                raise AssertionError(f"client {pid}: CLIENT_RUN carried pid {run}")
            self.pid = pid
            if self.work is not None:
                self.work(self)
            self._send(self._out_w, Token.CLIENT_FINI, self.seqno)
            _write_all(self._out_w, self.log.to_bytes())
            stop = self._client_wait(Token.CLIENT_STOP)
            if stop != pid and not (stop == DEAD_CLIENT and self.allow_dead_client):
                raise AssertionError(f"client {pid}: CLIENT_STOP carried {stop:#x}")
            return 0
        except BaseException as exc:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self._thread_error = text
            data = text.encode(errors="replace")[-_ERR_TEXT_MAX:]
            try:
                os.set_blocking(self._err_w, False)
                os.write(self._err_w, data)
            except OSError:
                pass
            if not self.threaded:
                try:
                    sys.stderr.write(f"xe_eudebug client {pid} failed:\n{text}")
                except Exception:
                    pass
            return 1
        finally:
            self._close_ends("_out_w", "_in_r", "_err_w")

    def _close_ends(self, *names: str) -> None:
        """Close the pipe ends held in the named attributes and mark them -1 (and keep the
        record of fds to close in later forks exact: a stale number could be reused)."""
        for name in names:
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                if not self._in_client or self.threaded:
                    register_private_fds(self, *(getattr(self, n) for n in _PIPE_ENDS))
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- token protocol --------------------------------------------------------------------
    @staticmethod
    def _send(fd: int, token: int, value: int) -> None:
        if fd < 0:
            raise OSError(_errno.EBADF, f"cannot send {Token(token).name}: pipe closed")
        _write_all(fd, _MESSAGE.pack(int(token), int(value) & _MASK64))

    def _safe_read(self, fd: int, nbytes: int, on_idle: Callable[[], None] | None) -> bytes | int:
        """IGT ``safe_pipe_read``: poll in 1 s slices for at most :attr:`timeout`, calling
        ``on_idle`` after every empty slice.  Returns the bytes read (b"" on end of file, possibly
        short) or ``-errno`` (``-ETIMEDOUT`` when nothing came)."""
        deadline = time.monotonic() + self.timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return -_errno.ETIMEDOUT
            try:
                ready = poller.poll(int(min(POLL_SLICE, remaining) * 1000) + 1)
            except OSError as exc:
                return -(exc.errno or _errno.EIO)
            if ready:
                try:
                    return os.read(fd, nbytes)
                except OSError as exc:
                    return -(exc.errno or _errno.EIO)
            if on_idle is not None:
                on_idle()

    def _read_u64(self, fd: int, on_idle: Callable[[], None] | None) -> int | None:
        buf = b""
        while len(buf) < 8:
            r = self._safe_read(fd, 8 - len(buf), on_idle)
            if isinstance(r, int) or not r:
                self._last_read_error = "pipe closed" if r == b"" else (
                    f"nothing within {self.timeout:g} s" if r == -_errno.ETIMEDOUT else os.strerror(-r))
                log.debug("client %d: pipe read failed: %s", self.pid, self._last_read_error)
                return None
            buf += r
        return _TOKEN.unpack(buf)[0]

    def _wait_token(self, fd: int, token: Token, on_idle: Callable[[], None] | None) -> int:
        """Read one message; the token must be ``token``.  DEAD_CLIENT on EOF/error/timeout."""
        if fd < 0:
            return DEAD_CLIENT
        got = self._read_u64(fd, on_idle)
        if got is None:
            return DEAD_CLIENT
        if got != token:
            name = Token(got).name if got in Token._value2member_map_ else f"{got:#x}"
            raise AssertionError(f"client {self.pid}: expected token {token.name}, got {name}")
        value = self._read_u64(fd, on_idle)
        return DEAD_CLIENT if value is None else value

    def _client_wait(self, token: Token, quiet: bool = False) -> int:
        value = self._wait_token(self._in_r, token, None)
        if value == DEAD_CLIENT and not self.allow_dead_client and not quiet:
            raise AssertionError(f"client {os.getpid()}: no {token.name} from the parent within "
                                 f"{self.timeout:g} s (or the parent closed the pipe)")
        return value

    def _parent_wait(self, token: Token) -> int:
        value = self._wait_token(self._out_r, token, self._check_exited)
        if value == DEAD_CLIENT and not self.allow_dead_client:
            silent = self._last_read_error.startswith("nothing")
            raise self._failure(f"sent no {token.name} ({self._last_read_error})", 0.2 if silent else 2.0)
        return value

    # -- failure reporting -----------------------------------------------------------------
    def _check_exited(self) -> None:
        """After an empty poll slice: a client that exited with a non-zero status is a failure
        (IGT "Client failed!").  Then the :attr:`idle_hooks` run."""
        for hook in list(self.idle_hooks):
            hook()
        if self.threaded:
            if self._thread is not None and not self._thread.is_alive() and self._thread_error:
                raise self._failure("failed")
            return
        self._reap(block=False)
        if self._reaped and self.status and not self.allow_dead_client:
            raise self._failure("failed")

    def _reap(self, block: bool, timeout: float = 0.0) -> bool:
        """Reap the forked child (once).  Returns whether it has exited."""
        if self.threaded:
            t = self._thread
            if t is not None:
                t.join(timeout if block else 0)
                return not t.is_alive()
            return True
        if self._reaped or not self._child_pid:
            return True
        deadline = time.monotonic() + (timeout if block else 0)
        while True:
            try:
                pid, status = os.waitpid(self._child_pid, os.WNOHANG)
            except ChildProcessError:
                self._reaped = True  # reaped elsewhere; the status is lost
                return True
            if pid:
                self._reaped = True
                self.status = os.waitstatus_to_exitcode(status)
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _read_error_text(self) -> str:
        if self.threaded:
            return self._thread_error
        if self._err_r >= 0:
            chunks = []
            try:
                os.set_blocking(self._err_r, False)
                while True:
                    chunk = os.read(self._err_r, 65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except OSError:
                pass
            if chunks:
                self._err_text += b"".join(chunks).decode(errors="replace")
        return self._err_text

    def _failure(self, what: str, wait: float = 2.0) -> ClientError:
        """A ClientError for ``what``, with the exit status (waiting up to ``wait`` seconds for
        the client to exit) and its traceback."""
        self._failed = True
        if self.threaded:
            self._reap(block=True, timeout=min(wait, 1.0))
            state = "raised" if self._thread_error else "is still running"
            status = 1 if self._thread_error else None
        else:
            self._reap(block=True, timeout=wait)
            status = self.status if self._reaped else None
            state = _describe_status(status)
        who = self.pid or self._child_pid or "?"
        msg = f"client {who} {what}; it {state}"
        return ClientError(msg, status, self._read_error_text())

    # -- lifecycle (parent side) -----------------------------------------------------------
    def start(self) -> None:
        """Release the client into its work function (IGT ``xe_eudebug_client_start``)."""
        self._started = True
        self._send(self._in_w, Token.CLIENT_RUN, self.pid)

    def wait_done(self) -> None:
        """Once: receive CLIENT_FINI (the client's final seqno) and the client log.

        A client that died without FINI is an error unless :attr:`allow_dead_client` is set;
        then, as in IGT, it is marked (``seqno`` becomes :data:`DEAD_CLIENT`) and reading its
        :attr:`log` afterwards raises :class:`ClientError`."""
        if self.done:
            return
        self.done = True
        value = self._parent_wait(Token.CLIENT_FINI)
        if value == DEAD_CLIENT:
            self.seqno = DEAD_CLIENT
            self.log_lost = (f"client {self.pid or self._child_pid or '?'} died before sending its event log "
                             f"({self._last_read_error or 'no FINI'}): its log cannot be read")
            return
        self.seqno = value
        size_raw = b""
        while len(size_raw) < 4:
            r = self._safe_read(self._out_r, 4 - len(size_raw), self._check_exited)
            if isinstance(r, int) or not r:
                raise self._failure("did not send its event log")
            size_raw += r
        size = EventLog.transfer_size(size_raw)
        max_size = self.log.max_size
        if max_size is not None and size >= max_size:
            raise self._failure(f"announced an event log of {size} bytes (capacity {max_size})")
        chunks = [size_raw]
        got = 0
        while got < size:
            r = self._safe_read(self._out_r, min(size - got, 1 << 20), self._check_exited)
            if isinstance(r, int) or not r:
                raise self._failure(f"sent {got} of {size} bytes of its event log")
            chunks.append(r)
            got += len(r)
        self.log = EventLog.from_bytes(b"".join(chunks), "client", max_size)

    def stop(self) -> None:
        """Wait for done, tell the client to exit and reap it (IGT ``xe_eudebug_client_stop``).
        The exit status is recorded in :attr:`status`, not checked."""
        if not self.pid:
            return
        try:
            self.wait_done()
            try:
                self._send(self._in_w, Token.CLIENT_STOP, self.pid)
            except BrokenPipeError:
                pass
            if not self._reap(block=True, timeout=self.timeout):
                raise self._failure("did not exit after CLIENT_STOP")
        finally:
            self.pid = 0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the client process and declare it gone (IGT tests set ``pid = 0`` and
        ``done = 1``); it is reaped without looking at its status.  Fork mode only."""
        if self.threaded:
            raise RuntimeError("a thread client cannot be killed")
        if self._child_pid and not self._reaped:
            try:
                os.kill(self._child_pid, sig)
            except ProcessLookupError:
                pass
        self.done = True
        self.pid = 0

    def close(self) -> None:
        """Stop (if it ran to completion), reap or kill, and close the pipes.  Idempotent and
        safe after any failure (IGT ``xe_eudebug_client_destroy``)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.pid and self._started and self.done and not self._failed:
                try:
                    self.stop()
                except (OSError, ClientError) as exc:
                    log.debug("client stop during close: %s", exc)
        finally:
            self._abandon()

    def _abandon(self) -> None:
        """Close our pipe ends (the client then sees end of file), reap, kill if needed."""
        self._closed = True
        self._close_ends("_in_w", "_out_r")
        if self.threaded:
            if not self._reap(block=True, timeout=5.0):
                log.warning("client thread did not finish; leaving it behind")
        elif self._child_pid and not self._reaped:
            if not self._reap(block=True, timeout=0.5 if self._failed else 2.0):
                try:
                    os.kill(self._child_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._reap(block=True, timeout=5.0)
        self._read_error_text()
        self._close_ends("_err_r")
        unregister_private_fds(self)
        self.pid = 0

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed and (self.threaded or not self._in_client):
                self._abandon()
        except Exception:
            pass

    # -- parent side of stages (used by the Debugger) ---------------------------------------
    def send_client_stage(self, stage: int) -> None:
        """Parent → client: CLIENT_STAGE ``stage`` (what ``Debugger.signal_stage`` sends)."""
        self._send(self._in_w, Token.CLIENT_STAGE, stage)

    def wait_debugger_stage(self, stage: int) -> None:
        """Parent: wait for the client's DEBUGGER_STAGE and assert its value."""
        value = self._parent_wait(Token.DEBUGGER_STAGE)
        if value != stage and not (value == DEAD_CLIENT and self.allow_dead_client):
            raise AssertionError(f"client {self.pid}: expected debugger stage {stage}, got {value}")

    # -- client side: stages ---------------------------------------------------------------
    def signal_stage(self, stage: int) -> None:
        """(In the client) send DEBUGGER_STAGE ``stage``; released by ``Debugger.wait_stage``."""
        log.debug("client: %d signalling debugger stage %d", self.pid, stage)
        self._send(self._out_w, Token.DEBUGGER_STAGE, stage)

    def wait_stage(self, stage: int) -> None:
        """(In the client) wait for CLIENT_STAGE ``stage`` from ``Debugger.signal_stage``."""
        log.debug("client: %d waiting for stage %d", self.pid, stage)
        value = self._client_wait(Token.CLIENT_STAGE)
        if value != stage and not (value == DEAD_CLIENT and self.allow_dead_client):
            raise AssertionError(f"client {self.pid}: expected stage {stage}, got {value}")
        log.debug("client: %d stage %d done", self.pid, stage)

    # -- client side: recording ------------------------------------------------------------
    def get_seqno(self) -> int:
        """Return the next client seqno and advance it (thread-safe)."""
        with self._lock:
            s = self.seqno
            self.seqno = s + 1
            return s

    def record(self, type: int, flags: int, /, **fields: Any) -> int:
        """Log one event of ``type``/``flags`` with the given payload fields (C names) under
        the next client seqno; returns the seqno (IGT's "base event" step)."""
        with self._lock:
            s = self.seqno
            self.seqno = s + 1
            event = make(type, flags, s, **fields)
            self.log.append(event)
            log.debug("client: %d expects event: %s", self.pid, event)
        return s

    def vm_bind_event(self, event_flags: int, fd: int, vm: int, bind_flags: int, num_binds: int) -> int:
        """Log a VM_BIND event; returns its seqno (IGT ``xe_eudebug_client_vm_bind_event``)."""
        return self.record(EventType.VM_BIND, event_flags, client_handle=fd, vm_handle=vm,
                           flags=bind_flags, num_binds=num_binds)

    def vm_bind_op_event(self, event_flags: int, ref_seqno: int, addr: int, range: int,
                         num_extensions: int = 0) -> int:
        """Log a VM_BIND_OP event referencing VM_BIND ``ref_seqno``; returns its seqno."""
        return self.record(EventType.VM_BIND_OP, event_flags, vm_bind_ref_seqno=ref_seqno,
                           addr=addr, range=range, num_extensions=num_extensions)

    def vm_bind_op_metadata_event(self, event_flags: int, op_ref_seqno: int, metadata_handle: int,
                                  metadata_cookie: int) -> int:
        """Log a VM_BIND_OP_METADATA event referencing VM_BIND_OP ``op_ref_seqno``."""
        return self.record(EventType.VM_BIND_OP_METADATA, event_flags, vm_bind_op_ref_seqno=op_ref_seqno,
                           metadata_handle=metadata_handle, metadata_cookie=metadata_cookie)

    def vm_bind_ufence_event(self, event_flags: int, ref_seqno: int) -> int:
        """Log a VM_BIND_UFENCE event referencing VM_BIND ``ref_seqno``."""
        return self.record(EventType.VM_BIND_UFENCE, event_flags, vm_bind_ref_seqno=ref_seqno)

    # -- client side: recording helpers ----------------------------------------------------
    def open_driver(self) -> int:
        """Open a new DRM client on the device, then log OPEN CREATE (handle = the fd)."""
        fd = reopen(self.master_fd)
        self.record(EventType.OPEN, EventFlags.CREATE, client_handle=fd)
        return fd

    def close_driver(self, fd: int) -> None:
        """Log OPEN DESTROY, then close the fd."""
        self.record(EventType.OPEN, EventFlags.DESTROY, client_handle=fd)
        _seam.close(fd)  # returns after the release, as close(2) does

    def vm_create(self, fd: int, flags: int = 0, ext: Any = None) -> int:
        """VM_CREATE (must succeed), then log VM CREATE; returns the VM id."""
        address, keep = _ext_address(ext)
        arg = _uapi.drm_xe_vm_create()
        arg.extensions = address
        arg.flags = flags
        retry_ioctl(fd, _uapi.DRM_IOCTL_XE_VM_CREATE, arg)
        del keep
        vm = int(arg.vm_id)
        self.record(EventType.VM, EventFlags.CREATE, client_handle=fd, vm_handle=vm)
        return vm

    def vm_destroy(self, fd: int, vm: int) -> None:
        """VM_DESTROY (must succeed), then log VM DESTROY."""
        arg = _uapi.drm_xe_vm_destroy()
        arg.vm_id = vm
        retry_ioctl(fd, _uapi.DRM_IOCTL_XE_VM_DESTROY, arg)
        self.record(EventType.VM, EventFlags.DESTROY, client_handle=fd, vm_handle=vm)

    def _exec_queue_event(self, flags: int, fd: int, create: Any) -> None:
        instances = _uapi.drm_xe_engine_class_instance.from_address(int(create.instances)) \
            if create.instances else _uapi.drm_xe_engine_class_instance()
        self.record(EventType.EXEC_QUEUE, flags, client_handle=fd, vm_handle=int(create.vm_id),
                    exec_queue_handle=int(create.exec_queue_id), engine_class=int(instances.engine_class),
                    width=int(create.width))

    def exec_queue_create(self, fd: int, create: Any) -> int:
        """EXEC_QUEUE_CREATE with ``create`` (see :func:`exec_queue_args`), then log EXEC_QUEUE
        CREATE if its extensions enable EUDEBUG; returns the exec queue id."""
        retry_ioctl(fd, _uapi.DRM_IOCTL_XE_EXEC_QUEUE_CREATE, create)
        if _eudebug_enabled_queue(create):
            self._exec_queue_event(EventFlags.CREATE, fd, create)
        return int(create.exec_queue_id)

    def exec_queue_destroy(self, fd: int, create: Any) -> None:
        """Log EXEC_QUEUE DESTROY (if EUDEBUG-enabled), then EXEC_QUEUE_DESTROY."""
        if _eudebug_enabled_queue(create):
            self._exec_queue_event(EventFlags.DESTROY, fd, create)
        arg = _uapi.drm_xe_exec_queue_destroy()
        arg.exec_queue_id = create.exec_queue_id
        retry_ioctl(fd, _uapi.DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, arg)

    def metadata_create(self, fd: int, type: int, data: bytes | bytearray | int | None = None,
                        length: int | None = None) -> int:
        """DEBUG_METADATA_CREATE, then log METADATA CREATE; returns the metadata id.

        ``data`` is the payload (bytes, or a user address with ``length``); ``length`` defaults
        to ``len(data)``."""
        buf = None
        if isinstance(data, (bytes, bytearray)):
            buf = ctypes.create_string_buffer(bytes(data), len(data))
            address = ctypes.addressof(buf)
            if length is None:
                length = len(data)
        else:
            address = int(data or 0)
        if length is None:
            raise TypeError("metadata_create needs a length when data is an address")
        arg = _uapi.drm_xe_debug_metadata_create()
        arg.type = type
        arg.user_addr = address
        arg.len = length
        retry_ioctl(fd, _uapi.DRM_IOCTL_XE_DEBUG_METADATA_CREATE, arg)
        del buf
        mid = int(arg.metadata_id)
        self.record(EventType.METADATA, EventFlags.CREATE, client_handle=fd, metadata_handle=mid,
                    type=type, len=length)
        return mid

    def metadata_destroy(self, fd: int, id: int, type: int, length: int) -> None:
        """DEBUG_METADATA_DESTROY, then log METADATA DESTROY."""
        arg = _uapi.drm_xe_debug_metadata_destroy()
        arg.metadata_id = id
        retry_ioctl(fd, _uapi.DRM_IOCTL_XE_DEBUG_METADATA_DESTROY, arg)
        self.record(EventType.METADATA, EventFlags.DESTROY, client_handle=fd, metadata_handle=id,
                    type=type, len=length)

    # -- vm bind ---------------------------------------------------------------------------
    def _pat(self, fd: int) -> int:
        if self.pat_index is None:
            self.pat_index = wb_pat_index(fd)
        return self.pat_index

    def try_vm_bind_op(self, fd: int, vm: int, bo: int, offset: int, addr: int, size: int, op: int,
                       flags: int = 0, syncs: Any = None, ext: Any = None) -> int:
        """IGT's internal bind routine: one VM_BIND ioctl with one op, then the logged chain.

        Returns 0, ``-errno`` of a failed ioctl (nothing logged), or ``-EINVAL`` after a
        successful bind whose op is neither MAP nor UNMAP (nothing logged)."""
        sync_addr, num_syncs, sync_keep = _sync_array(syncs)
        ext_addr, ext_keep = _ext_address(ext)
        ufence = any(s.type == _uapi.DRM_XE_SYNC_TYPE_USER_FENCE for s in _sync_list(sync_addr, num_syncs))
        bind_flags = int(_uapi.DRM_XE_EUDEBUG_EVENT_VM_BIND_FLAG_UFENCE) if ufence else 0
        nodes = _attach_debug_nodes(ext_addr)
        if op == _uapi.DRM_XE_VM_BIND_OP_MAP:
            op_flags = EventFlags.CREATE
        elif op == _uapi.DRM_XE_VM_BIND_OP_UNMAP:
            op_flags = EventFlags.DESTROY
            if nodes or ufence:
                raise ValueError("an unbind carries neither ATTACH_DEBUG extensions nor a user fence")
        else:
            op_flags = 0
        arg = _uapi.drm_xe_vm_bind()
        arg.vm_id = vm
        arg.exec_queue_id = 0
        arg.num_binds = 1
        b = arg.bind
        b.extensions = ext_addr
        b.obj = bo
        b.obj_offset = offset
        b.range = size
        b.addr = addr
        b.op = op
        b.flags = flags
        b.prefetch_mem_region_instance = 0
        b.pat_index = self._pat(fd)
        arg.num_syncs = num_syncs
        arg.syncs = sync_addr
        ret = try_retry_ioctl(fd, _uapi.DRM_IOCTL_XE_VM_BIND, arg)
        del sync_keep, ext_keep
        if ret < 0:
            return ret
        if not op_flags:
            return -_errno.EINVAL
        ref = self.vm_bind_event(EventFlags.STATE_CHANGE, fd, vm, bind_flags, 1)
        op_ref = self.vm_bind_op_event(op_flags, ref, addr, size, len(nodes))
        for metadata_id, cookie in nodes:
            self.vm_bind_op_metadata_event(EventFlags.CREATE, op_ref, metadata_id, cookie)
        if ufence:
            self.vm_bind_ufence_event(EventFlags.CREATE | EventFlags.NEED_ACK, ref)
        return 0

    def vm_bind(self, fd: int, vm: int, bo: int, offset: int, addr: int, size: int, flags: int = 0,
                syncs: Any = None, ext: Any = None) -> None:
        """MAP ``size`` bytes of BO ``bo`` at ``offset`` to ``addr`` and log the chain: VM_BIND
        (UFENCE flag when a user-fence sync is given), VM_BIND_OP CREATE, one
        VM_BIND_OP_METADATA per ATTACH_DEBUG extension, VM_BIND_UFENCE if a user fence.

        ``syncs``: ``drm_xe_sync`` struct(s); ``ext``: an :class:`ExtensionChain`, a list of
        ``(metadata_id, cookie)`` pairs, a struct or an address.  The user fence is not
        waited for.  Raises ``OSError`` naming DRM_IOCTL_XE_VM_BIND on failure
        (IGT ``xe_eudebug_client_vm_bind_flags``)."""
        self._check_bind(self.try_vm_bind_op(fd, vm, bo, offset, addr, size, _uapi.DRM_XE_VM_BIND_OP_MAP,
                                             flags, syncs, ext))

    def vm_unbind(self, fd: int, vm: int, offset: int, addr: int, size: int, flags: int = 0,
                  syncs: Any = None) -> None:
        """UNMAP ``[addr, addr + size)`` and log VM_BIND + VM_BIND_OP DESTROY
        (IGT ``xe_eudebug_client_vm_unbind_flags``)."""
        self._check_bind(self.try_vm_bind_op(fd, vm, 0, offset, addr, size, _uapi.DRM_XE_VM_BIND_OP_UNMAP,
                                             flags, syncs, None))

    @staticmethod
    def _check_bind(ret: int) -> None:
        if ret < 0:
            raise OSError(-ret, f"DRM_IOCTL_XE_VM_BIND: {os.strerror(-ret)}")

    def wait_ufence(self, fd: int, addr: int, value: int, timeout_ns: int, exec_queue: int = 0,
                    mask: int = _MASK64) -> int:
        """``DRM_IOCTL_XE_WAIT_USER_FENCE`` for ``*addr == value`` (relative ``timeout_ns``).
        Returns 0 or ``-errno`` (``-ETIME`` while a debugger holds the fence)."""
        arg = _uapi.drm_xe_wait_user_fence()
        arg.addr = addr
        arg.op = _uapi.DRM_XE_UFENCE_WAIT_OP_EQ
        arg.value = value
        arg.mask = mask
        arg.timeout = timeout_ns
        arg.exec_queue_id = exec_queue
        return try_retry_ioctl(fd, _uapi.DRM_IOCTL_XE_WAIT_USER_FENCE, arg)

    # -- raw BO helpers (not logged) --------------------------------------------------------
    @staticmethod
    def bo_create(fd: int, size: int, placement: int = 1, flags: int = 0, vm: int = 0,
                  cpu_caching: int | None = None) -> int:
        """``DRM_IOCTL_XE_GEM_CREATE`` (nothing is logged: BOs produce no events).  The default
        placement is system memory (region 0).  The default CPU caching is IGT's
        (``__xe_default_cpu_caching``): write-combined for a placement with VRAM or a scanout BO
        (the kernel refuses write-back there), else write-back."""
        arg = _uapi.drm_xe_gem_create()
        arg.size = size
        arg.placement = placement
        arg.flags = flags
        arg.vm_id = vm
        if cpu_caching is None:
            wc = placement & ~1 or flags & _uapi.DRM_XE_GEM_CREATE_FLAG_SCANOUT
            cpu_caching = _uapi.DRM_XE_GEM_CPU_CACHING_WC if wc else _uapi.DRM_XE_GEM_CPU_CACHING_WB
        arg.cpu_caching = cpu_caching
        retry_ioctl(fd, _uapi.DRM_IOCTL_XE_GEM_CREATE, arg)
        return int(arg.handle)

    @staticmethod
    def bo_close(fd: int, handle: int) -> None:
        """``DRM_IOCTL_GEM_CLOSE``."""
        arg = _uapi.drm_gem_close()
        arg.handle = handle
        retry_ioctl(fd, _uapi.DRM_IOCTL_GEM_CLOSE, arg)


# ------------------------------------------------------------------------------------------------
# Fds that must not live on in forked clients: the pipe ends of other clients (so that a client's
# death is seen even when later clients were forked after it), debugger connections (a debug fd
# inherited by a child would keep its connection attached) and debugger wake-up pipes.  Every
# new client process closes them right after the fork.

_private_fds_lock = threading.Lock()
_private_fds: dict[int, tuple[int, ...]] = {}


def register_private_fds(owner: object, *fds: int) -> None:
    """Record ``owner``'s fds (replacing earlier ones) to be closed in forked clients."""
    with _private_fds_lock:
        _private_fds[id(owner)] = tuple(fd for fd in fds if fd >= 0)


def unregister_private_fds(owner: object) -> None:
    with _private_fds_lock:
        _private_fds.pop(id(owner), None)


def _private_fds_now() -> set[int]:
    with _private_fds_lock:
        return {fd for fds in _private_fds.values() for fd in fds}
