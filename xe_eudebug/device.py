"""Finding and opening an Xe device (a real render node or the simulator), the eudebug toggle,
and the device queries the framework needs.

Device selection (``XE_EUDEBUG_DEVICE`` or the `device` argument):

* a path such as ``/dev/dri/renderD128``: that node;
* ``sim`` or ``sim:N``: simulated device N (0 by default) of the simulator named by
  ``XE_EUDEBUG_SIM_SOCKET``, else of the per-user instance, which is started on demand;
* unset: the first render node whose driver (``DRM_IOCTL_VERSION``) is ``xe``, else the
  simulator, announced once per process with one line on stderr.

Everything here reaches the device through the system-call seam (`xe_eudebug.ioctl`), so the
same code serves hardware and the simulator; only the sysfs toggle and re-opening need to know
which one an fd is.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import logging
import os
import re
import stat
import sys
import threading
from typing import Any

from . import ioctl as _seam
from .sim import port as _port
from .uapi import drm as _drm
from .uapi import xe_drm as _xe

log = logging.getLogger(__name__)

__all__ = [
    "DEVICE_ENV",
    "open_device",
    "enable_eudebug",
    "eudebug_enabled",
    "reopen",
    "device_name",
    "driver_name",
    "is_simulated",
    "query_engines",
    "query_config",
    "min_alignment",
    "query_gts",
    "query_mem_regions",
    "has_vram",
    "system_memory",
    "vram_memory",
    "vram_if_possible",
    "graphics_version",
    "device_id",
    "list_devices",
]

DEVICE_ENV = "XE_EUDEBUG_DEVICE"

_announce_lock = threading.Lock()
_announced = False


def _parse_sim(spec: str) -> int | None:
    """Device index of a ``sim`` / ``sim:N`` selector, or None for anything else."""
    if spec == "sim":
        return 0
    m = re.fullmatch(r"sim:(\d+)", spec)
    return int(m.group(1)) if m else None


def _render_nodes() -> list[str]:
    def number(path: str) -> int:
        digits = re.sub(r"\D", "", os.path.basename(path))
        return int(digits) if digits else 0

    return sorted(glob.glob("/dev/dri/renderD*"), key=number)


def open_device(device: str | None = None) -> int:
    """Open an Xe device and return a plain int fd (close-on-exec).

    A selection that names no usable device raises ``OSError`` (``ENOENT`` for a missing node
    or simulated device, ``ENODEV`` for a node of another driver or none, ``EACCES``) or
    ``ValueError`` (a malformed ``sim`` selector), with a one-line message naming the value and
    what to do."""
    from_env = device is None
    spec = device if device is not None else os.environ.get(DEVICE_ENV) or None
    if spec is not None:
        what = f"{DEVICE_ENV}={spec}" if from_env else f"device {spec!r}"
        index = _parse_sim(spec)
        if index is not None:
            try:
                return _port.open_device(index)
            except OSError as exc:
                raise _sim_error(exc, what, index) from None
        if spec.startswith("sim"):
            raise ValueError(f"{what}: bad simulated device selector (use 'sim' or 'sim:N')")
        try:
            fd = os.open(spec, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise _open_error(exc, what) from None
        try:
            name = driver_name(fd)
        except OSError as exc:
            os.close(fd)
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            raise OSError(errno.ENODEV, f"{what}: not a DRM device (DRM_IOCTL_VERSION failed with {code}); "
                                        f"{_selection_hint()}") from None
        if name != "xe":
            os.close(fd)
            raise OSError(errno.ENODEV, f"{what}: driver is {name!r}, not 'xe'; {_selection_hint()}")
        return fd
    for node in _render_nodes():
        try:
            fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            log.debug("cannot open %s: %s", node, exc)
            continue
        try:
            if driver_name(fd) == "xe":
                return fd
        except OSError as exc:
            log.debug("DRM_IOCTL_VERSION on %s failed: %s", node, exc)
        os.close(fd)
    _announce_simulator()
    return _port.open_device(0)


def _selection_hint() -> str:
    """What to set instead: the Xe render nodes present, the simulator, or unset."""
    nodes = ", ".join(_render_nodes()) or "none on this machine"
    return (f"set {DEVICE_ENV} to an Xe render node (render nodes: {nodes}), to 'sim' for the "
            f"simulator, or unset it")


def _open_error(exc: OSError, what: str) -> OSError:
    if exc.errno == errno.ENOENT:
        return OSError(errno.ENOENT, f"{what}: no such device node; {_selection_hint()}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OSError(exc.errno, f"{what}: permission denied; add your user to the node's group "
                                  f"(usually 'render') or {_selection_hint()}")
    return OSError(exc.errno, f"{what}: {exc.strerror}; {_selection_hint()}")


def _sim_error(exc: OSError, what: str, index: int) -> OSError:
    try:
        count = int(_port.server_info().get("devices", 1))
    except (OSError, ValueError):
        path, may_start = _port.selected_socket_path()
        if may_start:
            return exc
        return OSError(exc.errno, f"{what}: no simulator answers at {path} (XE_EUDEBUG_SIM_SOCKET names "
                                  f"it, so none is started); run one there (xe-eudebug sim --socket {path}) "
                                  f"or unset XE_EUDEBUG_SIM_SOCKET")
    if exc.errno != errno.ENOENT:
        return exc
    have = "sim:0" if count == 1 else f"sim:0 to sim:{count - 1}"
    return OSError(errno.ENOENT, f"{what}: the simulator has {count} device{'s' if count != 1 else ''} "
                                 f"({have}); select one of them, or run a simulator with more "
                                 f"(xe-eudebug sim --devices {index + 1})")


def _announce_simulator() -> None:
    global _announced
    with _announce_lock:
        if _announced:
            return
        _announced = True
    sys.stderr.write(f"xe_eudebug: no Xe render node found; using the simulator (set {DEVICE_ENV} to choose)\n")
    sys.stderr.flush()


def _is_sim(fd: int) -> bool:
    st = os.fstat(fd)
    if stat.S_ISCHR(st.st_mode):
        return False
    if _port.server_pid_of(fd) is not None:
        return True
    raise OSError(errno.ENOTTY, f"fd {fd} is neither a DRM device node nor a simulated device")


def is_simulated(fd: int) -> bool:
    """Diagnostics only: whether `fd` is served by the simulator.  Framework code must not
    branch on it (everything goes through the seam)."""
    try:
        return _is_sim(fd)
    except OSError:
        return False


def driver_name(fd: int) -> str:
    """The DRM driver name of a device fd (``DRM_IOCTL_VERSION``)."""
    v = _drm.drm_version()
    _seam.ioctl(fd, _drm.DRM_IOCTL_VERSION, v)
    size = int(v.name_len)
    if size <= 0:
        return ""
    name = ctypes.create_string_buffer(size + 1)
    v2 = _drm.drm_version()
    v2.name_len = size
    v2.name = ctypes.addressof(name)
    _seam.ioctl(fd, _drm.DRM_IOCTL_VERSION, v2)
    return name.raw[: min(size, int(v2.name_len))].decode(errors="replace")


def _sysfs_enable_path(fd: int) -> str:
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode):
        raise OSError(errno.ENOTTY, f"fd {fd} is not a DRM device node")
    return f"/sys/dev/char/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/device/enable_eudebug"


def _parse_bool(text: str, path: str) -> bool:
    value = text.strip()
    if value in ("1", "Y", "y"):
        return True
    if value in ("0", "N", "n"):
        return False
    raise OSError(errno.EINVAL, f"{path}: unexpected content {text!r}")


#: sysfs directory of each engine class below ``tileN/gtN/engines/`` (xe_hw_engine_class_sysfs.c)
ENGINE_CLASS_SYSFS = {_xe.DRM_XE_ENGINE_CLASS_RENDER: "rcs", _xe.DRM_XE_ENGINE_CLASS_COPY: "bcs",
                      _xe.DRM_XE_ENGINE_CLASS_VIDEO_DECODE: "vcs",
                      _xe.DRM_XE_ENGINE_CLASS_VIDEO_ENHANCE: "vecs",
                      _xe.DRM_XE_ENGINE_CLASS_COMPUTE: "ccs"}


def _engine_class_path(gt_id: int, engine_class: int, name: str) -> str:
    return f"tile{gt_id}/gt{gt_id}/engines/{ENGINE_CLASS_SYSFS[engine_class]}/{name}"


def engine_class_property(fd: int, gt_id: int, engine_class: int, name: str) -> int:
    """Scheduling property `name` of an engine class of GT `gt_id` (``job_timeout_ms``,
    ``preempt_timeout_us``, ``preempt_timeout_max``, ...; IGT's
    ``xe_sysfs_engine_class_get_property``), from the simulator or the device's sysfs directory.
    OSError names the attribute when it cannot be read."""
    rel = _engine_class_path(gt_id, engine_class, name)
    if _is_sim(fd):
        text = bytes(_port.sysfs_of(fd, rel)).decode()   # type: ignore[arg-type]
    else:
        path = os.path.join(os.path.dirname(_sysfs_enable_path(fd)), rel)
        with open(path) as f:
            text = f.read()
    try:
        return int(text.strip())
    except ValueError:
        raise OSError(errno.EINVAL, f"{rel}: unexpected content {text!r}") from None


def set_engine_class_property(fd: int, gt_id: int, engine_class: int, name: str, value: int) -> int:
    """Write scheduling property `name` of an engine class of GT `gt_id` and read it back (IGT's
    ``xe_sysfs_engine_class_set_property``); returns the value it had before.  OSError names
    the attribute, the value and the errno when the driver refuses it (EINVAL out of bounds)."""
    old = engine_class_property(fd, gt_id, engine_class, name)
    rel = _engine_class_path(gt_id, engine_class, name)
    data = b"%d" % value
    try:
        if _is_sim(fd):
            _port.sysfs_of(fd, rel, data)
        else:
            with open(os.path.join(os.path.dirname(_sysfs_enable_path(fd)), rel), "wb") as f:
                f.write(data)
    except OSError as exc:
        raise OSError(exc.errno, f"{rel}: writing {value}: {os.strerror(exc.errno or 0)}") from None
    now = engine_class_property(fd, gt_id, engine_class, name)
    if now != value:
        raise OSError(errno.EIO, f"{rel}: wrote {value}, reads back {now}")
    return old


def engine_job_timeout_ms(fd: int, gt_id: int, engine_class: int) -> int:
    """The ``job_timeout_ms`` sysfs attribute of an engine class of GT `gt_id` (IGT's
    ``xe_sysfs_engine_open`` + ``igt_sysfs_get_u64``)."""
    return engine_class_property(fd, gt_id, engine_class, "job_timeout_ms")


#: Where debugfs is mounted (IGT's igt_debugfs_mount looks here first)
DEBUGFS_ROOT = "/sys/kernel/debug"


def _debugfs_gt_dir(fd: int, gt_id: int) -> str:
    """The device's debugfs directory of GT `gt_id` on hardware: ``dri/<PCI address>/gtN``
    (kernels since 6.9), else ``dri/<minor>/gtN`` of the device's primary minor (IGT's
    igt_debugfs_path: the ``dri/N`` whose ``name`` names the device's PCI address)."""
    device_dir = os.path.realpath(os.path.dirname(_sysfs_enable_path(fd)))
    pci = os.path.basename(device_dir)
    candidates = [os.path.join(DEBUGFS_ROOT, "dri", pci)]
    for index in range(64):
        base = os.path.join(DEBUGFS_ROOT, "dri", str(index))
        try:
            with open(os.path.join(base, "name")) as f:
                if f"dev={pci}" in f.read():
                    candidates.append(base)
        except OSError:
            continue
    for base in candidates:
        gt_dir = os.path.join(base, f"gt{gt_id}")
        if os.path.isdir(gt_dir):
            return gt_dir
    raise OSError(errno.ENOENT, f"no debugfs directory of GT {gt_id} of {pci} below {DEBUGFS_ROOT}/dri "
                                f"(is debugfs mounted and readable?)")


