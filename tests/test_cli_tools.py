"""The ``xe-eudebug`` tools: ``monitor`` against a real debuggee process, ``log print`` /
``log compare`` on saved logs, device-selection errors, ``devices`` and debug logging; their
output and exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator, TextIO

import pytest

pytest.importorskip("xe_eudebug.sim.kernel", reason="the simulator's kernel model is not available")

from xe_eudebug.cli import main  # noqa: E402
from xe_eudebug.events import EventFlags, EventType, make  # noqa: E402
from xe_eudebug.log import EventLog  # noqa: E402
from xe_eudebug.sim.config import SOCKET_ENV  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUGGEE = os.path.join(ROOT, "examples", "debuggee.py")
WAIT = 60.0  # seconds any single step may take on a loaded machine


def _env(srv, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT, XE_EUDEBUG_DEVICE="sim")
    env[SOCKET_ENV] = srv.socket
    env.pop("XE_EUDEBUG_DEBUG", None)
    env.update(extra)
    return env


def _cli(env: dict[str, str], *args: str, timeout: float = WAIT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xe_eudebug", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _private_sim(**fields: object):
    """A private simulator, stopped when the ``with`` block ends (no idle instances left behind
    for the rest of the run)."""
    from xe_eudebug.sim import SimConfig, start_server

    fields.setdefault("idle_exit", 0)
    return start_server(SimConfig(**fields))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sim() -> Iterator[object]:
    """A private two-device simulator for this module (the tests switch its eudebug toggle on)."""
    with _private_sim(devices=2) as handle:
        yield handle


class Debuggee:
    """examples/debuggee.py in --step mode: one step per line written to its stdin."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, DEBUGGEE, "--step", *args], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = self.line()
        assert first.startswith("debuggee pid "), first
        self.pid = int(first.split()[-1])
        assert self.line() == "ready"

    def line(self) -> str:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            self.proc.wait(WAIT)
            raise AssertionError(f"debuggee ended: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return text.strip()

    def step(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.line()

    def finish(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


@contextlib.contextmanager
def _killed_at_exit() -> Iterator[list]:
    """A list to put Debuggee/Monitor objects in; whatever still runs at exit is killed."""
    procs: list = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()


class Monitor:
    """``xe-eudebug monitor`` in a subprocess.  Its stdout and stderr are each read by one thread
    through their file objects to the end: a ``readline()`` reads ahead into the file object's
    buffer, and ``communicate()`` reads the pipe itself, so mixing the two would drop the lines
    read ahead (an event printed right after the one waited for)."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "xe_eudebug", "monitor", "--enable", *args],
                                     env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._out: queue.Queue[str | None] = queue.Queue()
        self._err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        banner = self.proc.stderr.readline()
        self._readers = [threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True),
                         threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True)]
        for reader in self._readers:
            reader.start()
        if "attached to pid" not in banner:
            self.kill()
            raise AssertionError(banner + "".join(self._err))

    def _read_stdout(self, stream: TextIO) -> None:
        for line in stream:
            self._out.put(line.rstrip("\n"))
        self._out.put(None)

    def _read_stderr(self, stream: TextIO) -> None:
        self._err.append(stream.read())

    def _take(self, timeout: float) -> str | None:
        """The next stdout line; None at its end."""
        try:
            return self._out.get(timeout=max(timeout, 0))
        except queue.Empty:
            raise AssertionError(f"the monitor printed nothing for {timeout:.0f} s after {self.lines}") from None

    def wait_for(self, text: str, count: int = 1) -> list[str]:
        """Read stdout lines until ``count`` of them contain ``text``; the lines read so far."""
        deadline = time.monotonic() + WAIT
        while sum(text in line for line in self.lines) < count:
            line = self._take(deadline - time.monotonic())
            assert line is not None, f"monitor ended before printing {text!r}: {self.lines}"
            self.lines.append(line)
        return self.lines

    def _end(self) -> None:
        self.proc.wait(WAIT)
        for reader in self._readers:
            reader.join(WAIT)
            assert not reader.is_alive(), "the monitor exited but its output did not end"
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def finish(self, sig: int | None = None) -> tuple[list[str], str, int]:
        if sig is not None:
            self.proc.send_signal(sig)
        self._end()
        while (line := self._take(0)) is not None:
            self.lines.append(line)
        return self.lines, "".join(self._err), self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self._end()


def test_monitor_prints_events_reads_metadata_acks_and_saves_a_log(sim, tmp_path):
    env = _env(sim)
    saved = tmp_path / "monitor.log"
    with _killed_at_exit() as procs:
        debuggee = Debuggee(env, "--ufence", "--size", "8192", "--fence-wait", str(WAIT))
        procs.append(debuggee)
        monitor = Monitor(env, "--pid", str(debuggee.pid), "--metadata", "--ack", "--save", str(saved))
        procs.append(monitor)
        assert debuggee.step().startswith("created vm")
        lines = monitor.wait_for("payload (8192 bytes)")
        assert any("client(2):create" in line for line in lines)
        assert any("vm(3):create" in line for line in lines)
        meta = next(i for i, line in enumerate(lines) if "metadata(9):create" in line)
        assert "type=1, len=8192" in lines[meta]
        assert lines[meta + 1] == "    payload (8192 bytes): " + bytes(range(32)).hex(" ") + " ..."
        assert debuggee.step() == "user fence signalled"  # the monitor acked it
        assert debuggee.line() == "bound"
        monitor.wait_for("acked seqno")
        assert any("vm_bind_ufence(8):create|ack" in line for line in monitor.lines)
        assert debuggee.step() == "done"
        debuggee.finish()  # its last events reach the monitor's stdout together
        lines = monitor.wait_for("client(2):destroy")
        lines, err, rc = monitor.finish()  # ends by itself once the debuggee has exited
    assert rc == 0, err
    assert err.strip().splitlines() == [
        f"xe-eudebug monitor: detached from pid {debuggee.pid} (pid {debuggee.pid} exited) after "
        f"{sum(1 for line in lines if line.startswith('('))} events; log saved to {saved}"]
    # The saved log prints the same event lines.
    printed = _cli(env, "log", "print", str(saved))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines()[1:] == [line for line in lines if line.startswith("(")]
    assert EventLog.load(saved).name == "debugger"


def test_monitor_json_does_not_ack_unless_asked_and_detaches_on_sigint(sim):
    env = _env(sim)
    with _killed_at_exit() as procs:
        debuggee = Debuggee(env, "--ufence", "--fence-wait", "1")
        procs.append(debuggee)
        monitor = Monitor(env, "--pid", str(debuggee.pid), "--json")
        procs.append(monitor)
        debuggee.step()
        assert debuggee.step() == "user fence not signalled within 1.0 s (held by a debugger)"
        lines = monitor.wait_for('"VM_BIND_UFENCE"')
        lines, err, rc = monitor.finish(signal.SIGINT)  # the debuggee still runs
        assert debuggee.proc.poll() is None
    assert rc == 0, err
    assert err.strip().splitlines() == [
        f"xe-eudebug monitor: detached from pid {debuggee.pid} (SIGINT) after {len(lines)} events"]
    events = [json.loads(line) for line in lines]
    by_type = {e["type"]: e for e in events}
    assert by_type["METADATA"]["flags"] == "create"
    assert by_type["METADATA"]["payload"]["len"] == 4096 and "metadata" not in by_type["METADATA"]
    assert by_type["VM_BIND_UFENCE"]["flags"] == "create|ack" and "ack" not in by_type["VM_BIND_UFENCE"]
    assert [e["seqno"] for e in events] == sorted(e["seqno"] for e in events)


def test_monitor_attached_late_reports_the_discovery_and_reads_discovered_metadata(sim):
    env = _env(sim)
    with _killed_at_exit() as procs:
        debuggee = Debuggee(env, "--size", "100")
        procs.append(debuggee)
        assert debuggee.step().startswith("created vm")  # before any debugger is attached
        monitor = Monitor(env, "--pid", str(debuggee.pid), "--metadata")
        procs.append(monitor)
        monitor.wait_for("vm(3):create")  # discovery order: each client's metadata, then its VMs
        lines, err, rc = monitor.finish(signal.SIGTERM)
    assert rc == 0, err
    events = [line for line in lines if line.startswith("(")]
    parsed = [re.match(r"\(\d+\)\s+(\w+)\(\d+\):(\S+):", e).groups() for e in events]  # type: ignore[union-attr]
    assert parsed == [("client", "create"), ("client", "create"), ("metadata", "create"), ("vm", "create")], lines
    meta = next(i for i, line in enumerate(lines) if "metadata(9):create" in line)
    assert lines[meta + 1] == "    payload (100 bytes): " + bytes(range(32)).hex(" ") + " ..."
    assert err.strip().endswith(f"detached from pid {debuggee.pid} (SIGTERM) after {len(events)} events")


def test_monitor_reads_metadata_while_discovery_waits_for_room_in_the_fifo():
    """With a one-event fifo the discovery of the second VM (two events after the metadata) waits
    until the monitor reads on: READ_METADATA fails EBUSY until then, so the monitor must keep
    reading events instead of waiting for it."""
    with _private_sim(fifo_capacity=1) as tiny, _killed_at_exit() as procs:
        env = _env(tiny)
        debuggee = Debuggee(env, "--size", "64", "--vms", "2")
        procs.append(debuggee)
        assert debuggee.step().startswith("created vm")
        monitor = Monitor(env, "--pid", str(debuggee.pid), "--metadata")
        procs.append(monitor)
        lines = monitor.wait_for("vm(3):create", count=2)
        lines, err, rc = monitor.finish(signal.SIGINT)
    assert rc == 0, err
    meta = next(i for i, line in enumerate(lines) if "metadata(9):create" in line)
    assert lines[meta + 1] == "    payload (64 bytes): " + bytes(range(32)).hex(" ") + " ..."
    assert "vm(3):create" in lines[meta + 2] and "vm(3):create" in lines[meta + 3]


def test_monitor_connect_and_device_errors_say_what_to_do():
    with _private_sim() as fresh:  # eudebug disabled, as the kernel starts
        _check_monitor_errors(fresh)


def _check_monitor_errors(fresh) -> None:
    env = _env(fresh)
    out = _cli(env, "monitor", "--pid", str(os.getpid()))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"xe-eudebug monitor: DRM_IOCTL_XE_EUDEBUG_CONNECT to pid {os.getpid()} failed with ENODEV: "
        "eudebug is disabled on sim:0; run with --enable (or write 1 to the device's sysfs enable_eudebug)")
    out = _cli(dict(env, XE_EUDEBUG_DEVICE="/dev/null"), "monitor", "--pid", "1")
    assert out.returncode == 2
    assert out.stderr.startswith("xe-eudebug monitor: XE_EUDEBUG_DEVICE=/dev/null: not a DRM device")
    assert len(out.stderr.strip().splitlines()) == 1
    out = _cli(env, "monitor")
    assert out.returncode == 2 and "--pid" in out.stderr
    # attached, then Ctrl-C with a --save file that cannot be written: exit 1, still one line
    bad = os.path.join(os.path.dirname(fresh.socket), "no-such-dir", "x.log")
    with _killed_at_exit() as procs:
        monitor = Monitor(env, "--pid", str(os.getpid()), "--save", bad)
        procs.append(monitor)
        lines, err, rc = monitor.finish(signal.SIGINT)
    assert rc == 1 and lines == []
    assert err.strip() == (f"xe-eudebug monitor: detached from pid {os.getpid()} (SIGINT) after 0 events; "
                           f"saving the log to {bad} failed: No such file or directory")


def test_device_selection_errors_are_one_line_naming_the_value_and_the_fix(sim):
    env = _env(sim)
    cases = {
        "/dev/null": "XE_EUDEBUG_DEVICE=/dev/null: not a DRM device (DRM_IOCTL_VERSION failed with ENOTTY); "
                     "set XE_EUDEBUG_DEVICE to an Xe render node",
        "sim:99": "XE_EUDEBUG_DEVICE=sim:99: the simulator has 2 devices (sim:0 to sim:1); select one of "
                  "them, or run a simulator with more (xe-eudebug sim --devices 100)",
        "/dev/dri/renderD4242": "XE_EUDEBUG_DEVICE=/dev/dri/renderD4242: no such device node; "
                                "set XE_EUDEBUG_DEVICE to an Xe render node",
    }
    for value, message in cases.items():
        out = _cli(dict(env, XE_EUDEBUG_DEVICE=value), "devices")
        assert out.returncode == 1, (value, out.stdout, out.stderr)
        assert out.stderr.startswith("xe-eudebug: " + message), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert "sim:1  simulator (running" in out.stdout  # the listing is still printed
    out = _cli(dict(env, XE_EUDEBUG_DEVICE="sim:1"), "devices")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "XE_EUDEBUG_DEVICE=sim:1 selects sim:1"
    gone = os.path.join(os.path.dirname(sim.socket), "nobody-here", "sock")
    out = _cli(dict(env, **{SOCKET_ENV: gone}), "devices")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"xe-eudebug: XE_EUDEBUG_DEVICE=sim: no simulator answers at {gone} (XE_EUDEBUG_SIM_SOCKET names it, "
        f"so none is started); run one there (xe-eudebug sim --socket {gone}) or unset XE_EUDEBUG_SIM_SOCKET")


def _logs() -> tuple[EventLog, EventLog]:
    client, debugger = EventLog("client"), EventLog("debugger")
    for log, handle, base in ((client, 7, 1), (debugger, 3, 40)):
        log.append(make(EventType.OPEN, EventFlags.CREATE, base, client_handle=handle))
        log.append(make(EventType.VM, EventFlags.CREATE, base + 1, client_handle=handle, vm_handle=1))
        log.append(make(EventType.VM, EventFlags.DESTROY, base + 2, client_handle=handle, vm_handle=1))
        log.append(make(EventType.OPEN, EventFlags.DESTROY, base + 3, client_handle=handle))
    return client, debugger


def test_log_print_and_compare_exit_codes(tmp_path, capsys):
    client, debugger = _logs()
    a, b, c = tmp_path / "client.log", tmp_path / "debugger.log", tmp_path / "short.log"
    client.save(a)
    debugger.save(b)
    short = EventLog("debugger")
    for event in debugger:
        if int(event.type) != int(EventType.VM) or event.flags & EventFlags.CREATE:
            short.append(event)
    short.save(c)

    assert main(["log", "print", str(a), str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"event log 'client' ({client.head} bytes):"
    assert out[1:5] == [str(e) for e in client]
    assert out[5] == f"event log 'debugger' ({debugger.head} bytes):"

    assert main(["log", "compare", str(a), str(b)]) == 0
    assert capsys.readouterr().out.startswith(f"MATCH: {a} (client, 4 events) and {b} (debugger, 4 events)")
    assert main(["log", "compare", str(a), str(b), "--strict", "--match-opposite"]) == 0
    capsys.readouterr()

    assert main(["log", "compare", str(a), str(c)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"MISMATCH: {a} (client, 4 events) vs {c} (debugger, 3 events)\n")
    assert out.splitlines()[1] == "client (3): no matching event type 3 found for client 7"
    assert main(["log", "compare", str(a), str(c), "--filter", "vm"]) == 0  # VM events left out
    capsys.readouterr()
    assert main(["log", "compare", str(c), str(c), "--match-opposite"]) == 1  # a VM never destroyed
    capsys.readouterr()

    garbage = tmp_path / "garbage.log"
    garbage.write_bytes(b"not a log")
    assert main(["log", "print", str(garbage)]) == 2
    assert capsys.readouterr().err.strip() == f"xe-eudebug log: {garbage}: not an xe_eudebug event log file"
    assert main(["log", "compare", str(a), str(tmp_path / "missing.log")]) == 2
    assert capsys.readouterr().err.strip() == f"xe-eudebug log: {tmp_path / 'missing.log'}: No such file or directory"
    assert main(["log", "compare", str(a), str(b), "--filter", "bogus"]) == 2
    assert "unknown event type 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["log", "compare", str(a)])
    assert info.value.code == 2


def test_debug_logging_shows_calls_events_and_stages(sim):
    env = _env(sim)
    script = (
        "import os\n"
        "from xe_eudebug import Session, EventType\n"
        "from xe_eudebug.uapi import DRM_XE_VM_CREATE_FLAG_LR_MODE\n"
        "def work(c):\n"
        "    fd = c.open_driver(); vm = c.vm_create(fd, DRM_XE_VM_CREATE_FLAG_LR_MODE)\n"
        "    c.wait_stage(1); c.vm_destroy(fd, vm); c.close_driver(fd)\n"
        "def on_vm(d, e):\n"
        "    d.signal_stage(1)\n"
        "with Session(work) as s:\n"
        "    s.debugger.add_trigger(EventType.VM, on_vm)\n"
        "    s.run(); s.check()\n"
    )
    quiet = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=WAIT)
    assert quiet.returncode == 0, quiet.stderr
    assert "xe_eudebug.ioctl" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", script], env=dict(env, XE_EUDEBUG_DEBUG="1"),
                          capture_output=True, text=True, timeout=WAIT)
    assert loud.returncode == 0, loud.stderr
    err = loud.stderr
    assert "DEBUG xe_eudebug.ioctl: ioctl(" in err and "DRM_IOCTL_XE_VM_CREATE" in err
    assert "INFO xe_eudebug.debugger: debugger connected to pid" in err
    assert "DEBUG xe_eudebug.debugger: event: " in err and "vm(3):create" in err
    assert "xe_eudebug.client: client: " in err and "waiting for stage 1" in err
    assert "xe_eudebug.debugger: debugger: signalling client stage 1" in err
    # a failing call names its errno
    cli = _cli(env, "--debug", "monitor", "--pid", str(os.getpid()), "--device", "sim:1")
    assert cli.returncode == 1
    assert "DRM_IOCTL_XE_EUDEBUG_CONNECT" in cli.stderr and "= -1 ENODEV" in cli.stderr
