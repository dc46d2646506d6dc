#!/usr/bin/env python3
"""Cost of the simulator's struct accesses through `xe_eudebug.uapi.layout()` against the same
accesses with a format string written by hand (what the simulator did before the layouts).

Each case runs the two variants in alternating blocks of --calls calls and keeps the fastest
block of each (CPU time of this process, so load from other processes disturbs it less), then
prints both per-call times and their ratio side by side.

    python3 bench/uapi_layout.py [--calls 20000] [--blocks 15]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import struct
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xe_eudebug import uapi  # noqa: E402


def _cases() -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    k = bytearray(ctypes.sizeof(uapi.drm_xe_vm_bind))
    head = uapi.layout(uapi.drm_xe_vm_bind, "extensions", "vm_id", "exec_queue_id", "pad", "num_binds")
    tail = uapi.layout(uapi.drm_xe_vm_bind, "pad2", "num_syncs", "syncs", "reserved")
    vm_id = uapi.layout(uapi.drm_xe_vm_create, "vm_id")
    ev_vm = uapi.layout(uapi.drm_xe_eudebug_event_vm, "client_handle", "vm_handle")
    header = uapi.layout(uapi.drm_xe_eudebug_event)
    old_header = struct.Struct("<IHHQQ")
    return [
        ("VM_BIND head unpack", lambda: struct.unpack_from("<QIIII", k, 0), lambda: head.unpack_from(k)),
        ("VM_BIND tail unpack (offset)", lambda: struct.unpack_from("<IIQQQ", k, 104),
         lambda: tail.unpack_from(k, tail.offset)),
        ("VM_CREATE vm_id write", lambda: struct.pack_into("<I", k, 12, 5),
         lambda: vm_id.pack_into(k, vm_id.offset, 5)),
        ("VM event payload pack", lambda: struct.pack("<QQ", 5, 6), lambda: ev_vm.pack(5, 6)),
        ("event header pack", lambda: old_header.pack(40, 3, 1, 7, 0), lambda: header.pack(40, 3, 1, 7, 0)),
    ]


def _block(fn: Callable[[], object], calls: int) -> float:
    rng = range(calls)
    t0 = time.process_time()
    for _ in rng:
        fn()
    return (time.process_time() - t0) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--blocks", type=int, default=15)
    args = parser.parse_args()
    print(f"{'access':30s} {'format string':>14s} {'uapi.layout':>12s} {'ratio':>6s}")
    for name, old, new in _cases():
        best_old = best_new = float("inf")
        for _ in range(args.blocks):
            best_old = min(best_old, _block(old, args.calls))
            best_new = min(best_new, _block(new, args.calls))
        print(f"{name:30s} {best_old * 1e9:11.0f} ns {best_new * 1e9:9.0f} ns {best_new / best_old:6.2f}")
    print("ratio = layout / format string per call (fastest block of each); 1.00 means equal cost")


if __name__ == "__main__":
    main()