def force_gt_reset(fd: int, gt_id: int, sync: bool = False) -> None:
    """Reset GT `gt_id` of the device behind `fd` through debugfs ``gtN/force_reset`` (IGT's
    ``xe_force_gt_reset_async``), or ``force_reset_sync`` with `sync` (returns once the reset
    is done: ``xe_force_gt_reset_sync``).  Jobs running on that GT, and stopped EU threads, are
    killed; their exec queues are banned.  Needs root on hardware; the simulator serves it."""
    name = "force_reset_sync" if sync else "force_reset"
    if _is_sim(fd):
        where = f"debugfs/gt{gt_id}/{name}"
        try:
            written = int(_port.sysfs_of(fd, where, b"1"))  # type: ignore[arg-type]
        except OSError as exc:
            raise OSError(exc.errno, f"{where}: writing 1: {os.strerror(exc.errno or 0)}") from None
    else:
        where = os.path.join(_debugfs_gt_dir(fd, gt_id), name)
        try:
            with open(where, "wb", buffering=0) as f:
                written = f.write(b"1") or 0
        except OSError as exc:
            raise OSError(exc.errno, f"{where}: writing 1: {os.strerror(exc.errno or 0)}") from None
    if written != 1:
        raise OSError(errno.EIO, f"{where}: wrote {written} of 1 byte")


