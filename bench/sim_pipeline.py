#!/usr/bin/env python3
"""Simulator event pipeline throughput against a bare Unix-socket round trip.

A client process (forked) creates and destroys long-running VMs in a loop (or creates and destroys
debug metadata with --op metadata); each ioctl produces one event.  The debugger (this process)
is connected to the client and reads the events with blocking READ_EVENT.  The figure is events
per second from the client's ioctl to the debugger's READ_EVENT, both going through the system-call
seam to a private simulator.

In the same run it measures round trips per second of a bare request/reply over a Unix socketpair
between two Python processes (64-byte messages, send/recv), the floor of any Python transport, and
prints the ratio: the median over --repeat runs of the pipeline rate divided by the baseline
measured right before and after it (so load from other processes affects both alike).  It also
prints the simulator server's CPU time per event, which load on the machine disturbs less.
Request values and struct layouts come from `xe_eudebug.uapi`.

    python3 bench/sim_pipeline.py [--events 4000] [--repeat 3] [--op vm|metadata]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import statistics
import struct
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xe_eudebug.sim import SimConfig, port, start_server  # noqa: E402

from xe_eudebug.uapi import (  # noqa: E402
    DRM_IOCTL_XE_DEBUG_METADATA_CREATE, DRM_IOCTL_XE_DEBUG_METADATA_DESTROY, DRM_IOCTL_XE_EUDEBUG_CONNECT,
    DRM_IOCTL_XE_VM_CREATE, DRM_IOCTL_XE_VM_DESTROY, DRM_XE_EUDEBUG_EVENT_METADATA, DRM_XE_EUDEBUG_EVENT_OPEN,
    DRM_XE_EUDEBUG_EVENT_READ, DRM_XE_EUDEBUG_EVENT_VM, DRM_XE_EUDEBUG_IOCTL_READ_EVENT,
    DRM_XE_VM_CREATE_FLAG_LR_MODE, drm_xe_debug_metadata_create, drm_xe_debug_metadata_destroy,
    drm_xe_eudebug_connect, drm_xe_eudebug_event, drm_xe_vm_create, drm_xe_vm_destroy)

VM_CREATE_SIZE = ctypes.sizeof(drm_xe_vm_create)
VM_DESTROY_SIZE = ctypes.sizeof(drm_xe_vm_destroy)
MD_CREATE_SIZE = ctypes.sizeof(drm_xe_debug_metadata_create)
MD_DESTROY_SIZE = ctypes.sizeof(drm_xe_debug_metadata_destroy)
VM_ID = drm_xe_vm_create.vm_id.offset        # out: the new VM's id
VM_FLAGS = drm_xe_vm_create.flags.offset
VM_DESTROY_ID = drm_xe_vm_destroy.vm_id.offset
MD_ID = drm_xe_debug_metadata_create.metadata_id.offset
MD_DESTROY_ID = drm_xe_debug_metadata_destroy.metadata_id.offset
EVENT_TYPE = drm_xe_eudebug_event.type.offset
EVENT_HEADER_SIZE = ctypes.sizeof(drm_xe_eudebug_event)

try:
    from xe_eudebug import ioctl as _seam

    def ioctl(fd: int, request: int, arg: Any) -> int:
        return _seam.ioctl(fd, request, arg)

    VIA = "xe_eudebug.ioctl (the seam)"
except ImportError:  # the seam is not present: call the simulator backend directly
    def ioctl(fd: int, request: int, arg: Any) -> int:
        return port.backend.ioctl(fd, request, ctypes.addressof(arg))

    VIA = "the simulator backend directly (xe_eudebug.ioctl not importable)"


def client_loop(sock_path: str, op: str, count: int, ready_w: int, go_r: int) -> None:
    """The debuggee: one ioctl per event."""
    fd = port.open_device(0, socket_path=sock_path)
    os.write(ready_w, b"r")
    os.read(go_r, 1)
    if op == "vm":
        create = ctypes.create_string_buffer(VM_CREATE_SIZE)
        destroy = ctypes.create_string_buffer(VM_DESTROY_SIZE)
        flags = struct.pack("<I", DRM_XE_VM_CREATE_FLAG_LR_MODE)
        for _ in range(count // 2):
            ctypes.memset(create, 0, VM_CREATE_SIZE)
            create[VM_FLAGS:VM_FLAGS + 4] = flags
            ioctl(fd, DRM_IOCTL_XE_VM_CREATE, create)
            destroy[VM_DESTROY_ID:VM_DESTROY_ID + 4] = create[VM_ID:VM_ID + 4]
            ioctl(fd, DRM_IOCTL_XE_VM_DESTROY, destroy)
    else:
        payload = ctypes.create_string_buffer(b"bench-metadata", 16)
        create = ctypes.create_string_buffer(MD_CREATE_SIZE)
        destroy = ctypes.create_string_buffer(MD_DESTROY_SIZE)
        head = drm_xe_debug_metadata_create(extensions=0, type=1, user_addr=ctypes.addressof(payload), len=16)
        for _ in range(count // 2):
            ctypes.memmove(create, ctypes.addressof(head), MD_CREATE_SIZE)
            ioctl(fd, DRM_IOCTL_XE_DEBUG_METADATA_CREATE, create)
            destroy[MD_DESTROY_ID:MD_DESTROY_ID + 4] = create[MD_ID:MD_ID + 4]
            ioctl(fd, DRM_IOCTL_XE_DEBUG_METADATA_DESTROY, destroy)
    os.close(fd)


def pipeline(sock_path: str, op: str, count: int) -> float:
    """Events per second from client ioctl to debugger READ_EVENT."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            client_loop(sock_path, op, count, ready_w, go_r)
        except BaseException as exc:  # reported through the exit status
            print(f"client: {exc!r}", file=sys.stderr)
            code = 1
        os._exit(code)
    try:
        if os.read(ready_r, 1) != b"r":
            raise RuntimeError("client did not start")
        dev = port.open_device(0, socket_path=sock_path)
        connect = drm_xe_eudebug_connect(pid=pid)
        dbg = ioctl(dev, DRM_IOCTL_XE_EUDEBUG_CONNECT, connect)
        event = ctypes.create_string_buffer(256)
        request = bytes(drm_xe_eudebug_event(len=256, type=DRM_XE_EUDEBUG_EVENT_READ))

        def read() -> int:
            event[0:EVENT_HEADER_SIZE] = request
            ioctl(dbg, DRM_XE_EUDEBUG_IOCTL_READ_EVENT, event)
            return struct.unpack_from("<H", event, EVENT_TYPE)[0]

        while read() != DRM_XE_EUDEBUG_EVENT_OPEN:  # discovery: the client's DRM file
            pass
        want = DRM_XE_EUDEBUG_EVENT_VM if op == "vm" else DRM_XE_EUDEBUG_EVENT_METADATA
        expected = (count // 2) * 2
        got = 0
        start = time.perf_counter()
        os.write(go_w, b"g")
        while got < expected:
            if read() == want:
                got += 1
        elapsed = time.perf_counter() - start
        os.close(dbg)
        os.close(dev)
    finally:
        _, status = os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
    if status != 0:
        raise RuntimeError(f"client exited with status {status}")
    return expected / elapsed


def bare_round_trips(count: int) -> float:
    """Round trips per second of a bare Python request/reply over a Unix socketpair."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        while True:
            data = b.recv(4096)
            if not data:
                os._exit(0)
            b.sendall(data)
    b.close()
    msg = b"x" * 64
    start = time.perf_counter()
    for _ in range(count):
        a.sendall(msg)
        a.recv(4096)
    elapsed = time.perf_counter() - start
    a.close()
    os.waitpid(pid, 0)
    return count / elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (0.0 where /proc is unavailable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=4000, help="events per pipeline run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the median ratio is reported")
    parser.add_argument("--op", choices=("vm", "metadata"), default="vm")
    parser.add_argument("--target", type=float, default=0.33)
    args = parser.parse_args()
    handle = start_server(SimConfig(enable_default=True, idle_exit=0))
    ratios: list[float] = []
    pipes: list[float] = []
    bares: list[float] = []
    cpus: list[float] = []  # simulator server CPU time per event, microseconds
    try:
        for i in range(args.repeat):
            # The baseline is measured right before and right after each pipeline run, so that
            # load from other processes on the machine weighs on both sides of the ratio alike.
            before = bare_round_trips(args.events * 2)
            cpu = cpu_seconds(handle.pid)
            pipe = pipeline(handle.socket, args.op, args.events)
            cpus.append((cpu_seconds(handle.pid) - cpu) / args.events * 1e6)
            after = bare_round_trips(args.events * 2)
            bare = (before + after) / 2
            ratios.append(pipe / bare)
            pipes.append(pipe)
            bares.append(bare)
            print(f"run {i + 1}: pipeline {pipe:9.0f} events/s   bare socket {bare:9.0f} round trips/s   ratio {pipe / bare:.3f}   server CPU {cpus[-1]:.0f} us/event")
    finally:
        handle.stop()
    ratio = statistics.median(ratios)
    print(f"calls via {VIA}; op {args.op}; {args.events} events per run")
    print(f"simulator pipeline: {statistics.median(pipes):.0f} events/s median, {max(pipes):.0f} best (client ioctl -> debugger READ_EVENT)")
    print(f"simulator server CPU time: {statistics.median(cpus):.0f} us per event median (both calls of the event)")
    print(f"bare Unix-socket request/reply: {statistics.median(bares):.0f} round trips/s median, {max(bares):.0f} best")
    print(f"ratio: {ratio:.3f} (median of per-run ratios; target >= {args.target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
