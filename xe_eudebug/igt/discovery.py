"""Ports of IGT ``tests/intel/xe_eudebug.c``: discovery races and the multi-GPU subtests.

Each test names the IGT subtest it ports (``docs/subtests.md`` maps them all).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import sys
import threading
import time
import traceback
from typing import Callable

from . import clients as ic
from .registry import Skip, subtest
from xe_eudebug.client import Client
from xe_eudebug.debugger import Debugger
from xe_eudebug.device import driver_name, list_devices, open_device
from xe_eudebug.events import EventType, filter_mask
from xe_eudebug.log import EventLog
from xe_eudebug.session import Session


#: scaled: attach tries per race thread (IGT 100).  A thread stops early once one of its own
#: tries read the whole discovery; a thread whose tries never do runs them all, so this bounds
#: the test's time.
RACE_TRIES = 40
#: IGT's dwell after starting a race worker while the client runs (T:1145-1153): it sleeps
#: at least once, 1 s (100 ms for race-sigint), and again while nothing was read, at most
#: RACE_MAX_DWELLS times.
RACE_DWELL_S = 1.0
RACE_DWELL_SIGINT_S = 0.1
RACE_MAX_DWELLS = 30
#: How long the primary thread retries -EBUSY for its final attach (IGT: without limit).
RACE_PRIMARY_ATTACH_S = 60.0
#: A race thread that made no step for this long is stuck.  Its run time grows with the load (its
#: CONNECTs wait for every other connection's discovery on the device), so what is bounded is a
#: step: one try dwells at most RACE_MAX_DWELLS * RACE_DWELL_S and stops its worker within
#: Debugger.STOP_DRAIN_LIMIT + STOP_FORCE_WAIT (90 s); the primary's last attach retries for
#: RACE_PRIMARY_ATTACH_S and a client token wait ends after client.DEFAULT_TIMEOUT (60 s each).
RACE_STALL_S = 180.0
#: How long the test waits for a race client's token (its FINI: all its resources created); IGT
#: 60 s, the framework's default.  Each of the client's 768 resource ioctls may wait for a whole
#: discovery (the gate is device-wide) and the twelve debuggers queue discoveries back to back:
#: on 2 cores at load average 20 with four more busy loops a client ran 60-190 s.  A client that
#: exits is still noticed within a second.
RACE_CLIENT_TIMEOUT_S = 300.0
#: scaled: attach/detach cycles per discovery-empty thread (IGT 100).
EMPTY_CYCLES = 50
#: scaled: discovery-empty sessions (IGT 16).
EMPTY_SESSIONS = 8
#: Events of a fully discovered discovery client: 16 OPEN + 16·16 VM + 16·16 EXEC_QUEUE.
FULL_DISCOVERY = ic.RESOURCE_COUNT * (1 + 2 * ic.RESOURCE_COUNT)




def _attach_retry(d: Debugger, pid: int, timeout: float = 30.0) -> None:
    """Attach, retrying -EBUSY (another debugger of the same target) every 100 ms."""
    deadline = time.monotonic() + timeout
    while True:
        ret = d.try_attach(pid)
        if ret == 0:
            return
        assert ret == -errno.EBUSY, f"CONNECT to {pid}: {os.strerror(-ret)}"
        assert time.monotonic() < deadline, f"CONNECT to {pid}: still -EBUSY after {timeout:g} s"
        time.sleep(0.1)


def _reset(d: Debugger) -> None:
    d.log = EventLog("debugger")
    d.event_count = 0


# ------------------------------------------------------------------------------------------------
# discovery-race (3.25)

class RaceClient:
    """One discovery client shared by three debuggers (the first is the primary).  Whether the
    client is done is the client's own ``done`` (IGT ``s->client->done``: set by the primary's
    wait_done, or by the test before it sends SIGINT); each thread has its own ``done``."""

    def __init__(self, fd: int, flags: int) -> None:
        self.client = Client(fd, ic.discovery_client, flags, timeout=RACE_CLIENT_TIMEOUT_S)
        self.pid = self.client.pid
        self.debuggers = [Debugger(fd, ic.PRIMARY_THREAD if i == 0 else 0) for i in range(3)]


def _check_race_log(d: Debugger, vm_bind: bool) -> None:
    """Every client before the last must be complete; at most 16 clients, distinct handles."""
    handles: list[int] = []
    counts: dict[int, int] = {}

    def check_previous() -> None:
        if not handles:
            return
        expected = {int(EventType.VM): ic.RESOURCE_COUNT, int(EventType.EXEC_QUEUE): ic.RESOURCE_COUNT}
        if vm_bind:
            expected[int(EventType.VM_BIND_OP)] = ic.RESOURCE_COUNT
        got = {t: counts.get(t, 0) for t in expected}
        d.assert_(got == expected, f"client {handles[-1]} discovered with {got}, expected {expected}")

    for e in d.log:
        if e.type == EventType.OPEN:
            check_previous()
            handles.append(int(e.client_handle))
            counts = {}
        else:
            counts[int(e.type)] = counts.get(int(e.type), 0) + 1
    d.assert_(0 < len(handles) <= ic.RESOURCE_COUNT, f"{len(handles)} OPEN events")
    d.assert_(len(set(handles)) == len(handles), f"client handles not distinct: {handles}")


class RaceStats:
    """What one race thread did, for the checks that the port keeps IGT's semantics."""

    def __init__(self) -> None:
        self.tries = 0                  # loop iterations (EBUSY ones included)
        self.attaches_after_done = 0    # attaches made once the client was done
        self.left_when_done = 0         # tries left when it first saw the client done
        self.own_full = False           # the loop ended because one of its tries read it all
        self.dwells: list[float] = []   # seconds from start_worker to the end of the dwell
        self.step = "starting"          # what the thread does now, and since when
        self.since = time.monotonic()

    def at(self, step: str) -> None:
        self.step, self.since = step, time.monotonic()


