"""The seed: IGT's read-metadata and attach-debug-metadata through ``examples/metadata_read.py``.

Positive runs (1 and 4 clients at once, in-process and as a user runs the script) and negative
runs proving that every check the example makes can fail, for the right reason:

* a metadata byte altered on the simulator side is caught by the content check (a kernel model
  that inverts one byte of what READ_METADATA copies out, started as a private simulator through
  the simulator's ``kernel="module:Class"`` testing hook);
* a client writing the other data pattern is caught by the content check;
* a wrong size is caught: kernel models that report one byte less, or one byte more, than the
  object holds, and a client that creates one object with the wrong length;
* an event removed from the debugger log is caught by compare (``EventLogMismatch``).

Each negative test runs once with its fault and once without, and passes both ways.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import importlib.util
import os
import re
import subprocess
import sys
from typing import Any, Callable, Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "metadata_read.py")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from xe_eudebug import EventFlags, EventLog, EventLogMismatch, EventType  # noqa: E402
from xe_eudebug import uapi as U  # noqa: E402

SUBTESTS = ("read-metadata", "attach-debug-metadata")
#: Events one client logs (subtests.md §4.1: 23, FINI carries 24).
EVENTS_PER_CLIENT = 23


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("metadata_read", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mr = sys.modules.get("metadata_read") or _load_example()


def _on_hardware() -> bool:
    return os.environ.get("XE_EUDEBUG_DEVICE", "").startswith("/")


def _kernel_class() -> type | None:
    try:
        from xe_eudebug.sim.kernel import Kernel
    except Exception:
        return None
    return Kernel


_Kernel = _kernel_class()

pytestmark = pytest.mark.skipif(
    _Kernel is None and not _on_hardware(),
    reason="no device: the simulator's kernel model (xe_eudebug.sim.kernel) is not available "
           "and XE_EUDEBUG_DEVICE names no render node",
)
needs_sim = pytest.mark.skipif(
    _on_hardware() or _Kernel is None,
    reason="fault injection needs the simulator (XE_EUDEBUG_DEVICE names real hardware)",
)

# ------------------------------------------------------------------------------------------------
# Kernel models with one fault each (they run inside a private simulator process).

#: Offset of the byte MetadataByteFlipKernel inverts: past the second page, so the first object
#: it hits is type 2 (12 KiB).
FLIP_OFFSET = 8193
_READ_METADATA = U.DRM_XE_EUDEBUG_IOCTL_READ_METADATA


def _read_metadata_arg(data: bytes) -> Any:
    return U.drm_xe_eudebug_read_metadata.from_buffer_copy(bytes(data).ljust(ctypes.sizeof(U.drm_xe_eudebug_read_metadata), b"\0"))


if _Kernel is not None:

    class MetadataByteFlipKernel(_Kernel):  # type: ignore[misc, valid-type]
        """The kernel model, except that a successful READ_METADATA hands the debugger byte
        ``FLIP_OFFSET`` of the object with its bits inverted (when the object is that long)."""

        def ioctl(self, file: Any, caller: Any, request: int, arg: bytes) -> Any:
            result, out = super().ioctl(file, caller, request, arg)
            if request == _READ_METADATA and result == 0:
                rm = _read_metadata_arg(out)
                if rm.ptr and rm.size > FLIP_OFFSET:
                    byte = caller.read(rm.ptr + FLIP_OFFSET, 1)[0]
                    caller.write(rm.ptr + FLIP_OFFSET, bytes([byte ^ 0xFF]))
            return result, out

    class _MisreportedSizeKernel(_Kernel):  # type: ignore[misc, valid-type]
        """The kernel model, except that a successful READ_METADATA reports the object's length
        plus DELTA in ``size`` (copying the object as it should)."""

        DELTA = 0

        def ioctl(self, file: Any, caller: Any, request: int, arg: bytes) -> Any:
            result, out = super().ioctl(file, caller, request, arg)
            if request == _READ_METADATA and result == 0:
                rm = _read_metadata_arg(out)
                if rm.size:
                    rm.size += self.DELTA
                    out = rm.to_bytes()
            return result, out

    class MetadataShortSizeKernel(_MisreportedSizeKernel):
        """READ_METADATA reports one byte less than the object's length."""

        DELTA = -1

    class MetadataLongSizeKernel(_MisreportedSizeKernel):
        """READ_METADATA reports one byte more than the object's length."""

        DELTA = 1


    class DetachingKernel(_Kernel):  # type: ignore[misc, valid-type]
        """The kernel model, except that a connection is detached with ETIMEDOUT (as after an
        event fifo stayed full for 25 s) instead of queueing its 16th event."""

        def _queue(self, conn: Any, event: bytes) -> bool:
            sent = getattr(conn, "_test_sent", 0) + 1
            conn._test_sent = sent
            if sent == 16:
                self._detach(conn, -errno.ETIMEDOUT)
                return False
            return super()._queue(conn, event)


