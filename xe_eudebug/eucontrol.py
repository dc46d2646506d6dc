"""EU control and attention: what IGT's ``xe_eudebug_online`` builds on, above the uapi.

* :func:`eu_control` / :func:`try_eu_control`: ``DRM_XE_EUDEBUG_IOCTL_EU_CONTROL`` with one of
  the commands INTERRUPT_ALL, STOPPED, RESUME (IGT's ``__eu_ctl``/``eu_ctl``); the shortcuts
  :func:`interrupt_all`, :func:`stopped`, :func:`resume`.  A failure raises ``OSError`` whose
  message names the ioctl, the command, the handles, the bitmask size and the errno.
  ``Debugger`` exposes the same calls on its connection (``d.interrupt_all(...)`` ...).
* :class:`Topology`: the GT topology of ``DRM_XE_DEVICE_QUERY_GT_TOPOLOGY`` (DSS masks, EUs per
  DSS) and the threads per EU of the GuC hwconfig table, and from them the size of an
  attention bitmask as IGT's ``query_attention_bitmask_size`` computes it, with the position of
  a (DSS, EU, thread) in it.
* Bitmask helpers over attention bitmasks (bytes): :func:`count_set_bits`,
  :func:`xor_count`, :func:`only_nth_set_bit`, :func:`only_first_set_bit`,
  :func:`first_dss_only` (IGT's resume-dss: the first non-zero 64-bit word).
* :func:`exec_queue_of_attention`: the EXEC_QUEUE create event of a log an attention belongs
  to, as IGT's ``match_attention_with_exec_queue`` finds it.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import struct
from dataclasses import dataclass
from typing import Any, Iterable

from . import uapi as _uapi
from .client import try_retry_ioctl

__all__ = [
    "INTERRUPT_ALL", "STOPPED", "RESUME", "COMMAND_NAMES", "EuControl", "try_eu_control",
    "eu_control", "interrupt_all", "stopped", "resume", "Topology", "HWCONFIG_NUM_THREADS_PER_EU",
    "count_set_bits", "xor_count", "only_nth_set_bit", "only_first_set_bit", "first_dss_only",
    "exec_queue_of_attention",
]

INTERRUPT_ALL = _uapi.DRM_XE_EUDEBUG_EU_CONTROL_CMD_INTERRUPT_ALL
STOPPED = _uapi.DRM_XE_EUDEBUG_EU_CONTROL_CMD_STOPPED
RESUME = _uapi.DRM_XE_EUDEBUG_EU_CONTROL_CMD_RESUME
#: IGT's td_ctl_cmd_to_str
COMMAND_NAMES = {INTERRUPT_ALL: "interrupt all", STOPPED: "stopped", RESUME: "resume"}
_IOCTL = "DRM_XE_EUDEBUG_IOCTL_EU_CONTROL"

#: enum intel_hwconfig (IGT lib/intel_hwconfig_types.h): INTEL_HWCONFIG_NUM_THREADS_PER_EU
HWCONFIG_NUM_THREADS_PER_EU = 15
#: IGT's default when the hwconfig table does not say
DEFAULT_THREADS_PER_EU = 8


@dataclass(frozen=True)
class EuControl:
    """The outcome of one EU_CONTROL: ``ret`` 0 or ``-errno``; on success the kernel's
    ``seqno``, the ``bitmask_size`` it wrote back and the ``bitmask`` bytes (STOPPED fills
    them)."""

    ret: int
    seqno: int = 0
    bitmask_size: int = 0
    bitmask: bytes = b""


def _describe(cmd: int, client: int, exec_queue: int, lrc: int, size: int) -> str:
    name = COMMAND_NAMES.get(cmd, "unknown command")
    return (f"{_IOCTL} cmd={cmd} ({name}) client_handle={client} exec_queue_handle={exec_queue} "
            f"lrc_handle={lrc} bitmask_size={size}")


def try_eu_control(debug_fd: int, client: int, exec_queue: int, lrc: int, cmd: int,
                   bitmask: bytes | bytearray | None = None, bitmask_size: int | None = None,
                   *, flags: int = 0) -> EuControl:
    """IGT's ``__eu_ctl``: EU_CONTROL on ``debug_fd``, retried on EINTR/EAGAIN as
    ``igt_ioctl`` does.  ``bitmask`` is what the buffer holds (``None``: a NULL pointer when
    ``bitmask_size`` is 0, else a zeroed buffer of that size); ``bitmask_size`` defaults to
    ``len(bitmask)`` and may differ from it (argument checks).  The client handle is truncated
    to 32 bits, as IGT's ``lower_32_bits``.  Returns an :class:`EuControl` (``ret`` < 0 on
    failure), never raises for the ioctl."""
    data = bytes(bitmask) if bitmask is not None else b""
    size = len(data) if bitmask_size is None else bitmask_size
    buf = None
    if bitmask is not None or size:
        buf = ctypes.create_string_buffer(data, max(len(data), size, 1))
    arg = _uapi.drm_xe_eudebug_eu_control()
    arg.client_handle = client & 0xFFFFFFFF
    arg.cmd = cmd & 0xFFFFFFFF
    arg.flags = flags
    arg.exec_queue_handle = exec_queue & 0xFFFFFFFFFFFFFFFF
    arg.lrc_handle = lrc & 0xFFFFFFFFFFFFFFFF
    arg.bitmask_size = size & 0xFFFFFFFF
    arg.bitmask_ptr = ctypes.addressof(buf) if buf is not None else 0
    ret = try_retry_ioctl(debug_fd, _uapi.DRM_XE_EUDEBUG_IOCTL_EU_CONTROL, arg)
    if ret < 0:
        return EuControl(ret)
    out_size = int(arg.bitmask_size)
    raw = buf.raw if buf is not None else b""
    return EuControl(0, int(arg.seqno), out_size, raw[:min(out_size, len(raw))])


def eu_control(debug_fd: int, client: int, exec_queue: int, lrc: int, cmd: int,
               bitmask: bytes | bytearray | None = None, bitmask_size: int | None = None) -> EuControl:
    """IGT's ``eu_ctl``: :func:`try_eu_control` that must succeed; raises ``OSError`` naming
    the ioctl, the command, the handles, the bitmask size and the errno."""
    r = try_eu_control(debug_fd, client, exec_queue, lrc, cmd, bitmask, bitmask_size)
    if r.ret < 0:
        size = len(bitmask or b"") if bitmask_size is None else bitmask_size
        err = -r.ret
        raise OSError(err, f"{_describe(cmd, client, exec_queue, lrc, size)}: "
                           f"{_errno.errorcode.get(err, err)} ({os.strerror(err)})")
    return r


def interrupt_all(debug_fd: int, client: int, exec_queue: int, lrc: int) -> int:
    """INTERRUPT_ALL (no bitmask); returns the kernel's seqno for the command."""
    return eu_control(debug_fd, client, exec_queue, lrc, INTERRUPT_ALL).seqno


