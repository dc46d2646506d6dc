#!/usr/bin/env python3
"""Threads/s and instructions/s of COMPUTE_WALKER runs on the simulated engine, against the bare
EU interpreter of bench/eu_interp.py measured in the same run.

Workloads (batches from xe_eudebug.gpgpu, executed by the engine's command streamer over an
in-process address space (tests/test_sim_gpu.Space), so the driver's VM lookup and the socket are not part of the figure):
  * fill: --groups x 16 thread groups of one thread each running IGT's write_dword + eot
    (dispatch cost per thread: payload, binding table and surface state lookups, one store);
  * loop: 4 threads each running eu_interp's "store" loop (--iterations iterations of a typed
    2D block store and the loop's ALU), so interleaving costs show per instruction.
The reference is eu_interp's "store" workload on one EuThread over a FlatMemory, timed right
before and after each walker run.  Prints medians over --repeat runs and the ratio walker /
bare interpreter (instructions/s).  Times are this process's CPU time.  Nothing asserts a time.

With --exec, the same two workloads also run through DRM_IOCTL_XE_EXEC on a private simulator
(raw ioctls, tests/gpuexec.py): the batch in a BO, memory through the driver's VM view; those
figures are wall time from EXEC to the user fence (the simulator is another process), so load
on the machine shows in them.

    python3 bench/eu_walker.py [--groups 16] [--iterations 2000] [--repeat 5] [--exec]
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import eu_interp  # noqa: E402
from xe_eudebug import uapi as U  # noqa: E402
from xe_eudebug.gpgpu import Target, gpgpu_batch  # noqa: E402
from xe_eudebug.isa.gpgpu import GpgpuShader  # noqa: E402
from xe_eudebug.sim.gpu import CommandStreamer, Context, EngineInfo  # noqa: E402
from test_sim_gpu import Space  # noqa: E402

BATCH, TARGET = 0x10000, 0x40000        # the two 64 KiB windows of tests/test_sim_gpu.Space


def run_walker(shader: GpgpuShader, x_dim: int, y_dim: int) -> tuple[int, int, float]:
    space = Space()
    space.write(BATCH, gpgpu_batch(BATCH, Target(TARGET, 64, 64), x_dim, y_dim, shader))
    ring = struct.pack("<3I", 0x31 << 23 | 1 << 8 | 1, BATCH, 0)     # MI_BATCH_BUFFER_START
    cs = CommandStreamer(EngineInfo(U.DRM_XE_ENGINE_CLASS_COMPUTE, 0))
    start = time.process_time()
    result = cs.run(ring, space, Context(), lambda: None)
    elapsed = time.process_time() - start
    assert result.status == "completed", result.reason
    return result.threads, result.instructions, elapsed


def run_exec(client, shader: GpgpuShader, x_dim: int, y_dim: int) -> tuple[int, float]:
    from gpuexec import NSEC, user_fence

    vm = client.vm()
    bo, target = client.bo(), client.bo()
    client.bind(vm, bo, BATCH)
    client.bind(vm, target, TARGET)
    q = client.queue(vm, U.DRM_XE_ENGINE_CLASS_COMPUTE)
    client.write(bo, 0, gpgpu_batch(BATCH, Target(TARGET, 64, 64), x_dim, y_dim, shader))
    client.write(bo, 0xF000, bytes(8))
    start = time.monotonic()
    assert client.exec(q, BATCH, [user_fence(BATCH + 0xF000, 1)]) == 0
    assert client.wait_ufence(client.bo_addr(bo, 0xF000), 1, 600 * NSEC, q) == 0
    elapsed = time.monotonic() - start
    client.queue_destroy(q)
    return x_dim * y_dim, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=16, help="fill: thread groups along X (x16 rows)")
    ap.add_argument("--iterations", type=int, default=2000, help="loop: iterations per thread")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--exec", action="store_true", help="also run through EXEC on a simulator")
    args = ap.parse_args()
    fill = GpgpuShader()
    fill.write_dword(0x12345678, 0)
    fill.eot()
    loop = eu_interp._shader("store", args.iterations)
    for name, shader, dims in (("fill", fill, (args.groups, 16)), ("loop", loop, (4, 1))):
        tps, ips, bases, ratios = [], [], [], []
        for _ in range(args.repeat):
            before = eu_interp.run_interp("store", args.iterations)
            threads, instructions, elapsed = run_walker(shader, *dims)
            after = eu_interp.run_interp("store", args.iterations)
            base = (before[0] + after[0]) / (before[1] + after[1])
            tps.append(threads / elapsed)
            ips.append(instructions / elapsed)
            bases.append(base)
            ratios.append(instructions / elapsed / base)
        print(f"{name}: walker {statistics.median(tps):8.0f} threads/s "
              f"{statistics.median(ips):9.0f} instructions/s   bare interpreter "
              f"{statistics.median(bases):9.0f} instructions/s   ratio {statistics.median(ratios):.3f}"
              f"   ({threads} threads, {instructions} instructions per run)")
        if not args.exec:
            continue
        from xe_eudebug.sim import SimConfig, start_server
        from gpuexec import GpuClient
        handle = start_server(SimConfig(idle_exit=0))
        try:
            with GpuClient(fd=handle.open_device(0)) as client:
                walls, ratios = [], []
                for _ in range(args.repeat):
                    before = eu_interp.run_interp("store", args.iterations)
                    count, wall = run_exec(client, shader, *dims)
                    after = eu_interp.run_interp("store", args.iterations)
                    base = (before[0] + after[0]) / (before[1] + after[1])
                    walls.append(wall)
                    ratios.append(instructions / wall / base)
                wall = statistics.median(walls)
                print(f"{name} through EXEC: {count / wall:8.0f} threads/s {instructions / wall:9.0f} "
                      f"instructions/s (wall)   ratio {statistics.median(ratios):.3f}")
        finally:
            handle.stop()


if __name__ == "__main__":
    main()
