"""The device's sysfs attributes below its PCI directory (the driver's xe_hw_engine_class_sysfs.c
and xe_gt_sysfs.c): ``tileN/gtN/engines/<class>/`` with each engine class's scheduling
properties and their ``.defaults/``.

`sysfs_read` and `sysfs_write` take a path relative to the PCI device's directory
(``tile0/gt0/engines/ccs/job_timeout_ms``); `xe-eudebug run` serves them to C programs through the
preload library, and `attribute_paths` lists them for its umockdev description.  What is written
is honoured: an exec queue takes its engine class's ``job_timeout_ms`` when it is created, as the
kernel's does (``q->sched_props`` copied from ``hwe->eclass->sched_props``).
"""

from __future__ import annotations

import errno as E
from typing import TYPE_CHECKING, Any

from .xe_device_types import (
    CLASS_COMPUTE, CLASS_COPY, CLASS_RENDER, CLASS_VIDEO_DECODE, CLASS_VIDEO_ENHANCE, ENGINES,
    _cfg, _fail,
)

if TYPE_CHECKING:
    from .xe_device_types import Device

#: sysfs directory name of each engine class (xe_hw_engine_class_sysfs.c)
CLASS_DIR = {CLASS_RENDER: "rcs", CLASS_COPY: "bcs", CLASS_VIDEO_DECODE: "vcs",
             CLASS_VIDEO_ENHANCE: "vecs", CLASS_COMPUTE: "ccs"}
_CLASS_OF_DIR = {name: cls for cls, name in CLASS_DIR.items()}

# The kernel's defaults and limits (Kconfig.profile): job timeout in ms, timeslice and preemption
# timeout in us.
JOB_TIMEOUT_MIN, JOB_TIMEOUT_MAX = 1, 10_000
TIMESLICE_US, TIMESLICE_MIN, TIMESLICE_MAX = 1_000, 1, 10_000_000
PREEMPT_TIMEOUT_US, PREEMPT_TIMEOUT_MIN, PREEMPT_TIMEOUT_MAX = 640_000, 1, 10_000_000

# attribute -> (property, its lower bound's property, its upper bound's property); a bound is
# itself checked against the other bound and the kernel's limits (xe_hw_engine_timeout_in_range)
_VALUES = {
    "job_timeout_ms": ("job_timeout_min", "job_timeout_max"),
    "timeslice_duration_us": ("timeslice_duration_min", "timeslice_duration_max"),
    "preempt_timeout_us": ("preempt_timeout_min", "preempt_timeout_max"),
}
_LIMITS = {
    "job_timeout": (JOB_TIMEOUT_MIN, JOB_TIMEOUT_MAX),
    "timeslice_duration": (TIMESLICE_MIN, TIMESLICE_MAX),
    "preempt_timeout": (PREEMPT_TIMEOUT_MIN, PREEMPT_TIMEOUT_MAX),
}
ATTRIBUTES = ("job_timeout_ms", "job_timeout_min", "job_timeout_max",
              "timeslice_duration_us", "timeslice_duration_min", "timeslice_duration_max",
              "preempt_timeout_us", "preempt_timeout_min", "preempt_timeout_max")
_U32_MAX = 0xFFFFFFFF


def default_props(config: Any) -> dict[str, int]:
    """An engine class's properties at probe (hw_engine_init_early): the job timeout is
    `SimConfig.job_timeout_ms` (the kernel's 5000 unless scaled)."""
    job = int(_cfg(config, "job_timeout_ms"))
    return {
        "job_timeout_ms": job, "job_timeout_min": JOB_TIMEOUT_MIN,
        "job_timeout_max": max(JOB_TIMEOUT_MAX, job),
        "timeslice_duration_us": TIMESLICE_US, "timeslice_duration_min": TIMESLICE_MIN,
        "timeslice_duration_max": TIMESLICE_MAX,
        "preempt_timeout_us": PREEMPT_TIMEOUT_US, "preempt_timeout_min": PREEMPT_TIMEOUT_MIN,
        "preempt_timeout_max": PREEMPT_TIMEOUT_MAX,
    }


#: debugfs files of each GT (xe_gt_debugfs.c), below dri/<minor>/gtN/: a write resets the GT
DEBUGFS_ATTRIBUTES = ("force_reset", "force_reset_sync")
RESET_SYNC_WAIT = 10.0                  # seconds force_reset_sync waits for the reset to finish


def attribute_paths(tiles: int) -> list[str]:
    """Every attribute path this module serves on a device of `tiles` tiles (one GT each), below
    the device's directory: what `xe-eudebug run`'s umockdev description creates."""
    out = []
    for gt in range(tiles):
        for cls in sorted({c for c, _i in ENGINES}):
            base = f"tile{gt}/gt{gt}/engines/{CLASS_DIR[cls]}"
            out += [f"{base}/{name}" for name in ATTRIBUTES]
            out += [f"{base}/.defaults/{name}" for name in ATTRIBUTES]
    return out


def _kstrtou32(text: bytes) -> int:
    """The kernel's kstrtou32(buf, 0): one optional trailing newline, base prefix 0x/0, no sign
    but '+'; a malformed number is EINVAL, one over 32 bits ERANGE."""
    raw = text[:-1] if text.endswith(b"\n") else text
    s = raw.decode("ascii", "replace")
    if s.startswith("+"):
        s = s[1:]
    if not s or not all(c.isalnum() for c in s):
        raise _fail(E.EINVAL, f"sysfs: {text!r} is not a number")
    try:
        if s[:2].lower() == "0x":
            value = int(s[2:], 16)
        elif s.startswith("0") and len(s) > 1:
            value = int(s[1:], 8)
        else:
            value = int(s, 10)
    except ValueError:
        raise _fail(E.EINVAL, f"sysfs: {text!r} is not a number") from None
    if value > _U32_MAX:
        raise _fail(E.ERANGE, f"sysfs: {value} does not fit in 32 bits")
    return value


