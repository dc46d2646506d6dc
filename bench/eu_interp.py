#!/usr/bin/env python3
"""Instructions per second of the Xe2 EU interpreter, against a bare Python dispatch loop.

Workloads (IGT templates through the builder, on a FlatMemory):
  * alu: a counting loop (loop_begin/loop_end of IGT: add, mov, cmp, predicated jmpi) around
    a nop - register and flag work only;
  * store: the same loop around write_dword (a typed 2D block store through the memory
    interface: 6 ALU instructions and a send per iteration).
The baseline, measured in the same run right before and after each workload, is the floor of
any instruction interpreter in Python: a loop that per step reads 16 bytes from a bytearray,
looks them up in a dict and calls a function that bumps an instruction pointer.
Prints, per workload, the median over --repeat runs of interpreter instructions/s, baseline
steps/s and their ratio.  Times are this process's CPU time (both sides run in it, on one
thread), so other load on the machine disturbs the figures less.  Nothing asserts a time.

    python3 bench/eu_interp.py [--iterations 3000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xe_eudebug.isa.gpgpu import GpgpuShader  # noqa: E402
from xe_eudebug.sim.gpu.eu import EuThread, FlatMemory, Stop, Surface  # noqa: E402

IBASE, SURFACE = 0x10000000, 0x20000000


def _shader(kind: str, iterations: int) -> GpgpuShader:
    s = GpgpuShader()
    s.loop_begin(0)
    if kind == "store":
        s.write_dword(0x12345678, 1)
    else:
        s.nop()
    s.loop_end(0, iterations)
    s.eot()
    return s


def run_interp(kind: str, iterations: int) -> tuple[int, float]:
    s = _shader(kind, iterations)
    mem = FlatMemory()
    isa = mem.bind(IBASE, 0x1000)
    code = s.to_bytes()
    isa[:len(code)] = code
    mem.bind(SURFACE, 64 * 16)
    mem.surfaces[0] = Surface(SURFACE, 64, 16, 64)
    t = EuThread(mem, IBASE, 0)
    start = time.process_time()
    stop = t.run()
    elapsed = time.process_time() - start
    assert stop is Stop.EOT, (stop, t.error)
    return t.executed, elapsed


def run_baseline(steps: int) -> float:
    code = bytearray(16 * 8)
    table = {bytes(16): lambda ip: ip + 16}
    ip, end = 0, len(code)
    start = time.process_time()
    for _ in range(steps):
        ip = table[bytes(code[ip:ip + 16])](ip)
        if ip >= end:
            ip = 0
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=3000, help="loop iterations per run")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    for kind in ("alu", "store"):
        rates, bases, ratios = [], [], []
        for _ in range(args.repeat):
            before = run_baseline(20000)
            executed, elapsed = run_interp(kind, args.iterations)
            after = run_baseline(20000)
            base = 20000 / ((before + after) / 2)
            rate = executed / elapsed
            rates.append(rate)
            bases.append(base)
            ratios.append(rate / base)
        print(f"{kind:5s}: interpreter {statistics.median(rates):9.0f} instructions/s   "
              f"bare dispatch loop {statistics.median(bases):9.0f} steps/s   "
              f"ratio {statistics.median(ratios):.3f}   ({executed} instructions per run)")


if __name__ == "__main__":
    main()
