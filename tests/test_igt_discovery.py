"""Ports of IGT ``tests/intel/xe_eudebug.c``: discovery races and the multi-GPU subtests.

Each test names the IGT subtest it ports (``docs/subtests.md`` maps them all).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import threading
import time
from typing import Callable

import pytest

import igt_clients as ic
from igt_clients import fd  # noqa: F401  (the device fixture)
from xe_eudebug.client import Client
from xe_eudebug.debugger import Debugger
from xe_eudebug.device import driver_name, list_devices, open_device
from xe_eudebug.events import EventType, filter_mask
from xe_eudebug.log import EventLog
from xe_eudebug.session import Session

if not os.environ.get("XE_EUDEBUG_DEVICE", "").startswith("/"):
    pytest.importorskip("xe_eudebug.sim.kernel", reason="the simulator's kernel model is not available")

#: scaled: attach tries per race thread (IGT 100).  A thread stops early once one try read the
#: whole discovery; when the machine is too slow to drain it within the 1 s worker stop, every
#: try runs and this bounds the test's time.
RACE_TRIES = 40
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
    """One discovery client shared by three debuggers (the first is the primary)."""

    def __init__(self, fd: int, flags: int) -> None:
        self.client = Client(fd, ic.discovery_client, flags)
        self.pid = self.client.pid
        self.done = threading.Event()
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


def _race_routine(rc: RaceClient, d: Debugger, flags: int) -> None:
    rng = random.Random()
    sigint = bool(flags & ic.DISCOVERY_SIGINT)
    for _ in range(RACE_TRIES):
        if rc.done.is_set():
            break
        ret = d.try_attach(rc.pid)
        if ret == -errno.EBUSY:
            time.sleep(0.1)
            continue
        assert ret == 0, f"CONNECT to {rc.pid}: {os.strerror(-ret)}"
        if rng.random() < 0.5:
            d.start_worker()
            if not rc.done.is_set():
                ic.wait_until(lambda: d.event_count > 0 or rc.done.is_set(), 30.0, 0.1 if sigint else 0.05)
                if not rc.done.is_set():
                    assert d.event_count > 0, "nothing discovered within 30 s"
            d.stop_worker(1.0)
            if not rc.done.is_set():
                _check_race_log(d, bool(flags & ic.DISCOVERY_VM_BIND))
                if d.event_count >= FULL_DISCOVERY:
                    rc.done.set()
        d.detach()
        _reset(d)
    if d.flags & ic.PRIMARY_THREAD:
        _attach_retry(d, rc.pid)
        d.start_worker()
        if not sigint:
            rc.client.wait_done()
            ic.wait_until(lambda: d.event_count == rc.client.seqno - 1, 5.0, 0.05)
        d.stop_worker(1.0)
        d.detach()


RACE_VARIANTS = [
    pytest.param(4, 0, id="race"),
    pytest.param(4, ic.DISCOVERY_VM_BIND, id="race-vmbind"),
    pytest.param(1, ic.DISCOVERY_SIGINT, id="race-sigint"),
]


@pytest.mark.parametrize("clients,flags", RACE_VARIANTS)
def test_discovery_race(fd: int, clients: int, flags: int) -> None:
    """IGT discovery-race, discovery-race-vmbind, discovery-race-sigint: three debuggers per
    client race attach/detach against live resource creation; discovery is complete, ordered,
    never duplicated or lost (SIGINT: connecting to the killed, unreaped client still works)."""
    rcs: list[RaceClient] = []
    try:
        for _ in range(clients):  # every client forked before any debugger thread
            rcs.append(RaceClient(fd, flags))
        errors: list[BaseException] = []

        def run(rc: RaceClient, d: Debugger) -> None:
            try:
                _race_routine(rc, d, flags)
            except BaseException as exc:  # surfaced below
                errors.append(exc)
                rc.done.set()

        threads = []
        for rc in rcs:
            for d in rc.debuggers:
                if d.flags & ic.PRIMARY_THREAD:
                    rc.client.start()
                t = threading.Thread(target=run, args=(rc, d), daemon=True)
                t.start()
                threads.append(t)
        if flags & ic.DISCOVERY_SIGINT:
            time.sleep(2)
            rcs[0].done.set()
            rcs[0].client.kill(signal.SIGINT)
        for t in threads:
            t.join(120)
            assert not t.is_alive(), "a race thread did not finish within 120 s"
        if errors:
            raise errors[0]
        if flags & ic.DISCOVERY_SIGINT:
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

@pytest.mark.parametrize("flags,expected", [
    pytest.param(ic.DISCOVERY_CLOSE_CLIENT, 0, id="empty"),
    pytest.param(ic.DISCOVERY_DESTROY_RESOURCES, ic.RESOURCE_COUNT, id="empty-clients"),
])
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
            pytest.skip(f"needs at least two Xe GPUs, found {len(nodes)}")
        return [lambda node=node: open_device(node) for node in nodes]
    handle = sim_server(devices=2)
    return [lambda i=i: handle.open_device(i) for i in range(2)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("count", [pytest.param(1, id="basic-client"), pytest.param(4, id="basic-client-many")])
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
