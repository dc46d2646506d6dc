"""The eudebug connection (the driver's xe_eudebug.c): CONNECT, the event fifo, discovery and
the debugger fd's ioctls (READ_EVENT, ACK_EVENT, READ_METADATA, EU_CONTROL).
"""

from __future__ import annotations

import ctypes
import errno as E
import logging
import struct
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from ... import uapi as _uapi
from .. import procmem
from .xe_device_types import (
    EV_CLIENT_PAYLOAD, EV_EXEC_QUEUE_PAYLOAD, EV_METADATA_PAYLOAD, EV_VM_BIND_OP_METADATA_PAYLOAD,
    EV_VM_BIND_OP_PAYLOAD, EV_VM_BIND_PAYLOAD, EV_VM_PAYLOAD,
)
from .xe_device_types import (
    WaitQueue,
    CALLER_CHECK, CAP_SYS_PTRACE, EUDEBUG_VERSION, EU_BITMASK_SIZE,
    EVENT_HEADER, EV_EXEC_QUEUE, EV_MAX, EV_METADATA,
    EV_NONE, EV_OPEN, EV_READ, EV_VM, EV_VM_BIND, EV_VM_BIND_OP, EV_VM_BIND_OP_METADATA,
    F_CREATE, F_DESTROY, F_STATE_CHANGE, File, HandleMap, _Reading, _access_ok, _caller_gone,
    _cfg, _dumpable, _fail, _has_cap, _ids, _proc_status,
)

if TYPE_CHECKING:
    from .xe_debug_metadata import Metadata
    from .xe_device import Kernel
    from .xe_device_types import Caller, Device, DeviceFile
    from .xe_exec_queue import ExecQueue
    from .xe_vm import Vm
    from .xe_wait_user_fence import UserFence

log = logging.getLogger(__name__)

_CONNECT = _uapi.layout(_uapi.drm_xe_eudebug_connect)
_CONNECT_VERSION = _uapi.layout(_uapi.drm_xe_eudebug_connect, "version")
_EVENT_LEN = _uapi.layout(_uapi.drm_xe_eudebug_event, "len")
_ACK_EVENT = _uapi.layout(_uapi.drm_xe_eudebug_ack_event)
_READ_METADATA = _uapi.layout(_uapi.drm_xe_eudebug_read_metadata)
_EU_CONTROL = _uapi.layout(_uapi.drm_xe_eudebug_eu_control)


class Connection:
    def __init__(self, kernel: "Kernel", device: Device, target: int) -> None:
        self.device = device
        self.target = target
        self.target_task = procmem.task_of(target)  # the debuggee, held as a task
        self.status = 1                            # 1 attached; 0 or -errno detached
        self.fifo: deque[bytes] = deque()
        self.cv = WaitQueue(kernel)
        self.discovery_done = False
        self.seqno = 0
        self.clients = HandleMap()
        self.vms = HandleMap()
        self.queues = HandleMap()
        self.lrcs = HandleMap()
        self.metadata = HandleMap()
        self.fences: dict[int, UserFence] = {}
        self.file: DebuggerFile | None = None
        self.pagefaults: list = []                 # PAGEFAULT events waiting (xe_gt_pagefault.py)

    def next_seqno(self) -> int:
        self.seqno += 1
        return self.seqno


class DebuggerFile(File):
    """The anonymous file CONNECT returns ([xe_eudebug]): not close-on-exec, blocking."""

    kind = "debugger"
    cloexec = False

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn
        self.index = conn.device.index


# ------------------------------------------------------------------------------------------------
# helpers

def _event(etype: int, flags: int, seqno: int, payload: bytes) -> bytes:
    return EVENT_HEADER.pack(EVENT_HEADER.size + len(payload), etype, flags, seqno, 0) + payload


