"""Read debug metadata from an EU debugger: IGT's ``read-metadata`` and ``attach-debug-metadata``.

This is the Python form of the two metadata subtests of IGT's ``tests/intel/xe_eudebug.c``
(patch "tests/xe_eudebug: Exercise debug metadata events sent to debugger", July 2024).  Copy it
to start your own eudebug test: everything a test needs is here, in the order you write it.

What happens
------------
A *client* (the debuggee, a forked process) opens the device, creates a long-running VM and a
buffer object, and creates five debug metadata objects: object ``k`` (k = 0..4) has type ``k``
and holds the first ``(k + 1) * 4096`` bytes of one 20 KiB buffer filled with a known pattern.
It binds the buffer object at 0x1a0000 with all five objects attached to the bind (an
ATTACH_DEBUG extension chain, cookie = type), then waits for the debugger to release it once
per object (stage 0, 1, 2, 3, 4), and finally tears everything down.

A *debugger* attached to the client receives the kernel's events and, from a trigger:

* ``read-metadata``: on every METADATA CREATE event it reads the object with
  ``READ_METADATA`` (exactly ``len`` bytes), checks its size and every byte, and releases the
  client's stage ``type``;
* ``attach-debug-metadata``: on every VM_BIND_OP_METADATA event it follows the event's
  references back to its VM_BIND (``find_seqno``) to learn the client handle, reads the object
  with a 20 KiB buffer, checks the size the kernel reports and every byte, and releases the
  stage ``cookie``.

Both subtests then compare the events the client expected with the events the debugger
received, and check that every object the debugger saw created was destroyed identically
(``check(match_opposite=True)``).

Running it
----------
::

    python3 examples/metadata_read.py                          # both subtests, one client
    python3 examples/metadata_read.py --subtest read-metadata -v
    python3 examples/metadata_read.py --clients 4 --pattern seed

``XE_EUDEBUG_DEVICE`` selects the device (a render node, or ``sim``); without it the first Xe
render node is used, else the bundled simulator.  Exit status 0 means every subtest passed.

The code lives in ``xe_eudebug/igt/metadata.py`` (installed with the package, where
``xe-eudebug igt`` runs the same two subtests); ``examples/metadata_read.py`` runs its ``main``.
``docs/metadata-walkthrough.md`` maps every line to the C original.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import select
import sys
import threading
import time
from typing import Callable, Sequence

from xe_eudebug import Client, Debugger, EventFlags, EventLog, EventType, Session
from xe_eudebug import ioctl as _seam
from xe_eudebug.client import attach_debug_chain
from xe_eudebug.device import min_alignment
from xe_eudebug.igt.registry import subtest
from xe_eudebug.uapi import (
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    WORK_IN_PROGRESS_DRM_XE_DEBUG_METADATA_NUM,
)

# ------------------------------------------------------------------------------------------------
# Constants of the test (the C #defines)

PAGE_SIZE = 4096
#: Number of metadata types (ELF_BINARY, PROGRAM_MODULE and the three work-in-progress types):
#: the client creates one object of each type, 0..4.
METADATA_NUM = WORK_IN_PROGRESS_DRM_XE_DEBUG_METADATA_NUM
#: The buffer every object is a prefix of; also the debugger's read size in attach-debug-metadata.
MDATA_SIZE = METADATA_NUM * PAGE_SIZE
#: GPU virtual address of the bind.
BO_ADDR = 0x1A0000
#: Failures and session logs printed when a subtest fails (without -v).
MAX_ERRORS_SHOWN = 5
MAX_LOGS_SHOWN = 2


def metadata_length(metadata_type: int) -> int:
    """Length of the object of a type: the test makes them differ, so a size check can tell
    them apart ((type + 1) pages)."""
    return (metadata_type + 1) * PAGE_SIZE


#: Lengths of the five objects, in type order (4, 8, 12, 16 and 20 KiB).
METADATA_LENGTHS = tuple(metadata_length(t) for t in range(METADATA_NUM))

# ------------------------------------------------------------------------------------------------
# The data pattern.  Writer (client) and verifier (debugger) must use the same one.


def seed_pattern(i: int) -> int:
    """Byte ``i`` of the July 2024 seed: index plus one past the first page boundary."""
    return (i + (i > PAGE_SIZE)) & 0xFF


def igt_pattern(i: int) -> int:
    """Byte ``i`` of current upstream IGT: index plus its page number."""
    return (i + i // PAGE_SIZE) & 0xFF


PATTERNS: dict[str, Callable[[int], int]] = {"seed": seed_pattern, "igt": igt_pattern}
#: The pattern both subtests use unless told otherwise: current upstream IGT's.
DEFAULT_PATTERN = "igt"


@functools.lru_cache(maxsize=None)
def pattern_bytes(pattern: str, size: int = MDATA_SIZE) -> bytes:
    """The first ``size`` bytes of a pattern (``"seed"`` or ``"igt"``)."""
    byte = PATTERNS[pattern]
    return bytes(byte(i) for i in range(size))


# ------------------------------------------------------------------------------------------------
# The client: runs in a forked process; every helper of ``c`` issues the ioctl and records the
# event(s) the kernel should send to the debugger.


def metadata_access_client(c: Client, pattern: str = DEFAULT_PATTERN,
                           lengths: Sequence[int] = METADATA_LENGTHS) -> None:
    """IGT's ``metadata_access_client``: one VM, one bound BO with five metadata attached."""
    data = pattern_bytes(pattern)

    fd = c.open_driver()                                    # OPEN CREATE
    bo_size = min_alignment(fd)                             # xe_get_default_alignment()
    # Only long-running VMs report VM and bind events on the target kernel (the seed used 0).
    vm = c.vm_create(fd, DRM_XE_VM_CREATE_FLAG_LR_MODE)     # VM CREATE
    # A VM-private BO in system memory.  Buffer objects produce no events: nothing is logged.
    bo = c.bo_create(fd, bo_size, vm=vm)

    # Five objects, each a prefix of the same buffer: METADATA CREATE for each.
    ids = [c.metadata_create(fd, type=t, data=data[:length]) for t, length in enumerate(lengths)]

    # Attach all five to one bind: an ATTACH_DEBUG extension chain, cookie = type.  The bind
    # logs VM_BIND, VM_BIND_OP CREATE (num_extensions 5) and one VM_BIND_OP_METADATA per node.
    chain = attach_debug_chain((metadata_id, t) for t, metadata_id in enumerate(ids))
    c.vm_bind(fd, vm, bo, 0, BO_ADDR, bo_size, ext=chain)

    # The debugger releases stage k once it has read and checked object k.  Nothing is
    # destroyed before all five reads, so every READ_METADATA finds a live object.
    for t in range(METADATA_NUM):
        c.wait_stage(t)

    c.vm_unbind(fd, vm, 0, BO_ADDR, bo_size)                # VM_BIND, VM_BIND_OP DESTROY
    for t, metadata_id in enumerate(ids):                   # METADATA DESTROY (same fields)
        c.metadata_destroy(fd, metadata_id, type=t, length=lengths[t])
    c.bo_close(fd, bo)                                      # GEM_CLOSE (the C code calls close())
    c.vm_destroy(fd, vm)                                    # VM DESTROY
    c.close_driver(fd)                                      # OPEN DESTROY