@pytest.fixture(scope="module")
def faulty_server(sim_server: Callable[..., Any]) -> Callable[[str], Any]:
    """``faulty_server("MetadataByteFlipKernel")``: a private simulator running that kernel model
    (started once per model and module)."""
    servers: dict[str, Any] = {}

    def start(kernel: str) -> Any:
        if kernel not in servers:
            servers[kernel] = sim_server(kernel=f"tests.test_metadata:{kernel}")
        return servers[kernel]

    return start


@pytest.fixture
def faulty_device(faulty_server: Callable[[str], Any]) -> Iterator[Callable[[str], int]]:
    """``faulty_device("MetadataByteFlipKernel")``: an open fd of that faulty simulator."""
    fds: list[int] = []

    def open_faulty(kernel: str) -> int:
        fds.append(faulty_server(kernel).open_device(0))
        return fds[-1]

    yield open_faulty
    for fd in fds:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# Helpers


def _events(log: EventLog, etype: EventType, flags: int | None = None) -> list[Any]:
    return [e for e in log if e.type == etype and (flags is None or e.flags == flags)]


def _check_debugger_log(log: EventLog) -> None:
    """What the kernel reported is what the client did: five objects of (type+1) pages, five
    attached with cookies 0..4, each created once and destroyed once."""
    created = _events(log, EventType.METADATA, EventFlags.CREATE)
    destroyed = _events(log, EventType.METADATA, EventFlags.DESTROY)
    assert [(e.metadata_type, e.len) for e in created] == [(t, (t + 1) * 4096) for t in range(5)]
    assert sorted(e.metadata_handle for e in destroyed) == sorted(e.metadata_handle for e in created)
    attached = _events(log, EventType.VM_BIND_OP_METADATA)
    assert [e.metadata_cookie for e in attached] == [0, 1, 2, 3, 4]
    assert [e.metadata_handle for e in attached] == [e.metadata_handle for e in created]
    ops = _events(log, EventType.VM_BIND_OP, EventFlags.CREATE)
    assert [(op.addr, op.num_extensions) for op in ops] == [(mr.BO_ADDR, 5)]


def _faulted_run(subtest: str, fault: bool, **kwargs: Any) -> Any:
    """Run a subtest; without the fault it must pass (None is returned), with it the failed
    Result is returned for the test to examine."""
    result = mr.run_subtest(subtest, **kwargs)
    if not fault:
        assert result.passed, f"{result.line()}\n{result.error}"
        return None
    return result


def _only_error(result: Any) -> BaseException:
    assert not result.passed, result.line()
    assert len(result.errors) == 1, result.error
    return result.errors[0]


def _trigger_check_error(result: Any) -> str:
    """The failed debugger-side check of a run, as text (it reaches the test as TriggerError)."""
    from xe_eudebug.debugger import TriggerError

    err = _only_error(result)
    assert result.compared == 0, "a failed trigger ends the session before its logs are compared"
    assert isinstance(err, TriggerError), f"expected a failed trigger check, got {type(err).__name__}: {err}"
    assert isinstance(err.exception, mr.MetadataCheckError), repr(err.exception)
    return str(err.exception)


# ------------------------------------------------------------------------------------------------
# Positive runs


@pytest.mark.parametrize("clients", [1, 4])
@pytest.mark.parametrize("subtest", SUBTESTS)
def test_subtest_passes(subtest: str, clients: int) -> None:
    result = mr.run_subtest(subtest, clients=clients)
    assert result.passed, f"{result.line()}\n{result.error}"
    assert len(result.logs) == clients
    assert result.client_events == result.debugger_events == EVENTS_PER_CLIENT * clients
    for client_log, debugger_log in result.logs:
        assert len(client_log) == len(debugger_log) == EVENTS_PER_CLIENT
        _check_debugger_log(debugger_log)
    assert result.line() == (f"{subtest}: PASS ({'1 client' if clients == 1 else f'{clients} clients'}, "
                             f"{EVENTS_PER_CLIENT * clients} client events compared with "
                             f"{EVENTS_PER_CLIENT * clients} debugger events)")


