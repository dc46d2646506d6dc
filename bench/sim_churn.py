"""Latency of one client's calls while another process opens and then closes many control
connections at once (issue 8, item 14).

    python3 bench/sim_churn.py [--connections 1500]

Prints the client's call latency (median, p99, worst) in a quiet phase and around the churn, side
by side.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xe_eudebug.sim import port, start_server  # noqa: E402
from xe_eudebug.sim.config import SimConfig  # noqa: E402


def _summary(name: str, lat: list[float]) -> str:
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return (f"{name:8s} {len(lat):5d} calls   median {statistics.median(lat) * 1e3:8.2f} ms   "
            f"p99 {p99 * 1e3:8.2f} ms   worst {lat[-1] * 1e3:8.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1500)
    args = parser.parse_args()
    srv = start_server(SimConfig(idle_exit=0))
    dev = srv.open_device()
    phases: dict[str, list[float]] = {"quiet": [], "churn": []}
    phase = ["quiet"]
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            t = time.monotonic()
            port.file_info(dev)
            phases[phase[0]].append(time.monotonic() - t)
            time.sleep(0.005)

    th = threading.Thread(target=caller)
    th.start()
    time.sleep(2.0)
    phase[0] = "churn"
    pid = os.fork()
    if pid == 0:
        socks = []
        for _ in range(args.connections):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(srv.socket)
            socks.append(s)
        time.sleep(2.0)
        for s in socks:
            s.close()
        time.sleep(3.0)
        os._exit(0)
    os.waitpid(pid, 0)
    stop.set()
    th.join()
    os.close(dev)
    srv.stop()
    print(f"{args.connections} control connections opened, then closed at once, by another process")
    for name, lat in phases.items():
        print(_summary(name, lat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
