#!/usr/bin/env python3
"""A process to debug: it does a little eudebug-visible GPU work, slowly, and prints its pid.

Run it in one terminal and watch it from another with the monitor::

    python3 examples/debuggee.py                    # prints "debuggee pid 1234", then works
    xe-eudebug monitor --pid 1234 --metadata --ack  # in a second terminal

What it does, one step every ``--delay`` seconds (or, with ``--step``, one step per line read
from stdin, which is how the tests drive it):

1. opens a DRM client, creates long-running VMs (``--vms``) and a debug metadata object (``--size``
   bytes of a counting pattern, type ``DRM_XE_DEBUG_METADATA_PROGRAM_MODULE``);
2. binds a buffer object with a user fence (``--ufence``) and waits up to ``--fence-wait``
   seconds for it: a debugger attached to this process holds the fence until it acknowledges
   the VM_BIND_UFENCE event (``monitor --ack``);
3. tears everything down and exits.

It uses the framework's :class:`~xe_eudebug.Client` in thread mode, so the pid to attach to is
this script's own, and every action is recorded as the event the debugger should see.  Unlike
``metadata_read.py`` it attaches no debugger of its own: one process can have one debugger per
device, and that one is yours.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_REPO, "xe_eudebug", "__init__.py")) and _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from xe_eudebug import Client  # noqa: E402
from xe_eudebug.client import user_fence_sync  # noqa: E402
from xe_eudebug.device import min_alignment, open_device  # noqa: E402
from xe_eudebug.uapi import DRM_XE_DEBUG_METADATA_PROGRAM_MODULE, DRM_XE_VM_CREATE_FLAG_LR_MODE  # noqa: E402

BO_ADDR = 0x1A0000
FENCE_VALUE = 0xC0FFEE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A process to attach a debugger or the monitor to.")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds between steps (default 2)")
    parser.add_argument("--step", action="store_true", help="take one step per line read from stdin")
    parser.add_argument("--size", type=int, default=4096, help="metadata payload size in bytes")
    parser.add_argument("--vms", type=int, default=1, help="number of VMs to create (the first one is bound)")
    parser.add_argument("--ufence", action="store_true", help="bind with a user fence and wait for it")
    parser.add_argument("--fence-wait", type=float, default=2.0, help="seconds to wait for the user fence")
    args = parser.parse_args(argv)

    def step(what: str) -> None:
        print(what, flush=True)
        if args.step:
            sys.stdin.readline()  # end of input: carry on to the end
        else:
            time.sleep(args.delay)

    fd = open_device()
    print(f"debuggee pid {os.getpid()}", flush=True)
    step("ready")

    def work(c: Client) -> None:
        drm = c.open_driver()
        vms = [c.vm_create(drm, DRM_XE_VM_CREATE_FLAG_LR_MODE) for _ in range(max(1, args.vms))]
        vm = vms[0]
        payload = bytes(i & 0xFF for i in range(args.size))
        mid = c.metadata_create(drm, DRM_XE_DEBUG_METADATA_PROGRAM_MODULE, payload)
        step(f"created vm {vm} and metadata {mid}")
        signalled = True
        if args.ufence:
            size = min_alignment(fd)
            bo = c.bo_create(drm, size)
            fence = ctypes.c_uint64(0)
            c.vm_bind(drm, vm, bo, 0, BO_ADDR, size, syncs=user_fence_sync(ctypes.addressof(fence), FENCE_VALUE))
            ret = c.wait_ufence(drm, ctypes.addressof(fence), FENCE_VALUE, int(args.fence_wait * 1e9))
            signalled = ret == 0
            print("user fence signalled" if signalled else
                  f"user fence not signalled within {args.fence_wait} s (held by a debugger)", flush=True)
            step("bound")
            if signalled:
                c.vm_unbind(drm, vm, 0, BO_ADDR, size)
            c.bo_close(drm, bo)
        c.metadata_destroy(drm, mid, DRM_XE_DEBUG_METADATA_PROGRAM_MODULE, len(payload))
        for other in vms[1:]:
            c.vm_destroy(drm, other)
        if signalled:
            c.vm_destroy(drm, vm)
        c.close_driver(drm)

    try:
        with Client(fd, work, thread=True) as client:
            client.start()
            client.wait_done()
    finally:
        os.close(fd)
    step("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