def test_igt_pattern_passes() -> None:
    result = mr.run_subtest("attach-debug-metadata", pattern="igt")
    assert result.passed, result.error


def test_patterns_differ_where_subtests_md_says() -> None:
    seed, igt = mr.pattern_bytes("seed"), mr.pattern_bytes("igt")
    assert seed[:4096] == igt[:4096] and seed[4097:8192] == igt[4097:8192]
    assert (seed[4096], igt[4096]) == (0x00, 0x01)
    assert all(seed[i] != igt[i] for i in range(8192, mr.MDATA_SIZE))
    assert seed[:8] == bytes(range(8)) and seed[4097] == (4097 + 1) & 0xFF


VERDICT = re.compile(r"^(read-metadata|attach-debug-metadata): (PASS|FAIL) \((\d+) clients?, "
                     r"(\d+) client events(?: compared with|,) (\d+) debugger events.*\)$", re.M)


def _run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = dict(os.environ if env is None else env)
    run_env.pop("PYTHONPATH", None)          # as from a fresh checkout: nothing on the path
    return subprocess.run([sys.executable, os.path.join("examples", "metadata_read.py"), *args],
                          cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=120)


def test_script_runs_as_a_user_runs_it() -> None:
    proc = _run_script()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdicts = VERDICT.findall(proc.stdout)
    assert verdicts == [(name, "PASS", "1", str(EVENTS_PER_CLIENT), str(EVENTS_PER_CLIENT))
                        for name in SUBTESTS], proc.stdout
    assert len(proc.stdout.splitlines()) == 2, proc.stdout


# ------------------------------------------------------------------------------------------------
# Negative runs: each check can fail, and fails for the right reason


@needs_sim
@pytest.mark.parametrize("fault", [False, True], ids=["no-fault", "fault"])
@pytest.mark.parametrize("subtest", SUBTESTS)
def test_altered_byte_is_caught_by_content_check(subtest: str, fault: bool, faulty_device: Any) -> None:
    device = faulty_device("MetadataByteFlipKernel") if fault else None
    result = _faulted_run(subtest, fault, device=device)
    if result is None:
        return
    expected = mr.igt_pattern(FLIP_OFFSET)  # the default pattern: IGT's
    message = _trigger_check_error(result)
    # Types 0 and 1 are shorter than the offset and pass; type 2 is the first object hit.
    assert message == (f"metadata type 2: byte {FLIP_OFFSET} is {expected ^ 0xFF:#04x}, "
                       f"expected {expected:#04x} (igt pattern)")
    # Only the content was wrong: the debugger still saw every event.  The trigger released
    # the client's stages, so the run waited for the client's end: its log is there too.
    client_log, debugger_log = result.logs[0]
    assert len(client_log) == len(debugger_log) == EVENTS_PER_CLIENT


@pytest.mark.parametrize("fault", [False, True], ids=["no-fault", "fault"])
def test_other_pattern_is_caught_by_content_check(fault: bool) -> None:
    writer = "igt" if fault else "seed"
    result = _faulted_run("read-metadata", fault, pattern="seed",
                            work=functools.partial(mr.metadata_access_client, pattern=writer))
    if result is None:
        return
    # subtests.md §4.6: type 0 is identical under both patterns, type 1 differs at 4096 only.
    assert _trigger_check_error(result) == "metadata type 1: byte 4096 is 0x01, expected 0x00 (seed pattern)"


@needs_sim
@pytest.mark.parametrize("fault", [False, True], ids=["no-fault", "fault"])
@pytest.mark.parametrize("subtest", SUBTESTS)
@pytest.mark.parametrize("kernel,reported", [("MetadataShortSizeKernel", 4095), ("MetadataLongSizeKernel", 4097)],
                         ids=["under", "over"])
def test_misreported_size_is_caught(subtest: str, fault: bool, kernel: str, reported: int, faulty_device: Any) -> None:
    """IGT checks the size the kernel reports equals (type + 1) pages, also when the debugger's
    buffer is exactly that long (read-metadata): a size beyond it must not be cut to fit."""
    device = faulty_device(kernel) if fault else None
    result = _faulted_run(subtest, fault, device=device)
    if result is None:
        return
    assert _trigger_check_error(result) == f"metadata type 0: READ_METADATA size is {reported} bytes, expected 4096"