def stopped(debug_fd: int, client: int, exec_queue: int, lrc: int, bitmask_size: int) -> tuple[int, bytes]:
    """STOPPED into a ``bitmask_size`` buffer: ``(seqno, bitmask of the stopped threads)``;
    raises ``OSError`` also when the kernel writes back another size than asked, as IGT's
    resume trigger asserts."""
    r = eu_control(debug_fd, client, exec_queue, lrc, STOPPED, bytes(bitmask_size))
    if r.bitmask_size != bitmask_size:
        raise OSError(_errno.EINVAL, f"{_describe(STOPPED, client, exec_queue, lrc, bitmask_size)}: "
                                     f"the kernel wrote back bitmask_size {r.bitmask_size}")
    return r.seqno, r.bitmask


def resume(debug_fd: int, client: int, exec_queue: int, lrc: int, bitmask: bytes | bytearray) -> int:
    """RESUME of the threads set in ``bitmask``; returns the kernel's seqno."""
    return eu_control(debug_fd, client, exec_queue, lrc, RESUME, bitmask).seqno


# ------------------------------------------------------------------------------------------------
# Topology and attention bitmasks


def parse_topology(data: bytes) -> list[tuple[int, int, bytes]]:
    """The ``struct drm_xe_query_topology_mask`` records of a GT_TOPOLOGY answer:
    ``[(gt_id, type, mask bytes), ...]``."""
    out, pos = [], 0
    while len(data) - pos >= 8:
        gt, kind, n = struct.unpack_from("<HHI", data, pos)
        out.append((gt, kind, data[pos + 8:pos + 8 + n]))
        pos += 8 + n
    return out


