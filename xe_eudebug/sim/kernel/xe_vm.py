"""VMs and binds (the driver's xe_vm.c): VM_CREATE, VM_DESTROY, VM_BIND and the VMA tree."""

from __future__ import annotations

import ctypes
import errno as E
import logging
import struct
from typing import TYPE_CHECKING

from ... import uapi as _uapi
from .. import procmem
from . import xe_sync
from .drm_syncobj import signaled_stub, wait_fences
from .xe_device_types import (
    EV_VM_BIND_OP_METADATA_PAYLOAD, EV_VM_BIND_OP_PAYLOAD, EV_VM_BIND_PAYLOAD, EV_VM_BIND_UFENCE_PAYLOAD,
    BIND_FLAG_NULL, BIND_SUPPORTED_FLAGS, CLASS_VM_BIND, EV_VM_BIND, EV_VM_BIND_OP,
    EV_VM_BIND_OP_METADATA, EV_VM_BIND_UFENCE, F_CREATE, F_DESTROY, F_NEED_ACK, F_STATE_CHANGE,
    KernelError, MAX_VECTOR_BYTES, OP_MAP, OP_MAP_USERPTR, OP_PREFETCH, OP_UNMAP, OP_UNMAP_ALL,
    PAGE, PAT_COH_NONE, PAT_COH_RESERVED, XE2_PAT_COH, CPU_CACHING_WB, SYNC_FLAG_SIGNAL,
    SYNC_SYNCOBJ, SYNC_TIMELINE_SYNCOBJ, SYNC_USER_FENCE,
    VM_BIND_FLAG_UFENCE, VM_CREATE_FAULT_MODE, VM_CREATE_LR_MODE, VM_CREATE_SCRATCH_PAGE,
    VM_SIZE, _access_ok, _check_base, _fail, _lowest_free, _read_chain,
)
from .xe_eudebug import _event
from .xe_wait_user_fence import UserFence

if TYPE_CHECKING:
    from .xe_bo import Bo
    from .xe_device_types import Caller, DeviceFile

log = logging.getLogger(__name__)

_VM_CREATE = _uapi.layout(_uapi.drm_xe_vm_create)
_VM_CREATE_ID = _uapi.layout(_uapi.drm_xe_vm_create, "vm_id")
_VM_DESTROY = _uapi.layout(_uapi.drm_xe_vm_destroy)
_VM_BIND_HEAD = _uapi.layout(_uapi.drm_xe_vm_bind, "extensions", "vm_id", "exec_queue_id", "pad", "num_binds")
_VM_BIND_TAIL = _uapi.layout(_uapi.drm_xe_vm_bind, "pad2", "num_syncs", "syncs", "reserved")
_VM_BIND_VECTOR = _uapi.layout(_uapi.drm_xe_vm_bind, "vector_of_binds")
_BIND_OP = _uapi.layout(_uapi.drm_xe_vm_bind_op, "extensions", "obj", "pat_index", "pad", "obj_offset", "range",
                        "addr", "op", "flags", "prefetch_mem_region_instance", "pad2")
_BIND_OP_SIZE = ctypes.sizeof(_uapi.drm_xe_vm_bind_op)
_BIND_INLINE = _uapi.drm_xe_vm_bind.bind.offset       # the single op held in the struct itself
_ATTACH_DEBUG = _uapi.layout(_uapi.drm_xe_vm_bind_op_ext_attach_debug, "metadata_id", "flags", "cookie")
_ATTACH_DEBUG_SIZE = ctypes.sizeof(_uapi.drm_xe_vm_bind_op_ext_attach_debug)
_SYNC = _uapi.layout(_uapi.drm_xe_sync, "extensions", "type", "flags", "addr", "timeline_value", "reserved")
_SYNC_SIZE = ctypes.sizeof(_uapi.drm_xe_sync)


class Vma:
    __slots__ = ("start", "end", "kind", "bo", "offset", "attach", "task")

    def __init__(self, start: int, end: int, kind: str, bo: Bo | None, offset: int,
                 attach: list[tuple[int, int]], task: "procmem.Task | None" = None) -> None:
        self.task = task                           # userptr: the binder's process (its memory)
        self.start = start
        self.end = end
        self.kind = kind                           # "bo", "userptr" or "null"
        self.bo = bo
        self.offset = offset                       # BO offset or userptr address of `start`
        self.attach = attach                       # [(metadata id, cookie)]


