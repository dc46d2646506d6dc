"""Run a gpgpu shader from a client, as IGT's ``gpgpu_shader_exec`` on an LR-mode ``intel_bb``
does (lib/intel_batchbuffer.c ``__xe_lr_bb_exec``): the batch is written into its BO, the batch
and target BOs are bound at fixed addresses in one bind array with a user fence (the debugger
sees VM_BIND with UFENCE and must ack it), then one EXEC signals a user fence in the batch BO
(8 bytes after the batch) and :meth:`GpgpuExec.wait` waits for it.

Nothing here is logged in a client's event log: binds of batches are filtered out of the online
tests' compares, as in IGT.  Every wait has a timeout; ioctl failures raise ``OSError`` naming
the ioctl.
"""

from __future__ import annotations

import ctypes
import errno
import struct
import time
from typing import Any

from . import ioctl as _seam
from . import uapi as _uapi
from .client import Client, retry_ioctl, try_retry_ioctl, user_fence_sync, wb_pat_index
from .gpgpu import Target, gpgpu_batch
from .isa.gpgpu import GpgpuShader

__all__ = ["GpgpuExec", "USER_FENCE_VALUE", "CS_PREFETCH_SIZE", "bb_size_for"]

#: IGT lib/intel_batchbuffer.c
USER_FENCE_VALUE = 0xDEADBEEFDEADBEEF
#: IGT ``xe_cs_prefetch_size``
CS_PREFETCH_SIZE = 4096
PAGE = 4096


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def bb_size_for(shader: GpgpuShader) -> int:
    """IGT's ``get_bb_size``: the shader's size rounded up to a page, plus the CS prefetch."""
    return _align(len(shader.code) * 4, PAGE) + CS_PREFETCH_SIZE