def hwconfig_value(data: bytes, attribute: int) -> list[int] | None:
    """The value (u32 words) of ``attribute`` in a GuC hwconfig table (key, length, value[length]
    records), as IGT's ``xe_hwconfig_lookup_value``; ``None`` when absent."""
    words = struct.unpack(f"<{len(data) // 4}I", data[:len(data) // 4 * 4])
    pos = 0
    while pos + 2 < len(words):
        key, n = words[pos], words[pos + 1]
        if key == attribute:
            return list(words[pos + 2:pos + 2 + n])
        pos += 2 + n
    return None


def _bits(mask: bytes) -> list[int]:
    return [8 * i + b for i, byte in enumerate(mask) for b in range(8) if byte >> b & 1]


@dataclass(frozen=True)
class Topology:
    """One GT's EU topology.  ``dss``: indices of the DSSes enabled for geometry or compute;
    ``eus_per_dss``: EUs set in the EU-per-DSS mask; ``threads_per_eu``; ``lockstep``: pairs
    of EUs share one attention bit (graphics versions before 12.60 other than PVC; IGT's
    ``intel_gen_has_lockstep_eus``)."""

    dss: tuple[int, ...]
    eus_per_dss: int
    threads_per_eu: int = DEFAULT_THREADS_PER_EU
    lockstep: bool = False

    @classmethod
    def from_query(cls, topology: bytes, gt: int = 0, hwconfig: bytes = b"",
                   lockstep: bool = False) -> "Topology":
        """From the bytes of GT_TOPOLOGY (and of HWCONFIG) answers; raises ``ValueError`` when a
        mask IGT requires is missing or the two DSS masks differ in size."""
        masks = {kind: mask for g, kind, mask in parse_topology(topology) if g == gt}
        g_dss = masks.get(_uapi.DRM_XE_TOPO_DSS_GEOMETRY)
        c_dss = masks.get(_uapi.DRM_XE_TOPO_DSS_COMPUTE)
        eu = masks.get(_uapi.DRM_XE_TOPO_EU_PER_DSS, masks.get(_uapi.DRM_XE_TOPO_SIMD16_EU_PER_DSS))
        if g_dss is None or c_dss is None or eu is None:
            raise ValueError(f"GT_TOPOLOGY of gt {gt}: geometry DSS, compute DSS and EU-per-DSS "
                             f"masks are required, got types {sorted(masks)}")
        if len(g_dss) != len(c_dss):
            raise ValueError(f"GT_TOPOLOGY of gt {gt}: DSS masks of {len(g_dss)} and {len(c_dss)} bytes")
        dss = _bits(bytes(a | b for a, b in zip(g_dss, c_dss)))
        threads = hwconfig_value(hwconfig, HWCONFIG_NUM_THREADS_PER_EU) if hwconfig else None
        if threads is not None and len(threads) != 1:
            raise ValueError(f"hwconfig NUM_THREADS_PER_EU has {len(threads)} words, 1 expected")
        return cls(tuple(dss), len(_bits(eu)), threads[0] if threads else DEFAULT_THREADS_PER_EU,
                   lockstep)

    @classmethod
    def query(cls, fd: int, gt: int = 0) -> "Topology":
        """Query the device: GT_TOPOLOGY, HWCONFIG (for the threads per EU) and the graphics
        version (for lockstep EUs)."""
        from .device import _query, device_id, graphics_version

        try:
            hw = _query(fd, _uapi.DRM_XE_DEVICE_QUERY_HWCONFIG)
        except OSError:
            hw = b""
        major, minor, _ = graphics_version(fd)
        pvc = device_id(fd) in _pvc_ids()
        lockstep = not (pvc or (major, minor) == (12, 60) or major >= 20)
        return cls.from_query(_query(fd, _uapi.DRM_XE_DEVICE_QUERY_GT_TOPOLOGY), gt, hw, lockstep)

    @property
    def bytes_per_eu(self) -> int:
        return -(-self.threads_per_eu // 8)

    @property
    def eu_slots(self) -> int:
        """EU positions per DSS in the bitmask (lockstep pairs share one)."""
        return self.eus_per_dss // 2 if self.lockstep else self.eus_per_dss

    @property
    def bytes_per_dss(self) -> int:
        return self.eu_slots * self.bytes_per_eu

    @property
    def attention_bitmask_size(self) -> int:
        """IGT's ``query_attention_bitmask_size``: (last DSS + 1) x EUs per DSS (halved with
        lockstep EUs) x ceil(threads per EU / 8) bytes."""
        if not self.dss:
            return 0
        return (max(self.dss) + 1) * self.bytes_per_dss

    def position(self, dss: int, eu: int, thread: int) -> tuple[int, int]:
        """(byte, bit) of thread ``thread`` of EU ``eu`` of DSS ``dss`` in an attention bitmask:
        DSS after DSS, EU after EU within one, one bit per thread."""
        if dss not in self.dss or not 0 <= eu < self.eus_per_dss or not 0 <= thread < self.threads_per_eu:
            raise ValueError(f"no thread {thread} of EU {eu} of DSS {dss} in {self}")
        slot = eu // 2 if self.lockstep else eu
        byte = dss * self.bytes_per_dss + slot * self.bytes_per_eu + thread // 8
        return byte, thread % 8

    def threads(self, bitmask: bytes) -> list[tuple[int, int, int]]:
        """The (dss, eu, thread) set in ``bitmask`` (with lockstep EUs, the even EU of a pair)."""
        out = []
        for bit in _bits(bitmask):
            byte, b = divmod(bit, 8)
            dss, rest = divmod(byte, self.bytes_per_dss)
            slot, tb = divmod(rest, self.bytes_per_eu)
            out.append((dss, 2 * slot if self.lockstep else slot, tb * 8 + b))
        return out

    def bitmask(self, threads: Iterable[tuple[int, int, int]]) -> bytes:
        """An attention bitmask with the given (dss, eu, thread) set."""
        out = bytearray(self.attention_bitmask_size)
        for dss, eu, thread in threads:
            byte, bit = self.position(dss, eu, thread)
            out[byte] |= 1 << bit
        return bytes(out)


def _pvc_ids() -> frozenset[int]:
    from .client import PVC_DEVICE_IDS

    return PVC_DEVICE_IDS


def count_set_bits(bitmask: bytes | bytearray) -> int:
    """Threads set in a bitmask (IGT's ``count_set_bits``; its size must be a multiple of 4)."""
    if len(bitmask) % 4:
        raise ValueError(f"bitmask of {len(bitmask)} bytes: not a multiple of 4")
    return sum(bin(b).count("1") for b in bitmask)


def xor_count(a: bytes | bytearray, b: bytes | bytearray) -> int:
    """Bits that differ between two bitmasks of one size (IGT's ``eu_attentions_xor_count``)."""
    if len(a) != len(b):
        raise ValueError(f"bitmasks of {len(a)} and {len(b)} bytes")
    return sum(bin(x ^ y).count("1") for x, y in zip(a, b))


def only_nth_set_bit(bitmask: bytes | bytearray, n: int) -> bytes:
    """A copy of ``bitmask`` with only its ``n``-th set bit (1-based, lowest first) left
    (IGT's ``only_nth_set_bit``); all zero when fewer than ``n`` bits are set."""
    out = bytearray(len(bitmask))
    count = 0
    for i, byte in enumerate(bitmask):
        for j in range(8):
            if byte >> j & 1:
                count += 1
                if count == n:
                    out[i] |= 1 << j
                    return bytes(out)
    return bytes(out)


def only_first_set_bit(bitmask: bytes | bytearray) -> bytes:
    return only_nth_set_bit(bitmask, 1)


def first_dss_only(bitmask: bytes | bytearray) -> bytes:
    """IGT's resume-dss selection: only the first non-zero 64-bit word of ``bitmask`` (one DSS
    of 8 EUs x 8 threads) kept, the rest cleared."""
    out = bytearray(len(bitmask))
    for i in range(0, len(bitmask) - len(bitmask) % 8, 8):
        if any(bitmask[i:i + 8]):
            out[i:i + 8] = bitmask[i:i + 8]
            break
    return bytes(out)


def exec_queue_of_attention(log: Iterable[Any], attention: Any) -> Any | None:
    """IGT's ``match_attention_with_exec_queue``: the EXEC_QUEUE CREATE event of ``log`` (sorted
    by seqno) whose client, exec queue and one of whose LRC handles are the attention's, created
    before it and destroyed (by a DESTROY with identical fields) after it; ``None`` if none."""
    from .events import EventFlags, EventType

    events = list(log)
    for i, e in enumerate(events):
        if e.type != EventType.EXEC_QUEUE or e.flags != EventFlags.CREATE:
            continue
        if e.exec_queue_handle != attention.exec_queue_handle or e.client_handle != attention.client_handle:
            continue
        if attention.lrc_handle not in list(e.lrc_handle)[:e.width]:
            continue
        if attention.seqno < e.seqno:
            break
        destroy = None
        for d in events[i:]:
            if (d.type == EventType.EXEC_QUEUE and d.flags == EventFlags.DESTROY
                    and bytes(d)[24:] == bytes(e)[24:]):
                destroy = d
        if destroy is None or attention.seqno > destroy.seqno:
            continue
        return e
    return None