class XeEudebugMixin:
    """The `Kernel` methods of xe_eudebug.py (mixed into `Kernel` in xe_device.py)."""

    # -- discovery gate --------------------------------------------------------------------------
    def _gate_read(self, dev: Device) -> None:
        if dev.writer or dev.writers_waiting:
            me = threading.get_ident()
            gen = dev.gate_gen
            self.gate_waiters.add(me)
            dev.readers_waiting += 1
            try:
                # Until a writer's release grants it (gate_gen moves on), or no writer is left.
                while dev.writer or (dev.writers_waiting and dev.gate_gen == gen):
                    self._gate_cv.wait()
            finally:
                self.gate_waiters.discard(me)
                dev.readers_waiting -= 1
                if dev.gate_gen != gen and dev.readers_granted:
                    dev.readers_granted -= 1
                    if not dev.readers_granted:
                        self._gate_cv.notify_all()
        dev.readers += 1

    def _gate_write(self, dev: Device) -> None:
        """Take the gate for writing (discovery; its CONNECT counted it in writers_waiting)."""
        while dev.writer or dev.readers or dev.readers_granted:
            self._gate_cv.wait()
        dev.writers_waiting -= 1
        dev.writer = True

    def _gate_write_done(self, dev: Device) -> None:
        """Release the write side: every reader waiting now is let in before the next writer."""
        dev.writer = False
        dev.gate_gen += 1
        dev.readers_granted = dev.readers_waiting
        self._gate_cv.notify_all()

    def _gate_read_done(self, dev: Device) -> None:
        dev.readers -= 1
        if dev.readers == 0:
            self._gate_cv.notify_all()

    def _reading(self, dev: Device) -> "_Reading":
        """The kernel lock plus the device's discovery gate for reading (§2.3)."""
        return _Reading(self, dev)

    # -- events ------------------------------------------------------------------------------------
    def _poll_changed(self, conn: Connection) -> None:
        if conn.file is not None:
            try:
                self.on_poll_change(conn.file)
            except Exception:  # pragma: no cover - a broken callback must not break the model
                log.exception("on_poll_change failed")

    def _queue(self, conn: Connection, event: bytes) -> bool:
        """Insert one event; blocks while the fifo is full (fifo_retry slices, fifo_timeout total,
        then the event is dropped and the connection detached with ETIMEDOUT)."""
        if conn.status != 1:
            return False
        capacity = int(_cfg(self.config, "fifo_capacity"))
        if len(conn.fifo) >= capacity:
            limit = float(_cfg(self.config, "fifo_timeout"))
            retry = max(float(_cfg(self.config, "fifo_retry")), 0.001)
            deadline = time.monotonic() + limit
            me = threading.get_ident()
            self.fifo_waiters.add(me)
            try:
                while len(conn.fifo) >= capacity:
                    if conn.status != 1:
                        return False
                    left = deadline - time.monotonic()
                    if left <= 0:
                        log.info("event fifo stayed full for %.1f s: detaching with ETIMEDOUT", limit)
                        self._detach(conn, -E.ETIMEDOUT)
                        return False
                    conn.cv.wait(min(retry, left))
            finally:
                self.fifo_waiters.discard(me)
            if conn.status != 1:
                return False
        conn.fifo.append(event)
        conn.cv.notify_all()
        self._poll_changed(conn)
        return True

    def _emit(self, conn: Connection, etype: int, flags: int, payload: bytes, seqno: int | None = None) -> bool:
        if conn.status != 1:
            return False
        if seqno is None:
            seqno = conn.next_seqno()
        return self._queue(conn, _event(etype, flags, seqno, payload))

    def _detach(self, conn: Connection, status: int) -> None:
        if conn.status != 1:
            return
        conn.status = status
        if conn in conn.device.conns:
            conn.device.conns.remove(conn)
        fences = list(conn.fences.values())
        conn.fences.clear()
        for fence in fences:
            self._signal_fence(fence)
        conn.cv.notify_all()
        self._gate_cv.notify_all()
        self._poll_changed(conn)

    def _conn_for(self, file: DeviceFile) -> Connection | None:
        """The attached connection, with discovery complete, debugging the file's opener."""
        for conn in file.device.conns:
            if conn.target_task is file.owner_task and conn.discovery_done:
                return conn
        return None

    def _client_event(self, conn: Connection, file: DeviceFile, create: bool) -> bool:
        if create:
            h = conn.clients.add(file)
            if h is None:
                return True
            return self._emit(conn, EV_OPEN, F_CREATE, EV_CLIENT_PAYLOAD.pack(h))
        h = conn.clients.find(file)
        if h is None or conn.status != 1:
            return True
        seqno = conn.next_seqno()
        conn.clients.remove(file)
        return self._emit(conn, EV_OPEN, F_DESTROY, EV_CLIENT_PAYLOAD.pack(h), seqno)

    def _vm_event(self, conn: Connection, vm: Vm, create: bool) -> bool:
        ch = conn.clients.find(vm.file)
        if ch is None:
            self._detach(conn, -E.ENOENT)
            return False
        if create:
            h = conn.vms.add(vm)
            if h is None:
                return True
            return self._emit(conn, EV_VM, F_CREATE, EV_VM_PAYLOAD.pack(ch, h))
        h = conn.vms.find(vm)
        if h is None or conn.status != 1:
            return True
        seqno = conn.next_seqno()
        self._vm_changed(vm)                       # the VM fds' handle stops naming it
        conn.vms.remove(vm)
        return self._emit(conn, EV_VM, F_DESTROY, EV_VM_PAYLOAD.pack(ch, h), seqno)

    def _queue_event(self, conn: Connection, q: ExecQueue, create: bool) -> bool:
        ch = conn.clients.find(q.file)
        vh = conn.vms.find(q.vm)
        if ch is None or vh is None:
            self._detach(conn, -E.ENOENT)
            return False
        if create:
            h = conn.queues.add(q)
            if h is None:
                return True
            lrcs = [conn.lrcs.add(lrc) or conn.lrcs.find(lrc) or 0 for lrc in q.lrcs]
            flags = F_CREATE
        else:
            h = conn.queues.find(q)
            if h is None or conn.status != 1:
                return True
            lrcs = [conn.lrcs.find(lrc) or 0 for lrc in q.lrcs]
            conn.queues.remove(q)
            for lrc in q.lrcs:
                conn.lrcs.remove(lrc)
            flags = F_DESTROY
        handles = struct.pack(f"<{q.width}Q", *lrcs)
        if _cfg(self.config, "fidelity_lrc_truncation"):
            handles = handles[:q.width].ljust(8 * q.width, b"\0")
        payload = EV_EXEC_QUEUE_PAYLOAD.pack(ch, vh, h, q.engine_class, q.width) + handles
        return self._emit(conn, EV_EXEC_QUEUE, flags, payload)

    def _metadata_event(self, conn: Connection, md: Metadata, create: bool) -> bool:
        ch = conn.clients.find(md.file)
        if ch is None:
            self._detach(conn, -E.ENOENT)
            return False
        if create:
            h = conn.metadata.add(md)
            if h is None:
                return True
            flags = F_CREATE
            seqno = None
        else:
            h = conn.metadata.find(md)
            if h is None or conn.status != 1:
                return True
            seqno = conn.next_seqno()
            conn.metadata.remove(md)
            flags = F_DESTROY
        return self._emit(conn, EV_METADATA, flags, EV_METADATA_PAYLOAD.pack(ch, h, md.type, len(md.data)), seqno)

    # -- CONNECT and discovery ---------------------------------------------------------------------
    def _connect(self, file: DeviceFile, caller: Caller, k: bytearray) -> DebuggerFile:
        dev = file.device
        with self._reading(dev):
            if not dev.enabled:
                raise _fail(E.ENODEV, "EUDEBUG_CONNECT: debugging disabled")
            ext, pid, flags, version = _CONNECT.unpack_from(k)
            if ext:
                raise _fail(E.EINVAL, "EUDEBUG_CONNECT: extensions")
            if pid == 0:
                raise _fail(E.EINVAL, "EUDEBUG_CONNECT: pid 0")
            if flags:
                raise _fail(E.EINVAL, "EUDEBUG_CONNECT: flags")
            if version not in (0, EUDEBUG_VERSION):
                raise _fail(E.EINVAL, "EUDEBUG_CONNECT: version")
            _CONNECT_VERSION.pack_into(k, _CONNECT_VERSION.offset, EUDEBUG_VERSION)
            pid32 = pid & 0xFFFFFFFF
            if pid32 & 0x80000000:
                raise _fail(E.ENOENT, "EUDEBUG_CONNECT: no such process")
            target_status = _proc_status(pid32)
            tgid = _ids(target_status, "Tgid") if target_status else []
            if not tgid:
                raise _fail(E.ENOENT, "EUDEBUG_CONNECT: no such process")
            target = tgid[0]
            if not self._may_access(int(caller.pid), target, target_status or {}):
                raise _fail(E.EACCES, "EUDEBUG_CONNECT: no ptrace access")
            ttask = procmem.task_of(target)
            if ttask.fd < 0:                      # gone since its status was read (a zombie is
                raise _fail(E.ENOENT, "EUDEBUG_CONNECT: no such process")  # still there)
            if any(c.target_task is ttask for c in dev.conns):
                raise _fail(E.EBUSY, "EUDEBUG_CONNECT: target already debugged")
            conn = Connection(self, dev, target)
            dfile = DebuggerFile(conn)
            conn.file = dfile
            dev.conns.append(conn)
            dev.attach_count += 1
            dev.writers_waiting += 1          # discovery runs before any other resource change
        worker = threading.Thread(target=self._discovery, args=(conn,), daemon=True,
                                  name=f"xe-eudebug-discovery-{dev.index}")
        try:
            worker.start()
        except RuntimeError:
            with self._lock:                      # undo the attach: nothing was reported yet
                dev.writers_waiting -= 1
                dev.conns.remove(conn)
                conn.status = -E.ENOMEM
                self._gate_cv.notify_all()
            raise _fail(E.ENOMEM, "EUDEBUG_CONNECT: no discovery worker") from None
        with self._lock:
            if self._scan_thread is not None:     # attention_scan_flush (the scan runs while
                self._attention_scan_start()      # jobs run: xe_eudebug_hw.py)
        return dfile

    @staticmethod
    def _may_access(caller_pid: int, target: int, tstatus: dict[str, str]) -> bool:
        cstatus = _proc_status(caller_pid)
        if cstatus is None:
            return False
        ctgid = _ids(cstatus, "Tgid")
        if ctgid and ctgid[0] == target:
            return True
        cu, cg = _ids(cstatus, "Uid"), _ids(cstatus, "Gid")
        tu, tg = _ids(tstatus, "Uid"), _ids(tstatus, "Gid")
        privileged = _has_cap(cstatus, CAP_SYS_PTRACE)
        same_ids = bool(cu and cg and len(tu) >= 3 and len(tg) >= 3
                        and all(x == cu[0] for x in tu[:3]) and all(x == cg[0] for x in tg[:3]))
        if not same_ids and not privileged:
            return False
        # ptrace refuses a target that is not dumpable (setuid programs, prctl(PR_SET_DUMPABLE, 0),
        # a changed uid) unless the caller has CAP_SYS_PTRACE.
        return privileged or _dumpable(target, tstatus)

    def _discovery(self, conn: Connection) -> None:
        dev = conn.device
        with self._lock:
            self._gate_write(dev)
            try:
                self._replay(conn)
            except Exception:  # pragma: no cover - a model bug must not wedge the device
                log.exception("discovery failed")
            finally:
                self._gate_write_done(dev)
                conn.discovery_done = True
                conn.cv.notify_all()

    def _replay(self, conn: Connection) -> None:
        for file in list(conn.device.files):
            if conn.status != 1:
                return
            if file.released or file.owner_task is not conn.target_task:
                continue
            if not self._client_event(conn, file, True):
                return
            for md_id in sorted(file.metadata):
                if not self._metadata_event(conn, file.metadata[md_id], True):
                    return
            for vm_id in sorted(file.vms):
                vm = file.vms[vm_id]
                if not vm.lr:
                    if vm.vmas and _cfg(self.config, "fidelity_nonlr_discovery_abort"):
                        return                     # the bind replay finds no VM handle: stop
                    continue
                if not self._vm_event(conn, vm, True):
                    return
                if vm.vmas and not self._replay_binds(conn, file, vm):
                    return
            for qid in sorted(file.queues):
                q = file.queues[qid]
                if q.debuggable and not self._queue_event(conn, q, True):
                    return

    def _replay_binds(self, conn: Connection, file: DeviceFile, vm: Vm) -> bool:
        ch, vh = conn.clients.find(file), conn.vms.find(vm)
        bind_seqno = conn.next_seqno()
        if not self._queue(conn, _event(EV_VM_BIND, F_STATE_CHANGE, bind_seqno,
                                        EV_VM_BIND_PAYLOAD.pack(ch, vh, 0, len(vm.vmas)))):
            return False
        for vma in vm.vmas:
            op_seqno = conn.next_seqno()
            if not self._queue(conn, _event(EV_VM_BIND_OP, F_CREATE, op_seqno,
                                            EV_VM_BIND_OP_PAYLOAD.pack(bind_seqno, len(vma.attach), vma.start,
                                                                       vma.end - vma.start))):
                return False
            for md_id, cookie in vma.attach:
                md = file.metadata.get(md_id)
                mh = conn.metadata.find(md) if md is not None else None
                if mh is None:
                    self._detach(conn, -E.ENOENT)  # the mapping names destroyed metadata
                    return False
                if not self._emit(conn, EV_VM_BIND_OP_METADATA, F_CREATE,
                                  EV_VM_BIND_OP_METADATA_PAYLOAD.pack(op_seqno, mh, cookie)):
                    return False
        return True

    # -- debugger fd ioctls ------------------------------------------------------------------------------
    def _read_event(self, conn: Connection, caller: Caller, arg: bytes) -> tuple[int, bytes]:
        addr = int(getattr(caller, "arg_addr", 0) or 0)
        hdr = caller.read(addr, EVENT_HEADER.size)
        length, etype, flags, _seqno, reserved = EVENT_HEADER.unpack(hdr)
        if etype == EV_NONE or etype > EV_MAX or etype != EV_READ:
            raise _fail(E.EINVAL, "READ_EVENT: type")
        if length < EVENT_HEADER.size:
            raise _fail(E.EINVAL, "READ_EVENT: len")
        if flags or reserved:
            raise _fail(E.EINVAL, "READ_EVENT: flags/reserved")
        nonblock = bool(getattr(caller, "nonblock", False))
        with self._lock:
            if not nonblock and not conn.fifo and conn.status == 1:
                # a call the server continues (see Caller.park) keeps the deadline of its start
                deadline = getattr(caller, "deadline", None) or \
                    time.monotonic() + float(_cfg(self.config, "read_event_timeout"))
                park = getattr(caller, "park", None)
                if park is not None and time.monotonic() < deadline:
                    park(conn.cv, deadline)        # does not return: the call goes on later
                while not conn.fifo and conn.status == 1:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    conn.cv.wait(min(left, CALLER_CHECK))
                    if _caller_gone(caller):       # killed while it sleeps: the call ends now
                        raise _fail(E.EINTR, "READ_EVENT: caller killed")
            if conn.fifo:
                head = conn.fifo[0]
                need = len(head)
                if length < need:
                    event = None
                else:
                    event = conn.fifo.popleft()
                    conn.cv.notify_all()           # room for blocked producers
                    self._poll_changed(conn)
            elif conn.status != 1:
                raise _fail(E.ENOTCONN, "READ_EVENT: detached")
            elif nonblock:
                raise _fail(E.EAGAIN, "READ_EVENT")
            else:
                raise _fail(E.ENOENT, "READ_EVENT: timed out")
        if event is None:
            caller.write(addr + _EVENT_LEN.offset, _EVENT_LEN.pack(need))
            raise _fail(E.EMSGSIZE, "READ_EVENT: buffer too small")
        # A fault here loses the event, as in the kernel; nothing follows the copy.
        write = getattr(caller, "write_on_return", None) or caller.write
        write(addr, event)
        return 0, b""

    def _ack_event(self, conn: Connection, caller: Caller, arg: bytes) -> tuple[int, bytes]:
        _type, flags, seqno = _ACK_EVENT.unpack_from(arg)
        if flags:
            raise _fail(E.EINVAL, "ACK_EVENT: flags")
        with self._lock:
            if conn.status != 1:
                raise _fail(E.ENOTCONN, "ACK_EVENT: detached")
            fence = conn.fences.pop(seqno, None)
            if fence is None:
                raise _fail(E.EINVAL, "ACK_EVENT: seqno not tracked")
            self._signal_fence(fence)
        return 0, b""

    def _read_metadata(self, conn: Connection, caller: Caller, arg: bytes) -> tuple[int, bytes]:
        ch, mh, flags, reserved, ptr, size = _READ_METADATA.unpack_from(arg)
        if flags:
            raise _fail(E.EINVAL, "READ_METADATA: flags")
        if not _access_ok(ptr, size):
            raise _fail(E.EFAULT, "READ_METADATA: user range")
        with self._lock:
            if conn.status != 1:
                raise _fail(E.ENOTCONN, "READ_METADATA: detached")
            client = conn.clients.lookup(ch)
            if client is None or client.released:
                raise _fail(E.EINVAL, "READ_METADATA: client_handle")
            md = conn.metadata.lookup(mh)
            if md is None or not md.alive:
                raise _fail(E.EINVAL, "READ_METADATA: metadata_handle")
            data = md.data
        if size and size < len(data):
            raise _fail(E.EINVAL, "READ_METADATA: size smaller than the metadata")
        if size:
            caller.write(ptr, data)
        return 0, _READ_METADATA.pack(ch, mh, flags, reserved, ptr, len(data))

    def _eu_control(self, conn: Connection, caller: Caller, arg: bytes) -> tuple[int, bytes]:
        ch, cmd, flags, _seqno, qh, lh, _reserved, bsize, bptr = _EU_CONTROL.unpack_from(arg)
        if flags:
            raise _fail(E.EINVAL, "EU_CONTROL: flags")
        if not _access_ok(bptr, bsize):
            raise _fail(E.EFAULT, "EU_CONTROL: bitmask range")
        with self._lock:
            client = conn.clients.lookup(ch)
            if client is None or client.released:
                raise _fail(E.EINVAL, "EU_CONTROL: client_handle")
            if conn.status != 1:
                raise _fail(E.ENOTCONN, "EU_CONTROL: detached")
            if bsize % 4:
                raise _fail(E.EINVAL, "EU_CONTROL: bitmask_size")
            q = conn.queues.lookup(qh)
            if q is None or not q.alive or not q.debuggable or q.vm.file is not client:
                raise _fail(E.EINVAL, "EU_CONTROL: exec_queue_handle")
            lrc = conn.lrcs.lookup(lh)
            if lrc is None or not lrc.queue.alive:
                raise _fail(E.EINVAL, "EU_CONTROL: lrc_handle")
        effective = min(bsize, EU_BITMASK_SIZE)
        bits = caller.read(bptr, effective) if effective else b""
        with self._gt(q.file.device, q.gt_id).quiescent(), self._lock:
            if conn.status != 1:
                raise _fail(E.ENOTCONN, "EU_CONTROL: detached")
            out = self._eu_control_cmd(conn, q, lrc, cmd, bits)
            seqno = conn.next_seqno()
        layout = _uapi.drm_xe_eudebug_eu_control
        a = layout.from_buffer_copy(arg[:ctypes.sizeof(layout)])
        a.seqno = seqno
        if effective:
            caller.write(bptr, out)
        if bsize != EU_BITMASK_SIZE:
            a.bitmask_size = EU_BITMASK_SIZE
        return 0, a.to_bytes()
