"""``xe-eudebug run``: an unmodified C program on the simulator.

    xe-eudebug run [--devices N] [--enable] [--device-id 0xNNNN] [--discrete] [--tiles N]
                   [--no-umockdev] -- CMD [ARGS...]

CMD runs with the preload library (``sim/preload/xe_eudebug_preload.c``, compiled on first use
into a per-user cache) so that ``/dev/dri/cardN`` and ``/dev/dri/renderD(128+N)`` open simulated
device N of the instance named by ``XE_EUDEBUG_SIM_SOCKET``, or of a private instance started for
the run.  When Debian's ``umockdev-run`` is installed, CMD runs under it with a device description
generated from the simulator's configuration, so libudev enumerates the devices and their sysfs
directory exists: ``enable_eudebug`` and each GT's engine-class attributes
(``tileN/gtN/engines/<class>/job_timeout_ms`` and the rest, served by the simulator through the
preload library, so a write changes the simulated driver).  Paths below ``/sys/kernel/debug`` go
to a debugfs directory built for the run (``dri/<minor>/name`` and each GT's ``force_reset`` and
``force_reset_sync``, whose writes reset that GT of the simulated device).  The exit status is
CMD's (128+N for a signal N).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Sequence

from . import port as wire
from .config import MAX_TILES, SOCKET_ENV, SimConfig
from .kernel.xe_sysfs import attribute_paths

__all__ = ["main", "preload_library", "umockdev_description", "RunError", "PRELOAD_SOURCE",
           "pci_slot", "MSGMNB_NEEDED", "make_debugfs", "DEBUGFS_ENV"]

PRELOAD_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preload", "xe_eudebug_preload.c")
CC_FLAGS = ["-O2", "-fPIC", "-shared", "-Wall", "-fvisibility=hidden"]
CC_LIBS = ["-ldl", "-lpthread"]
MSGMNB_NEEDED = 1 << 20  # xe_eudebug_online's System V message queue
PCI_VENDOR_INTEL = 0x8086
DRM_MAJOR = 226


#: Where the preload library finds the run's debugfs directory.
DEBUGFS_ENV = "XE_EUDEBUG_DEBUGFS"


class RunError(Exception):
    """A run could not be set up (the message is one line for the user)."""


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "xe_eudebug")


def preload_library(cc: str | None = None) -> str:
    """Path of the compiled preload library: built with `cc` (default ``$CC``, else ``cc``) into a
    per-user cache keyed by the source's hash, reused while the source is unchanged."""
    with open(PRELOAD_SOURCE, "rb") as f:
        source = f.read()
    compiler = shlex.split(cc or os.environ.get("CC") or "cc")
    key = hashlib.sha256(source + repr(compiler + CC_FLAGS + CC_LIBS).encode()).hexdigest()[:16]
    directory = _cache_dir()
    target = os.path.join(directory, f"preload-{key}.so")
    if os.path.exists(target):
        return target
    if not compiler or shutil.which(compiler[0]) is None:
        raise RunError(f"xe-eudebug run: no C compiler ({compiler[0] if compiler else 'CC is empty'} not found; "
                       "install gcc or set CC) to build the preload library")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".preload-", suffix=".so", dir=directory)
    os.close(fd)
    try:
        proc = subprocess.run(compiler + CC_FLAGS + ["-o", tmp, PRELOAD_SOURCE] + CC_LIBS,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        if proc.returncode != 0:
            raise RunError(f"xe-eudebug run: {' '.join(compiler)} failed to build {PRELOAD_SOURCE} "
                           f"(status {proc.returncode}):\n{proc.stdout.decode(errors='replace').strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: concurrent runs each build, one file wins
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def pci_slot(index: int) -> str:
    """PCI address of simulated device `index` in the generated sysfs (bus 0x10 + index); the
    preload library recognises ``enable_eudebug`` below exactly these directories."""
    return f"0000:{0x10 + index:02x}:00.0"


def umockdev_description(devices: int, device_id: int, tiles: int = 1) -> str:
    """umockdev device description (``umockdev-run -d``) of `devices` Xe devices of `tiles` tiles:
    a PCI device bound to xe with its card and render nodes under drm/ and its tile/GT/engine
    sysfs attributes (their contents come from the simulator through the preload library)."""
    out: list[str] = []
    for i in range(devices):
        slot = pci_slot(i)
        pci = f"/devices/pci0000:00/{slot}"
        out += [
            f"P: {pci}",
            "E: DRIVER=xe",
            "E: PCI_CLASS=30000",
            f"E: PCI_ID={PCI_VENDOR_INTEL:04X}:{device_id:04X}",
            f"E: PCI_SUBSYS_ID={PCI_VENDOR_INTEL:04X}:0000",
            f"E: PCI_SLOT_NAME={slot}",
            f"E: MODALIAS=pci:v0000{PCI_VENDOR_INTEL:04X}d0000{device_id:04X}sv00008086sd00000000bc03sc00i00",
            "E: SUBSYSTEM=pci",
            "A: class=0x030000",
            f"A: vendor=0x{PCI_VENDOR_INTEL:04x}",
            f"A: device=0x{device_id:04x}",
            "A: enable_eudebug=0",
        ]
        out += [f"A: {path}=0" for path in attribute_paths(tiles)]
        out += [
            "L: driver=../../../bus/pci/drivers/xe",
            "",
        ]
        for name, minor in ((f"card{i}", i), (f"renderD{128 + i}", 128 + i)):
            out += [
                f"P: {pci}/drm/{name}",
                f"N: dri/{name}",
                f"E: DEVNAME=/dev/dri/{name}",
                "E: DEVTYPE=drm_minor",
                f"E: MAJOR={DRM_MAJOR}",
                f"E: MINOR={minor}",
                "E: SUBSYSTEM=drm",
                f"A: dev={DRM_MAJOR}:{minor}",
                "L: device=../../../" + slot,
                "",
            ]
    return "\n".join(out)


def make_debugfs(root: str, devices: int, tiles: int = 1) -> None:
    """The debugfs tree of `devices` devices below `root`: ``dri/<minor>/name`` for the card and
    render minors (the same name, as igt_debugfs_path matches them) and ``dri/<minor>/gtN/`` with
    the GT-reset files (their reads and writes go to the simulator through the preload)."""
    from .kernel.xe_sysfs import DEBUGFS_ATTRIBUTES

    for i in range(devices):
        slot = pci_slot(i)
        for minor in (i, 128 + i):
            base = os.path.join(root, "dri", str(minor))
            os.makedirs(base, exist_ok=True)
            with open(os.path.join(base, "name"), "w") as f:
                f.write(f"xe dev={slot} unique={slot}\n")
            for gt in range(tiles):
                os.makedirs(os.path.join(base, f"gt{gt}"), exist_ok=True)
                for name in DEBUGFS_ATTRIBUTES:
                    open(os.path.join(base, f"gt{gt}", name), "w").close()


def _msgmnb() -> int | None:
    try:
        with open("/proc/sys/kernel/msgmnb") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _status(returncode: int) -> int:
    """A child's exit status as a shell reports it."""
    return 128 - returncode if returncode < 0 else returncode


def _parse(argv: Sequence[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run an unmodified C program with /dev/dri and sysfs of the simulator.",
        epilog="CMD's exit status is returned (128+N when a signal N ends it).")
    parser.add_argument("--devices", type=int, default=None,
                        help="simulated devices of a private instance (default 1; with "
                             f"{SOCKET_ENV} it must match that instance)")
    parser.add_argument("--enable", action="store_true", help="turn eudebug on for every device first")
    parser.add_argument("--device-id", type=lambda s: int(s, 0), default=None,
                        help="PCI device id of a private instance's devices (default 0x64A0)")
    parser.add_argument("--discrete", action="store_true",
                        help="a private instance's devices are discrete (Battlemage, VRAM per tile; "
                             "device id 0xE20B unless --device-id)")
    parser.add_argument("--tiles", type=int, default=None,
                        help=f"tiles of a private instance's devices, one GT each (1-{MAX_TILES}, default 1)")
    parser.add_argument("--no-umockdev", action="store_true",
                        help="do not run under umockdev-run even if installed (no udev, no sysfs)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    args = parser.parse_args(list(argv))
    if args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    if not args.cmd:
        parser.error("no command given (xe-eudebug run [options] -- CMD [ARGS...])")
    if args.devices is not None and not 1 <= args.devices <= 64:
        parser.error("--devices must be between 1 and 64")
    if args.tiles is not None and not 1 <= args.tiles <= MAX_TILES:
        parser.error(f"--tiles must be between 1 and {MAX_TILES}")
    return args


def main(argv: Sequence[str] | None = None, prog: str = "xe-eudebug run") -> int:
    args = _parse(sys.argv[1:] if argv is None else argv, prog)
    try:
        library = preload_library()
    except RunError as exc:
        print(exc, file=sys.stderr)
        return 127
    handle = None
    socket_path = os.environ.get(SOCKET_ENV)
    try:
        if socket_path:
            info = wire.server_info(socket_path)
            devices = int(info["devices"])
            remote = SimConfig.from_env(info.get("config", {}))
            device_id, tiles = remote.device_id, remote.tiles
            if args.devices is not None and args.devices != devices:
                print(f"{prog}: {SOCKET_ENV}={socket_path} has {devices} device(s), not {args.devices}",
                      file=sys.stderr)
                return 2
            if args.device_id is not None and args.device_id != device_id:
                print(f"{prog}: {SOCKET_ENV}={socket_path} has device id {device_id:#06x}", file=sys.stderr)
                return 2
            for option, wanted, has in (("--discrete", args.discrete or None, remote.discrete),
                                        ("--tiles", args.tiles, tiles)):
                if wanted is not None and wanted != has:
                    print(f"{prog}: {SOCKET_ENV}={socket_path} does not match {option} (it has {has})",
                          file=sys.stderr)
                    return 2
        else:
            from .launch import start_server

            overrides: dict[str, object] = {"devices": args.devices or 1}
            if args.device_id is not None:
                overrides["device_id"] = args.device_id
            if args.discrete:
                overrides["discrete"] = True
            if args.tiles is not None:
                overrides["tiles"] = args.tiles
            config = SimConfig.from_env(**overrides)
            devices, device_id, tiles = config.devices, config.device_id, config.tiles
            handle = start_server(config)
            socket_path = handle.socket
        if args.enable:
            for index in range(devices):
                wire.device_enabled(index, True, socket_path)
        return _run(args, prog, library, socket_path, devices, device_id, tiles)
    except (OSError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 125
    finally:
        if handle is not None:
            handle.stop()


def _run(args: argparse.Namespace, prog: str, library: str, socket_path: str, devices: int,
         device_id: int, tiles: int = 1) -> int:
    env = dict(os.environ)
    env[SOCKET_ENV] = socket_path
    env["LD_PRELOAD"] = library + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    size = _msgmnb()
    if size is not None and size < MSGMNB_NEEDED and os.path.basename(args.cmd[0]).startswith("xe_eudebug_online"):
        print(f"{prog}: /proc/sys/kernel/msgmnb is {size}; xe_eudebug_online needs {MSGMNB_NEEDED} "
              "(sysctl -w kernel.msgmnb=1048576)", file=sys.stderr)
    cmd = list(args.cmd)
    tmpdir = tempfile.mkdtemp(prefix="xe_eudebug-run-")
    env[DEBUGFS_ENV] = os.path.join(tmpdir, "debugfs")
    make_debugfs(env[DEBUGFS_ENV], devices, tiles)
    umockdev = None if args.no_umockdev else shutil.which("umockdev-run")
    status_file = None
    if umockdev:
        description = os.path.join(tmpdir, "devices.umockdev")
        with open(description, "w") as f:
            f.write(umockdev_description(devices, device_id, tiles))
        # umockdev-run reports a signal N as exit status N: a shell inside it records the real
        # status (128+N for a signal) in a file
        status_file = os.path.join(tmpdir, "status")
        cmd = [umockdev, "-d", description, "--", "/bin/sh", "-c",
               '"$@"; s=$?; echo $s > "$0"; exit $s', status_file] + cmd
    elif not args.no_umockdev:
        print(f"{prog}: umockdev-run not found (Debian package umockdev): libudev sees no devices and "
              "/sys/dev/char/226:* does not exist; device nodes work", file=sys.stderr)
    try:
        proc = subprocess.Popen(cmd, env=env)
    except OSError as exc:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        print(f"{prog}: cannot run {args.cmd[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    # The child (same process group) gets terminal signals itself; we wait for its status.
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)}
    # a SIGTERM or SIGHUP sent to the run goes to CMD, whose status then ends the run as usual
    old.update({s: signal.signal(s, lambda signum, _frame: proc.send_signal(signum))
                for s in (signal.SIGTERM, signal.SIGHUP)})
    try:
        status = _status(proc.wait())
        if status_file:
            try:
                with open(status_file) as f:
                    status = int(f.read().strip())
            except (OSError, ValueError):
                pass  # the shell did not finish: umockdev-run's own status stands
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return status
