"""Configuration of the simulated Xe driver.

`SimConfig` is shared by the kernel model (`sim/kernel.py`) and the transport (`sim/server.py`).
Every field has an environment variable (`XE_EUDEBUG_SIM_<FIELD>` in upper case) so a server
started on first use, or by a test harness, can be configured without code.  The defaults are the
kernel's own values, so the simulator behaves like the driver unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

__all__ = ["SimConfig", "ENV_PREFIX"]

ENV_PREFIX = "XE_EUDEBUG_SIM_"

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
    idle_exit:          seconds the server keeps running with no control connection and no
                        open simulated file; 0 or less never exits on idleness.
    """

    devices: int = 1
    read_event_timeout: float = 5.0
    fifo_timeout: float = 25.0
    fifo_retry: float = 1.0
    fifo_capacity: int = 64
    enable_default: bool = False
    idle_exit: float = 30.0

    def __post_init__(self) -> None:
        if int(self.devices) < 1:
            raise ValueError(f"SimConfig.devices must be >= 1, got {self.devices!r}")
        for name in ("read_event_timeout", "fifo_timeout", "fifo_retry"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"SimConfig.{name} must be >= 0")
        if int(self.fifo_capacity) < 1:
            raise ValueError("SimConfig.fifo_capacity must be >= 1")

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
        return float(text)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: not a valid {kind_name}") from None