def eudebug_enabled(fd: int) -> bool:
    """Whether eudebug is enabled on the device behind `fd`."""
    if _is_sim(fd):
        return _port.get_enabled(fd)
    path = _sysfs_enable_path(fd)
    with open(path) as f:
        return _parse_bool(f.read(), path)


def enable_eudebug(fd: int, enable: bool) -> bool:
    """Set the device's eudebug enable state; returns the previous state.

    Raises OSError(EBUSY) when disabling while a debugger is attached (the kernel refuses).
    As IGT's ``__xe_eudebug_enable_getset``, the value is read back after the write and must
    be the one written (``AssertionError`` otherwise)."""
    path = ""
    if _is_sim(fd):
        old = _port.set_enabled(fd, bool(enable))
    else:
        path = _sysfs_enable_path(fd)
        with open(path) as f:
            old = _parse_bool(f.read(), path)
        try:
            with open(path, "w") as f:
                f.write("1" if enable else "0")
        except OSError as exc:
            raise OSError(exc.errno, f"{path}: writing {int(bool(enable))}: {exc.strerror}") from None
    now = eudebug_enabled(fd)
    if now != bool(enable):
        where = path or f"simulated device {device_name(fd)}"
        raise AssertionError(f"enable_eudebug of {where}: wrote {int(bool(enable))}, reads back {int(now)}")
    return old