class Vm:
    def __init__(self, file: DeviceFile, vm_id: int, flags: int) -> None:
        self.file = file
        self.id = vm_id
        self.flags = flags
        self.lr = bool(flags & VM_CREATE_LR_MODE)
        self.fault = bool(flags & VM_CREATE_FAULT_MODE)
        self.vmas: list[Vma] = []                  # sorted by start, non-overlapping
        self.alive = True
        self.preempt_queues = 0
        self.gen_slot = -1                         # its read-grant generation counter (xe_eudebug_vm.py)


class XeVmMixin:
    """The `Kernel` methods of xe_vm.py (mixed into `Kernel` in xe_device.py)."""

    # -- xe: VMs ------------------------------------------------------------------------------------------
    def _vm_create(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, flags, _vm_id, r0, r1 = _VM_CREATE.unpack_from(k)
        if ext or r0 or r1:
            raise _fail(E.EINVAL, "VM_CREATE: extensions/reserved")
        if flags & ~(VM_CREATE_SCRATCH_PAGE | VM_CREATE_LR_MODE | VM_CREATE_FAULT_MODE):
            raise _fail(E.EINVAL, "VM_CREATE: flags")
        if flags & VM_CREATE_SCRATCH_PAGE and flags & VM_CREATE_FAULT_MODE:
            raise _fail(E.EINVAL, "VM_CREATE: scratch page with fault mode")
        if flags & VM_CREATE_FAULT_MODE and not flags & VM_CREATE_LR_MODE:
            raise _fail(E.EINVAL, "VM_CREATE: fault mode needs LR mode")
        dev = file.device
        with self._reading(dev):
            vm_id = _lowest_free(file.vms)
            vm = Vm(file, vm_id, flags)
            vm.gen_slot = self._vm_gens.alloc()
            file.vms[vm_id] = vm
            _VM_CREATE_ID.pack_into(k, _VM_CREATE_ID.offset, vm_id)
            conn = self._conn_for(file)
            if conn is not None and vm.lr:
                self._vm_event(conn, vm, True)
        return 0

    def _vm_destroy(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        vm_id, pad, r0, r1 = _VM_DESTROY.unpack_from(k)
        if pad or r0 or r1:
            raise _fail(E.EINVAL, "VM_DESTROY: pad/reserved")
        dev = file.device
        with self._reading(dev):
            vm = file.vms.get(vm_id)
            if vm is None:
                raise _fail(E.ENOENT, "VM_DESTROY: vm_id")
            if vm.preempt_queues:
                raise _fail(E.EBUSY, "VM_DESTROY: exec queues still attached")
            conn = self._conn_for(file)
            if conn is not None and vm.lr:
                self._vm_event(conn, vm, False)
            del file.vms[vm_id]
            self._vm_teardown(vm)
        return 0

    def _vm_teardown(self, vm: Vm) -> None:
        self._vm_gens.free(vm.gen_slot)            # read grants of this VM are void
        vm.gen_slot = -1
        vm.alive = False
        for vma in vm.vmas:
            if vma.bo is not None:
                vma.bo.refs -= 1
                self._bo_put(vma.bo)
        vm.vmas = []

    # -- xe: VM_BIND -----------------------------------------------------------------------------------------
    def _vm_bind(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, vm_id, q_id, pad, num_binds = _VM_BIND_HEAD.unpack_from(k)
        pad2, num_syncs, syncs_ptr, r0, r1 = _VM_BIND_TAIL.unpack_from(k, _VM_BIND_TAIL.offset)
        if ext or pad or pad2 or r0 or r1:
            raise _fail(E.EINVAL, "VM_BIND: extensions/pad/reserved")
        # copy_from_user of the ops (before the lock: the caller is blocked in this call)
        if num_binds > 1:
            vector = _VM_BIND_VECTOR.unpack_from(k, _VM_BIND_VECTOR.offset)[0]
            if num_binds * _BIND_OP_SIZE > MAX_VECTOR_BYTES:
                raise _fail(E.ENOMEM, "VM_BIND: num_binds")
            raw = caller.read(vector, num_binds * _BIND_OP_SIZE)
            ops_raw = [raw[i * _BIND_OP_SIZE:(i + 1) * _BIND_OP_SIZE] for i in range(num_binds)]
        elif num_binds == 1:
            ops_raw = [bytes(k[_BIND_INLINE:_BIND_INLINE + _BIND_OP_SIZE])]
        else:
            ops_raw = []
        ops = []
        for raw_op in ops_raw:
            (op_ext, obj, pat, op_pad, obj_offset, rng, addr, op, flags, region,
             op_pad2) = _BIND_OP.unpack_from(raw_op)
            chain: tuple[list[bytes], int] = ([], 0)
            if op_ext:
                chain = _read_chain(caller, op_ext, _ATTACH_DEBUG_SIZE, _check_base)
            ops.append((obj, pat, obj_offset, rng, addr, op, flags, region, chain))
        # syncs: read as the kernel parses them, stopping at the first unreadable one
        syncs_raw: list[bytes] = []
        sync_fault = 0
        if num_syncs:
            if num_syncs * _SYNC_SIZE > MAX_VECTOR_BYTES:
                sync_fault = E.ENOMEM
            else:
                for i in range(num_syncs):
                    try:
                        syncs_raw.append(caller.read(syncs_ptr + i * _SYNC_SIZE, _SYNC_SIZE))
                    except KernelError as exc:
                        sync_fault = exc.errno
                        break
        fence_write: tuple[int, bytes] | None = None
        with self._lock:                           # a bind is applied after its in-fences signal
            wait_fences(self._lock, self._fence_cv, xe_sync.in_fences(file, syncs_raw))
        dev = file.device
        with self._reading(dev):
            fence_write = self._vm_bind_locked(file, caller, vm_id, q_id, num_binds, ops,
                                               num_syncs, syncs_raw, sync_fault)
        if fence_write is not None:
            try:
                caller.write(*fence_write)
            except KernelError:
                log.debug("user fence address %#x not writable", fence_write[0])
            self._fences_written()
        return 0

    def _vm_bind_locked(self, file: DeviceFile, caller: Caller, vm_id: int, q_id: int, num_binds: int,
                        ops: list[tuple], num_syncs: int, syncs_raw: list[bytes],
                        sync_fault: int) -> tuple[int, bytes] | None:
        # per-op argument checks (vm_bind_ioctl_check_args)
        attach_lists: list[list[tuple[int, int]]] = []
        pat_entries = file.device.pat_entries
        for obj, pat, obj_offset, rng, addr, op, flags, region, (exts, chain_err) in ops:
            is_null = bool(flags & BIND_FLAG_NULL)
            if pat >= pat_entries:
                raise _fail(E.EINVAL, f"VM_BIND: pat_index {pat} (the device has {pat_entries})")
            coh = XE2_PAT_COH[pat]
            if coh == PAT_COH_RESERVED:
                raise _fail(E.EINVAL, f"VM_BIND: pat_index {pat} is a reserved entry")
            if op == OP_MAP_USERPTR and coh == PAT_COH_NONE:
                raise _fail(E.EINVAL, f"VM_BIND: userptr with non-coherent pat_index {pat}")
            if (op > OP_PREFETCH or flags & ~BIND_SUPPORTED_FLAGS or (obj and is_null)
                    or (obj_offset and is_null) or (op != OP_MAP and is_null)
                    or (not obj and op == OP_MAP and not is_null) or (not obj and op == OP_UNMAP_ALL)
                    or (addr and op == OP_UNMAP_ALL) or (rng and op == OP_UNMAP_ALL)
                    or (obj and op == OP_MAP_USERPTR) or (obj and op == OP_PREFETCH)
                    or (region and op != OP_PREFETCH) or (obj and op == OP_UNMAP)
                    or (op == OP_PREFETCH and not (1 << region) & file.device.mem_region_mask)):
                raise _fail(E.EINVAL, "VM_BIND: op/flags/obj combination")
            if obj_offset & (PAGE - 1) or addr & (PAGE - 1) or rng & (PAGE - 1) or (not rng and op != OP_UNMAP_ALL):
                raise _fail(E.EINVAL, "VM_BIND: alignment/range")
            attach: list[tuple[int, int]] = []
            for ext in exts:
                md_id, ext_flags, cookie = _ATTACH_DEBUG.unpack_from(ext, _ATTACH_DEBUG.offset)
                if op not in (OP_MAP, OP_MAP_USERPTR) or ext_flags:
                    raise _fail(E.EINVAL, "VM_BIND: ATTACH_DEBUG op/flags")
                md = file.metadata.get(md_id & 0xFFFFFFFF)
                if md is None:
                    raise _fail(E.ENOENT, "VM_BIND: ATTACH_DEBUG metadata_id")
                attach.append((md.id, cookie))
            if chain_err:
                raise _fail(chain_err, "VM_BIND: extension chain")
            attach_lists.append(attach)
        if q_id:
            q = file.queues.get(q_id)
            if q is None:
                raise _fail(E.ENOENT, "VM_BIND: exec_queue_id")
            if q.engine_class != CLASS_VM_BIND:
                raise _fail(E.EINVAL, "VM_BIND: not a bind queue")
        vm = file.vms.get(vm_id)
        if vm is None:
            raise _fail(E.EINVAL, "VM_BIND: vm_id")
        if not vm.alive:
            raise _fail(E.ENOENT, "VM_BIND: vm closed")
        for _obj, _pat, _off, rng, addr, _op, *_rest in ops:
            if rng > VM_SIZE or addr > VM_SIZE - rng:
                raise _fail(E.EINVAL, "VM_BIND: range beyond the VM")
        bos: list[Bo | None] = []
        for obj, _pat, obj_offset, rng, _addr, op, *_rest in ops:
            bo = None
            if obj:
                bo = file.bos.get(obj)
                if bo is None:
                    raise _fail(E.ENOENT, "VM_BIND: obj")
                if rng > bo.size or obj_offset > bo.size - rng:
                    raise _fail(E.EINVAL, "VM_BIND: range beyond the BO")
                if bo.vm is not None and bo.vm is not vm:
                    raise _fail(E.EINVAL, "VM_BIND: BO private to another VM")
                if XE2_PAT_COH[_pat] == PAT_COH_NONE and bo.cpu_caching == CPU_CACHING_WB:
                    raise _fail(E.EINVAL, f"VM_BIND: WB-cached BO with non-coherent pat_index {_pat}")
            bos.append(bo)
        # bind start: the VM_BIND seqno is drawn now (before the syncs are parsed)
        conn = self._conn_for(file) if vm.lr else None
        bind_seqno = conn.next_seqno() if conn is not None else 0
        fence: UserFence | None = None
        out_syncs: list[xe_sync.SyncEntry] = []
        for raw in syncs_raw:                      # xe_sync_entry_parse, one entry at a time
            _s_ext, s_type, s_flags, s_addr, s_value, s_r0, s_r1 = _SYNC.unpack_from(raw)
            if s_flags & ~SYNC_FLAG_SIGNAL or s_r0 or s_r1:
                raise _fail(E.EINVAL, "VM_BIND: sync flags/reserved")
            if s_type in (SYNC_SYNCOBJ, SYNC_TIMELINE_SYNCOBJ):
                if s_flags & SYNC_FLAG_SIGNAL and vm.lr:
                    raise _fail(E.EOPNOTSUPP, "VM_BIND: dma-fence sync on an LR VM")
                if s_type == SYNC_SYNCOBJ and s_addr >> 32:
                    raise _fail(E.EINVAL, "VM_BIND: syncobj handle")
                if s_type == SYNC_TIMELINE_SYNCOBJ and not s_value:
                    raise _fail(E.EINVAL, "VM_BIND: timeline point 0")
                out_syncs.append(xe_sync.parse(file, raw, lr=vm.lr, what="VM_BIND"))
                continue
            if s_type != SYNC_USER_FENCE:
                raise _fail(E.EINVAL, "VM_BIND: sync type")
            if num_binds == 0:
                raise _fail(E.EOPNOTSUPP, "VM_BIND: user fence on a bind without ops")
            if not s_flags & SYNC_FLAG_SIGNAL:
                raise _fail(E.EOPNOTSUPP, "VM_BIND: user fence without SIGNAL")
            if s_addr & 7:
                raise _fail(E.EINVAL, "VM_BIND: user fence address alignment")
            if not _access_ok(s_addr, 8):
                raise _fail(E.EFAULT, "VM_BIND: user fence address")
            if fence is not None:
                raise _fail(E.EINVAL, "VM_BIND: more than one user fence")
            fence = UserFence(procmem.task_of(int(caller.pid)), s_addr, s_value)
        if sync_fault:
            raise _fail(sync_fault, "VM_BIND: syncs")
        if out_syncs:                              # binds complete at once: signalled now
            done = signaled_stub()
            for entry in out_syncs:
                xe_sync.signal(entry, done)
            self._fences_written()
        if num_binds == 0:
            return self._fence_now(fence)          # "nothing to do": fences signalled, success
        # execute the ops
        binder = procmem.task_of(int(caller.pid)) if any(o[5] == OP_MAP_USERPTR for o in ops) else None
        did_something = False
        op_events: list[tuple[int, int, int, list[tuple[int, int]]]] = []  # (flags, addr, range, attach)
        for (obj, _pat, obj_offset, rng, addr, op, flags, _region, _c), bo, attach in zip(ops, bos, attach_lists):
            if op == OP_MAP or op == OP_MAP_USERPTR:
                self._unmap_range(vm, addr, addr + rng)
                kind = "null" if flags & BIND_FLAG_NULL else ("userptr" if op == OP_MAP_USERPTR else "bo")
                # a userptr maps the binder's memory, whoever opened the DRM file
                task = binder if kind == "userptr" else None
                self._insert_vma(vm, Vma(addr, addr + rng, kind, bo, obj_offset, list(attach), task))
                if bo is not None:
                    bo.refs += 1
                did_something = True
                op_events.append((F_CREATE, addr, rng, attach))
            elif op == OP_UNMAP:
                did_something |= self._unmap_range(vm, addr, addr + rng)
                op_events.append((F_DESTROY, addr, rng, []))
            elif op == OP_UNMAP_ALL:
                removed = [v for v in vm.vmas if v.bo is bo]
                for v in removed:
                    self._unmap_range(vm, v.start, v.end)
                did_something |= bool(removed)
                op_events.append((F_DESTROY, 0, 0, []))
            else:  # PREFETCH: no state change, no event
                did_something |= any(v.start < addr + rng and v.end > addr for v in vm.vmas)
        if not did_something:
            return self._fence_now(fence)
        if conn is None or conn.status != 1:
            return self._fence_now(fence)
        vh = conn.vms.find(vm)
        ch = conn.clients.find(file)
        if vh is None or ch is None:
            self._detach(conn, -E.ENOENT)
            return self._fence_now(fence)
        events: list[bytes] = []
        for ev_flags, addr, rng, attach in op_events:
            op_seqno = conn.next_seqno()
            events.append(_event(EV_VM_BIND_OP, ev_flags, op_seqno,
                                 EV_VM_BIND_OP_PAYLOAD.pack(bind_seqno, len(attach), addr, rng)))
            for md_id, cookie in attach:
                md = file.metadata.get(md_id)
                mh = conn.metadata.find(md) if md is not None else None
                events.append(_event(EV_VM_BIND_OP_METADATA, F_CREATE, conn.next_seqno(),
                                     EV_VM_BIND_OP_METADATA_PAYLOAD.pack(op_seqno, mh or 0, cookie)))
        if op_events:
            bind = _event(EV_VM_BIND, F_STATE_CHANGE, bind_seqno,
                          EV_VM_BIND_PAYLOAD.pack(ch, vh, VM_BIND_FLAG_UFENCE if fence else 0, len(op_events)))
            for ev in [bind] + events:
                if not self._queue(conn, ev):
                    return self._fence_now(fence)
        if fence is None:
            return None
        useqno = conn.next_seqno()
        if conn.status == 1 and self._queue(conn, _event(EV_VM_BIND_UFENCE, F_CREATE | F_NEED_ACK, useqno,
                                                         EV_VM_BIND_UFENCE_PAYLOAD.pack(bind_seqno))):
            if conn.status == 1:
                conn.fences[useqno] = fence
                return None
        return self._fence_now(fence)

    @staticmethod
    def _fence_now(fence: UserFence | None) -> tuple[int, bytes] | None:
        return None if fence is None else (fence.addr, struct.pack("<Q", fence.value))

    def _insert_vma(self, vm: Vm, vma: Vma) -> None:
        self._vm_changed(vm)
        i = 0
        while i < len(vm.vmas) and vm.vmas[i].start < vma.start:
            i += 1
        vm.vmas.insert(i, vma)

    def _unmap_range(self, vm: Vm, start: int, end: int) -> bool:
        """Remove [start, end) from the VM, splitting VMAs that straddle it.  The list is
        replaced, never edited: an engine's VM view (xe_exec.py) relies on that."""
        out: list[Vma] = []
        changed = False
        for v in vm.vmas:
            if v.end <= start or v.start >= end:
                out.append(v)
                continue
            if not changed:
                self._vm_changed(vm)               # before the change: read grants are void
            changed = True
            if v.start < start:
                out.append(Vma(v.start, start, v.kind, v.bo, v.offset, list(v.attach), v.task))
                if v.bo is not None:
                    v.bo.refs += 1
            if v.end > end:
                out.append(Vma(end, v.end, v.kind, v.bo, v.offset + (end - v.start) if v.kind != "null" else 0,
                               list(v.attach), v.task))
                if v.bo is not None:
                    v.bo.refs += 1
            if v.bo is not None:
                v.bo.refs -= 1
                self._bo_put(v.bo)
        out.sort(key=lambda v: v.start)
        vm.vmas = out
        return changed
