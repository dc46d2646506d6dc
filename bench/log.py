#!/usr/bin/env python3
"""Benchmark of the event log: ingest rate, compare scaling, memory per event.

Run from the repository root:  python3 bench/log.py [--small N] [--large N]

Prints, measured in this one run:
  * ingest: EventLog.from_raw (the pipe/file path) and per-event append, against
    struct.iter_unpack of the 24-byte event header over the same bytes (the fastest
    pure-Python walk over them); ratio = iter_unpack time / ingest time (target >= 0.5)
  * compare: a client log against a debugger log with other handles and seqnos, for the small
    and the large size, and the time ratio large/small (target <= 12 for a 10x size ratio)
  * memory: bytes held per event by the log, against the raw event bytes
Nothing here asserts a time; it reports.
"""

from __future__ import annotations

import argparse
import gc
import os
import struct
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xe_eudebug.events import HEADER, EventFlags, EventType  # noqa: E402
from xe_eudebug.log import EventLog, compare  # noqa: E402

T = EventType
C, D, S, A = (int(EventFlags.CREATE), int(EventFlags.DESTROY), int(EventFlags.STATE_CHANGE),
              int(EventFlags.NEED_ACK))

_Q = struct.Struct("=Q")


def _ev(t: int, f: int, seqno: int, *payload: int, tail: bytes = b"") -> bytes:
    body = b"".join(_Q.pack(v) for v in payload) + tail
    return HEADER.pack(24 + len(body), int(t), f, seqno, 0) + body


def history(n_events: int, clients: int, chandle, rhandle, seq0: int, stride: int) -> bytes:
    """Raw bytes of about n_events events: per client OPEN, VM, EXEC_QUEUE, METADATA, then
    rounds of bind (op + op-metadata + ufence) / unbind, then the destroys."""
    out = []
    seq = seq0
    per = n_events // clients
    for c in range(clients):
        def nx():
            nonlocal seq
            seq += stride
            return seq
        ch = chandle(c)
        vm, q, md = rhandle(c, 1), rhandle(c, 2), rhandle(c, 3)
        eq_tail = struct.pack("=IIQ", 4, 1, rhandle(c, 4))
        out.append(_ev(T.OPEN, C, nx(), ch))
        out.append(_ev(T.VM, C, nx(), ch, vm))
        out.append(_ev(T.EXEC_QUEUE, C, nx(), ch, vm, q, tail=eq_tail))
        out.append(_ev(T.METADATA, C, nx(), ch, md, 1, 4096))
        k = 0
        while len(out) < (c + 1) * per - 4:
            addr = 0x100000 + (k % 4096) * 0x10000
            b = nx()
            out.append(_ev(T.VM_BIND, S, b, ch, vm, tail=struct.pack("=II", 1, 1)))
            o = nx()
            out.append(_ev(T.VM_BIND_OP, C, o, b, 1, addr, 0x10000))
            out.append(_ev(T.VM_BIND_OP_METADATA, C, nx(), o, 5, k % 7))
            out.append(_ev(T.VM_BIND_UFENCE, C | A, nx(), b))
            b = nx()
            out.append(_ev(T.VM_BIND, S, b, ch, vm, tail=struct.pack("=II", 0, 1)))
            out.append(_ev(T.VM_BIND_OP, D, nx(), b, 0, addr, 0x10000))
            k += 1
        out.append(_ev(T.METADATA, D, nx(), ch, md, 1, 4096))
        out.append(_ev(T.EXEC_QUEUE, D, nx(), ch, vm, q, tail=eq_tail))
        out.append(_ev(T.VM, D, nx(), ch, vm))
        out.append(_ev(T.OPEN, D, nx(), ch))
    return b"".join(out)


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--large", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")

    # -- ingest ---------------------------------------------------------------------------
    blob = history(args.large, args.clients, lambda c: c + 3, lambda c, r: r, 0, 1)
    n = len(EventLog.from_raw(blob, "client", None))
    header_fmt = "=IHHQQ"
    whole = blob[: len(blob) - len(blob) % 24]

    def walk_iter_unpack():
        for _ in struct.iter_unpack(header_fmt, whole):
            pass

    t_base = best(walk_iter_unpack)
    t_bulk = best(lambda: EventLog.from_raw(blob, "client", None))
    full = EventLog.from_raw(blob, "x", None)
    events = [full.raw_at(i) for i in range(len(full) // 10)]

    def appends():
        log = EventLog("debugger", None)
        ap_ = log.append
        for e in events:
            ap_(e)

    t_app = best(appends) * len(blob) / sum(len(e) for e in events)
    mb = len(blob) / 1e6
    print(f"\ningest: {n} events, {mb:.1f} MB (mean {len(blob) / n:.1f} bytes/event)")
    print(f"  struct.iter_unpack('{header_fmt}') walk : {t_base:.3f} s  {mb / t_base:7.1f} MB/s")
    print(f"  EventLog.from_raw (pipe/file)        : {t_bulk:.3f} s  {mb / t_bulk:7.1f} MB/s  "
          f"{n / t_bulk / 1e6:.2f} M events/s  ratio {t_base / t_bulk:.2f}")
    print(f"  EventLog.append, one event per call  : {t_app:.3f} s  {mb / t_app:7.1f} MB/s  "
          f"{n / t_app / 1e6:.2f} M events/s  ratio {t_base / t_app:.2f}")

    # -- compare --------------------------------------------------------------------------
    results = {}
    for size in (args.small, args.large):
        cl = EventLog.from_raw(history(size, args.clients, lambda c: c + 3, lambda c, r: r, 0, 1),
                               "client", None)
        db = EventLog.from_raw(history(size, args.clients, lambda c: 100 + 7 * c,
                                       lambda c, r: 1000 + 10 * c + r, 10, 1), "debugger", None)
        t = best(lambda: compare(cl, db), repeat=2 if size >= 1_000_000 else 3)
        results[size] = t
        print(f"\ncompare {len(cl)} vs {len(db)} events: {t:.2f} s ({len(cl) / t / 1e3:.0f} k events/s per log)")
    ts, tl = results[args.small], results[args.large]
    print(f"compare time ratio {args.large}/{args.small} events: {tl / ts:.1f}")

    # -- memory ---------------------------------------------------------------------------
    gc.collect()
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    log = EventLog.from_raw(blob, "client", None)
    m1 = tracemalloc.get_traced_memory()[0]
    log.find_seqno(1)  # builds the seqno index
    m2 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"\nmemory: raw event bytes {len(blob) / n:.1f} per event")
    print(f"  log (bytes + offsets)    : {(m1 - m0) / n:.1f} bytes/event ({(m1 - m0) / len(blob):.2f}x raw)")
    print(f"  + seqno index (find_seqno): {(m2 - m0) / n:.1f} bytes/event ({(m2 - m0) / len(blob):.2f}x raw)")


if __name__ == "__main__":
    main()
