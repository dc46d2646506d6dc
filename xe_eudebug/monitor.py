"""``xe-eudebug monitor``: attach to a running process and print its eudebug events live.

    xe-eudebug monitor --pid N [--json] [--metadata] [--ack] [--save FILE] [--device DEV] [--enable]

Connects (``DRM_IOCTL_XE_EUDEBUG_CONNECT``) to process ``N`` on the selected device
(``--device``, else ``XE_EUDEBUG_DEVICE``, else the first Xe render node, else the simulator),
then prints one line per event in IGT's text form -- the discovery of what the process already
holds first, then everything it does -- or one JSON object per line with ``--json``.

* ``--metadata`` reads the payload of every debug metadata object created
  (``DRM_XE_EUDEBUG_IOCTL_READ_METADATA``) and prints its first bytes (all of it in JSON).
* ``--ack`` acknowledges VM_BIND_UFENCE events (``DRM_XE_EUDEBUG_IOCTL_ACK_EVENT``).  Without
  it the kernel holds the process's user fences for as long as the monitor is attached, which is
  what a debugger does; the process's ``DRM_IOCTL_XE_WAIT_USER_FENCE`` then times out.
* ``--save FILE`` writes the received events as an event log (``xe-eudebug log print FILE``).

Ctrl-C (SIGINT) or SIGTERM detaches (closes the debug fd) and prints one line.  The monitor also
ends when the process has exited and no event came for a second.  Exit codes: 0 after a clean
detach, 1 when the connection fails or is lost or the log cannot be saved, 2 for a usage error
(including a device selection that names no Xe device).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import sys
import time
from collections import deque
from typing import Any, TextIO

__all__ = ["add_parser", "run", "event_json"]

#: Poll slice: how quickly Ctrl-C and the target's exit are noticed.
POLL_MS = 100
#: After the target exited, stop once no event arrived for this long (its files' releases).
LINGER_S = 1.0
#: How long a READ_METADATA or ACK_EVENT keeps being retried while it fails EBUSY (the
#: connection's discovery still running; the kernel gives a blocked discovery 25 s).
DISCOVERY_WAIT_S = 60.0
#: Payload bytes shown in the text form with --metadata.
TEXT_PAYLOAD_BYTES = 32

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``monitor`` on the ``xe-eudebug`` sub-command parser."""
    p = sub.add_parser("monitor", help="attach to a process and print its eudebug events live",
                       description="Attach to a running process (DRM_IOCTL_XE_EUDEBUG_CONNECT) and "
                                   "print its eudebug events as they arrive. Ctrl-C detaches.",
                       epilog="exit status: 0 detached (Ctrl-C, SIGTERM, the process exited), 1 the "
                              "connection failed or was lost, 2 usage error or no such device")
    p.add_argument("--pid", type=int, required=True, help="the process to attach to")
    p.add_argument("--json", action="store_true", help="one JSON object per event instead of IGT's text")
    p.add_argument("--metadata", action="store_true", help="read and print debug metadata payloads")
    p.add_argument("--ack", action="store_true", help="acknowledge user fences (VM_BIND_UFENCE events)")
    p.add_argument("--save", metavar="FILE", help="write the received events as an event log file")
    p.add_argument("--device", help="device to connect through (default: XE_EUDEBUG_DEVICE or the first Xe device)")
    p.add_argument("--enable", action="store_true",
                   help="enable eudebug on the device first (sysfs enable_eudebug; root on hardware)")
    p.set_defaults(func=run)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return int(value) if isinstance(value, int) else value


def event_json(event: Any, **extra: Any) -> str:
    """One event as a JSON object: ``type`` (the uapi name), ``flags`` (IGT's text), ``seqno``,
    ``len``, ``payload`` (its fields by their C names), then ``extra``."""
    from .events import flags_str

    etype = event.type
    obj: dict[str, Any] = {
        "type": getattr(etype, "name", str(int(etype))),
        "flags": flags_str(int(event.flags)),
        "seqno": int(event.seqno),
        "len": int(event.base.len),
    }
    obj["payload"] = {name: _jsonable(value) for name, value in event.payload._asdict().items()}
    obj.update(extra)
    return json.dumps(obj)