def _race_routine(rc: RaceClient, d: Debugger, flags: int, st: RaceStats) -> None:
    """IGT discovery_race_thread (T:1110-1218)."""
    rng = random.Random()
    sigint = bool(flags & ic.DISCOVERY_SIGINT)
    dwell = RACE_DWELL_SIGINT_S if sigint else RACE_DWELL_S
    done = False  # this thread's own: one of its tries read the whole discovery
    for _ in range(RACE_TRIES):
        if done:
            break
        st.tries += 1
        st.at(f"try {st.tries}")
        client_done = rc.client.done
        if client_done and not st.left_when_done:
            st.left_when_done = RACE_TRIES - st.tries + 1
        ret = d.try_attach(rc.pid)
        if ret == -errno.EBUSY:
            time.sleep(0.1)
            continue
        assert ret == 0, f"CONNECT to {rc.pid}: {os.strerror(-ret)}"
        st.attaches_after_done += client_done
        if rng.random() < 0.5:
            d.start_worker()
            if not rc.client.done:
                # At least one dwell, more while nothing arrived (a thread may starve).
                t0 = time.monotonic()
                for _wait in range(RACE_MAX_DWELLS):
                    time.sleep(dwell)
                    if d.event_count:
                        break
                st.dwells.append(time.monotonic() - t0)
                assert d.event_count > 0, f"nothing discovered within {RACE_MAX_DWELLS} waits of {dwell:g} s"
            d.stop_worker(1.0)  # drains: a full read ends this thread's race early
            if not rc.client.done:
                _check_race_log(d, bool(flags & ic.DISCOVERY_VM_BIND))
            if d.event_count >= FULL_DISCOVERY:
                done = st.own_full = True
        d.detach()
        _reset(d)
    if d.flags & ic.PRIMARY_THREAD:
        # IGT retries -EBUSY without limit.  Another thread's connection can be held for up to
        # the kernel's fifo timeout (25 s) by a release of the killed client's files blocked on
        # its full fifo, so the bound is well above that.
        st.at("final attach")
        _attach_retry(d, rc.pid, RACE_PRIMARY_ATTACH_S)
        d.start_worker()
        st.at("waiting for the client")
        rc.client.wait_done()
        st.at("waiting for the client's events")
        if not sigint:
            ic.wait_until(lambda: d.event_count == rc.client.seqno - 1, 5.0, 0.05)
        st.at("final stop")
        d.stop_worker(1.0)
        d.detach()
    st.at("finished")


