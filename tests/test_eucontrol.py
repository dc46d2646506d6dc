"""The framework's EU control and attention helpers (xe_eudebug.eucontrol, Debugger's EU control
methods), running a shader from a client (xe_eudebug.gpgpu_exec), and the pieces of the online
ports that need no EU threads (dimensions, shaders, registration)."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from xe_eudebug import uapi
from xe_eudebug.client import eudebug_engines, exec_queue_args
from xe_eudebug.debugger import Debugger
from xe_eudebug.device import open_device
from xe_eudebug.eucontrol import (INTERRUPT_ALL, RESUME, STOPPED, Topology, count_set_bits, eu_control,
                                  exec_queue_of_attention, first_dss_only, hwconfig_value, only_first_set_bit,
                                  only_nth_set_bit, try_eu_control, xor_count)
from xe_eudebug.events import EventFlags, EventType, make
from xe_eudebug.gpgpu import Target
from xe_eudebug.gpgpu_exec import GpgpuExec, bb_size_for
from xe_eudebug.igt import online
from xe_eudebug.igt.registry import ONLINE_ORDER, select, subtests
from xe_eudebug.isa.gpgpu import BREAKPOINT_BIT, GpgpuShader
from xe_eudebug.session import Session

from waiting import wait_for

#: Seconds to wait for the debugger to see an event (generous: a loaded machine).
EVENT_WAIT = 10.0


def _topo_record(gt: int, kind: int, mask: int, size: int) -> bytes:
    return struct.pack("<HHI", gt, kind, size) + mask.to_bytes(size, "little")


def _xe2_topology(dss_mask: int = 0xFF, eus: int = 0xFF, gt: int = 0) -> bytes:
    return (_topo_record(gt, uapi.DRM_XE_TOPO_DSS_GEOMETRY, dss_mask, 16)
            + _topo_record(gt, uapi.DRM_XE_TOPO_DSS_COMPUTE, dss_mask, 16)
            + _topo_record(gt, uapi.DRM_XE_TOPO_SIMD16_EU_PER_DSS, eus, 8))


# ------------------------------------------------------------------------------------------------
# Topology and bitmasks

def test_attention_bitmask_size_follows_igts_formula() -> None:
    # (last DSS + 1) x EUs per DSS x ceil(threads / 8): 8 DSS x 8 EUs x 1 byte
    assert Topology.from_query(_xe2_topology()).attention_bitmask_size == 64
    # the last enabled DSS counts, not how many are enabled: DSS 0 and 5 -> 6 DSS worth
    assert Topology.from_query(_xe2_topology(dss_mask=0b100001)).attention_bitmask_size == 6 * 8
    # geometry | compute: a DSS in only one of the masks counts
    data = (_topo_record(0, uapi.DRM_XE_TOPO_DSS_GEOMETRY, 0b1, 16)
            + _topo_record(0, uapi.DRM_XE_TOPO_DSS_COMPUTE, 0b1000, 16)
            + _topo_record(0, uapi.DRM_XE_TOPO_EU_PER_DSS, 0xFFFF, 8))
    assert Topology.from_query(data).attention_bitmask_size == 4 * 16
    # lockstep EU pairs share an attention bit: half the EUs
    assert Topology.from_query(_xe2_topology(), lockstep=True).attention_bitmask_size == 32
    # 10 threads per EU from the hwconfig table: two bytes per EU
    hw = struct.pack("<6I", 3, 1, 99, 15, 1, 10)
    assert Topology.from_query(_xe2_topology(), hwconfig=hw).attention_bitmask_size == 128
    # another GT's masks are not this GT's
    with pytest.raises(ValueError, match="required"):
        Topology.from_query(_xe2_topology(gt=1), gt=0)


def test_hwconfig_lookup_walks_key_length_value_records() -> None:
    table = struct.pack("<8I", 1, 2, 7, 7, 15, 1, 8, 0)
    assert hwconfig_value(table, 1) == [7, 7]
    assert hwconfig_value(table, 15) == [8]
    assert hwconfig_value(table, 2) is None


def test_thread_positions_round_trip_through_a_bitmask() -> None:
    t = Topology.from_query(_xe2_topology())
    assert t.position(0, 0, 0) == (0, 0)
    assert t.position(1, 2, 7) == (8 + 2, 7)
    chosen = [(0, 0, 0), (3, 7, 5), (7, 1, 2)]
    mask = t.bitmask(chosen)
    assert len(mask) == 64 and count_set_bits(mask) == 3
    assert t.threads(mask) == sorted(chosen)
    with pytest.raises(ValueError):
        t.position(8, 0, 0)


def test_bit_selection_helpers() -> None:
    mask = bytes([0b0110, 0, 0b1000_0001, 0]) + bytes(4)
    assert only_nth_set_bit(mask, 1) == bytes([0b0010]) + bytes(7)
    assert only_first_set_bit(mask) == only_nth_set_bit(mask, 1)
    assert only_nth_set_bit(mask, 3) == bytes([0, 0, 0b1]) + bytes(5)
    assert only_nth_set_bit(mask, 4) == bytes([0, 0, 0b1000_0000]) + bytes(5)
    assert only_nth_set_bit(mask, 5) == bytes(8)
    assert count_set_bits(mask) == 4
    assert xor_count(mask, only_first_set_bit(mask)) == 3
    with pytest.raises(ValueError):
        count_set_bits(b"\x01\x02\x03")
    # resume-dss keeps the first non-zero 64-bit word (one DSS of 8 EUs x 8 threads)
    two_dss = bytes(8) + bytes([1, 0, 0, 0, 0, 0, 0, 0x80]) + bytes([0xFF] * 8)
    assert first_dss_only(two_dss) == bytes(8) + bytes([1, 0, 0, 0, 0, 0, 0, 0x80]) + bytes(8)


def test_attention_is_matched_with_the_exec_queue_that_ran_it() -> None:
    q = dict(client_handle=1, vm_handle=2, exec_queue_handle=3, engine_class=4, lrc_handle=[9])
    create = make(EventType.EXEC_QUEUE, EventFlags.CREATE, seqno=2, **q)
    att = make(EventType.EU_ATTENTION, EventFlags.STATE_CHANGE, seqno=3, client_handle=1,
               exec_queue_handle=3, lrc_handle=9, bitmask=bytes(8))
    destroy = make(EventType.EXEC_QUEUE, EventFlags.DESTROY, seqno=4, **q)
    assert exec_queue_of_attention([create, att, destroy], att) == create
    assert exec_queue_of_attention([create, att], att) is None                  # never destroyed
    late = make(EventType.EU_ATTENTION, EventFlags.STATE_CHANGE, seqno=5, client_handle=1,
                exec_queue_handle=3, lrc_handle=9, bitmask=bytes(8))
    assert exec_queue_of_attention([create, destroy, late], late) is None      # after the destroy
    other_lrc = att.replace(lrc_handle=8)
    assert exec_queue_of_attention([create, other_lrc, destroy], other_lrc) is None


# ------------------------------------------------------------------------------------------------
# EU_CONTROL on a connection

def _idle_client(c) -> None:
    fd = c.open_driver()
    c.wait_stage(1)
    c.close_driver(fd)


def test_eu_control_errors_name_the_ioctl_command_and_errno() -> None:
    with Session(_idle_client) as s:
        c, d = s.client, s.debugger
        d.attach(c)
        d.start_worker()
        c.start()
        try:
            # Until discovery (the kernel's own thread) has finished, every debugger ioctl but
            # READ_EVENT is EBUSY.  The client opens its DRM file only after the attach, so its
            # OPEN is queued live, which happens once discovery is done.
            assert wait_for(lambda: any(e.type == EventType.OPEN for e in d.log), EVENT_WAIT), \
                "the client's OPEN event never reached the debugger"
            # no client with handle 12345: EINVAL, as the kernel's EU_CONTROL checks
            r = d.try_eu_control(12345, 1, 1, INTERRUPT_ALL)
            assert r.ret == -errno.EINVAL
            with pytest.raises(OSError) as info:
                d.interrupt_all(12345, 1, 1)
            assert info.value.errno == errno.EINVAL
            text = str(info.value)
            for part in ("DRM_XE_EUDEBUG_IOCTL_EU_CONTROL", "cmd=0 (interrupt all)", "client_handle=12345",
                         "EINVAL"):
                assert part in text, text
            with pytest.raises(OSError, match=r"cmd=2 \(resume\).*bitmask_size=8"):
                d.eu_resume(12345, 1, 1, bytes(8))
            with pytest.raises(OSError, match=r"cmd=1 \(stopped\)"):
                d.eu_stopped(12345, 1, 1, 8)
            # a flag the uapi does not define
            assert try_eu_control(d.fd, 12345, 1, 1, STOPPED, bytes(8), flags=1).ret == -errno.EINVAL
        finally:
            d.signal_stage(1)
        c.wait_done()
        d.stop_worker()


def test_eu_control_on_a_closed_fd_is_ebadf() -> None:
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    with pytest.raises(OSError) as info:
        eu_control(r, 1, 1, 1, RESUME, bytes(4))
    assert info.value.errno == errno.EBADF and "cmd=2 (resume)" in str(info.value)


def test_topology_query_on_the_device() -> None:
    fd = open_device()
    try:
        t = Topology.query(fd)
        assert t.dss and t.eus_per_dss > 0
        assert t.attention_bitmask_size == (max(t.dss) + 1) * t.bytes_per_dss
        assert t.attention_bitmask_size == online.attention_bitmask_size(fd, 0)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# Running a shader from a client

def test_gpgpu_exec_runs_the_online_shader_and_fills_the_canaries() -> None:
    fd = open_device()
    try:
        arg = uapi.drm_xe_vm_create(flags=uapi.DRM_XE_VM_CREATE_FLAG_LR_MODE)
        from xe_eudebug import ioctl as seam

        seam.ioctl(fd, uapi.DRM_IOCTL_XE_VM_CREATE, arg)
        q = exec_queue_args(int(arg.vm_id), eudebug_engines(fd)[0], eudebug=False)
        seam.ioctl(fd, uapi.DRM_IOCTL_XE_EXEC_QUEUE_CREATE, q)
        threads = 32
        w, sd = online.walker_dimensions(threads), online.surface_dimensions(threads)
        shader = GpgpuShader()
        shader.write_dword(online.SHADER_CANARY, 0)
        shader.eot()
        with GpgpuExec(fd, int(arg.vm_id), int(q.exec_queue_id), online.BB_OFFSET, bb_size_for(shader),
                       Target(online.TARGET_OFFSET, sd.x // 4, sd.y)) as run:
            assert run.target_bytes == sd.x * sd.y
            assert run.run(shader, online.get_sip(0), w.x, w.y, timeout=60) == 0
            words = run.target_u32()
        assert online.count_canaries_eq(words, w, online.SHADER_CANARY) == threads
        assert online.count_canaries_neq(words, w, 0) == threads
        # nothing outside the walker's x range was written
        assert all(words[x + 16 * y] == 0 for y in range(w.y) for x in range(w.x, 16))
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# The online ports' own pieces

def test_online_dimensions_follow_igt() -> None:
    assert online.get_number_of_threads(online.SHADER_BREAKPOINT) == 512
    assert online.get_number_of_threads(online.TRIGGER_RESUME_ONE) == 32
    w = online.walker_dimensions(512)
    s = online.surface_dimensions(512)
    assert (w.x, w.y, s.x, s.y) == (4, 128, 64, 128)
    assert online.steering_offset(512) == 16 * 128 * 4
    assert (online.walker_dimensions(2).x, online.walker_dimensions(2).y) == (2, 1)


def test_online_shaders_carry_their_breakpoints() -> None:
    bp = online.get_shader(-1, online.SHADER_BREAKPOINT)
    marked = [i for i in range(bp.instructions) if bp.code[4 * i] & BREAKPOINT_BIT]
    assert len(marked) == 1                          # the last instruction of the nop template
    step = online.get_shader(-1, online.SHADER_SINGLE_STEP)
    assert step.instructions > bp.instructions       # 16 nops follow the breakpoint
    noop3 = online.get_shader(-1, online.SHADER_N_NOOP_BREAKPOINT)
    assert sum(1 for i in range(noop3.instructions) if noop3.code[4 * i] & BREAKPOINT_BIT) == 3
    sip = online.get_sip(online.SIP_SINGLE_STEP)
    assert sip.instructions > online.get_sip(0).instructions - 2


def test_online_subtests_are_registered_under_igts_names_apart_from_xe_eudebug() -> None:
    names = [s.name for s in subtests("xe_eudebug_online")]
    for target in ("basic-breakpoint", "set-breakpoint", "set-breakpoint-sigint-debugger", "stopped-thread",
                   "resume-one", "resume-dss", "interrupt-all", "interrupt-all-set-breakpoint",
                   "tdctl-parameters", "single-step", "single-step-one", "debugger-reopen",
                   "breakpoint-not-in-debug-mode", "writes-caching-sram-bb-sram-target-sram"):
        assert target in names
    assert names == [n for n in ONLINE_ORDER if n in names]
    assert not set(names) & {s.name for s in subtests()}
    assert [s.name for s in select(["resume-*"], "xe_eudebug_online")] == ["resume-one", "resume-dss"]
