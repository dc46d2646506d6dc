"""``xe-eudebug run``: an unmodified C program on the simulator.

    xe-eudebug run [--devices N] [--enable] [--device-id 0xNNNN] [--no-umockdev] -- CMD [ARGS...]

CMD runs with the preload library (``sim/preload/xe_eudebug_preload.c``, compiled on first use
into a per-user cache) so that ``/dev/dri/cardN`` and ``/dev/dri/renderD(128+N)`` open simulated
device N of the instance named by ``XE_EUDEBUG_SIM_SOCKET``, or of a private instance started for
the run.  When Debian's ``umockdev-run`` is installed, CMD runs under it with a device description
generated from the simulator's configuration, so libudev enumerates the devices and their sysfs
directory (``enable_eudebug``) exists.  The exit status is CMD's (128+N for a signal N).
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
from .config import SOCKET_ENV, SimConfig

__all__ = ["main", "preload_library", "umockdev_description", "RunError", "PRELOAD_SOURCE",
           "pci_slot", "MSGMNB_NEEDED"]

PRELOAD_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preload", "xe_eudebug_preload.c")
CC_FLAGS = ["-O2", "-fPIC", "-shared", "-Wall", "-fvisibility=hidden"]
CC_LIBS = ["-ldl", "-lpthread"]
MSGMNB_NEEDED = 1 << 20  # xe_eudebug_online's System V message queue
PCI_VENDOR_INTEL = 0x8086
DRM_MAJOR = 226


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


def umockdev_description(devices: int, device_id: int) -> str:
    """umockdev device description (``umockdev-run -d``) of `devices` Xe devices: a PCI device
    bound to xe with its card and render nodes under drm/."""
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
            device_id = int(info.get("config", {}).get("XE_EUDEBUG_SIM_DEVICE_ID", "0x64A0"), 0)
            if args.devices is not None and args.devices != devices:
                print(f"{prog}: {SOCKET_ENV}={socket_path} has {devices} device(s), not {args.devices}",
                      file=sys.stderr)
                return 2
            if args.device_id is not None and args.device_id != device_id:
                print(f"{prog}: {SOCKET_ENV}={socket_path} has device id {device_id:#06x}", file=sys.stderr)
                return 2
        else:
            from .launch import start_server

            overrides: dict[str, object] = {"devices": args.devices or 1}
            if args.device_id is not None:
                overrides["device_id"] = args.device_id
            config = SimConfig.from_env(**overrides)
            devices, device_id = config.devices, config.device_id
            handle = start_server(config)
            socket_path = handle.socket
        if args.enable:
            for index in range(devices):
                wire.device_enabled(index, True, socket_path)
        return _run(args, prog, library, socket_path, devices, device_id)
    except (OSError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 125
    finally:
        if handle is not None:
            handle.stop()


def _run(args: argparse.Namespace, prog: str, library: str, socket_path: str, devices: int,
         device_id: int) -> int:
    env = dict(os.environ)
    env[SOCKET_ENV] = socket_path
    env["LD_PRELOAD"] = library + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    size = _msgmnb()
    if size is not None and size < MSGMNB_NEEDED and os.path.basename(args.cmd[0]).startswith("xe_eudebug_online"):
        print(f"{prog}: /proc/sys/kernel/msgmnb is {size}; xe_eudebug_online needs {MSGMNB_NEEDED} "
              "(sysctl -w kernel.msgmnb=1048576)", file=sys.stderr)
    cmd = list(args.cmd)
    tmpdir = None
    umockdev = None if args.no_umockdev else shutil.which("umockdev-run")
    if umockdev:
        tmpdir = tempfile.mkdtemp(prefix="xe_eudebug-run-")
        description = os.path.join(tmpdir, "devices.umockdev")
        with open(description, "w") as f:
            f.write(umockdev_description(devices, device_id))
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
        if tmpdir:
            try:
                with open(os.path.join(tmpdir, "status")) as f:
                    status = int(f.read().strip())
            except (OSError, ValueError):
                pass  # the shell did not finish: umockdev-run's own status stands
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return status
