#!/usr/bin/env python3
"""Per-call overhead of the C route (`xe-eudebug run`: preload library -> simulator) against a
real ioctl on a real fd.

Compiles bench/preload_ioctl.c and runs it through ``python3 -m xe_eudebug run``: in each round it
times DRM_IOCTL_VERSION on /dev/dri/card0 (the route: socket round trip to the simulator server,
which copies the strings back into the caller) and then ioctl(TCGETS) on a pty (the kernel alone),
and prints both per-call costs side by side with their ratio; the summary line takes the median
round.

    python3 bench/preload_overhead.py [--calls 2000] [--rounds 5]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="DRM_IOCTL_VERSION calls per round (TCGETS: 100x)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cc = os.environ.get("CC", "cc").split()
    if shutil.which(cc[0]) is None:
        print(f"no C compiler ({cc[0]}): cannot build bench/preload_ioctl.c", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "preload_ioctl")
        subprocess.run(cc + ["-O2", "-I", os.path.join(ROOT, "tests", "data"), "-o", exe, os.path.join(ROOT, "bench", "preload_ioctl.c")], check=True)
        env = dict(os.environ)
        env.pop("XE_EUDEBUG_SIM_SOCKET", None)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        out = subprocess.run([sys.executable, "-m", "xe_eudebug", "run", "--no-umockdev", "--", exe,
                              str(args.calls), str(args.rounds)], env=env, stdout=subprocess.PIPE,
                             text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    route = [float(r[2]) for r in rows if r[0] == "drm_version"]
    real = [float(r[2]) for r in rows if r[0] == "tcgets"]
    print(f"{'round':>5}  {'route DRM_IOCTL_VERSION':>24}  {'real ioctl(TCGETS)':>19}  {'ratio':>7}")
    for i, (a, b) in enumerate(zip(route, real)):
        print(f"{i + 1:>5}  {a / 1000:>21.1f} us  {b / 1000:>16.2f} us  {a / b:>6.0f}x")
    a, b = statistics.median(route), statistics.median(real)
    print(f"median: route {a / 1000:.1f} us per call, real ioctl {b / 1000:.2f} us per call, "
          f"ratio {a / b:.0f}x ({1e9 / a:,.0f} simulated calls/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
