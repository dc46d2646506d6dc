"""The debugger's VM file (VM_OPEN and the VM fd's pread/pwrite, in the driver's xe_eudebug.c).

Read grants (the preload library's fast VM-fd pread, docs/simulator.md "VM-fd read grants"): a
pread of a VM fd that starts inside a BO mapping may also grant the caller that mapping, so that
its later preads inside it are a copy from its own mapping of the BO instead of a call.  A grant
is only as good as the VM's mapping list it was taken from, so every VM has a generation counter
in `VmGenerations`, a memfd the server maps and hands out read-only: the model bumps a VM's
counter (kernel lock held) before anything changes which BO backs which address of that VM or
whether the VM fd's handle still names it (a bind that maps or unmaps, VM destroy, the DRM file's
release), and a grant records the counter's value under the same lock.  A reader that finds the
value unchanged before and after its copy read what this module's `_vm_access` would have read at
that moment; one that finds it changed drops the grant and makes the call.
"""

from __future__ import annotations

import errno as E
import mmap
import os
import stat
from typing import TYPE_CHECKING, NamedTuple

from ... import uapi as _uapi
from .xe_device_types import File, VM_ACCESS_CHUNK, VM_SYNC_MAX_TIMEOUT_NSECS, _fail

_VM_OPEN = _uapi.layout(_uapi.drm_xe_eudebug_vm_open)

VM_GEN_SLOTS = 4096          # VMs with a generation counter at once (others get no grants)
GRANT_WINDOW = 64 << 20      # the largest part of a BO mapping one grant covers (aligned windows)

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


class Grant(NamedTuple):
    """A read grant (see the module docstring): preads in [start, end) of the VM may read the BO's
    memory at `offset + (va - start)` of `fd` (a read-only descriptor of the BO's memfd, the
    receiver's to close) while generation counter `slot` still holds `gen`."""

    fd: int
    start: int
    end: int
    offset: int
    slot: int
    gen: int


class VmGenerations:
    """One 64-bit generation counter per live VM, in a memfd (created on first use) that the server
    maps and hands to callers read-only.  Every method runs with the kernel lock held.  A counter
    only grows: a slot freed by a destroyed VM and reused keeps counting, so a grant of the old VM
    never matches again."""

    def __init__(self) -> None:
        self.fd = -1
        self._map: mmap.mmap | None = None
        self._words: memoryview | None = None
        self._free: list[int] = []
        self._broken = False

    def _setup(self) -> bool:
        if self._words is not None:
            return True
        if self._broken:
            return False
        try:
            fd = os.memfd_create("xe-vm-generations", os.MFD_CLOEXEC)
        except OSError:
            self._broken = True
            return False
        try:
            os.ftruncate(fd, VM_GEN_SLOTS * 8)
            self._map = mmap.mmap(fd, VM_GEN_SLOTS * 8)
        except (OSError, ValueError):
            os.close(fd)
            self._broken = True
            return False
        self.fd = fd
        self._words = memoryview(self._map).cast("Q")
        self._free = list(range(VM_GEN_SLOTS - 1, -1, -1))
        return True

    def alloc(self) -> int:
        """A counter for a new VM, or -1 (none left: that VM's preads are always calls)."""
        if not self._setup() or not self._free:
            return -1
        return self._free.pop()

    def bump(self, slot: int) -> None:
        if slot >= 0 and self._words is not None:
            self._words[slot] += 1

    def value(self, slot: int) -> int:
        assert self._words is not None
        return self._words[slot]

    def free(self, slot: int) -> None:
        if slot >= 0:
            self.bump(slot)
            self._free.append(slot)

    def reopen(self) -> int:
        """A read-only descriptor of the counters for a caller (the receiver closes it), or -1."""
        if not self._setup():
            return -1
        return _reopen_readonly(self.fd)

    def close(self) -> None:
        if self._words is not None:
            self._words.release()
            self._words = None
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _reopen_readonly(fd: int) -> int:
    """A new read-only open file of the memfd behind `fd` (the same memory), or -1."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


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

    def _vm_changed(self, vm: Vm) -> None:
        """Called (kernel lock held) before a change of what backs `vm`'s addresses or of its
        handle: read grants taken before it are void."""
        self._vm_gens.bump(vm.gen_slot)

    def vm_generations_fd(self) -> int:
        """A read-only descriptor of the VM generation counters (the caller closes it), or -1."""
        with self._lock:
            return self._vm_gens.reopen()

    def vm_grant(self, file: File, offset: int) -> Grant | None:
        """A read grant of the BO mapping holding GPU VA `offset` of VM file `file` (the window of
        at most GRANT_WINDOW bytes around it), or None: not a VM file, not a BO mapping, no
        generation counter for the VM, or the VM fd would fail."""
        if not isinstance(file, VmFile) or offset < 0:
            return None
        with self._lock:
            vm = file.conn.vms.lookup(file.vm_handle)
            if vm is not file.vm or not vm.alive or vm.gen_slot < 0:
                return None
            vma = next((v for v in vm.vmas if v.start <= offset < v.end), None)
            if vma is None or vma.kind != "bo" or vma.bo is None or vma.bo.memfd < 0:
                return None
            start = max(vma.start, offset & ~(GRANT_WINDOW - 1))
            end = min(vma.end, start + GRANT_WINDOW)
            bo_offset = vma.offset + (start - vma.start)
            try:  # a mapping past the memfd's end would fault (SIGBUS) in the reader
                if os.fstat(vma.bo.memfd).st_size < bo_offset + (end - start):
                    return None
            except OSError:
                return None
            fd = _reopen_readonly(vma.bo.memfd)     # under the lock: the memfd is still the BO's
            if fd < 0:
                return None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(E.EBADF, "not a memfd")
            except OSError:
                os.close(fd)
                return None
            return Grant(fd, start, end, bo_offset, vm.gen_slot, self._vm_gens.value(vm.gen_slot))
