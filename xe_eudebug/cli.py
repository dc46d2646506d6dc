"""The ``xe-eudebug`` command.

    xe-eudebug sim [-v] [--socket PATH] [--devices N] [--idle-exit S] [--enable]
        run the simulated Xe driver in the foreground with logging
    xe-eudebug devices
        list Xe render nodes and the simulator's devices
    xe-eudebug igt [--list-subtests] [--run-subtest GLOB] [--device DEV] [--results F] [--junit F]
        list and run the ported IGT subtests the way an IGT binary does
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
    if not any(not r.get("simulated") and r.get("driver") == "xe" for r in rows):
        print("(no Xe render node; open_device() uses the simulator)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="xe-eudebug", description="Xe EU debugger test framework tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sim", help="run the simulated Xe driver in the foreground", add_help=False)
    sub.add_parser("devices", help="list Xe devices (render nodes and the simulator)")
    sub.add_parser("igt", help="list and run the ported IGT subtests", add_help=False)
    if argv and argv[0] == "sim":
        from .sim.server import main as sim_main

        return sim_main(argv[1:], prog="xe-eudebug sim")
    if argv and argv[0] == "igt":
        from .igt.runner import main as igt_main

        return igt_main(argv[1:], prog="xe-eudebug igt")
    args = parser.parse_args(argv)
    if args.command == "devices":
        return _devices(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