def reopen(fd: int) -> int:
    """A new DRM file (a second open) on the same device as `fd`."""
    if _is_sim(fd):
        return _port.reopen(fd)
    path = os.readlink(f"/proc/self/fd/{fd}")
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def device_name(fd: int) -> str:
    """A human-readable name of the device: its node path, or ``sim:N``."""
    if _is_sim(fd):
        index, _kind = _port.file_info(fd)
        return f"sim:{index}"
    return os.readlink(f"/proc/self/fd/{fd}")


# ------------------------------------------------------------------------------------------------
# Queries (DRM_IOCTL_XE_DEVICE_QUERY)

def _query(fd: int, query: int) -> bytes:
    q = _xe.drm_xe_device_query()
    q.query = query
    _seam.ioctl(fd, _xe.DRM_IOCTL_XE_DEVICE_QUERY, q)
    size = int(q.size)
    if size == 0:
        return b""
    buf = ctypes.create_string_buffer(size)
    q.data = ctypes.addressof(buf)
    _seam.ioctl(fd, _xe.DRM_IOCTL_XE_DEVICE_QUERY, q)
    return buf.raw[: int(q.size)]


def _query_list(fd: int, query: int, item: Any) -> list[Any]:
    """A query answered as a u32 count, a u32 pad and `count` structs of type `item`."""
    data = _query(fd, query)
    if len(data) < 8:
        return []
    count = int.from_bytes(data[0:4], "little")
    stride = ctypes.sizeof(item)
    return [item.from_buffer_copy(data, 8 + i * stride) for i in range(count)
            if 8 + (i + 1) * stride <= len(data)]


def query_engines(fd: int) -> list[Any]:
    """The device's engines as ``drm_xe_engine_class_instance`` structs."""
    data = _query(fd, _xe.DRM_XE_DEVICE_QUERY_ENGINES)
    if len(data) < 8:
        return []
    count = int.from_bytes(data[0:4], "little")
    stride = ctypes.sizeof(_xe.drm_xe_engine)
    out = []
    for i in range(count):
        off = 8 + i * stride
        if off + ctypes.sizeof(_xe.drm_xe_engine_class_instance) > len(data):
            break
        out.append(_xe.drm_xe_engine_class_instance.from_buffer_copy(data, off))
    return out


_CONFIG_KEYS = {
    "DRM_XE_QUERY_CONFIG_REV_AND_DEVICE_ID": "rev_and_device_id",
    "DRM_XE_QUERY_CONFIG_FLAGS": "flags",
    "DRM_XE_QUERY_CONFIG_MIN_ALIGNMENT": "min_alignment",
    "DRM_XE_QUERY_CONFIG_VA_BITS": "va_bits",
    "DRM_XE_QUERY_CONFIG_MAX_EXEC_QUEUE_PRIORITY": "max_exec_queue_priority",
}


def query_config(fd: int) -> dict[str, int]:
    """The device's configuration parameters, keyed by the lower-case suffix of their
    ``DRM_XE_QUERY_CONFIG_*`` names (``min_alignment``, ``va_bits``, ...)."""
    data = _query(fd, _xe.DRM_XE_DEVICE_QUERY_CONFIG)
    if len(data) < 8:
        return {}
    count = int.from_bytes(data[0:4], "little")
    values = [int.from_bytes(data[8 + 8 * i: 16 + 8 * i], "little") for i in range(count) if 16 + 8 * i <= len(data)]
    out: dict[str, int] = {}
    for macro, key in _CONFIG_KEYS.items():
        index = getattr(_xe, macro, None)
        if index is not None and index < len(values):
            out[key] = values[index]
    return out


