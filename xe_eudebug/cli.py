"""The ``xe-eudebug`` command.

    xe-eudebug sim [-v] [--socket PATH] [--devices N] [--idle-exit S] [--enable]
        run the simulated Xe driver in the foreground with logging
    xe-eudebug devices
        list Xe render nodes and the simulator's devices, and what XE_EUDEBUG_DEVICE selects
    xe-eudebug monitor --pid N [--json] [--metadata] [--ack] [--save FILE]
        attach to a running process and print its eudebug events live (xe_eudebug.monitor)
    xe-eudebug log print FILE... | log compare A B
        print or compare saved event logs (xe_eudebug.logcmd)
    xe-eudebug igt [--binary xe_eudebug|xe_eudebug_online|xe_exec_sip_eudebug] [--list-subtests] [--run-subtest GLOB] [--device DEV] [--results F] [--junit F]
        list and run the ported IGT subtests the way an IGT binary does
    xe-eudebug run [--devices N] [--enable] [--device-id 0xNNNN] [--discrete] [--tiles N] -- CMD [ARGS...]
        run an unmodified C program on the simulator (docs/c-programs.md)

``--debug`` (before the command) or ``XE_EUDEBUG_DEBUG=1`` turns on the library's debug logging
(xe_eudebug.debuglog).
"""

from __future__ import annotations

import argparse
import sys


def _devices(_args: argparse.Namespace) -> int:
    from .device import list_devices

    rows = list_devices()
    for row in rows:
        parts = [row["device"]]
        if row.get("simulated"):
            if row.get("running"):
                state = f"running, pid {row.get('pid')}"
            elif row.get("autostart"):
                state = "not running; starts on first use"
            else:
                state = "not running; XE_EUDEBUG_SIM_SOCKET names it, so it is not started on demand"
            parts.append(f"simulator ({state}; socket {row.get('socket')})")
        elif "error" in row:
            parts.append(f"error: {row['error']}")
        else:
            parts.append(f"driver {row.get('driver')!r}")
            if "eudebug" in row:
                parts.append("eudebug " + {True: "enabled", False: "disabled", None: "toggle unavailable"}[row["eudebug"]])
        print("  ".join(parts))
    return _selected()


def _selected() -> int:
    """The line for what ``open_device()`` picks: ``XE_EUDEBUG_DEVICE`` checked (exit 1 with
    its one-line error when it names no usable device), else the automatic choice."""
    import os

    from .device import DEVICE_ENV, _parse_sim, device_name, list_devices, open_device

    spec = os.environ.get(DEVICE_ENV) or None
    if spec is None:
        rows = list_devices(include_simulator=False)
        if not any(r.get("driver") == "xe" for r in rows):
            print("(no Xe render node; open_device() uses the simulator)")
        return 0
    index = _parse_sim(spec)
    sims = [r for r in list_devices() if r.get("simulated")]
    if index is not None and not any(r.get("running") for r in sims) and any(r.get("autostart") for r in sims):
        print(f"{DEVICE_ENV}={spec} selects simulated device {index}; the simulator starts on first use")
        return 0
    try:
        fd = open_device()
    except (OSError, ValueError) as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"xe-eudebug: {text}", file=sys.stderr)
        return 1
    try:
        print(f"{DEVICE_ENV}={spec} selects {device_name(fd)}")
    finally:
        os.close(fd)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="xe-eudebug", description="Xe EU debugger test framework tools.")
    parser.add_argument("--debug", action="store_true",
                        help="log the library's calls, events and stages to stderr (also XE_EUDEBUG_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sim", help="run the simulated Xe driver in the foreground", add_help=False)
    sub.add_parser("devices", help="list Xe devices (render nodes and the simulator)")
    sub.add_parser("igt", help="list and run the ported IGT subtests", add_help=False)
    from . import logcmd, monitor

    monitor.add_parser(sub)
    logcmd.add_parser(sub)
    while argv and argv[0] == "--debug":
        argv.pop(0)
        from .debuglog import enable

        enable()
    sub.add_parser("run", help="run a C program on the simulator", add_help=False)
    if argv and argv[0] == "run":
        from .sim.run import main as run_main

        return run_main(argv[1:])
    if argv and argv[0] == "sim":
        from .sim.launch import main as sim_main

        return sim_main(argv[1:], prog="xe-eudebug sim")
    if argv and argv[0] == "igt":
        from .igt.runner import main as igt_main

        return igt_main(argv[1:], prog="xe-eudebug igt")
    args = parser.parse_args(argv)
    if args.command == "devices":
        return _devices(args)
    if hasattr(args, "func"):
        return int(args.func(args))
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
