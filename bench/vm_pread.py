#!/usr/bin/env python3
"""VM-fd preads per second through the preload library: the server path against read grants.

Starts a private simulator; this process is the client (an LR VM with an 8 KiB BO bound).  Two
copies of the C debugger tests/data/vm_read_probe.c (compiled here) run through ``python3 -m
xe_eudebug run``, one with read grants turned off (XE_EUDEBUG_VM_FAST=0: every pread is a call to
the server) and one with them on (the default: the first pread is a call that grants the BO
mapping, the rest are copies checked against the VM's generation counter).  Each round times a
loop of 4-byte preads walking the BO, as IGT's writes-caching trigger reads its target surface,
in both, and prints the per-pread costs side by side with their ratio; the summary takes the
median round and says what one writes-caching check (2,048 dword preads) costs on each path.

    python3 bench/vm_pread.py [--calls 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from xe_eudebug.sim import port, start_server  # noqa: E402
from xe_eudebug.sim.config import SOCKET_ENV, SimConfig  # noqa: E402

from kbhelpers import Actions  # noqa: E402

ADDR = 0x100000
SIZE = 8192


class Probe:
    def __init__(self, exe: str, socket_path: str, fast: bool) -> None:
        env = dict(os.environ)
        env[SOCKET_ENV] = socket_path
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["XE_EUDEBUG_VM_FAST"] = "1" if fast else "0"
        self.proc = subprocess.Popen([sys.executable, "-m", "xe_eudebug", "run", "--no-umockdev", "--", exe],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.fd = -1

    def cmd(self, line: str) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if not answer or answer[0] == "err":
            raise RuntimeError(f"{line}: {answer or 'the probe ended'}")
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="server-path preads per round (grants: 100x)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cc = os.environ.get("CC", "cc").split()
    if shutil.which(cc[0]) is None:
        print(f"no C compiler ({cc[0]}): cannot build tests/data/vm_read_probe.c", file=sys.stderr)
        return 1
    server = start_server(SimConfig(devices=1, enable_default=True, idle_exit=0))
    probes: list[Probe] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            exe = os.path.join(tmp, "vm_read_probe")
            data = os.path.join(ROOT, "tests", "data")
            subprocess.run(cc + ["-O2", "-I", data, "-o", exe, os.path.join(data, "vm_read_probe.c")], check=True)
            client = Actions()
            fd = port.open_device(0, socket_path=server.socket)
            _ret, vm = client.vm_create(fd)
            _ret, bo = client.bo_create(fd, SIZE)
            client.bo_write(fd, bo, SIZE, 0, bytes(range(256)) * (SIZE // 256))
            if client.bind(fd, vm, [dict(obj=bo, addr=ADDR, range=SIZE)]):
                raise RuntimeError("VM_BIND failed")
            # one debugger at a time may attach to a process: each probe attaches, opens its VM
            # fd and detaches (the VM fd keeps working, as the kernel's does)
            for fast in (False, True):
                probe = Probe(exe, server.socket, fast)
                probes.append(probe)
                _vm, ch, vh = probe.cmd(f"attach {os.getpid()}")
                probe.fd = int(probe.cmd(f"open {ch} {vh}")[1])
                probe.cmd("detach")
            slow_probe, fast_probe = probes
            slow, fast = [], []
            for _ in range(args.rounds):
                slow.append(float(slow_probe.cmd(f"loop {slow_probe.fd} {ADDR:x} 4 {args.calls}")[1]))
                fast.append(float(fast_probe.cmd(f"loop {fast_probe.fd} {ADDR:x} 4 {args.calls * 100}")[1]))
    finally:
        for probe in probes:
            probe.close()
        server.stop()
    print(f"{'round':>5}  {'server path':>14}  {'read grant':>12}  {'ratio':>7}")
    for i, (a, b) in enumerate(zip(slow, fast)):
        print(f"{i + 1:>5}  {a / 1000:>11.1f} us  {b / 1000:>9.2f} us  {a / b:>6.0f}x")
    a, b = statistics.median(slow), statistics.median(fast)
    print(f"median: server path {a / 1000:.1f} us per pread ({1e9 / a:,.0f}/s), read grant {b / 1000:.2f} us "
          f"per pread ({1e9 / b:,.0f}/s), ratio {a / b:.0f}x; 2048 dword preads (one writes-caching "
          f"check): {2048 * a / 1e6:.0f} ms against {2048 * b / 1e6:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
