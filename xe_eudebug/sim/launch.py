"""Running simulator servers: `start_server` (a private instance in a child process), its
`ServerHandle`, and `main` (``python3 -m xe_eudebug.sim``)."""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator

from . import link, port, wire
from .config import SOCKET_ENV, SimConfig, default_socket_dir, default_socket_path
from .server import DEFAULT_KERNEL, Server

log = logging.getLogger("xe_eudebug.sim.server")

__all__ = ["ServerHandle", "start_server", "selected_instance", "main", "KERNEL_ENV"]

# ------------------------------------------------------------------------------------------------
# Running servers

class ServerHandle:
    """A simulator running in a child process (see `start_server`)."""

    def __init__(self, proc: subprocess.Popen, socket_path: str, directory: str | None, logfile: str | None) -> None:
        self.proc = proc
        self.socket = socket_path
        self.pid = proc.pid
        self.directory = directory
        self.logfile = logfile

    def alive(self) -> bool:
        return self.proc.poll() is None

    def open_device(self, index: int = 0) -> int:
        """Open simulated device `index` of this instance."""
        return port.open_device(index, socket_path=self.socket)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout`) and remove its private directory."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.directory is not None:
            for name in os.listdir(self.directory):
                try:
                    os.unlink(os.path.join(self.directory, name))
                except OSError:
                    pass
            try:
                os.rmdir(self.directory)
            except OSError:
                pass
            self.directory = None

    def kill(self) -> None:
        """Kill the server abruptly (as a crash would)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5.0)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerHandle pid={self.pid} socket={self.socket!r}>"


def _runtime_base() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return base if base and os.path.isdir(base) else tempfile.gettempdir()


def start_server(config: SimConfig | None = None, socket: str | None = None, *,
                 kernel: str | None = None, verbose: bool | int = False, timeout: float = 15.0) -> ServerHandle:
    """Start a private simulator instance in a child process and wait until it accepts calls.

    `socket`: path to listen on (default: a fresh private directory).  `config`: its settings
    (default: the environment's).  `kernel`: "module:Class" of the kernel model (testing hook).
    """
    directory = None
    config = config or SimConfig.from_env()
    gid = config.group_id()
    if socket is None:
        # A group-shared instance cannot live in the per-user runtime directory (0700).
        base = tempfile.gettempdir() if gid is not None else _runtime_base()
        directory = tempfile.mkdtemp(prefix="xe_eudebug-sim-", dir=base)
        if gid is not None:
            os.chown(directory, -1, gid)
            os.chmod(directory, 0o710)
        socket = os.path.join(directory, "sock")
    socket = os.path.abspath(socket)
    env = dict(os.environ)
    env.pop(SOCKET_ENV, None)
    env.update(config.to_env())
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-m", "xe_eudebug.sim", "--socket", socket, "--owner-pid", str(os.getpid())]
    if kernel:
        argv += ["--kernel", kernel]
    if verbose:
        argv.append("-" + "v" * int(verbose))
    logdir = directory or os.path.dirname(socket)
    logfile = os.path.join(logdir, "server.log") if os.path.isdir(logdir) else None
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                start_new_session=True, close_fds=True)
    finally:
        if logfile:
            out.close()  # type: ignore[union-attr]
    handle = ServerHandle(proc, socket, directory, logfile)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            detail = _tail(logfile)
            handle.stop()
            raise OSError(_errno.EIO, f"xe_eudebug simulator exited with status {proc.returncode} during start-up{detail}")
        probe = wire.socket.socket(wire.socket.AF_UNIX, wire.socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(socket)
            return handle
        except OSError:
            pass
        finally:
            probe.close()
        if time.monotonic() > deadline:
            handle.stop()
            raise OSError(_errno.ETIMEDOUT, f"xe_eudebug simulator did not come up on {socket} within {timeout:.0f} s")
        time.sleep(0.01)


#: The device selector the framework reads (xe_eudebug.device.DEVICE_ENV)
DEVICE_ENV = "XE_EUDEBUG_DEVICE"


@contextlib.contextmanager
def selected_instance(config: SimConfig | None = None) -> Iterator[ServerHandle]:
    """A private instance (`start_server(config)`) that is this process's device for the block:
    ``XE_EUDEBUG_SIM_SOCKET`` names it and ``XE_EUDEBUG_DEVICE`` is ``sim`` (processes started
    meanwhile inherit both); the variables are restored and the instance stopped afterwards."""
    handle = start_server(config)
    saved = {key: os.environ.get(key) for key in (SOCKET_ENV, DEVICE_ENV)}
    os.environ[SOCKET_ENV], os.environ[DEVICE_ENV] = handle.socket, "sim"
    try:
        yield handle
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        handle.stop()


def _tail(logfile: str | None) -> str:
    if not logfile:
        return ""
    try:
        with open(logfile, "rb") as f:
            text = f.read()[-2000:].decode(errors="replace").strip()
    except OSError:
        return ""
    return f": {text}" if text else ""


KERNEL_ENV = "XE_EUDEBUG_SIM_KERNEL"


def main(argv: list[str] | None = None, prog: str = "python3 -m xe_eudebug.sim") -> int:
    """`python3 -m xe_eudebug.sim`: run a simulator in the foreground."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog,
                                     description="Run the simulated Xe eudebug driver in the foreground.")
    parser.add_argument("--socket", help=f"socket path (default: $XE_EUDEBUG_SIM_SOCKET or {default_socket_path()})")
    parser.add_argument("--devices", type=int, help="number of simulated devices (XE_EUDEBUG_SIM_DEVICES)")
    parser.add_argument("--idle-exit", type=float, help="exit after this many idle seconds; 0 = never (XE_EUDEBUG_SIM_IDLE_EXIT)")
    parser.add_argument("--enable", action="store_true", help="start with eudebug enabled on every device")
    parser.add_argument("--discrete", action="store_true",
                        help="discrete devices with VRAM per tile (XE_EUDEBUG_SIM_DISCRETE)")
    parser.add_argument("--tiles", type=int, help="tiles per device, one GT each (XE_EUDEBUG_SIM_TILES)")
    # Testing hook: another kernel model ("module:Class"), also from XE_EUDEBUG_SIM_KERNEL.
    parser.add_argument("--kernel", default=os.environ.get(KERNEL_ENV) or DEFAULT_KERNEL, help=argparse.SUPPRESS)
    parser.add_argument("--owner-pid", type=int, default=0,
                        help="a private instance: once this process is gone, exit when idle for 1 s")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log every call like strace (-vv: with decoded structs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    overrides: dict[str, object] = {}
    if args.devices is not None:
        overrides["devices"] = args.devices
    if args.idle_exit is not None:
        overrides["idle_exit"] = args.idle_exit
    if args.enable:
        overrides["enable_default"] = True
    if args.discrete:
        overrides["discrete"] = True
    if args.tiles is not None:
        overrides["tiles"] = args.tiles
    try:
        config = SimConfig.from_env(**overrides)
    except ValueError as exc:
        parser.error(str(exc))
    path = args.socket or os.environ.get(SOCKET_ENV) or default_socket_path()
    if os.path.abspath(path) == os.path.abspath(default_socket_path()):
        link._ensure_private_dir(default_socket_dir())
    server = Server(path, config, kernel_spec=args.kernel)
    server.owner_pid = args.owner_pid
    if args.verbose:
        from .trace import install

        install(server, args.verbose)
    try:
        server.bind()
    except OSError as exc:
        print(f"xe_eudebug.sim: {exc}", file=sys.stderr)
        return 1

    def _stop(signum: int, _frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server.serve_forever()
    return 0
