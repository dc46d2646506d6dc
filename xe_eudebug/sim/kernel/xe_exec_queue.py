"""Exec queues (the driver's xe_exec_queue.c): EXEC_QUEUE_CREATE, EXEC_QUEUE_DESTROY."""

from __future__ import annotations

import ctypes
import errno as E
from typing import TYPE_CHECKING

from ... import uapi as _uapi
from .xe_device_types import (
    CAP_SYS_NICE, CLASS_COMPUTE, CLASS_RENDER, CLASS_VM_BIND, ENGINES, EQ_PROP_COUNT,
    EQ_PROP_EUDEBUG, EQ_PROP_PRIORITY, EQ_PROP_TIMESLICE, EUDEBUG_FLAG_ENABLE,
    HW_ENGINE_MAX_INSTANCE, _check_base, _fail, _has_cap, _lowest_free, _proc_status,
    _read_chain,
)

if TYPE_CHECKING:
    from .xe_device_types import Caller, DeviceFile
    from .xe_vm import Vm

_QUEUE_CREATE = _uapi.layout(_uapi.drm_xe_exec_queue_create)
_QUEUE_CREATE_ID = _uapi.layout(_uapi.drm_xe_exec_queue_create, "exec_queue_id")
_QUEUE_DESTROY = _uapi.layout(_uapi.drm_xe_exec_queue_destroy)
_INSTANCE = _uapi.layout(_uapi.drm_xe_engine_class_instance)
_SET_PROPERTY = _uapi.layout(_uapi.drm_xe_ext_set_property, "property", "pad", "value", "reserved")
_SET_PROPERTY_SIZE = ctypes.sizeof(_uapi.drm_xe_ext_set_property)


class Lrc:
    def __init__(self, queue: "ExecQueue", index: int) -> None:
        self.queue = queue
        self.index = index


class ExecQueue:
    def __init__(self, file: DeviceFile, qid: int, vm: Vm, engine_class: int, width: int,
                 debuggable: bool, engine_instance: int = 0, gt_id: int = 0,
                 job_timeout_ms: int | None = None) -> None:
        self.file = file
        self.id = qid
        self.vm = vm
        self.engine_class = engine_class
        self.engine_instance = engine_instance
        self.gt_id = gt_id
        self.job_timeout_ms = job_timeout_ms   # the class's sysfs value when created (None: config)
        self.width = width
        self.debuggable = debuggable
        self.lrcs = [Lrc(self, i) for i in range(width)]
        self.alive = True


class XeExecQueueMixin:
    """The `Kernel` methods of xe_exec_queue.py (mixed into `Kernel` in xe_device.py)."""

    # -- xe: exec queues ------------------------------------------------------------------------------
    def _exec_queue_create(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, width, num_pl, vm_id, flags, _qid, inst_ptr, r0, r1 = _QUEUE_CREATE.unpack_from(k)
        if flags or r0 or r1:
            raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: flags/reserved")
        n = width * num_pl
        if not n or n > HW_ENGINE_MAX_INSTANCE:
            raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: width * num_placements")
        raw = caller.read(inst_ptr, n * _INSTANCE.size)
        eci = [_INSTANCE.unpack_from(raw, i * _INSTANCE.size) for i in range(n)]
        gt_id = eci[0][2]
        if gt_id >= file.device.gt_count:
            raise _fail(E.EINVAL, f"EXEC_QUEUE_CREATE: gt_id {gt_id} (the device has {file.device.gt_count} GTs)")
        cls = eci[0][0]
        if cls == CLASS_VM_BIND:
            if width != 1 or num_pl != 1 or eci[0][1] != 0:
                raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: bind queue shape")
        else:
            # placements x width: every instance exists, one class, parallel instances consecutive
            for c, inst, gt, _pad in eci:
                if c != cls or gt != gt_id or (c, inst) not in ENGINES:
                    raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: engine instance")
            for p in range(num_pl):
                insts = [eci[w * num_pl + p][1] for w in range(width)]
                if width > 1 and insts != list(range(insts[0], insts[0] + width)):
                    raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: parallel placement")
        chain: tuple[list[bytes], int] = ([], 0)
        if ext:
            chain = _read_chain(caller, ext, _SET_PROPERTY_SIZE, _check_base)
        is_root = _has_cap(_proc_status(int(caller.pid)) or {}, CAP_SYS_NICE)
        dev = file.device
        with self._reading(dev):
            vm = file.vms.get(vm_id)
            if vm is None or not vm.alive:
                raise _fail(E.ENOENT, "EXEC_QUEUE_CREATE: vm_id")
            debuggable = False
            for e in chain[0]:
                prop, e_pad, value, e_r0, e_r1 = _SET_PROPERTY.unpack_from(e, _SET_PROPERTY.offset)
                if prop >= EQ_PROP_COUNT or e_pad or e_r0 or e_r1:
                    raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: set_property")
                if prop == EQ_PROP_PRIORITY:
                    if value > 2:
                        raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: priority")
                    if value == 2 and not is_root:
                        raise _fail(E.EPERM, "EXEC_QUEUE_CREATE: high priority")
                elif prop == EQ_PROP_TIMESLICE:
                    pass
                elif prop == EQ_PROP_EUDEBUG:
                    if cls not in (CLASS_RENDER, CLASS_COMPUTE):
                        raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: EUDEBUG on a non render/compute queue")
                    if value & ~EUDEBUG_FLAG_ENABLE:
                        raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: EUDEBUG flags")
                    if not vm.lr:
                        raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: EUDEBUG needs an LR VM")
                    if not value & EUDEBUG_FLAG_ENABLE:
                        raise _fail(E.EINVAL, "EXEC_QUEUE_CREATE: EUDEBUG value 0")
                    if not dev.enabled:
                        raise _fail(E.EPERM, "EXEC_QUEUE_CREATE: debugging disabled")
                    debuggable = True
                else:
                    raise _fail(E.EINVAL, f"EXEC_QUEUE_CREATE: property {prop} not supported")
            if chain[1]:
                raise _fail(chain[1], "EXEC_QUEUE_CREATE: extension chain")
            qid = _lowest_free(file.queues)
            q = ExecQueue(file, qid, vm, cls, width, debuggable, engine_instance=eci[0][1], gt_id=gt_id,
                          job_timeout_ms=self._sched_prop(dev, gt_id, cls, "job_timeout_ms"))
            file.queues[qid] = q
            if vm.lr and not vm.fault and cls != CLASS_VM_BIND:
                vm.preempt_queues += 1
            _QUEUE_CREATE_ID.pack_into(k, _QUEUE_CREATE_ID.offset, qid)
            conn = self._conn_for(file)
            if conn is not None and debuggable:
                self._queue_event(conn, q, True)
        return 0

    def _exec_queue_destroy(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        qid, pad, r0, r1 = _QUEUE_DESTROY.unpack_from(k)
        if pad or r0 or r1:
            raise _fail(E.EINVAL, "EXEC_QUEUE_DESTROY: pad/reserved")
        dev = file.device
        with self._reading(dev):
            q = file.queues.get(qid)
            if q is None:
                raise _fail(E.ENOENT, "EXEC_QUEUE_DESTROY: exec_queue_id")
            conn = self._conn_for(file)
            if conn is not None and q.debuggable:
                self._queue_event(conn, q, False)
            del file.queues[qid]
            q.alive = False
            self.xe_exec.kill(q)
            if q.vm.lr and not q.vm.fault and q.engine_class != CLASS_VM_BIND:
                q.vm.preempt_queues -= 1
        return 0

    def _exec(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        return self.xe_exec.ioctl(file, caller, k)