# ------------------------------------------------------------------------------------------------
# The debugger's checks


class MetadataCheckError(AssertionError):
    """The debugger read metadata of the wrong size or content."""


def check_size(metadata_type: int, size: int, what: str) -> None:
    """The test gives each type its own length, so the type tells the size to expect."""
    expected = metadata_length(metadata_type)
    if size != expected:
        raise MetadataCheckError(
            f"metadata type {metadata_type}: {what} is {size} bytes, expected {expected}")


def check_content(metadata_type: int, data: bytes, pattern: str) -> None:
    """Every byte must be the pattern's byte at that offset."""
    expected = pattern_bytes(pattern, len(data))
    if data != expected:
        i = next(i for i, (a, b) in enumerate(zip(data, expected)) if a != b)
        raise MetadataCheckError(
            f"metadata type {metadata_type}: byte {i} is {data[i]:#04x}, expected {expected[i]:#04x}"
            f" ({pattern} pattern)")


# ------------------------------------------------------------------------------------------------
# The triggers: called by the debugger's worker thread for every event of their type.


def read_metadata_trigger(pattern: str = DEFAULT_PATTERN) -> Callable[[Debugger, object], None]:
    """read-metadata: on METADATA events, read the object the event names."""

    def on_metadata(d: Debugger, e) -> None:
        created = bool(e.flags & EventFlags.CREATE)
        try:
            # Create and destroy events both carry the type and length of the object.
            check_size(e.metadata_type, e.len, "METADATA event len")
            if created:
                # Read exactly `len` bytes.  The size the kernel reports having copied must be
                # the object's length ((type + 1) pages), neither less nor more.
                size, data = d.read_metadata_sized(e.client_handle, e.metadata_handle, e.len)
                check_size(e.metadata_type, size, "READ_METADATA size")
                check_content(e.metadata_type, data, pattern)
        finally:
            if created:
                # Release the client's stage `type`.  Do it even when a check failed: run()
                # reports the failure anyway, and the client need not sit out its 60 s stage
                # timeout first.
                d.signal_stage(e.metadata_type)

    return on_metadata