class GpgpuExec:
    """One batch BO at ``bb_address`` (``bb_size`` bytes plus the CS prefetch, as intel_bb
    sizes it) and one target BO at ``target.address`` in ``vm``, run on ``exec_queue``.

    ``target_bytes`` is the size IGT's intel_buf reports (stride x height); the BO is rounded up
    to a page.  ``placement`` is a memory-region mask for both BOs."""

    def __init__(self, fd: int, vm: int, exec_queue: int, bb_address: int, bb_size: int,
                 target: Target, *, placement: int = 1, target_placement: int | None = None) -> None:
        self.fd, self.vm, self.exec_queue = fd, vm, exec_queue
        self.bb_address, self.bb_size = bb_address, bb_size
        self.bb_bo_size = _align(bb_size + CS_PREFETCH_SIZE, PAGE)
        self.target = target
        self.target_bytes = target.pitch * target.height
        self.target_bo_size = _align(self.target_bytes, PAGE)
        self.target_bo = Client.bo_create(fd, self.target_bo_size,
                                          placement if target_placement is None else target_placement)
        self.bb_bo = Client.bo_create(fd, self.bb_bo_size, placement)
        self._maps: dict[int, Any] = {}
        self._sync_offset = -1
        self._bound = False

    # -- memory -----------------------------------------------------------------------------------
    def _map(self, bo: int, size: int) -> Any:
        if bo not in self._maps:
            arg = _uapi.drm_xe_gem_mmap_offset()
            arg.handle = bo
            retry_ioctl(self.fd, _uapi.DRM_IOCTL_XE_GEM_MMAP_OFFSET, arg)
            self._maps[bo] = _seam.mmap(self.fd, size, int(arg.offset))
        return self._maps[bo]

    def read_target(self) -> bytes:
        """The target surface as the CPU sees it now (``target_bytes`` bytes)."""
        return bytes(self._map(self.target_bo, self.target_bo_size)[:self.target_bytes])

    def target_u32(self) -> list[int]:
        data = self.read_target()
        return list(struct.unpack(f"<{len(data) // 4}I", data[:len(data) // 4 * 4]))

    # -- running ------------------------------------------------------------------------------------
    def _bind(self, timeout_s: float) -> None:
        cell = ctypes.c_uint64(0)
        sync = (_uapi.drm_xe_sync * 1)(user_fence_sync(ctypes.addressof(cell), USER_FENCE_VALUE))
        ops = (_uapi.drm_xe_vm_bind_op * 2)()
        pat = wb_pat_index(self.fd)
        for slot, (bo, addr, size) in zip(ops, ((self.bb_bo, self.bb_address, self.bb_bo_size),
                                                (self.target_bo, self.target.address, self.target_bo_size))):
            slot.obj, slot.addr, slot.range = bo, addr, size
            slot.op = _uapi.DRM_XE_VM_BIND_OP_MAP
            slot.pat_index = pat
        arg = _uapi.drm_xe_vm_bind()
        arg.vm_id = self.vm
        arg.num_binds = 2
        arg.vector_of_binds = ctypes.addressof(ops)
        arg.num_syncs = 1
        arg.syncs = ctypes.addressof(sync)
        retry_ioctl(self.fd, _uapi.DRM_IOCTL_XE_VM_BIND, arg)
        self._bound = True
        self._wait_fence(ctypes.addressof(cell), 0, timeout_s, "VM_BIND")

    def _wait_fence(self, addr: int, exec_queue: int, timeout_s: float, what: str) -> int:
        """Wait for the user fence at CPU address ``addr`` in 1 s slices (a debugger may hold a
        bind's fence until it acks); 0, or ``-EIO`` when the workload ended by a reset."""
        deadline = time.monotonic() + timeout_s
        while True:
            arg = _uapi.drm_xe_wait_user_fence()
            arg.addr = addr
            arg.op = _uapi.DRM_XE_UFENCE_WAIT_OP_EQ
            arg.value = USER_FENCE_VALUE
            arg.mask = 0xFFFFFFFFFFFFFFFF
            arg.timeout = 1_000_000_000
            arg.exec_queue_id = exec_queue
            ret = try_retry_ioctl(self.fd, _uapi.DRM_IOCTL_XE_WAIT_USER_FENCE, arg)
            if ret in (0, -errno.EIO):
                return ret
            if ret != -errno.ETIME:
                raise OSError(-ret, f"DRM_IOCTL_XE_WAIT_USER_FENCE for the {what} fence at {addr:#x}: "
                                    f"{errno.errorcode.get(-ret, -ret)}")
            if time.monotonic() >= deadline:
                raise OSError(errno.ETIME, f"DRM_IOCTL_XE_WAIT_USER_FENCE: the {what} fence did not "
                                           f"signal within {timeout_s:.0f} s")

    def submit(self, shader: GpgpuShader, sip: GpgpuShader | None, x_dim: int, y_dim: int, *,
               bind_timeout: float = 60.0) -> None:
        """Write the batch (``gpgpu_batch``) into the batch BO, bind both BOs (waiting for the
        bind's user fence, which a debugger holds until it acks) and EXEC it once."""
        batch = gpgpu_batch(self.bb_address, self.target, x_dim, y_dim, shader, sip)
        self._sync_offset = _align(len(batch), 8)
        if self._sync_offset + 16 > self.bb_bo_size:
            raise ValueError(f"batch of {len(batch)} bytes does not fit the {self.bb_bo_size}-byte batch BO")
        m = self._map(self.bb_bo, self.bb_bo_size)
        m[:len(batch)] = batch
        m[self._sync_offset:self._sync_offset + 16] = bytes(16)
        if not self._bound:
            self._bind(bind_timeout)
        sync = (_uapi.drm_xe_sync * 1)(user_fence_sync(self.bb_address + self._sync_offset + 8, USER_FENCE_VALUE))
        arg = _uapi.drm_xe_exec()
        arg.exec_queue_id = self.exec_queue
        arg.num_syncs = 1
        arg.syncs = ctypes.addressof(sync)
        arg.address = self.bb_address
        arg.num_batch_buffer = 1
        retry_ioctl(self.fd, _uapi.DRM_IOCTL_XE_EXEC, arg)

    def wait(self, timeout: float = 60.0) -> int:
        """IGT's ``intel_bb_sync``: wait for the EXEC's user fence (0, or ``-EIO`` for a workload
        ended forcibly, which IGT counts as finished); raises ``OSError`` after ``timeout`` s."""
        if self._sync_offset < 0:
            raise RuntimeError("GpgpuExec.wait before submit")
        m = self._map(self.bb_bo, self.bb_bo_size)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m)) + self._sync_offset + 8
        return self._wait_fence(addr, self.exec_queue, timeout, "EXEC")

    def run(self, shader: GpgpuShader, sip: GpgpuShader | None, x_dim: int, y_dim: int,
            timeout: float = 60.0) -> int:
        self.submit(shader, sip, x_dim, y_dim)
        return self.wait(timeout)

    def close(self) -> None:
        """Unbind both BOs and close them (errors of a VM already gone are ignored)."""
        for m in self._maps.values():
            try:
                m.close()
            except (BufferError, ValueError):
                pass
        self._maps.clear()
        if self._bound:
            for addr, size in ((self.bb_address, self.bb_bo_size), (self.target.address, self.target_bo_size)):
                arg = _uapi.drm_xe_vm_bind()
                arg.vm_id = self.vm
                arg.num_binds = 1
                arg.bind.op = _uapi.DRM_XE_VM_BIND_OP_UNMAP
                arg.bind.addr, arg.bind.range = addr, size
                try_retry_ioctl(self.fd, _uapi.DRM_IOCTL_XE_VM_BIND, arg)
            self._bound = False
        for bo in (self.bb_bo, self.target_bo):
            try:
                Client.bo_close(self.fd, bo)
            except OSError:
                pass

    def __enter__(self) -> "GpgpuExec":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