def _join_race(threads: list[threading.Thread], stats: list["RaceStats"], names: list[str]) -> None:
    """Wait for the race threads for as long as each keeps making steps; a thread whose current
    step has lasted RACE_STALL_S fails the test with what it was doing and where."""
    for t, st, name in zip(threads, stats, names):
        while True:
            t.join(1.0)
            if not t.is_alive():
                break
            step, since = st.step, st.since
            stalled = time.monotonic() - since
            if stalled >= RACE_STALL_S:
                frame = sys._current_frames().get(t.ident or 0)
                where = "".join(traceback.format_stack(frame)[-6:]) if frame is not None else "(no stack)\n"
                raise AssertionError(f"race thread {name} stuck in {step} for {stalled:.0f} s "
                                     f"after {st.tries} tries; it is at:\n{where}")


@subtest("discovery-race", clients=4, flags=0)
@subtest("discovery-race-vmbind", clients=4, flags=ic.DISCOVERY_VM_BIND)
@subtest("discovery-race-sigint", clients=1, flags=ic.DISCOVERY_SIGINT)
def test_discovery_race(fd: int, clients: int, flags: int) -> None:
    """IGT discovery-race, discovery-race-vmbind, discovery-race-sigint: three debuggers per
    client race attach/detach against live resource creation; discovery is complete, ordered,
    never duplicated or lost (SIGINT: connecting to the killed, unreaped client still works)."""
    rcs: list[RaceClient] = []
    try:
        for _ in range(clients):  # every client forked before any debugger thread
            rcs.append(RaceClient(fd, flags))
        errors: list[BaseException] = []

        def run(rc: RaceClient, d: Debugger, st: RaceStats) -> None:
            try:
                _race_routine(rc, d, flags, st)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = []
        stats: list[RaceStats] = []
        names: list[str] = []
        for rc in rcs:
            for i, d in enumerate(rc.debuggers):
                if d.flags & ic.PRIMARY_THREAD:
                    rc.client.start()
                stats.append(RaceStats())
                names.append(f"{i} of client {rc.pid}" + (" (primary)" if d.flags & ic.PRIMARY_THREAD else ""))
                t = threading.Thread(target=run, args=(rc, d, stats[-1]), daemon=True)
                t.start()
                threads.append(t)
        if flags & ic.DISCOVERY_SIGINT:
            time.sleep(2)
            rcs[0].client.done = True  # first, as IGT: no thread waits for events any more
            rcs[0].client.kill(signal.SIGINT)  # the threads go on racing attach/detach
        _join_race(threads, stats, names)
        if errors:
            raise errors[0]
        # IGT's semantics, not only its outcome: each thread ends its own loop, either after
        # one of its tries read everything or after all its tries (T:1122,1125); every dwell
        # lasted at least IGT's minimum (T:1145-1153); after the SIGINT the threads kept
        # racing attach/detach (T:1266-1267).
        for st in stats:
            assert st.own_full or st.tries == RACE_TRIES, \
                f"a thread stopped after {st.tries} of {RACE_TRIES} tries without reading the whole discovery"
        minimum = RACE_DWELL_SIGINT_S if flags & ic.DISCOVERY_SIGINT else RACE_DWELL_S
        short = [x for st in stats for x in st.dwells if x < minimum]
        assert not short, f"dwells shorter than {minimum:g} s: {short}"
        if flags & ic.DISCOVERY_SIGINT:
            # (one thread may meet only -EBUSY from the others for all its remaining tries)
            if max(st.left_when_done for st in stats) >= 10:
                assert sum(st.attaches_after_done for st in stats) > 0, \
                    f"threads with {[st.left_when_done for st in stats]} tries left after the SIGINT never attached again"
            return
        reference = rcs[0].debuggers[0]
        for rc in reversed(rcs[1:]):
            primary = rc.debuggers[0]
            assert rc.client.seqno - 1 == primary.event_count, \
                f"client {rc.pid} logged {rc.client.seqno - 1} events, its primary got {primary.event_count}"
            reference.log.compare(primary.log, filter_mask(EventType.VM_BIND))
    finally:
        for rc in rcs:
            for d in rc.debuggers:
                d.close()
            rc.client.close()