def _target_gone(pid: int) -> bool:
    """The target has exited (no such process, or a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X")


def _connect_error(err: int, pid: int, where: str) -> str:
    name = errno.errorcode.get(err, str(err))
    reason = {
        errno.ENODEV: f"eudebug is disabled on {where}; run with --enable (or write 1 to the device's "
                      f"sysfs enable_eudebug)",
        errno.ESRCH: f"no process with pid {pid}",
        errno.EBUSY: f"pid {pid} already has a debugger attached on {where} (one per process); "
                     f"stop that debugger first",
        errno.EACCES: f"not allowed to debug pid {pid} (the ptrace access check failed)",
        errno.EPERM: f"not allowed to debug pid {pid} (the ptrace access check failed)",
        errno.EINVAL: f"pid {pid} is not a process that can be debugged",
    }.get(err, os.strerror(err))
    return f"xe-eudebug monitor: DRM_IOCTL_XE_EUDEBUG_CONNECT to pid {pid} failed with {name}: {reason}"


class _Pending:
    """An event read but not printed yet, with what its READ_METADATA / ACK_EVENT gave."""

    __slots__ = ("event", "since", "payload", "acked")

    def __init__(self, event: Any) -> None:
        self.event = event
        self.since = time.monotonic()
        self.payload: bytes | str | None = None
        self.acked: str | None = None


class _Monitor:
    """Prints events in arrival order.  An event whose READ_METADATA or ACK_EVENT fails EBUSY
    (the connection's discovery is still running) waits, and the events after it with it, while
    the main loop keeps reading: discovery may itself wait for room in the event fifo."""

    def __init__(self, args: argparse.Namespace, dbg: Any, out: TextIO) -> None:
        from .events import EventFlags, EventType

        self.args = args
        self.dbg = dbg
        self.out = out
        self.count = 0
        self.pending: deque[_Pending] = deque()
        self._metadata = int(EventType.METADATA)
        self._ufence = int(EventType.VM_BIND_UFENCE)
        self._create = int(EventFlags.CREATE)
        self._need_ack = int(EventFlags.NEED_ACK)

    def handle(self, event: Any) -> None:
        self.count += 1
        self.pending.append(_Pending(event))
        self.flush()

    def _attempt(self, p: _Pending) -> bool:
        """Run the event's requests; False while one is refused EBUSY within DISCOVERY_WAIT_S."""
        e = p.event
        try:
            if (self.args.metadata and p.payload is None and int(e.type) == self._metadata
                    and int(e.flags) & self._create):
                p.payload = self.dbg.read_metadata(e.client_handle, e.metadata_handle, e.len)
            if (self.args.ack and p.acked is None and int(e.type) == self._ufence
                    and int(e.flags) & self._need_ack):
                self.dbg.ack_ufence(e)
                p.acked = "acked"
        except OSError as exc:
            if exc.errno == errno.EBUSY and time.monotonic() - p.since < DISCOVERY_WAIT_S:
                return False
            is_metadata = int(e.type) == self._metadata
            text = f"{'READ_METADATA' if is_metadata else 'ACK_EVENT'} failed: " \
                   f"{errno.errorcode.get(exc.errno or 0, exc.errno)}"
            if is_metadata:
                p.payload = text
            else:
                p.acked = text
        return True

    def flush(self) -> None:
        while self.pending and self._attempt(self.pending[0]):
            self._print(self.pending.popleft())

    def drain(self) -> None:
        """Print what is still pending, with the error of its last attempt (the monitor ends)."""
        for p in self.pending:
            p.since = float("-inf")
        self.flush()

    def _print(self, p: _Pending) -> None:
        event, payload, acked = p.event, p.payload, p.acked
        if self.args.json:
            extra: dict[str, Any] = {}
            if isinstance(payload, bytes):
                extra["metadata"] = payload.hex()
            elif payload is not None:
                extra["metadata_error"] = payload
            if acked is not None:
                extra["ack"] = acked
            print(event_json(event, **extra), file=self.out, flush=True)
            return
        print(str(event), file=self.out)
        if isinstance(payload, bytes):
            head = payload[:TEXT_PAYLOAD_BYTES].hex(" ")
            more = " ..." if len(payload) > TEXT_PAYLOAD_BYTES else ""
            print(f"    payload ({len(payload)} bytes): {head}{more}", file=self.out)
        elif payload is not None:
            print(f"    payload: {payload}", file=self.out)
        if acked is not None:
            print(f"    {acked} seqno {event.seqno}", file=self.out)
        self.out.flush()


def run(args: argparse.Namespace) -> int:
    from . import ioctl as seam
    from .debugger import Debugger
    from .device import device_name, enable_eudebug, open_device
    from .log import EventLogFull

    try:
        fd = open_device(args.device)
    except (OSError, ValueError) as exc:
        print(f"xe-eudebug monitor: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}",
              file=sys.stderr)
        return EXIT_USAGE
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    dbg = None
    try:
        where = device_name(fd)
        if args.enable:
            try:
                enable_eudebug(fd, True)
            except OSError as exc:
                print(f"xe-eudebug monitor: enabling eudebug on {where}: {exc}", file=sys.stderr)
                return EXIT_FAIL
        dbg = Debugger(fd)
        ret = dbg.try_attach(args.pid)
        if ret < 0:
            print(_connect_error(-ret, args.pid, where), file=sys.stderr)
            return EXIT_FAIL
        print(f"xe-eudebug monitor: attached to pid {args.pid} on {where}; Ctrl-C detaches",
              file=sys.stderr, flush=True)
        mon = _Monitor(args, dbg, sys.stdout)
        buf = None
        quiet_since: float | None = None
        log_full = False
        why, lost = "", False
        while not stop["signal"]:
            mon.flush()
            ready = dict(seam.poll([(dbg.fd, select.POLLIN)], POLL_MS if not mon.pending else 10))
            mask = ready.get(dbg.fd, 0)
            if mask & select.POLLIN:
                try:
                    event = dbg.read_event(buf)
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.ENOENT):
                        continue
                    why = f"READ_EVENT failed with {errno.errorcode.get(exc.errno or 0, exc.errno)}"
                    lost = True
                    break
                if args.save and not log_full:
                    try:
                        dbg.log.append(event)
                    except EventLogFull:
                        log_full = True
                        print(f"xe-eudebug monitor: the event log is full; {args.save} keeps the first "
                              f"{len(dbg.log)} events", file=sys.stderr, flush=True)
                mon.handle(event)
                quiet_since = None
                continue
            if mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                why, lost = "the kernel ended the connection", True
                break
            if _target_gone(args.pid):
                now = time.monotonic()
                quiet_since = quiet_since or now
                if now - quiet_since >= LINGER_S:
                    why = f"pid {args.pid} exited"
                    break
        mon.drain()
        if stop["signal"]:
            why = signal.Signals(stop["signal"]).name
        saved = ""
        if args.save:
            try:
                dbg.log.save(args.save)
                saved = f"; log saved to {args.save}"
            except OSError as exc:
                saved, lost = f"; saving the log to {args.save} failed: {exc.strerror or exc}", True
        print(f"xe-eudebug monitor: detached from pid {args.pid} ({why}) after {mon.count} events{saved}",
              file=sys.stderr, flush=True)
        return EXIT_FAIL if lost else EXIT_OK
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if dbg is not None:
            dbg.close()
        os.close(fd)