def attach_debug_metadata_trigger(pattern: str = DEFAULT_PATTERN) -> Callable[[Debugger, object], None]:
    """attach-debug-metadata: on VM_BIND_OP_METADATA events, read the attached object."""

    def on_vm_bind_op_metadata(d: Debugger, e) -> None:
        try:
            # The event names the metadata but not the client: it references its VM_BIND_OP,
            # which references its VM_BIND, which carries the client handle.  Both are already
            # in the debugger's log (the kernel sends them first).
            op = d.log.find_seqno(e.vm_bind_op_ref_seqno)
            assert op is not None, f"no VM_BIND_OP with seqno {e.vm_bind_op_ref_seqno} in the debugger log"
            bind = d.log.find_seqno(op.vm_bind_ref_seqno)
            assert bind is not None, f"no VM_BIND with seqno {op.vm_bind_ref_seqno} in the debugger log"

            # Read with a buffer big enough for any of the objects: the kernel copies the
            # object and reports its real size.  The client set cookie = type, so the cookie
            # tells the size to expect.
            size, data = d.read_metadata_sized(bind.client_handle, e.metadata_handle, MDATA_SIZE)
            check_size(e.metadata_cookie, size, "READ_METADATA size")
            check_content(e.metadata_cookie, data, pattern)
        finally:
            d.signal_stage(e.metadata_cookie)               # release the client's stage `cookie`

    return on_vm_bind_op_metadata


#: Subtest name -> (event type to trigger on, trigger factory).
SUBTESTS: dict[str, tuple[EventType, Callable[[str], Callable[[Debugger, object], None]]]] = {
    "read-metadata": (EventType.METADATA, read_metadata_trigger),
    "attach-debug-metadata": (EventType.VM_BIND_OP_METADATA, attach_debug_metadata_trigger),
}

# ------------------------------------------------------------------------------------------------
# Running a subtest


@dataclasses.dataclass
class Result:
    """Outcome of one subtest run."""

    subtest: str
    clients: int
    #: Events in the client logs and in the debugger logs (summed over clients).
    client_events: int = 0
    debugger_events: int = 0
    #: What went wrong, one exception per failed session (empty when the subtest passed):
    #: EventLogMismatch from the log checks, TriggerError for a failed debugger-side check,
    #: ClientError for a failed client.
    errors: list[BaseException] = dataclasses.field(default_factory=list)
    #: (client log, debugger log) of each session.
    logs: list[tuple[EventLog, EventLog]] = dataclasses.field(default_factory=list)
    #: Sessions whose logs reached the compare (a failed run or trigger ends a session before).
    compared: int = 0
    #: Debuggers the kernel detached (poll reports HUP|ERR: an event fifo stayed full for 25 s,
    #: or another error in the kernel); their connection lost every event not yet queued.
    detached: int = 0

    @property
    def passed(self) -> bool:
        return not self.errors and not self.detached

    @property
    def error(self) -> str:
        """The failures as text."""
        return "\n".join(f"{type(e).__name__}: {e}" for e in self.errors)

    def error_summary(self, limit: int = MAX_ERRORS_SHOWN) -> str:
        """The first ``limit`` failures as text, then how many more there were."""
        shown = "\n".join(f"{type(e).__name__}: {e}" for e in self.errors[:limit])
        more = len(self.errors) - limit
        return shown + (f"\n... and {more} more failed session(s) (-v prints every log)" if more > 0 else "")

    def line(self) -> str:
        """The one-line verdict the script prints."""
        verdict = "PASS" if self.passed else "FAIL"
        n = "1 client" if self.clients == 1 else f"{self.clients} clients"
        if self.compared == self.clients:
            counts = f"{self.client_events} client events compared with {self.debugger_events} debugger events"
        else:
            counts = (f"{self.client_events} client events, {self.debugger_events} debugger events; "
                      f"logs of {self.clients - self.compared} session(s) not compared: the run failed first")
        if self.detached:
            counts += (f"; {self.detached} debugger(s) detached by the kernel (poll HUP|ERR: an event fifo "
                       f"stayed full for 25 s, or another kernel error)")
        return f"{self.subtest}: {verdict} ({n}, {counts})"

    def format_logs(self, limit: int | None = None) -> str:
        """Both event logs of every session (of the first ``limit`` sessions whose logs differ,
        when given) in IGT's text form."""
        logs = self.logs
        if limit is not None:
            logs = [(c, d) for c, d in logs if len(c) != len(d)][:limit] or logs[:limit]
        return "\n".join(f"{client_log.format()}\n{debugger_log.format()}" for client_log, debugger_log in logs)


