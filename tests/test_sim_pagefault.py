"""Page faults of fault-mode VMs: the EU side (a faulting thread stalls until the driver replies;
a retried access completes before a pending exception) and, through raw ioctls on the
simulator, the kernel side (PAGEFAULT with its three bitmaps before EU_ATTENTION when a debugger
is attached; the queue banned without one).  See sim/kernel/xe_gt_pagefault.py."""

from __future__ import annotations

import errno
import struct
import threading
import time

import pytest

from gpuexec import pack
from kbhelpers import (HDR_SIZE, LR, U, Debuggee, drain, enable_eudebug, eu_control, next_event,
                       open_device, track)
from test_kernel_behaviour import (  # noqa: F401 (fixtures)
    SHADER_BATCH, SHADER_CANARY, SHADER_END, SHADER_PITCH, SHADER_STEERING, SHADER_TARGET,
    ON_HARDWARE, SHADER_THREADS, SHADER_X, SHADER_Y, SZ, _close_leftovers, child, dss_count, eu_class, fd,
    live_vm, make_bo)
from test_sim_attention import _sip       # IGT's online SIP: write the AIP, wait, return
from test_sim_gpu import Space, ring_for
from xe_eudebug.gpgpu import Target, gpgpu_batch
from xe_eudebug.isa import mi
from xe_eudebug.isa.gpgpu import GpgpuShader
from xe_eudebug.sim.config import SOCKET_ENV
from xe_eudebug.sim.gpu import CommandStreamer, Context, EngineInfo
from xe_eudebug.sim.gpu.compute import PageFault, ThreadState
from xe_eudebug.sim.gpu.eu import FlatMemory, Stop, EuThread, CR0_MASTER_EXCEPTION

pytestmark = pytest.mark.usefixtures("eudebug_as_found")   # `fd` and a test enable eudebug

FAULT = U.DRM_XE_VM_CREATE_FLAG_FAULT_MODE
BAD = 0x12345678 << 12                  # IGT's BAD_OFFSET: never bound
BAD_CANARY = 0x0F1F1F1F
BB_END = SHADER_BATCH + 2 * SZ - 64     # a batch of MI_BATCH_BUFFER_END at the BO's end


def _faulting_shader(write: bool) -> GpgpuShader:
    """IGT's pagefault shader: an A64 access to BAD, then the canary loop on the steering."""
    s = GpgpuShader()
    if write:
        s.write_a64_d32(BAD, BAD_CANARY)
    else:
        s.read_a64_d32(BAD)
    s.label(0)
    s.write_dword(SHADER_CANARY, 0)
    s.jump_neq(0, SHADER_Y, SHADER_END)
    s.eot()
    return s


# === the EU side ===============================================================================