@needs_sim
@pytest.mark.parametrize("fault", [False, True], ids=["no-fault", "fault"])
def test_read_metadata_refuses_an_over_reported_size(fault: bool, faulty_device: Any) -> None:
    """Debugger.read_metadata raises (EOVERFLOW, naming the ioctl and both sizes) rather than
    returning a result cut to the buffer when the kernel reports more than the buffer holds."""
    seen: list[Any] = []

    def on_metadata(d: Any, e: Any) -> None:
        if e.flags & EventFlags.CREATE:
            try:
                seen.append(d.read_metadata(e.client_handle, e.metadata_handle, e.len))
            except OSError as exc:
                seen.append(exc)
            d.signal_stage(e.metadata_type)

    device = faulty_device("MetadataLongSizeKernel") if fault else None
    from xe_eudebug import Session

    with Session(mr.metadata_access_client, device=device) as s:
        s.debugger.add_trigger(EventType.METADATA, on_metadata)
        s.run()
    assert len(seen) == mr.METADATA_NUM
    if not fault:
        assert seen == [mr.pattern_bytes(mr.DEFAULT_PATTERN, n) for n in mr.METADATA_LENGTHS]
        return
    assert all(isinstance(x, OSError) for x in seen), seen
    assert str(seen[0]) == ("[Errno 75] DRM_XE_EUDEBUG_IOCTL_READ_METADATA: the kernel reported size 4097 "
                            "for a 4096-byte buffer")


@pytest.mark.parametrize("fault", [False, True], ids=["no-fault", "fault"])
def test_default_pattern_is_igts(fault: bool) -> None:
    """Both subtests check IGT's current pattern (i + i/4096) % 256 unless told otherwise: a
    client writing the seed's pattern fails the default check where the two differ."""
    writer = "seed" if fault else "igt"
    for subtest in SUBTESTS:
        result = _faulted_run(subtest, fault, work=functools.partial(mr.metadata_access_client, pattern=writer))
        if result is None:
            continue
        assert _trigger_check_error(result) == "metadata type 1: byte 4096 is 0x00, expected 0x01 (igt pattern)"


@pytest.mark.parametrize("fault", [False, True], ids=["no-fault", "fault"])
@pytest.mark.parametrize("subtest", SUBTESTS)
def test_wrong_object_size_is_caught(subtest: str, fault: bool) -> None:
    """The client creates the type-2 object one page short (and destroys it with that length,
    so the logs still agree): only the size checks can notice."""
    lengths = list(mr.METADATA_LENGTHS)
    if fault:
        lengths[2] -= 4096
    result = _faulted_run(subtest, fault, work=functools.partial(mr.metadata_access_client, lengths=lengths))
    if result is None:
        return
    what = "METADATA event len" if subtest == "read-metadata" else "READ_METADATA size"
    assert _trigger_check_error(result) == f"metadata type 2: {what} is 8192 bytes, expected 12288"


def _drop_debugger_event(match: Callable[[Any], bool]) -> Callable[[Any], None]:
    """A ``before_check`` hook removing the one debugger-log event ``match`` selects."""

    def drop(session: Any) -> None:
        log = session.debugger.log
        kept = EventLog(log.name)
        for e in log:
            if not match(e):
                kept.append(e)
        assert len(kept) == len(log) - 1, "the hook must remove exactly one event"
        session.debugger.log = kept

    return drop


#: The event removed per subtest: the one its trigger reads type 3 on.
VICTIMS: dict[str, Callable[[Any], bool]] = {
    "read-metadata": lambda e: (e.type == EventType.METADATA and e.flags == EventFlags.CREATE
                                and e.metadata_type == 3),
    "attach-debug-metadata": lambda e: e.type == EventType.VM_BIND_OP_METADATA and e.metadata_cookie == 3,
}


@pytest.mark.parametrize("fault", [False, True], ids=["no-fault", "fault"])
@pytest.mark.parametrize("subtest", SUBTESTS)
def test_removed_event_is_caught_by_compare(subtest: str, fault: bool) -> None:
    victim = VICTIMS[subtest]
    hook = _drop_debugger_event(victim) if fault else (lambda s: None)
    result = _faulted_run(subtest, fault, before_check=hook)
    if result is None:
        return
    err = _only_error(result)
    assert result.compared == 1
    assert isinstance(err, EventLogMismatch), f"{type(err).__name__}: {err}"
    # A client event is left without a match.  For VM_BIND_OP_METADATA compare matches the
    # handle and cookie, so it is the removed event's counterpart (cookie 3); METADATA events
    # match on type and flags only (IGT's table), so greedy matching leaves the client's last
    # METADATA CREATE (type 4, seqno 7) over.
    assert err.log_name == "client" and err.other_name == "debugger"
    assert err.event is not None
    if subtest == "read-metadata":
        assert (err.event.type, err.event.flags, err.event.seqno) == (EventType.METADATA, EventFlags.CREATE, 7)
    else:
        assert victim(err.event) and err.event.seqno == 13
    assert re.match(rf"client \({err.event.seqno}\): no matching event type {int(err.event.type)} found",
                    str(err)), str(err)