#: Upper bound for running and checking all sessions of a subtest, plus SESSION_TIMEOUT_PER_CLIENT
#: for each client (the work grows with their number).  The framework's own waits time out sooner
#: (60 s per client token); this only keeps a wedged run from hanging the script.
SESSION_TIMEOUT = 180.0
SESSION_TIMEOUT_PER_CLIENT = 0.5


def run_session(s: Session, before_check: Callable[[Session], None] | None = None) -> None:
    """Run one session and check it: IGT's ``xe_eudebug_session_run`` + ``_check``."""
    s.run()                                 # attach, start the worker, run the client, stop
    if before_check is not None:
        before_check(s)
    s.check(match_opposite=True, filter=0)  # compare both logs; every create has its destroy


def run_subtest(name: str, *, pattern: str = DEFAULT_PATTERN, clients: int = 1, verbose: bool = False,
                device: str | int | None = None,
                work: Callable[[Client], None] | None = None,
                before_check: Callable[[Session], None] | None = None) -> Result:
    """Run subtest ``name`` with ``clients`` client/debugger pairs at once and return its Result.

    ``pattern`` is the data pattern the client writes and the debugger expects.  ``device``
    selects the device as ``Session`` does (default: ``XE_EUDEBUG_DEVICE``, else auto).
    ``work`` replaces the client's work function (default: :func:`metadata_access_client`
    writing ``pattern``); ``before_check(session)`` runs between a session's run and its check.
    Both exist to inject faults when testing the checks themselves.
    """
    event_type, make_trigger = SUBTESTS[name]
    work = work or functools.partial(metadata_access_client, pattern=pattern)
    result = Result(name, clients)
    lock = threading.Lock()

    def reached_check(s: Session) -> None:
        if before_check is not None:
            before_check(s)
        with lock:
            result.compared += 1

    def run_one(s: Session) -> None:
        try:
            run_session(s, reached_check)
        except BaseException as exc:  # noqa: BLE001 - reported in the Result
            with lock:
                result.errors.append(exc)
        finally:
            if kernel_detached(s.debugger):
                with lock:
                    result.detached += 1

    sessions: list[Session] = []
    try:
        # Create every session first: each forks its client, and clients must be forked
        # before any debugger worker thread runs.  Then run them side by side, one thread each.
        for _ in range(clients):
            s = Session(work, device=device)
            sessions.append(s)
            s.debugger.add_trigger(event_type, make_trigger(pattern))
        threads = [threading.Thread(target=run_one, args=(s,), name=f"{name}-{i}", daemon=True)
                   for i, s in enumerate(sessions)]
        for t in threads:
            t.start()
        limit = SESSION_TIMEOUT + SESSION_TIMEOUT_PER_CLIENT * clients
        deadline = time.monotonic() + limit
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                result.errors.append(TimeoutError(f"{t.name} did not finish within {limit:.0f} s"))
    except Exception as exc:  # e.g. no device, eudebug not available
        result.errors.append(exc)
    finally:
        for s in sessions:
            result.logs.append((s.client.log, s.debugger.log))
            try:
                s.close()                   # reap the client, close the debugger and device
            except Exception as exc:  # reported in the Result
                result.errors.append(exc)

    result.client_events = sum(len(cl) for cl, _ in result.logs)
    result.debugger_events = sum(len(dl) for _, dl in result.logs)
    if verbose:
        print(result.format_logs())
    return result


def kernel_detached(d: Debugger) -> bool:
    """Whether the kernel detached the debugger's connection with an error (a fifo that stayed
    full for 25 s, ...): its debug fd then polls HUP|ERR (a detach by close polls HUP only)."""
    if d.fd < 0:
        return False
    try:
        ready = _seam.poll([(d.fd, select.POLLIN)], 0)
    except OSError:
        return False
    return any(mask & select.POLLHUP and mask & select.POLLERR for _fd, mask in ready)


# ------------------------------------------------------------------------------------------------
# The two subtests in the registry (``xe-eudebug igt``, ``tests/test_igt_subtests.py``)


def _run_registered(name: str) -> None:
    """One client with IGT's pattern; a failure raises with the bounded summary and logs."""
    result = run_subtest(name)
    print(result.line(), flush=True)
    if not result.passed:
        raise AssertionError(f"{result.error_summary()}\n{result.format_logs(MAX_LOGS_SHOWN)}")