class _FaultSpace(Space):
    """Space with fault-mode messages: `pagefault` collects them; `mapped` pages read zero."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[PageFault] = []
        self.mapped: set[int] = set()
        self.seen = threading.Event()

    def pagefault(self, pf: PageFault) -> None:
        self.messages.append(pf)
        self.seen.set()

    def read(self, va: int, size: int) -> bytes:
        if va & ~0xFFF in self.mapped:
            return bytes(size)
        return super().read(va, size)

    def write(self, va: int, data: bytes) -> None:
        if va & ~0xFFF not in self.mapped:
            super().write(va, data)


def _walker_run(space: _FaultSpace, write: bool):
    batch_at, target_at = 0x10000, 0x40000
    batch = gpgpu_batch(batch_at, Target(target_at, 16, 4), 2, 2, _faulting_shader(write),
                        _sip())
    space.write(batch_at, batch)
    space.write(target_at + SHADER_Y * 64, struct.pack("<I", SHADER_END))   # loop ends at once
    cs = CommandStreamer(EngineInfo(U.DRM_XE_ENGINE_CLASS_COMPUTE, 0))
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", cs.run(ring_for(batch_at), space,
                                                                  Context(), lambda: None)))
    t.start()
    return cs, t, out


def _wait(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_fault_mode_threads_stall_on_one_message_until_the_reply():
    space = _FaultSpace()
    cs, t, out = _walker_run(space, write=True)
    try:
        assert space.seen.wait(10), "no fault message"
        # a thread shows STALLED once its access faulted; the scheduler then adds it to the
        # page's message when its slice ends: wait for both
        pf = space.messages[0]
        _wait(lambda: len(cs.threads) == 4 and len(pf.threads) == 4
              and all(th.state is ThreadState.STALLED for th in cs.threads),
              "threads not stalled on the page's message")
        # one message for the page, every thread on it; nothing replied: they stay stalled
        assert len(space.messages) == 1
        assert (pf.page, pf.address, pf.write, pf.fetch) == (BAD, BAD, True, False)
        assert sorted(th.slot for th in pf.threads) == sorted(th.slot for th in cs.threads)
        time.sleep(0.05)
        assert all(th.state is ThreadState.STALLED for th in cs.threads) and t.is_alive()
        space.mapped.add(BAD)
        cs.gt.pagefault_reply(pf, True)
    finally:
        t.join(10)
    assert out["r"].status == "completed", out["r"]
    assert len(space.messages) == 1      # the retried stores found the page mapped


def test_failed_reply_fails_the_job_as_a_fault():
    space = _FaultSpace()
    cs, t, out = _walker_run(space, write=False)
    try:
        assert space.seen.wait(10), "no fault message"
        _wait(lambda: len(space.messages[0].threads) == 4, "threads not on the message")
        cs.gt.pagefault_reply(space.messages[0], False)
    finally:
        t.join(10)
    r = out["r"]
    assert r.status == "fault" and r.address == BAD, r


def test_without_a_fault_handler_a_fault_ends_the_job_at_once():
    space = Space()
    batch = gpgpu_batch(0x10000, Target(0x40000, 16, 4), 1, 1, _faulting_shader(False), _sip())
    space.write(0x10000, batch)
    cs = CommandStreamer(EngineInfo(U.DRM_XE_ENGINE_CLASS_COMPUTE, 0))
    r = cs.run(ring_for(0x10000), space, Context(), lambda: None)
    assert r.status == "fault" and r.address == BAD, r


def test_retried_message_completes_before_the_pending_interrupt():
    """A thread interrupted while stalled executes its message first, then enters the SIP with
    the AIP after the message (the access completes, then the forced exception)."""
    shader = GpgpuShader()
    shader.read_a64_d32(BAD)
    shader.eot()
    code = shader.to_bytes()
    mem = FlatMemory()
    mem.bind(0, code)
    mem.bind(0x8000, bytes(64))                          # the SIP: zeros (never fetched here)
    th = EuThread(mem, 0, 0, sip=0x8000)
    assert th.run(100) is Stop.FAULT
    send_ip = th.fault.ip
    assert th.fault.address == BAD and not th.fault.write
    th.interrupt()
    mem.bind(BAD, bytes(4096))                           # the NULL page
    th.retry_fault()
    assert th.state is None
    th.run(1)                                            # the message only
    assert th.ip == send_ip + 16 and not th.in_sip
    th.run(1)                                            # then the interrupt
    assert th.in_sip and th.cr0(2) == send_ip + 16 and th.ip == 0x8000
    assert th.cr0(0) & CR0_MASTER_EXCEPTION


# === the kernel side, through raw ioctls ========================================================

def _faulting_queue(fd, child, *, vm_flags: int, write: bool = False, gt: int = 0):
    """A client with a VM of `vm_flags` and a debuggable queue of GT `gt` running the faulting
    shader on SHADER_THREADS threads.  Returns (dfd, c, ch, eq, EXEC_QUEUE event, bo)."""
    dfd, c, ch, vm, vh = live_vm(fd, child, vm_flags)
    ret, eq = child.do("exec_queue_create", c, vm, eu_class(fd), 1, gt)
    assert ret == 0, f"DRM_IOCTL_XE_EXEC_QUEUE_CREATE: {errno.errorcode.get(-ret, ret)}"
    qev = next_event(dfd)
    assert qev.is_("EXEC_QUEUE", "CREATE"), qev
    bo = _submit(child, c, vm, eq, write, lambda: drain(dfd))
    return dfd, c, ch, eq, qev, bo


def _submit(child, c: int, vm: int, eq: int, write: bool, before_exec=lambda: None) -> int:
    """One BO bound at SHADER_BATCH: the batch running the faulting shader, its target, and an
    empty batch at BB_END; EXEC of the shader's batch.  Returns the BO."""
    bo = make_bo(child, c)
    batch = gpgpu_batch(SHADER_BATCH, Target(SHADER_TARGET, SHADER_PITCH // 4, SHADER_Y + 1),
                        SHADER_X, SHADER_Y, _faulting_shader(write), _sip())
    assert child.do("bo_write", c, bo, 2 * SZ, 0, batch) == 0
    assert child.do("bo_write", c, bo, 2 * SZ, BB_END - SHADER_BATCH,
                    pack([mi.mi(mi.MI_BATCH_BUFFER_END, 1)])) == 0
    assert child.do("bind", c, vm, [dict(obj=bo, addr=SHADER_BATCH, range=2 * SZ)]) == 0
    before_exec()
    assert child.do("exec", c, eq, SHADER_BATCH) == 0
    return bo


def _canaries(child, c: int, bo: int) -> list[int]:
    rows = child.do("bo_read", c, bo, 2 * SZ, SZ, SHADER_Y * SHADER_PITCH)
    return [struct.unpack_from("<I", rows, y * SHADER_PITCH + 4 * x)[0]
            for y in range(SHADER_Y) for x in range(SHADER_X)]


def _bits(raw: bytes) -> int:
    return sum(bin(b).count("1") for b in raw)


def _wait_banned(child, c: int, eq: int, timeout: float = 30.0) -> None:
    """The queue gets banned: EXEC fails ECANCELED (an empty batch runs until then)."""
    deadline = time.monotonic() + timeout
    while True:
        ret = child.do("exec", c, eq, BB_END)
        if ret == -errno.ECANCELED:
            return
        assert ret == 0, errno.errorcode.get(-ret, ret)
        assert time.monotonic() < deadline, "the queue was not banned"
        time.sleep(0.05)


def _pagefault_then_attention(fd, child, write: bool, gt: int = 0):
    dfd, c, ch, eq, qev, bo = _faulting_queue(fd, child, vm_flags=LR | FAULT, write=write, gt=gt)
    size = 8 * dss_count(fd, gt)
    pf = next_event(dfd, timeout=30)
    assert pf.is_("PAGEFAULT"), pf
    assert pf.flags == U.DRM_XE_EUDEBUG_EVENT_STATE_CHANGE
    payload = pf.raw[HDR_SIZE:]
    client, queue, lrc, flags, bsize, address = struct.unpack_from("<QQQIIQ", payload)
    assert (client, queue, lrc) == (ch, qev.exec_queue_handle, qev.lrc_handles[0])
    assert flags == 0 and address == BAD and bsize == 3 * size
    before, after, resolved = (payload[40 + i * size:40 + (i + 1) * size] for i in range(3))
    assert len(resolved) == size and len(pf.raw) == HDR_SIZE + 40 + 3 * size
    # the faulted threads entered the SIP after the NULL page let their access complete
    faulted = _bits(bytes(a ^ b for a, b in zip(after, resolved)))
    assert 0 < faulted <= SHADER_THREADS and _bits(resolved) == SHADER_THREADS, \
        (before.hex(), after.hex(), resolved.hex())
    att = next_event(dfd, timeout=30)
    assert att.is_("EU_ATTENTION"), att
    assert att.seqno > pf.seqno
    assert att.raw[HDR_SIZE + 32:] == resolved
    args = dict(exec_queue=qev.exec_queue_handle, lrc=qev.lrc_handles[0])
    stopped = bytearray()
    ret, _ = eu_control(dfd, ch, U.DRM_XE_EUDEBUG_EU_CONTROL_CMD_STOPPED, bitmask=bytes(size),
                        out=stopped, **args)
    assert ret == 0 and bytes(stopped) == resolved
    # resumed with the loop told to end: the threads write their canaries and end
    child.do("bo_write", c, bo, 2 * SZ, SZ + SHADER_STEERING, struct.pack("<I", SHADER_END))
    ret, _ = eu_control(dfd, ch, U.DRM_XE_EUDEBUG_EU_CONTROL_CMD_RESUME, bitmask=resolved,
                        **args)
    assert ret == 0, errno.errorcode.get(-ret, ret)
    # The scan resent EU_ATTENTION every 100 ms while the threads stayed halted; a scan holds
    # the kernel lock as RESUME does, so every repeat is queued by now and none comes after.
    assert all(e.is_("EU_ATTENTION") and e.raw[HDR_SIZE + 32:] == resolved for e in drain(dfd))
    _wait(lambda: all(v == SHADER_CANARY for v in _canaries(child, c, bo)),
          "the threads did not go on", timeout=30)
    assert child.do("exec", c, eq, BB_END) == 0          # not banned
    return dfd, c, ch


def test_read_fault_with_debugger_sends_pagefault_then_attention(fd, child):
    _pagefault_then_attention(fd, child, write=False)


def test_write_fault_with_debugger_sends_pagefault_then_attention(fd, child):
    _pagefault_then_attention(fd, child, write=True)


@pytest.fixture
def two_tiles(sim_server, monkeypatch):
    """(device fd with eudebug enabled, a debuggee) on a private simulator of two tiles."""
    if ON_HARDWARE:
        pytest.skip("needs a simulated device of two tiles (xe-eudebug run --tiles 2)")
    handle = sim_server(tiles=2)
    monkeypatch.setenv(SOCKET_ENV, handle.socket)
    monkeypatch.setenv("XE_EUDEBUG_DEVICE", "sim")
    dev = track(open_device())
    enable_eudebug(dev, True)
    with Debuggee() as d:
        yield dev, d


def test_fault_on_the_second_gt_stops_the_threads_there(two_tiles):
    """Two tiles, the faulting queue on GT 1: PAGEFAULT names that queue and its LRC, with the
    faulted threads in GT 1's bitmaps; the threads stop with attention there (STOPPED on the
    queue returns them) and resume.  GT 0 is not involved: nothing runs alone there."""
    fd, child = two_tiles
    dfd, c, ch = _pagefault_then_attention(fd, child, write=True, gt=1)
    ret, vm0 = child.do("vm_create", c, LR)
    assert ret == 0 and next_event(dfd).is_("VM", "CREATE")
    ret, eq0 = child.do("exec_queue_create", c, vm0, eu_class(fd), 1, 0)
    assert ret == 0
    qev0 = next_event(dfd)
    assert qev0.is_("EXEC_QUEUE", "CREATE"), qev0
    ret, _ = eu_control(dfd, ch, U.DRM_XE_EUDEBUG_EU_CONTROL_CMD_STOPPED, bitmask=bytes(8 * dss_count(fd, 0)),
                        exec_queue=qev0.exec_queue_handle, lrc=qev0.lrc_handles[0])
    assert ret == -errno.ENOENT, f"STOPPED on GT 0: {errno.errorcode.get(-ret, ret)}, ENOENT expected"


def test_fault_without_fault_mode_bans_the_queue_and_sends_nothing(fd, child):
    dfd, c, ch, eq, qev, bo = _faulting_queue(fd, child, vm_flags=LR)
    _wait_banned(child, c, eq)
    assert not [e for e in drain(dfd) if e.is_("PAGEFAULT") or e.is_("EU_ATTENTION")]


def test_fault_mode_fault_without_debugger_bans_the_queue(child):
    """No debugger attached to the client: the fault is unsuccessful, the job fails (-EIO) and
    the queue is banned, as the kernel does."""
    dev = track(open_device())
    enable_eudebug(dev, True)
    c = child.do("open")
    ret, vm = child.do("vm_create", c, LR | FAULT)
    assert ret == 0
    ret, eq = child.do("exec_queue_create", c, vm, eu_class(dev), None)
    assert ret == 0
    bo = _submit(child, c, vm, eq, False)
    _wait_banned(child, c, eq)
    assert SHADER_CANARY not in _canaries(child, c, bo)     # no thread got past the fault


def test_fault_mode_fault_of_a_queue_not_debuggable_bans_it_without_events(fd, child):
    """A debugger attached, but the queue lacks the EUDEBUG property: it does not run alone, so
    the debugger's part does not run; the fault is unsuccessful and the queue banned."""
    dfd, c, ch, vm, vh = live_vm(fd, child, LR | FAULT)
    ret, eq = child.do("exec_queue_create", c, vm, eu_class(fd), None)
    assert ret == 0
    _submit(child, c, vm, eq, True)
    _wait_banned(child, c, eq)
    assert not [e for e in drain(dfd) if e.is_("PAGEFAULT") or e.is_("EU_ATTENTION")]
