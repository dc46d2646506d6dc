"""``xe-eudebug log``: print and compare saved event logs.

    xe-eudebug log print FILE...
        each log in IGT's printed form (``event log '<name>' (<bytes> bytes):`` then one line
        per event)
    xe-eudebug log compare A B [--filter TYPES] [--strict] [--match-opposite]
        IGT's verdict of ``xe_eudebug_event_log_compare(A, B, filter)``: exit 0 when the logs
        describe the same history, 1 with the first unmatched event when they do not

Files are those written by :meth:`xe_eudebug.log.EventLog.save` (``xe-eudebug monitor --save``
writes one).  Exit codes: 0 success or match, 1 mismatch, 2 a usage error or a file that cannot
be read as an event log (one line on stderr naming the file and the reason).
"""

from __future__ import annotations

import argparse
import sys

from .events import EventType, filter_mask, type_name

__all__ = ["add_parser", "parse_filter", "run"]

EXIT_MATCH = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2


def parse_filter(text: str) -> int:
    """IGT's filter bitmask from a comma-separated list of event types: names as printed
    (``vm_bind``), uapi names (``VM_BIND``, ``OPEN``), numbers, or a whole mask (``0x40``)."""
    mask = 0
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.lower().startswith("0x"):
            mask |= int(item, 16)
            continue
        if item.isdigit():
            mask |= filter_mask(int(item))
            continue
        upper = item.upper().replace("-", "_")
        match = [t for t in EventType if t.name == upper or type_name(t) == item.lower()]
        if not match:
            names = ", ".join(type_name(t) for t in EventType if int(t) > 1)
            raise ValueError(f"unknown event type {item!r} in --filter (known: {names})")
        mask |= filter_mask(match[0])
    return mask


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``log print`` and ``log compare`` on the ``xe-eudebug`` sub-command parser."""
    p = sub.add_parser("log", help="print or compare saved event logs",
                       description="Print or compare event logs saved by EventLog.save "
                                   "(exit 0 match, 1 mismatch, 2 usage or unreadable file).")
    verbs = p.add_subparsers(dest="log_command", required=True)
    pr = verbs.add_parser("print", help="print logs in IGT's text form")
    pr.add_argument("files", nargs="+", metavar="FILE")
    cmp = verbs.add_parser("compare", help="compare two logs with IGT's verdicts",
                           description="Compare log A (usually the client's) with log B (the "
                                       "debugger's) as IGT's xe_eudebug_event_log_compare does.",
                           epilog="exit status: 0 match, 1 mismatch, 2 usage error or unreadable file")
    cmp.add_argument("a", metavar="A")
    cmp.add_argument("b", metavar="B")
    cmp.add_argument("--filter", default="", metavar="TYPES",
                     help="event types to leave out, comma-separated (vm_bind,metadata or 0x40)")
    cmp.add_argument("--strict", action="store_true",
                     help="also require consistent handle mappings (checks IGT does not make)")
    cmp.add_argument("--match-opposite", action="store_true",
                     help="also require every creation in each log to have its destruction")
    p.set_defaults(func=run)


def _load(path: str):  # -> EventLog | None
    from .log import EventLog

    try:
        return EventLog.load(path)
    except OSError as exc:
        print(f"xe-eudebug log: {path}: {exc.strerror or exc}", file=sys.stderr)
    except (ValueError, UnicodeDecodeError) as exc:
        print(f"xe-eudebug log: {exc}", file=sys.stderr)
    return None


def run(args: argparse.Namespace) -> int:
    from .log import EventLogError

    if args.log_command == "print":
        logs = [_load(path) for path in args.files]
        if any(log is None for log in logs):
            return EXIT_USAGE
        for log in logs:
            print(log.format())
        return EXIT_MATCH
    try:
        mask = parse_filter(args.filter)
    except ValueError as exc:
        print(f"xe-eudebug log compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    a, b = _load(args.a), _load(args.b)
    if a is None or b is None:
        return EXIT_USAGE
    try:
        a.compare(b, mask, strict=args.strict)
        if args.match_opposite:
            a.match_opposite(mask)
            b.match_opposite(mask)
    except EventLogError as exc:
        print(f"MISMATCH: {args.a} ({a.name}, {len(a)} events) vs {args.b} ({b.name}, {len(b)} events)")
        print(str(exc))
        return EXIT_MISMATCH
    print(f"MATCH: {args.a} ({a.name}, {len(a)} events) and {args.b} ({b.name}, {len(b)} events)")
    return EXIT_MATCH