@subtest("read-metadata", name="read-metadata")
@subtest("attach-debug-metadata", name="attach-debug-metadata")
def test_metadata(name: str) -> None:
    """IGT read-metadata, attach-debug-metadata: the debugger reads every debug metadata object
    the client created (from its METADATA event, or through the bind it is attached to)."""
    _run_registered(name)


# ------------------------------------------------------------------------------------------------
# What the machine can run

#: Measured per client on the simulator (300 clients, Linux, Python 3.11): file descriptors in
#: this process and in the simulator, threads in both, and memory (the forked client's private
#: pages plus its share of this process and of the simulator), rounded up.
FDS_PER_CLIENT = 10
SIM_FDS_PER_CLIENT = 9
TASKS_PER_CLIENT = 7          # the client process, 2 threads here, about 4 in the simulator
MEMORY_PER_CLIENT = 6 << 20   # bytes
#: What this process and the simulator hold besides the clients.
FDS_BASE = 64
#: Clients one core runs at once within the framework's 60 s waits: all sessions run side by side
#: (IGT runs them one after another), so the CPU bounds them too.  Measured on the simulator: 300
#: clients on 2 cores shared with other jobs (load average 15) pass in about 50 s per subtest;
#: 1000 there miss their 60 s waits.
CLIENTS_PER_CORE = 200


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def capacity_problem(clients: int) -> str | None:
    """One line naming the first limit ``clients`` clients at once would exceed (file
    descriptors, processes and threads, CPU cores, memory), or None when the machine can run
    them."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        # Use what may be had: the soft limit rises to the hard one without privileges (and a
        # simulator this script starts inherits it).
        raised = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    fds = FDS_BASE + max(FDS_PER_CLIENT, SIM_FDS_PER_CLIENT) * clients
    if soft != resource.RLIM_INFINITY and fds > soft:
        return (f"--clients {clients} needs about {fds} open files in one process; the limit is {soft} "
                f"(RLIMIT_NOFILE, ulimit -n): at most {(soft - FDS_BASE) // max(FDS_PER_CLIENT, SIM_FDS_PER_CLIENT)} clients")
    tasks = TASKS_PER_CLIENT * clients
    nproc, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    for name, limit in (("RLIMIT_NPROC, ulimit -u", None if nproc == resource.RLIM_INFINITY else nproc),
                        ("kernel.pid_max", _read_int("/proc/sys/kernel/pid_max")),
                        ("kernel.threads-max", _read_int("/proc/sys/kernel/threads-max"))):
        if limit is not None and tasks > limit:
            return (f"--clients {clients} needs about {tasks} processes and threads; the limit is {limit} "
                    f"({name}): at most {limit // TASKS_PER_CLIENT} clients")
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if clients > CLIENTS_PER_CORE * cores:
        return (f"--clients {clients} is more than {cores} core(s) run at once within the clients' 60 s "
                f"waits: at most {CLIENTS_PER_CORE * cores} clients ({CLIENTS_PER_CORE} per core)")
    available = _mem_available()
    memory = MEMORY_PER_CLIENT * clients
    if available is not None and memory > available:
        return (f"--clients {clients} needs about {memory >> 20} MiB of memory; {available >> 20} MiB is "
                f"available (MemAvailable): at most {available // MEMORY_PER_CLIENT} clients")
    return None


# ------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subtest", choices=sorted(SUBTESTS), action="append",
                        help="run only this subtest (repeatable; default: both)")
    parser.add_argument("--pattern", choices=sorted(PATTERNS), default=DEFAULT_PATTERN,
                        help="data pattern: igt (current upstream, (i + i/4096) %% 256, default) or seed (July 2024)")
    parser.add_argument("--clients", type=int, default=1, metavar="N",
                        help="run N clients at once, each with its own debugger (default 1)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print both event logs in IGT's text form")
    args = parser.parse_args(argv)
    if args.clients < 1:
        parser.error("--clients must be at least 1")
    problem = capacity_problem(args.clients)
    if problem is not None:
        print(f"metadata_read.py: {problem}", file=sys.stderr)
        return 2

    ok = True
    for name in args.subtest or list(SUBTESTS):
        result = run_subtest(name, pattern=args.pattern, clients=args.clients, verbose=args.verbose)
        print(result.line(), flush=True)
        if not result.passed:
            ok = False
            # Bounded: the first failures and the logs of the first sessions that differ.
            print(result.error if args.verbose else result.error_summary())
            if not args.verbose:
                print(result.format_logs(MAX_LOGS_SHOWN))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