def min_alignment(fd: int) -> int:
    """Minimum alignment of buffer objects and VM addresses on the device."""
    return query_config(fd).get("min_alignment", 4096) or 4096


def device_id(fd: int) -> int:
    """The PCI device id (low 16 bits of ``DRM_XE_QUERY_CONFIG_REV_AND_DEVICE_ID``)."""
    return query_config(fd).get("rev_and_device_id", 0) & 0xFFFF


def query_gts(fd: int) -> list[Any]:
    """The device's GTs as ``drm_xe_gt`` structs (``DRM_XE_DEVICE_QUERY_GT_LIST``)."""
    return _query_list(fd, _xe.DRM_XE_DEVICE_QUERY_GT_LIST, _xe.drm_xe_gt)


def graphics_version(fd: int) -> tuple[int, int, int]:
    """The graphics IP version (major, minor, revision) of the device's first main GT, as the
    kernel reports it in the GT list.  The kernel reads it from the GMD_ID register, which
    exists from Meteor Lake on; older platforms (Ponte Vecchio, DG2, Tiger Lake ...) report
    (0, 0, 0)."""
    for gt in query_gts(fd):
        if gt.type == _xe.DRM_XE_QUERY_GT_TYPE_MAIN:
            return int(gt.ip_ver_major), int(gt.ip_ver_minor), int(gt.ip_ver_rev)
    raise OSError(errno.ENODEV, f"DRM_XE_DEVICE_QUERY_GT_LIST on fd {fd}: no main GT")


def query_mem_regions(fd: int) -> list[Any]:
    """The device's memory regions as ``drm_xe_mem_region`` structs (``QUERY_MEM_REGIONS``):
    system memory first, then each tile's VRAM on a discrete device."""
    return _query_list(fd, _xe.DRM_XE_DEVICE_QUERY_MEM_REGIONS, _xe.drm_xe_mem_region)


def has_vram(fd: int) -> bool:
    """Whether the device has VRAM (``DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM``; IGT ``xe_has_vram``)."""
    return bool(query_config(fd).get("flags", 0) & _xe.DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM)


def system_memory(fd: int) -> int:
    """The placement bit of system memory (IGT ``system_memory``)."""
    return 1 if any(r.mem_class == _xe.DRM_XE_MEM_REGION_CLASS_SYSMEM for r in query_mem_regions(fd)) else 0


def vram_memory(fd: int, gt: int) -> int:
    """The placement bits of the VRAM near GT `gt`, 0 on a device without VRAM (IGT
    ``vram_memory``)."""
    if not has_vram(fd):
        return 0
    for entry in query_gts(fd):
        if entry.gt_id == gt:
            return int(entry.near_mem_regions)
    raise OSError(errno.EINVAL, f"DRM_XE_DEVICE_QUERY_GT_LIST on fd {fd}: no GT {gt}")


def vram_if_possible(fd: int, gt: int) -> int:
    """GT `gt`'s VRAM, else system memory (IGT ``vram_if_possible``): a GEM_CREATE placement."""
    return vram_memory(fd, gt) or system_memory(fd)


# ------------------------------------------------------------------------------------------------
# Listing

def list_devices(include_simulator: bool = True) -> list[dict[str, Any]]:
    """Render nodes with their driver names, and the simulator's devices.

    The simulator is listed only if it is running (this never starts one)."""
    out: list[dict[str, Any]] = []
    for node in _render_nodes():
        entry: dict[str, Any] = {"device": node}
        try:
            fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            entry["error"] = exc.strerror
            out.append(entry)
            continue
        try:
            entry["driver"] = driver_name(fd)
            if entry["driver"] == "xe":
                try:
                    entry["eudebug"] = eudebug_enabled(fd)
                except OSError:
                    entry["eudebug"] = None
        except OSError as exc:
            entry["error"] = exc.strerror
        finally:
            os.close(fd)
        out.append(entry)
    if include_simulator:
        path, may_start = _port.selected_socket_path()
        try:
            info = _port.server_info(path)
        except OSError:
            out.append({"device": "sim", "driver": "xe", "simulated": True, "running": False, "socket": path,
                        "autostart": may_start})
        else:
            for i in range(int(info.get("devices", 1))):
                out.append({"device": f"sim:{i}", "driver": "xe", "simulated": True, "running": True,
                            "socket": path, "pid": info.get("pid")})
    return out