@needs_sim
def test_failing_script_exits_1_with_mismatch_and_both_logs(faulty_server: Any) -> None:
    """The script's failure path, on a simulator whose READ_METADATA corrupts a byte."""
    from xe_eudebug.sim.config import SOCKET_ENV

    server = faulty_server("MetadataByteFlipKernel")
    env = dict(os.environ, XE_EUDEBUG_DEVICE="sim")
    env[SOCKET_ENV] = server.socket
    proc = _run_script("--subtest", "attach-debug-metadata", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    # The failed trigger ends the session once the client finished (the trigger released its
    # stages): both logs are complete.
    verdicts = VERDICT.findall(out)
    assert verdicts == [("attach-debug-metadata", "FAIL", "1", str(EVENTS_PER_CLIENT), str(EVENTS_PER_CLIENT))], out
    assert "logs of 1 session(s) not compared: the run failed first" in out
    assert "metadata type 2: byte 8193 is 0xfc, expected 0x03 (igt pattern)" in out
    # both logs, in IGT's text form: five VM_BIND_OP_METADATA creates in each
    assert out.index("event log 'client'") < out.index("event log 'debugger'")
    assert len(re.findall(r"^\(\d+\) +vm_bind_op_metadata\(10\):create:", out, re.M)) == 10


@needs_sim
def test_kernel_detach_is_named_in_the_verdict(faulty_device: Any) -> None:
    """A debugger the kernel detached (poll HUP|ERR, here after its 15th event) makes the
    verdict FAIL and say so, not only report missing events."""
    result = mr.run_subtest("read-metadata", device=faulty_device("DetachingKernel"))
    assert not result.passed and result.detached == 1
    line = result.line()
    assert line.startswith("read-metadata: FAIL (1 client, ")
    assert line.endswith("; 1 debugger(s) detached by the kernel (poll HUP|ERR: an event fifo stayed "
                         "full for 25 s, or another kernel error))"), line
    assert len(result.logs[0][1]) == 15


@needs_sim
def test_failure_output_is_bounded(faulty_server: Any) -> None:
    """Eight failing sessions: the script prints the first five failures, a count of the rest
    and the logs of two sessions, not everything (1000 clients printed 54,000 lines)."""
    from xe_eudebug.sim.config import SOCKET_ENV

    server = faulty_server("MetadataByteFlipKernel")
    env = dict(os.environ, XE_EUDEBUG_DEVICE="sim")
    env[SOCKET_ENV] = server.socket
    proc = _run_script("--subtest", "read-metadata", "--clients", "8", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert [v[:3] for v in VERDICT.findall(out)] == [("read-metadata", "FAIL", "8")], out
    assert out.count("TriggerError") == 5
    assert "... and 3 more failed session(s) (-v prints every log)" in out
    assert out.count("event log 'client'") == 2 and out.count("event log 'debugger'") == 2
    assert len(out.splitlines()) < 150


def test_counts_beyond_the_machine_are_refused_early() -> None:
    """More clients than the open-file limit allows: one line naming the limit, exit 2, before
    anything runs."""
    import resource

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    run_env = dict(os.environ)
    run_env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, EXAMPLE, "--clients", "300"], cwd=ROOT, env=run_env,
                          capture_output=True, text=True, timeout=60, preexec_fn=low_limit)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "metadata_read.py: --clients 300 needs about 3064 open files in one process; the limit is 256 "
        "(RLIMIT_NOFILE, ulimit -n): at most 19 clients"], proc.stderr


def test_counts_beyond_the_cores_are_refused_early() -> None:
    """All sessions run at once, so the CPU bounds them too: on one core, 300 clients are refused
    with one line naming the limit."""
    def one_core() -> None:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    run_env = dict(os.environ)
    run_env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, EXAMPLE, "--clients", "300"], cwd=ROOT, env=run_env,
                          capture_output=True, text=True, timeout=60, preexec_fn=one_core)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "metadata_read.py: --clients 300 is more than 1 core(s) run at once within the clients' 60 s "
        "waits: at most 200 clients (200 per core)"], proc.stderr
