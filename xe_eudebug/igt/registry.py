"""The registry of ported IGT subtests: names, the fixtures a subtest takes, skips and matching.

A subtest is a function registered with :func:`subtest` under its IGT name (dashes).  Its
parameters name what it needs: ``fd`` (the device with eudebug enabled, IGT's main fixture) and
``sim_server`` (a factory of private simulator instances); any other parameter takes the value
given to :func:`subtest`, so one function can register several IGT subtests (the ``-faultable``
variants, for example).  ``device_shape`` names the device a subtest needs as `xe-eudebug run`
options (``("--tiles", "2")``, ``("--discrete",)``), as IGT's expected-pass lists do: on the
simulator the runner starts an instance of that shape for it (:func:`shape_config`).  A subtest that cannot run raises :class:`Skip` (IGT's ``igt_require``);
a failed check raises ``AssertionError`` or any other exception.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
from typing import Any, Callable, Iterable

#: The subtests of IGT's ``tests/intel/xe_eudebug.c``, in the order IGT lists them.
IGT_ORDER = (
    "sysfs-toggle", "basic-connect", "connect-user", "basic-close", "basic-read-event",
    "basic-client", "basic-client-th",
    "basic-vm-access", "basic-vm-access-userptr", "basic-vm-access-parameters",
    "basic-vm-access-parameters-userptr", "vma-ufence", "vm-bind-clear",
    "basic-vm-access-faultable", "basic-vm-access-userptr-faultable",
    "basic-vm-access-parameters-faultable", "basic-vm-access-parameters-userptr-faultable",
    "vma-ufence-faultable", "vm-bind-clear-faultable",
    "multiple-sessions", "basic-vms", "basic-exec-queues-enable", "basic-exec-queues",
    "basic-vm-bind", "basic-vm-bind-ufence", "basic-vm-bind-ufence-delay-ack",
    "basic-vm-bind-ufence-reconnect", "basic-vm-bind-ufence-sigint-client",
    "basic-vm-bind-discovery", "basic-vm-bind-metadata-discovery", "basic-vm-bind-vm-destroy",
    "basic-vm-bind-vm-destroy-discovery", "basic-vm-bind-extended", "basic-vm-bind-extended-discovery",
    "read-metadata", "attach-debug-metadata",
    "discovery-race", "discovery-race-vmbind", "discovery-race-sigint",
    "discovery-empty", "discovery-empty-clients", "multigpu-basic-client", "multigpu-basic-client-many",
)

#: The subtests of IGT's ``tests/intel/xe_eudebug_online.c``, in the order IGT lists them.
ONLINE_ORDER = (
    "basic-breakpoint", "preempt-breakpoint", "set-breakpoint", "set-breakpoint-faultable",
    "set-breakpoint-sigint-debugger", "breakpoint-not-in-debug-mode", "stopped-thread",
    "resume-one", "resume-dss", "interrupt-all", "interrupt-other-debuggable", "interrupt-other",
    "interrupt-all-set-breakpoint", "interrupt-all-set-breakpoint-faultable", "tdctl-parameters",
    "reset-with-attention", "interrupt-reconnect", "single-step", "single-step-one",
    "debugger-reopen",
    "writes-caching-sram-bb-sram-target-sram", "writes-caching-sram-bb-sram-target-vram",
    "writes-caching-sram-bb-vram-target-sram", "writes-caching-sram-bb-vram-target-vram",
    "writes-caching-vram-bb-sram-target-sram", "writes-caching-vram-bb-sram-target-vram",
    "writes-caching-vram-bb-vram-target-sram", "writes-caching-vram-bb-vram-target-vram",
    "breakpoint-many-sessions-single-tile", "breakpoint-many-sessions-tiles",
    "pagefault-read", "pagefault-write",
)

#: The subtests of IGT's ``tests/intel/xe_exec_sip_eudebug.c``, in the order IGT lists them.
SIP_ORDER = (
    "wait-writesip-nodebug", "breakpoint-writesip-nodebug", "breakpoint-writesip",
    "breakpoint-writesip-twice", "breakpoint-waitsip", "breakpoint-waitsip-heavy",
)

#: IGT binaries with ported subtests, and the order of each one's subtests.
BINARIES = {"xe_eudebug": IGT_ORDER, "xe_eudebug_online": ONLINE_ORDER, "xe_exec_sip_eudebug": SIP_ORDER}
DEFAULT_BINARY = "xe_eudebug"

#: Parameters a subtest function receives from the runner instead of from its registration.
FIXTURES = ("fd", "sim_server")


class Skip(Exception):
    """The subtest cannot run here (IGT's ``igt_require`` / ``igt_skip``); the message says why."""


def skip(reason: str) -> None:
    raise Skip(reason)


def require(condition: object, reason: str) -> None:
    """IGT's ``igt_require``: skip with ``reason`` unless ``condition`` holds."""
    if not condition:
        raise Skip(reason)


@dataclasses.dataclass(frozen=True)
class Subtest:
    name: str
    func: Callable[..., None]
    args: dict[str, Any]
    fixtures: tuple[str, ...]
    binary: str = DEFAULT_BINARY
    device_shape: tuple[str, ...] = ()

    @property
    def doc(self) -> str:
        return (inspect.getdoc(self.func) or "").split("\n\n")[0]


_REGISTRY: dict[tuple[str, str], Subtest] = {}


def shape_config(options: tuple[str, ...]) -> dict[str, Any]:
    """The `SimConfig` fields of a device shape given as `xe-eudebug run` options:
    ``--discrete`` (discrete=True), ``--tiles N`` (tiles=N).  ValueError for anything else."""
    fields: dict[str, Any] = {}
    words = list(options)
    while words:
        word = words.pop(0)
        if word == "--discrete":
            fields["discrete"] = True
        elif word == "--tiles" and words and words[0].isdigit():
            fields["tiles"] = int(words.pop(0))
        else:
            raise ValueError(f"device shape {' '.join(options)!r}: {word!r} is not --discrete or --tiles N")
    return fields


def subtest(name: str, /, binary: str = DEFAULT_BINARY, device_shape: tuple[str, ...] = (),
            **args: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register the decorated function as subtest ``name`` of IGT binary ``binary``; ``args``
    fill its other parameters; ``device_shape`` is the device it needs (`xe-eudebug run`
    options).  Stack the decorator to register one function under several names."""
    if binary not in BINARIES:
        raise ValueError(f"IGT binary {binary!r}: not one of {sorted(BINARIES)}")
    shape_config(device_shape)

    def register(func: Callable[..., None]) -> Callable[..., None]:
        if (binary, name) in _REGISTRY:
            raise ValueError(f"IGT subtest {binary}@{name} is registered twice")
        params = inspect.signature(func).parameters
        fixtures = tuple(p for p in params if p in FIXTURES)
        missing = [p for p in params if p not in FIXTURES and p not in args]
        if missing:
            raise TypeError(f"subtest {name!r}: no value for parameter(s) {missing}")
        _REGISTRY[(binary, name)] = Subtest(name, func, dict(args), fixtures, binary, tuple(device_shape))
        return func

    return register


def load() -> None:
    """Import the modules that register the ported subtests."""
    from . import discovery, iface, metadata, online, sip, vm_bind, vm_bind_clear  # noqa: F401


def subtests(binary: str = DEFAULT_BINARY) -> list[Subtest]:
    """Every registered subtest of ``binary``, in IGT's order (then any others, in
    registration order)."""
    load()
    order = {name: i for i, name in enumerate(BINARIES[binary])}
    return sorted((s for s in _REGISTRY.values() if s.binary == binary),
                  key=lambda s: order.get(s.name, len(order)))


def wildmat(name: str, pattern: str) -> bool:
    """IGT's ``--run-subtest`` matching (uwildmat, RFC 3977 wildmat): ``pattern`` is a comma
    list of shell globs (``*``, ``?``, ``[...]``); one starting with ``!`` excludes; the last
    glob that matches decides."""
    matched = False
    for part in pattern.split(","):
        negate = part.startswith("!")
        glob = part[1:] if negate else part
        if fnmatch.fnmatchcase(name, glob):
            matched = not negate
    return matched


def select(patterns: Iterable[str] | None, binary: str = DEFAULT_BINARY) -> list[Subtest]:
    """The subtests of ``binary`` any of ``patterns`` matches (all without patterns), in IGT's
    order."""
    patterns = list(patterns or [])
    return [s for s in subtests(binary) if not patterns or any(wildmat(s.name, p) for p in patterns)]