# ------------------------------------------------------------------------------------------------
# discovery-empty (3.26)

@subtest("discovery-empty", flags=ic.DISCOVERY_CLOSE_CLIENT, expected=0)
@subtest("discovery-empty-clients", flags=ic.DISCOVERY_DESTROY_RESOURCES, expected=ic.RESOURCE_COUNT)
def test_discovery_empty(fd: int, flags: int, expected: int) -> None:
    """IGT discovery-empty, discovery-empty-clients: discovery reports neither closed clients
    nor destroyed resources, after attach/detach storms during their creation."""
    sessions = [Session(ic.discovery_client, flags, device=fd) for _ in range(EMPTY_SESSIONS)]
    errors: list[BaseException] = []

    def storm(s: Session) -> None:
        c, d = s.client, s.debugger
        assert c is not None and d is not None
        rng = random.Random()
        try:
            for _ in range(EMPTY_CYCLES):
                _attach_retry(d, c.pid)
                if rng.random() < 0.5:
                    d.start_worker()
                    d.stop_worker(1.0, drain=False)  # IGT's stop, during discovery
                d.detach()
                _reset(d)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    try:
        threads = []
        for s in sessions:
            assert s.client is not None
            s.client.start()
            t = threading.Thread(target=storm, args=(s,), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(120)
            assert not t.is_alive(), "an attach/detach thread did not finish within 120 s"
        if errors:
            raise errors[0]
        for s in sessions:
            c, d = s.client, s.debugger
            assert c is not None and d is not None
            c.wait_done()
            d.attach(c)
            d.start_worker()
            d.stop_worker(5.0)
            d.detach()
            assert d.event_count == expected, \
                f"discovered {d.event_count} events, expected {expected}:\n{d.log.format()}"
    finally:
        for s in sessions:
            s.close()


# ------------------------------------------------------------------------------------------------
# multigpu-basic-client (3.27)

def _gpu_openers(sim_server: Callable[..., object]) -> list[Callable[[], int]]:
    """One opener per Xe GPU: the render nodes on hardware, a two-device simulator otherwise."""
    if os.environ.get("XE_EUDEBUG_DEVICE", "").startswith("/"):
        nodes = [e["device"] for e in list_devices(include_simulator=False) if e.get("driver") == "xe"]
        if len(nodes) < 2:
            raise Skip(f"needs at least two Xe GPUs, found {len(nodes)}")
        return [lambda node=node: open_device(node) for node in nodes]
    handle = sim_server(devices=2)
    return [lambda i=i: handle.open_device(i) for i in range(2)]  # type: ignore[attr-defined]


@subtest("multigpu-basic-client", count=1)
@subtest("multigpu-basic-client-many", count=4)
def test_multigpu(sim_server: Callable[..., object], count: int) -> None:
    """IGT multigpu-basic-client, multigpu-basic-client-many: basic-client sessions (1 or 4 per
    GPU) on every GPU in parallel, one process per GPU."""
    openers = _gpu_openers(sim_server)

    def on_gpu(opener: Callable[[], int]) -> None:
        dev = opener()
        assert driver_name(dev) == "xe"
        key = ic.enable_eudebug_for(dev)
        try:
            ic.run_basic_sessions(dev, 0, count, True)
        finally:
            ic.restore_eudebug(dev, key)
            os.close(dev)

    procs = [ic.run_forked(lambda o=o: on_gpu(o), 90) for o in openers]
    for p in procs:
        p.join()
