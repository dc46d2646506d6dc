"""Configuration of the simulated Xe driver.

`SimConfig` is shared by the kernel model (`sim/kernel/`) and the transport (`sim/server.py`).
Every field has an environment variable (`XE_EUDEBUG_SIM_<FIELD>` in upper case) so a server
started on first use, or by a test harness, can be configured without code.  The defaults are the
kernel's own values, so the simulator behaves like the driver unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

__all__ = ["SimConfig", "INTEGRATED_DEVICE_ID", "DISCRETE_DEVICE_ID", "MAX_TILES", "ENV_PREFIX", "SOCKET_ENV", "default_socket_dir", "default_socket_path"]

ENV_PREFIX = "XE_EUDEBUG_SIM_"
#: Socket of the simulator instance to use (set by test harnesses and private instances).
SOCKET_ENV = "XE_EUDEBUG_SIM_SOCKET"

#: PCI device ids of the two shapes: Lunar Lake (integrated Xe2) and Battlemage B580 (discrete Xe2).
INTEGRATED_DEVICE_ID = 0x64A0
DISCRETE_DEVICE_ID = 0xE20B
#: The kernel's XE_MAX_TILES_PER_DEVICE.
MAX_TILES = 2

_TRUE = {"1", "y", "yes", "t", "true", "on"}
_FALSE = {"0", "n", "no", "f", "false", "off", ""}


@dataclasses.dataclass
class SimConfig:
    """Settings of one simulator instance.

    devices:            number of simulated Xe devices (``XE_EUDEBUG_SIM_DEVICES``).
    read_event_timeout: seconds a blocking READ_EVENT waits before ENOENT (kernel: 5 s).
    fifo_timeout:       seconds a producer waits on a full event fifo before the connection
                        is detached with ETIMEDOUT (kernel: 25 s).
    fifo_retry:         producer retry slice in seconds (kernel: 1 s).
    fifo_capacity:      events per connection fifo (kernel: 64).
    enable_default:     initial value of each device's ``enable_eudebug`` toggle (kernel: 0).
    job_timeout_ms:     milliseconds a job of a non-LR exec queue may run before it is stopped
                        and its queue banned (kernel: 5000, the engine class's job_timeout_ms).
    idle_exit:          seconds the server keeps running with no control connection and no
                        open simulated file; 0 or less never exits on idleness.
    device_id:          PCI device id the devices report (QUERY_CONFIG); 0 (default) picks the
                        shape's own: 0x64A0 (Lunar Lake, integrated) or, when `discrete`, 0xE20B
                        (Battlemage B580).
    discrete:           a discrete Xe2 device (Battlemage): one VRAM region per tile in
                        QUERY_MEM_REGIONS, QUERY_CONFIG's HAS_VRAM flag, GEM_CREATE placements in
                        VRAM, graphics IP 20.01 (28 PAT entries).  Default: integrated (Lunar Lake).
    tiles:              tiles of each device, one main GT per tile (GT n on tile n), each with its
                        own engines, topology and (when `discrete`) VRAM.  Default 1.
    vram_size:          bytes of VRAM per tile when `discrete` (default 12 GiB, all CPU-visible).
    memory_access:      how the server reaches a blocked caller's memory: "auto" (direct
                        process_vm_readv/writev when permitted, else ask the caller), "caller"
                        (always ask the caller's side of the control connection).
    group:              name or number of a group whose members may open the devices, as the
                        group of a render node (``crw-rw---- root video``): the socket becomes
                        mode 0660 in that group, and `start_server` makes its directory
                        searchable by the group (0710).  Empty (default): the owner only (0600).
    """

    devices: int = 1
    read_event_timeout: float = 5.0
    fifo_timeout: float = 25.0
    fifo_retry: float = 1.0
    fifo_capacity: int = 64
    enable_default: bool = False
    job_timeout_ms: int = 5000
    idle_exit: float = 30.0
    memory_access: str = "auto"
    group: str = ""
    device_id: int = 0
    discrete: bool = False
    tiles: int = 1
    vram_size: int = 12 << 30

    def __post_init__(self) -> None:
        if int(self.devices) < 1:
            raise ValueError(f"SimConfig.devices must be >= 1, got {self.devices!r}")
        for name in ("read_event_timeout", "fifo_timeout", "fifo_retry"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"SimConfig.{name} must be >= 0")
        if int(self.job_timeout_ms) < 1:
            raise ValueError("SimConfig.job_timeout_ms must be >= 1")
        if int(self.fifo_capacity) < 1:
            raise ValueError("SimConfig.fifo_capacity must be >= 1")
        if not int(self.device_id):
            self.device_id = DISCRETE_DEVICE_ID if self.discrete else INTEGRATED_DEVICE_ID
        if not 1 <= int(self.tiles) <= MAX_TILES:
            raise ValueError(f"SimConfig.tiles must be between 1 and {MAX_TILES}, got {self.tiles!r}")
        if int(self.vram_size) < 1 << 20 or int(self.vram_size) % 4096:
            raise ValueError(f"SimConfig.vram_size must be a multiple of 4096 of at least 1 MiB, got {self.vram_size!r}")
        if not 0 < int(self.device_id) <= 0xFFFF:
            raise ValueError(f"SimConfig.device_id must be a 16-bit PCI device id, got {self.device_id!r}")
        if self.memory_access not in ("auto", "caller"):
            raise ValueError(f"SimConfig.memory_access must be 'auto' or 'caller', got {self.memory_access!r}")

    def group_id(self) -> int | None:
        """The gid of :attr:`group`, or None when the devices are the owner's only."""
        if not self.group:
            return None
        if self.group.isdigit():
            return int(self.group)
        import grp

        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise ValueError(f"SimConfig.group: no group named {self.group!r}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> "SimConfig":
        """Build a config from ``XE_EUDEBUG_SIM_*`` variables; keyword arguments win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is None:
                continue
            values[field.name] = _parse(field.name, field.type, raw)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce this config in another process."""
        out: dict[str, str] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool):
                text = "1" if value else "0"
            else:
                text = repr(value) if isinstance(value, float) else str(value)
            out[ENV_PREFIX + field.name.upper()] = text
        return out


def _parse(name: str, kind: object, raw: str) -> object:
    text = raw.strip()
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind_name == "bool":
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
        if kind_name == "int":
            return int(text, 0)
        if kind_name == "str":
            return text
        return float(text)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: not a valid {kind_name}") from None


def default_socket_dir() -> str:
    """Per-user directory of the shared simulator instance (created with mode 0700 on use)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, "xe_eudebug-sim")
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"xe_eudebug-sim-{os.getuid()}")


def default_socket_path() -> str:
    """The socket `open_device('sim')` uses when ``XE_EUDEBUG_SIM_SOCKET`` is not set."""
    return os.path.join(default_socket_dir(), "sock")
