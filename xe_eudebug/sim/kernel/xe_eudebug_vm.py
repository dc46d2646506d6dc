"""The debugger's VM file (VM_OPEN and the VM fd's pread/pwrite, in the driver's xe_eudebug.c)."""

from __future__ import annotations

import errno as E
import os
from typing import TYPE_CHECKING

from ... import uapi as _uapi
from .xe_device_types import File, VM_ACCESS_CHUNK, VM_SYNC_MAX_TIMEOUT_NSECS, _fail

_VM_OPEN = _uapi.layout(_uapi.drm_xe_eudebug_vm_open)

if TYPE_CHECKING:
    from .xe_device_types import Caller
    from .xe_eudebug import Connection
    from .xe_vm import Vm


class VmFile(File):
    """The file VM_OPEN returns ([xe_eudebug.vm]): close-on-exec, read-write."""

    kind = "vm"
    cloexec = True

    def __init__(self, conn: Connection, vm: Vm, client_handle: int, vm_handle: int, timeout: int) -> None:
        super().__init__()
        self.conn = conn
        self.vm = vm
        self.client_handle = client_handle
        self.vm_handle = vm_handle
        self.timeout_ns = timeout
        self.pos = 0
        self.index = conn.device.index


class XeEudebugVmMixin:
    """The `Kernel` methods of xe_eudebug_vm.py (mixed into `Kernel` in xe_device.py)."""

    def _vm_open(self, conn: Connection, caller: Caller, arg: bytes) -> tuple[File, bytes]:
        _ext, ch, vh, flags, timeout = _VM_OPEN.unpack_from(arg)
        if flags:
            raise _fail(E.EINVAL, "VM_OPEN: flags")
        if timeout > VM_SYNC_MAX_TIMEOUT_NSECS:
            raise _fail(E.EINVAL, "VM_OPEN: timeout_ns")
        with self._lock:
            if conn.status != 1:
                raise _fail(E.ENOTCONN, "VM_OPEN: detached")
            client = conn.clients.lookup(ch)
            if client is None or client.released:
                raise _fail(E.EINVAL, "VM_OPEN: client_handle")
            vm = conn.vms.lookup(vh)
            if vm is None or not vm.alive:
                raise _fail(E.EINVAL, "VM_OPEN: vm_handle")
            return VmFile(conn, vm, ch & 0xFFFFFFFF, vh & 0xFFFFFFFF, timeout), b""

    # -- vm fd -------------------------------------------------------------------------------------
    def _vm_access(self, file: VmFile, offset: int, count: int, data: bytes | None) -> bytes:
        """pread (data None) or pwrite of `count` bytes at GPU VA `offset` (§6.2).  Returns the
        bytes read, or for a write the prefix of `data` written."""
        if offset < 0:
            raise _fail(E.EINVAL, "vm access: negative offset")
        with self._lock:
            conn = file.conn
            vm = conn.vms.lookup(file.vm_handle)
            if vm is not file.vm or not vm.alive:
                raise _fail(E.EINVAL, "vm access: VM handle no longer valid")
            if count <= 0:
                return b""
            out: list[bytes] = []
            done = 0
            pos = offset
            err = 0
            while done < count:
                vma = next((v for v in vm.vmas if v.start <= pos < v.end), None)
                if vma is None or vma.kind == "null":
                    err = E.EINVAL
                    break
                n = min(count - done, vma.end - pos, VM_ACCESS_CHUNK)
                off = vma.offset + (pos - vma.start)
                try:
                    if vma.kind == "bo":
                        assert vma.bo is not None
                        if data is None:
                            chunk = os.pread(vma.bo.memfd, n, off)
                            chunk = chunk.ljust(n, b"\0")
                            out.append(chunk)
                        else:
                            os.pwrite(vma.bo.memfd, data[done:done + n], off)
                    else:
                        # the binder's memory, reached only while that process lives
                        task = vma.task if vma.task is not None else vm.file.owner_task
                        if data is None:
                            out.append(task.read(off, n))
                        else:
                            task.write(off, data[done:done + n])
                except OSError as exc:
                    err = E.EFAULT if exc.errno in (E.EFAULT, E.ESRCH, E.EPERM) else (exc.errno or E.EIO)
                    break
                done += n
                pos += n
            if done == 0 and err:
                raise _fail(err, "vm access")
            return b"".join(out) if data is None else data[:done]