class XeSysfsMixin:
    """The `Kernel` methods of xe_sysfs.py (mixed into `Kernel` in xe_device.py)."""

    def _sched_props(self, dev: Device, gt: int, cls: int) -> dict[str, int]:
        props = dev.sched_props.get((gt, cls))
        if props is None:
            props = dev.sched_props[(gt, cls)] = default_props(self.config)  # type: ignore[attr-defined]
        return props

    def _sched_prop(self, dev: Device, gt: int, cls: int, name: str) -> int:
        return self._sched_props(dev, gt, cls)[name]

    def _sysfs_device(self, index: int) -> Device:
        devices = self.devices                             # type: ignore[attr-defined]
        if not 0 <= index < len(devices):
            raise _fail(E.ENODEV, f"sysfs: no device {index}")
        return devices[index]

    def _sysfs_lookup(self, dev: Device, path: str) -> tuple[int, int, str, bool]:
        """(gt, engine class, attribute, is a default) of a served path, else ENOENT."""
        parts = path.split("/")
        defaults = len(parts) == 6 and parts[4] == ".defaults"
        if len(parts) != (6 if defaults else 5) or parts[2] != "engines":
            raise _fail(E.ENOENT, f"sysfs: {path}")
        tile, gt, cls_dir, name = parts[0], parts[1], parts[3], parts[-1]
        if not (tile.startswith("tile") and tile[4:].isdigit() and gt.startswith("gt") and gt[2:].isdigit()):
            raise _fail(E.ENOENT, f"sysfs: {path}")
        gt_id = int(gt[2:])
        cls = _CLASS_OF_DIR.get(cls_dir)
        if (gt_id >= dev.gt_count or int(tile[4:]) != gt_id or cls is None
                or cls not in {c for c, _i in ENGINES} or name not in ATTRIBUTES):
            raise _fail(E.ENOENT, f"sysfs: {path}")
        return gt_id, cls, name, defaults

    def _debugfs_gt(self, dev: Device, path: str) -> int | None:
        """The GT of a debugfs path ``debugfs/gtN/force_reset[_sync]``, None for a sysfs path;
        ENOENT for any other debugfs path."""
        if not path.startswith("debugfs/"):
            return None
        parts = path.split("/")
        if (len(parts) != 3 or not parts[1].startswith("gt") or not parts[1][2:].isdigit()
                or int(parts[1][2:]) >= dev.gt_count or parts[2] not in DEBUGFS_ATTRIBUTES):
            raise _fail(E.ENOENT, f"debugfs: {path}")
        return int(parts[1][2:])

    def sysfs_read(self, index: int, path: str) -> bytes:
        """The contents of attribute `path` of device `index` ("%u\\n"); ENOENT if not served.
        A ``debugfs/gtN/force_reset`` path reads empty (the kernel's files are write-only)."""
        dev = self._sysfs_device(index)
        with self._lock:                                   # type: ignore[attr-defined]
            if self._debugfs_gt(dev, path) is not None:
                return b""
            gt, cls, name, defaults = self._sysfs_lookup(dev, path)
            props = default_props(self.config) if defaults else self._sched_props(dev, gt, cls)  # type: ignore[attr-defined]
            return b"%d\n" % props[name]

    def sysfs_write(self, index: int, path: str, data: bytes) -> int:
        """Store `data` in attribute `path` with the kernel's checks (a number out of the
        attribute's bounds: EINVAL; ``.defaults`` are read-only: EACCES); returns len(data)."""
        dev = self._sysfs_device(index)
        with self._lock:                                   # type: ignore[attr-defined]
            reset_gt = self._debugfs_gt(dev, path)
            if reset_gt is not None:                       # whatever is written: a GT reset
                wait = RESET_SYNC_WAIT if path.endswith("_sync") else 0.0
                self.xe_exec.gt_reset(index, reset_gt, wait)  # type: ignore[attr-defined]
                return len(data)
            gt, cls, name, defaults = self._sysfs_lookup(dev, path)
            if defaults:
                raise _fail(E.EACCES, f"sysfs: {path} is read-only")
            value = _kstrtou32(bytes(data))
            props = self._sched_props(dev, gt, cls)
            if name in _VALUES:
                low, high = _VALUES[name]
                if not props[low] <= value <= props[high]:
                    raise _fail(E.EINVAL, f"sysfs: {path}={value} outside [{props[low]}, {props[high]}]")
            else:
                stem, bound = name.rsplit("_", 1)
                limit_low, limit_high = _LIMITS[stem]
                other = props[f"{stem}_max"] if bound == "min" else props[f"{stem}_min"]
                if (bound == "min" and value > other) or (bound == "max" and value < other):
                    raise _fail(E.EINVAL, f"sysfs: {path}={value} crosses the other bound {other}")
                limit_high = max(limit_high, default_props(self.config)[f"{stem}_max"])  # type: ignore[attr-defined]
                if not limit_low <= value <= limit_high:
                    raise _fail(E.EINVAL, f"sysfs: {path}={value} outside [{limit_low}, {limit_high}]")
            props[name] = value
            return len(data)
