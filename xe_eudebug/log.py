"""EventLog: an append-only record of eudebug events, with IGT's compare and match_opposite.

Storage is IGT's: the raw bytes of every event back to back (header ``len`` bytes each), plus
an array of start offsets; events are decoded (lazily, see :mod:`xe_eudebug.events`) only
when read.  Writing is thread-safe; reading while another thread appends is safe too (readers
see a prefix of the log).

:meth:`EventLog.compare` reaches exactly the verdicts of IGT's
``xe_eudebug_event_log_compare`` (positional client pairing, per-client greedy matching in
both directions, bind chains resolved by position within each log, the field-equality table,
filters) but indexes the events instead of rescanning the other log for every event, so two
logs of a million events compare in seconds.  ``docs/events-and-logs.md`` describes the
semantics and the save-file format.
"""

from __future__ import annotations

import bisect
import gc
import logging
import os
import struct
import sys
import threading
import zlib
from array import array
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

from xe_eudebug.events import (
    HEADER_SIZE,
    SEQNO_LIMIT,
    Event,
    EventFlags,
    EventType,
    _decode_exact,
    event_class,
    flags_str,
)

__all__ = [
    "EventLog",
    "EventLogError",
    "EventLogMismatch",
    "EventLogFull",
    "DuplicateSeqnoError",
    "compare",
    "match_opposite",
    "MAX_EVENT_LOG_SIZE",
    "NAME_MAX",
    "TRANSFER_HEADER",
    "FILE_MAGIC",
    "FILE_VERSION",
]

logger = logging.getLogger(__name__)

#: Capacity IGT gives every client and debugger log.
MAX_EVENT_LOG_SIZE = 32 * 1024 * 1024
#: IGT keeps at most this many characters of a log's name.
NAME_MAX = 79
#: Prefix of the pipe transfer form: the number of event bytes that follow (native u32).
TRANSFER_HEADER = struct.Struct("=I")
#: Save-file magic and current format version (see :meth:`EventLog.save`).
FILE_MAGIC = b"XEEUDLOG"
FILE_VERSION = 1
_FILE_HEADER = struct.Struct("<8sHBBIQQQ")  # magic, version, byteorder, reserved, name len, max, count, bytes
_CRC = struct.Struct("<I")
_BYTEORDER = {"little": 1, "big": 2}

_HDR4 = struct.Struct("=IHHQ").unpack_from
_LEN_SEQNO = struct.Struct("=I4xQ").unpack_from
_LEN = struct.Struct("=I").unpack_from
_SEQNO = struct.Struct("=Q").unpack_from

_OPEN = int(EventType.OPEN)
_VM = int(EventType.VM)
_EXEC_QUEUE = int(EventType.EXEC_QUEUE)
_VM_BIND = int(EventType.VM_BIND)
_VM_BIND_OP = int(EventType.VM_BIND_OP)
_VM_BIND_UFENCE = int(EventType.VM_BIND_UFENCE)
_METADATA = int(EventType.METADATA)
_VM_BIND_OP_METADATA = int(EventType.VM_BIND_OP_METADATA)
_CREATE = int(EventFlags.CREATE)
_DESTROY = int(EventFlags.DESTROY)
_NEED_ACK = int(EventFlags.NEED_ACK)


class EventLogError(AssertionError):
    """A check of the event log failed (IGT fails the test at these points)."""


class EventLogMismatch(EventLogError):
    """Two logs do not describe the same history (compare), or a creation has no identical
    destruction (match_opposite).

    Attributes: ``event`` (the unmatched event), ``log_name`` (the log it came from),
    ``other_name`` (the log searched), ``client_handle`` (its client on its side, if any),
    ``candidates`` (nearest events of the other side, best first).
    """

    def __init__(
        self,
        message: str,
        *,
        event: Event | None = None,
        log_name: str = "",
        other_name: str = "",
        client_handle: int | None = None,
        candidates: Sequence[Event] = (),
    ) -> None:
        super().__init__(message)
        self.event = event
        self.log_name = log_name
        self.other_name = other_name
        self.client_handle = client_handle
        self.candidates = list(candidates)


class EventLogFull(EventLogError):
    """Appending would fill the log to its capacity (IGT asserts ``head + len < max_size``)."""


class DuplicateSeqnoError(EventLogError):
    """A seqno lookup or sort found several events with the same seqno."""


def _check_seqno(seqno: int) -> None:
    if seqno == 0 or seqno >= SEQNO_LIMIT:
        raise ValueError(f"event seqno {seqno} outside the sane range 1..{SEQNO_LIMIT - 1}")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building millions of small containers triggers needless cyclic collections."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_MISSING = array("i", [-1])


class _SeqnoIndex:
    """seqno -> storage position.  Dense seqnos (counters from 1, the usual case) live in a
    direct-address array of 4-byte slots; the index turns into a dict once seqnos are too
    sparse for that to pay.  Repeated seqnos are collected in ``dups``."""

    __slots__ = ("table", "map", "dups", "count")

    def __init__(self) -> None:
        self.table = array("i")
        self.map: dict[int, int] | None = None
        self.dups: set[int] = set()
        self.count = 0

    def add(self, s: int, i: int) -> None:
        self.count += 1
        m = self.map
        if m is None:
            t = self.table
            if s < len(t):
                if t[s] >= 0:
                    self.dups.add(s)
                else:
                    t[s] = i
                return
            if s <= 4 * self.count + 65536:
                t.extend(_MISSING * (max(s + 1, 2 * len(t)) - len(t)))
                t[s] = i
                return
            m = self.map = {k: v for k, v in enumerate(t) if v >= 0}
            self.table = array("i")
        if s in m:
            self.dups.add(s)
        else:
            m[s] = i

    def get(self, s: int) -> int:
        """Position of the (first) event with seqno ``s``, -1 if none."""
        m = self.map
        if m is not None:
            return m.get(s, -1)
        t = self.table
        return t[s] if s < len(t) else -1


class EventLog:
    """An append-only, thread-safe log of raw events (IGT ``struct xe_eudebug_event_log``).

    ``EventLog(name, max_size=MAX_EVENT_LOG_SIZE)``; ``max_size=None`` removes the capacity
    limit.  ``len(log)`` is the number of events, ``log.head`` the number of bytes, iteration
    yields :class:`~xe_eudebug.events.Event` views in storage order.
    """

    def __init__(self, name: str, max_size: int | None = MAX_EVENT_LOG_SIZE) -> None:
        if not name:
            raise ValueError("an event log needs a name")
        if max_size is not None and max_size <= 0:
            raise ValueError(f"invalid event log capacity {max_size}")
        self.name: str = str(name)[:NAME_MAX]
        self._max_size = max_size
        self._limit = max_size if max_size is not None else 1 << 64
        self._buf = bytearray()
        self._offs = array("Q")
        self._lock = threading.Lock()
        self._index = _SeqnoIndex()
        self._indexed = 0

    # -- size ------------------------------------------------------------------------------
    @property
    def max_size(self) -> int | None:
        """Capacity in bytes (None: unbounded); an append may not bring ``head`` up to it."""
        return self._max_size

    @max_size.setter
    def max_size(self, value: int | None) -> None:
        if value is not None and value <= 0:
            raise ValueError(f"invalid event log capacity {value}")
        self._max_size = value
        self._limit = value if value is not None else 1 << 64

    @property
    def head(self) -> int:
        """Number of bytes used (IGT ``log->head``)."""
        return len(self._buf)

    def __len__(self) -> int:
        return len(self._offs)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<EventLog {self.name!r}: {len(self)} events, {self.head} bytes>"

    # -- writing ---------------------------------------------------------------------------
    def append(self, event: Event | bytes | bytearray | memoryview) -> None:
        """Append one event (an :class:`Event` or its raw bytes; the first ``base.len`` bytes
        are stored).  Thread-safe.

        Raises ``ValueError`` for a seqno of 0 or at/above the 10 000 000 sanity cap (IGT
        asserts the same on every write) or a header ``len`` that is below 24 or beyond the
        given bytes, and :class:`EventLogFull` when ``head + len`` would reach ``max_size``.
        """
        raw = event._raw if isinstance(event, Event) else event
        ln, seqno = _LEN_SEQNO(raw, 0)
        if not 0 < seqno < SEQNO_LIMIT:
            _check_seqno(seqno)
        n = len(raw)
        if ln != n or ln < HEADER_SIZE:
            if ln < HEADER_SIZE or ln > n:
                raise ValueError(f"event header len {ln} invalid for {n} bytes of event")
            raw = memoryview(raw)[:ln]
        lock = self._lock
        lock.acquire()  # cheaper than a with-block on this hot path
        try:
            buf = self._buf
            head = len(buf)
            if head + ln >= self._limit:
                raise EventLogFull(
                    f"event log '{self.name}' full: {head} + {ln} bytes reach its capacity "
                    f"of {self.max_size}"
                )
            self._offs.append(head)
            buf += raw
        finally:
            lock.release()

    write = append

    def extend(self, events: Iterable[Event | bytes | bytearray | memoryview]) -> None:
        """Append several events in order."""
        for e in events:
            self.append(e)

    # -- reading ---------------------------------------------------------------------------
    def _end(self, i: int, n: int) -> int:
        return self._offs[i + 1] if i + 1 < n else len(self._buf)

    def raw_at(self, index: int) -> bytes:
        """Raw bytes of the event at ``index`` (storage order)."""
        offs = self._offs
        n = len(offs)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("event log index out of range")
        off = offs[index]
        return bytes(self._buf[off : off + _LEN(self._buf, off)[0]])

    def __getitem__(self, index: int) -> Event:
        return _decode_exact(self.raw_at(index))

    def __iter__(self) -> Iterator[Event]:
        buf = self._buf
        for off in self._offs[: len(self._offs)]:
            yield _decode_exact(bytes(buf[off : off + _LEN(buf, off)[0]]))

    @property
    def raw(self) -> bytes:
        """All event bytes, back to back (IGT's buffer up to ``head``)."""
        with self._lock:
            return bytes(self._buf)

    def seqnos(self) -> list[int]:
        """Seqnos of all events in storage order."""
        buf = self._buf
        return [_SEQNO(buf, off + 8)[0] for off in self._offs[: len(self._offs)]]

    def _update_index(self) -> None:
        with self._lock:
            buf, offs, index = self._buf, self._offs, self._index
            for i in range(self._indexed, len(offs)):
                index.add(_SEQNO(buf, offs[i] + 8)[0], i)
            self._indexed = len(offs)

    def find_seqno(self, seqno: int) -> Event | None:
        """The event carrying ``seqno``, or None; O(1) (an index kept up to date as events are
        appended).

        As in IGT: ``ValueError`` for seqno 0 or at/above the sanity cap, and
        :class:`DuplicateSeqnoError` when several events carry the seqno (the log is logged
        at INFO level first).
        """
        _check_seqno(seqno)
        if self._indexed != len(self._offs):
            self._update_index()
        if seqno in self._index.dups:
            logger.warning("found multiple events with the same seqno %d", seqno)
            self.print(debug=False)
            raise DuplicateSeqnoError(
                f"event log '{self.name}': several events carry seqno {seqno}"
            )
        i = self._index.get(seqno)
        return None if i < 0 else self[i]

    def _reset_index(self) -> None:
        self._index = _SeqnoIndex()
        self._indexed = 0

    def sort(self) -> None:
        """Reorder the events by ascending seqno (IGT's stop-worker sort).

        Seqnos must be unique (:class:`DuplicateSeqnoError` otherwise, as IGT's lookup-based
        sort fails); gaps are fine.  An empty log is left untouched.
        """
        with self._lock:
            buf, offs = self._buf, self._offs
            n = len(offs)
            if n == 0:
                return
            seq = [_SEQNO(buf, off + 8)[0] for off in offs]
            if len(set(seq)) != n:
                seen: set[int] = set()
                dup = 0
                for s in seq:
                    if s in seen:
                        dup = s
                        break
                    seen.add(s)
                raise DuplicateSeqnoError(
                    f"event log '{self.name}': cannot sort, several events carry seqno {dup}"
                )
            order = sorted(range(n), key=seq.__getitem__)
            new = bytearray()
            new_offs = array("Q")
            for i in order:
                off = offs[i]
                new_offs.append(len(new))
                new += buf[off : off + _LEN(buf, off)[0]]
            assert len(new) == len(buf) and len(new_offs) == n
            self._buf, self._offs = new, new_offs
            self._reset_index()

    def copy(self, name: str | None = None) -> "EventLog":
        """An independent copy (same events, capacity and, unless given, name)."""
        c = EventLog(name or self.name, self.max_size)
        with self._lock:
            c._buf = bytearray(self._buf)
            c._offs = array("Q", self._offs)
        return c

    # -- printing --------------------------------------------------------------------------
    def format(self) -> str:
        """IGT's printed log: ``event log '<name>' (<head> bytes):`` then one line per event."""
        lines = [f"event log '{self.name}' ({self.head} bytes):"]
        lines.extend(str(e) for e in self)
        return "\n".join(lines)

    def print(self, debug: bool = True, log: logging.Logger | None = None) -> None:
        """Emit :meth:`format`'s lines through ``logging`` (DEBUG when ``debug``, else INFO)."""
        lg = log or logger
        level = logging.DEBUG if debug else logging.INFO
        if not lg.isEnabledFor(level):
            return
        for line in self.format().split("\n"):
            lg.log(level, "%s", line)

    # -- pipe transfer ---------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """IGT's pipe form: ``head`` as a native u32, then the ``head`` event bytes."""
        raw = self.raw
        return TRANSFER_HEADER.pack(len(raw)) + raw

    @staticmethod
    def transfer_size(prefix: bytes) -> int:
        """Number of event bytes announced by the 4-byte prefix of :meth:`to_bytes`."""
        return TRANSFER_HEADER.unpack(bytes(prefix[: TRANSFER_HEADER.size]))[0]

    @classmethod
    def from_bytes(
        cls, data: bytes | bytearray | memoryview, name: str = "client",
        max_size: int | None = MAX_EVENT_LOG_SIZE,
    ) -> "EventLog":
        """Rebuild a log from :meth:`to_bytes` output (exactly prefix + announced bytes).

        As IGT's receiver: the announced size must be below ``max_size``.  ``ValueError`` for
        a short or overlong blob or events whose ``len`` does not tile it."""
        mv = memoryview(data)
        if len(mv) < TRANSFER_HEADER.size:
            raise ValueError(f"event log transfer needs a {TRANSFER_HEADER.size}-byte size prefix")
        head = TRANSFER_HEADER.unpack_from(mv)[0]
        if max_size is not None and head >= max_size:
            raise ValueError(f"event log transfer of {head} bytes does not fit capacity {max_size}")
        if len(mv) != TRANSFER_HEADER.size + head:
            raise ValueError(
                f"event log transfer announces {head} bytes but carries {len(mv) - TRANSFER_HEADER.size}"
            )
        return cls.from_raw(mv[TRANSFER_HEADER.size :], name, max_size)

    @classmethod
    def from_raw(
        cls, blob: bytes | bytearray | memoryview, name: str = "client",
        max_size: int | None = MAX_EVENT_LOG_SIZE,
    ) -> "EventLog":
        """A log holding the events stored back to back in ``blob`` (IGT's buffer format).

        Every event's ``len`` must be at least 24 and the events must end exactly at the end
        of ``blob`` (``ValueError`` otherwise).  Like IGT's pipe receiver, seqnos are not
        checked here."""
        log = cls(name, max_size)
        buf = bytearray(blob)
        end = len(buf)
        if max_size is not None and end and end >= max_size:
            raise ValueError(f"{end} bytes of events do not fit capacity {max_size}")
        offs = array("Q")
        add = offs.append
        unpack = _LEN
        off = 0
        last = end - HEADER_SIZE
        while off < end:
            if off > last:
                raise ValueError(f"truncated event header at byte {off} of {end}")
            ln = unpack(buf, off)[0]
            if ln < HEADER_SIZE or off + ln > end:
                raise ValueError(f"event at byte {off} has invalid len {ln} ({end} bytes in all)")
            add(off)
            off += ln
        log._buf, log._offs = buf, offs
        return log

    # -- save / load -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the log to ``path`` in the versioned format below (atomically replaced).

        Version 1, all header integers little-endian::

            0   8  magic b"XEEUDLOG"
            8   2  format version (1)
            10  1  byte order of the event bytes (1 little, 2 big)
            11  1  reserved (0)
            12  4  name length N in bytes (UTF-8)
            16  8  capacity (max_size; 0 = unbounded)
            24  8  number of events
            32  8  number of event bytes H
            40  N  name
            40+N H  events, raw, back to back (IGT's storage format)
            ... 4  CRC-32 (zlib) of everything before it
        """
        with self._lock:
            raw = bytes(self._buf)
            count = len(self._offs)
        name = self.name.encode()
        head = _FILE_HEADER.pack(
            FILE_MAGIC, FILE_VERSION, _BYTEORDER[sys.byteorder], 0, len(name),
            self.max_size or 0, count, len(raw),
        )
        crc = zlib.crc32(raw, zlib.crc32(name, zlib.crc32(head)))
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(head)
            f.write(name)
            f.write(raw)
            f.write(_CRC.pack(crc))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EventLog":
        """Read a log written by :meth:`save`; ``ValueError`` names what is wrong with a file
        that is not one, is damaged, or has a newer format version."""
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < _FILE_HEADER.size + _CRC.size or not data.startswith(FILE_MAGIC):
            raise ValueError(f"{os.fspath(path)}: not an xe_eudebug event log file")
        magic, version, order, _r, nlen, max_size, count, nbytes = _FILE_HEADER.unpack_from(data)
        if version > FILE_VERSION or version < 1:
            raise ValueError(
                f"{os.fspath(path)}: event log file format version {version} is not supported "
                f"(this library reads up to {FILE_VERSION})"
            )
        if order != _BYTEORDER[sys.byteorder]:
            raise ValueError(f"{os.fspath(path)}: events were saved with another byte order")
        body_end = _FILE_HEADER.size + nlen + nbytes
        if len(data) != body_end + _CRC.size:
            raise ValueError(f"{os.fspath(path)}: truncated or overlong event log file")
        if zlib.crc32(data[:body_end]) != _CRC.unpack_from(data, body_end)[0]:
            raise ValueError(f"{os.fspath(path)}: event log file checksum mismatch")
        name = data[_FILE_HEADER.size : _FILE_HEADER.size + nlen].decode()
        log = cls.from_raw(
            memoryview(data)[_FILE_HEADER.size + nlen : body_end], name or "log", max_size or None
        )
        if len(log) != count:
            raise ValueError(f"{os.fspath(path)}: {len(log)} events found, header says {count}")
        return log

    # -- checks ----------------------------------------------------------------------------
    def compare(self, other: "EventLog", filter: int = 0, strict: bool = False) -> None:
        """IGT ``xe_eudebug_event_log_compare(self, other, filter)``; see :func:`compare`."""
        compare(self, other, filter, strict)

    def match_opposite(self, filter: int = 0) -> None:
        """IGT ``xe_eudebug_event_log_match_opposite``; see :func:`match_opposite`."""
        match_opposite(self, filter)


# ---------------------------------------------------------------------------------------------
# Columns: the few fields compare needs, unpacked once per log.


def _payload_struct(event_type: int, names: Sequence[str]) -> tuple[Any, int]:
    """A Struct unpacking the named payload fields (in the given order must be by offset)."""
    cls = event_class(event_type)
    fields = {n: (o, f) for n, o, f in cls.FIELDS}
    fmt, pos = "=", HEADER_SIZE  # unpacked from the end of the header
    for n in names:
        o, f = fields[n]
        if o < pos:
            raise ValueError("fields must be listed by offset")
        fmt += f"{o - pos}x{f}" if o > pos else f
        pos = o + struct.calcsize("=" + f)
    return struct.Struct(fmt).unpack_from, cls.SIZE


# type -> (unpack of [ref, key fields...], fixed size, has extra key fields)
_COLSPEC: dict[int, tuple[Any, int, bool]] = {}
for _t, _names in (
    (_OPEN, ["client_handle"]),
    (_VM, ["client_handle"]),
    (_METADATA, ["client_handle"]),
    (_EXEC_QUEUE, ["client_handle", "engine_class", "width"]),
    (_VM_BIND, ["client_handle", "num_binds"]),
    (_VM_BIND_OP, ["vm_bind_ref_seqno", "num_extensions", "addr", "range"]),
    (_VM_BIND_UFENCE, ["vm_bind_ref_seqno"]),
    (_VM_BIND_OP_METADATA, ["vm_bind_op_ref_seqno", "metadata_handle", "metadata_cookie"]),
):
    _u, _size = _payload_struct(_t, _names)
    _COLSPEC[_t] = (_u, _size, len(_names) > 1)
del _t, _names, _u, _size


class _Columns(NamedTuple):
    types: "array[int]"
    flags: "array[int]"
    seqnos: "array[int]"
    refs: "array[int]"  # client handle or referenced seqno (0 for types compare ignores)
    keys: "array[int]"  # SAME key (type, flags and the compared fields) as a small id


def _columns(log: EventLog, key_ids: dict[Any, int]) -> _Columns:
    """Compact columns of one log; ``key_ids`` (shared by the logs being compared) numbers the
    distinct SAME keys, so equal ids mean equal keys."""
    buf = log._buf
    T = array("H")
    F = array("H")
    S = array("Q")
    R = array("Q")
    K = array("q")
    at, af, as_, ar, ak = T.append, F.append, S.append, R.append, K.append
    get = _COLSPEC.get
    kget = key_ids.get
    hdr = _HDR4
    hs = HEADER_SIZE
    for off in log._offs:
        ln, t, f, s = hdr(buf, off)
        at(t)
        af(f)
        as_(s)
        spec = get(t)
        if spec is None:
            ar(0)
            ak(-1)
            continue
        unpack, size, extra = spec
        if ln >= size:
            v = unpack(buf, off + hs)
        else:  # short event: missing bytes read as zero
            v = unpack(bytes(buf[off : off + ln]) + bytes(size - ln), hs)
        ar(v[0])
        key = (t, f) + v[1:] if extra else (t << 16) | f
        kid = kget(key)
        if kid is None:
            kid = key_ids[key] = len(key_ids)
        ak(kid)
    return _Columns(T, F, S, R, K)


def _same_key_fields(event_type: int) -> tuple[str, ...]:
    return {
        _EXEC_QUEUE: ("engine_class", "width"),
        _VM_BIND: ("num_binds",),
        _VM_BIND_OP: ("num_extensions", "addr", "range"),
        _VM_BIND_OP_METADATA: ("metadata_handle", "metadata_cookie"),
    }.get(event_type, ())


# ---------------------------------------------------------------------------------------------
# BELONGS, for every client handle of interest at once.

_DIRECT = frozenset((_OPEN, _VM, _EXEC_QUEUE, _METADATA))


def _note(one: dict[int, int], many: dict[int, set[int]], key: int, h: int) -> None:
    """Record that handle ``h`` may hold ``key`` (``one`` keeps a single handle per key,
    ``many`` the rare keys several handles share)."""
    o = one.get(key)
    if o is None:
        one[key] = h
    elif o != h:
        many.setdefault(key, {o}).add(h)


class _Tracker:
    """IGT's "last VM_BIND seqno" (or "last VM_BIND_OP seqno") tracker, for every handle at
    once.  ``value``: the current value per handle (absent while unknown); ``of``: value -> the
    handle that took it last; ``many``: the rare values several handles hold at once (0 at the
    start, repeated seqnos); ``maybe``/``maybe_many``: the left-over values a handle whose
    value is unknown could hold."""

    __slots__ = ("value", "of", "many", "unknown", "maybe", "maybe_many")

    def __init__(self, handles: set[int], known: bool) -> None:
        self.value: dict[int, int] = dict.fromkeys(handles, 0) if known else {}
        self.of: dict[int, int] = {}
        self.many: dict[int, set[int]] = {0: set(handles)} if known else {}
        self.unknown: set[int] = set() if known else set(handles)
        self.maybe: dict[int, int] = {}
        self.maybe_many: dict[int, set[int]] = {}

    def take(self, h: int, s: int) -> None:
        """Handle ``h``'s tracker becomes ``s``."""
        value, many = self.value, self.many
        old = value.get(h)
        if old is None:
            self.unknown.discard(h)
        elif many:
            m = many.get(old)
            if m:
                m.discard(h)
        value[h] = s
        o = self.of.get(s)
        if o is not None and o != h and value.get(o) == s:
            many.setdefault(s, {o}).add(h)
        elif s == 0:
            many.setdefault(0, set()).add(h)
        self.of[s] = h

    def holders(self, r: int) -> Iterable[int]:
        """Handles whose tracker equals ``r``."""
        m = self.many.get(r) if self.many else None
        if m:
            return m
        h = self.of.get(r)
        return (h,) if h is not None and self.value[h] == r else ()

    def suspects(self, r: int) -> Iterable[int]:
        """Handles with an unknown tracker that could be holding ``r``."""
        if r == 0:
            return self.unknown
        h0 = self.maybe.get(r)
        if h0 is None:
            return ()
        mm = self.maybe_many.get(r)
        if mm:
            return mm & self.unknown
        return (h0,) if h0 in self.unknown else ()


def _classify(
    cols: _Columns, handles: set[int], filter: int, trackers_known: bool
) -> tuple[dict[int, Any], set[int]]:
    """Positions of the events that BELONG to each handle, scanning the log once.

    ``trackers_known``: the bind/op trackers start at 0 (side A of IGT's compare_client,
    scanned once).  Otherwise (side B, rescanned from its start with trackers left over from
    the previous scan) events whose membership could depend on that left-over state make
    their handle *ambiguous*; for all other handles membership is a function of position.
    Returns (positions per handle, ambiguous handles).
    """
    T, S, R = cols.types, cols.seqnos, cols.refs
    DIRECT, BIND, OP, UFENCE, OPMETA = _DIRECT, _VM_BIND, _VM_BIND_OP, _VM_BIND_UFENCE, _VM_BIND_OP_METADATA
    lists: dict[int, Any] = {h: array("q") for h in handles}
    bind = _Tracker(handles, trackers_known)
    op = _Tracker(handles, trackers_known)
    ambiguous: set[int] = set()
    if not trackers_known:
        # left-over bind values: 0 or a seqno of one of the handle's VM_BINDs; left-over op
        # values: 0 or a seqno of an op whose reference is a possible bind value
        for i, t in enumerate(T):
            if t == BIND and R[i] in lists:
                _note(bind.maybe, bind.maybe_many, S[i], R[i])
        for i, t in enumerate(T):
            if t == OP:
                r = R[i]
                cands = handles if r == 0 else bind.maybe_many.get(r) or (
                    (bind.maybe[r],) if r in bind.maybe else ())
                for h in cands:
                    _note(op.maybe, op.maybe_many, S[i], h)

    for i, t in enumerate(T):
        if (filter >> t) & 1:
            continue
        if t in DIRECT:
            lst = lists.get(R[i])
            if lst is not None:
                lst.append(i)
        elif t == BIND:
            h = R[i]
            lst = lists.get(h)
            if lst is not None:
                lst.append(i)
                bind.take(h, S[i])
        elif t == OP or t == UFENCE:
            r = R[i]
            for h in bind.holders(r):
                lists[h].append(i)
                if t == OP:
                    op.take(h, S[i])
            if bind.unknown:
                ambiguous.update(bind.suspects(r))
        elif t == OPMETA:
            r = R[i]
            for h in op.holders(r):
                lists[h].append(i)
            if op.unknown:
                ambiguous.update(op.suspects(r))
    return lists, ambiguous


# ---------------------------------------------------------------------------------------------
# Literal IGT compare_client (used where the fast path cannot prove equivalence, and by the
# tests as the reference).


def _belongs_literal(cols: _Columns, i: int, h: int, filter: int, tr: list[int]) -> bool:
    t = cols.types[i]
    if (filter >> t) & 1:
        return False
    r = cols.refs[i]
    if t in _DIRECT:
        return r == h
    if t == _VM_BIND:
        if r == h:
            tr[0] = cols.seqnos[i]
            return True
        return False
    if t == _VM_BIND_OP:
        if r == tr[0]:
            tr[1] = cols.seqnos[i]
            return True
        return False
    if t == _VM_BIND_UFENCE:
        return r == tr[0]
    if t == _VM_BIND_OP_METADATA:
        return r == tr[1]
    return False


def _compare_client_literal(
    a: _Columns, ha: int, b: _Columns, hb: int, filter: int
) -> tuple[list[tuple[int, int]], int | None]:
    """IGT's compare_client, step by step.  Returns (matched (i, j) pairs, first unmatched
    A position or None)."""
    tra = [0, 0]
    trb = [0, 0]
    matched: set[int] = set()
    pairs: list[tuple[int, int]] = []
    nb = len(b.types)
    for i in range(len(a.types)):
        if not _belongs_literal(a, i, ha, filter, tra):
            continue
        key = a.keys[i]
        found = None
        for j in range(nb):
            if _belongs_literal(b, j, hb, 0, trb) and b.keys[j] == key and b.seqnos[j] not in matched:
                found = j
                break
        if found is None:
            return pairs, i
        matched.add(b.seqnos[found])
        pairs.append((i, found))
    return pairs, None


# ---------------------------------------------------------------------------------------------
# compare


class _Side:
    """One log's data for a compare call."""

    def __init__(self, log: EventLog, filter: int, key_ids: dict[Any, int]) -> None:
        self.log = log
        self.cols = _columns(log, key_ids)
        self.filter = filter
        self._as_a: dict[int, list[int]] = {}
        self._as_b: dict[int, list[int]] = {}
        self._ambiguous: set[int] = set()
        self._buckets: dict[int, dict[Any, list[int]]] = {}
        self.unique_seqnos = len(set(self.cols.seqnos)) == len(self.cols.seqnos)

    def classify(self, handles: set[int]) -> None:
        """Membership of the paired handles' events, for this log as side B (filter 0,
        left-over trackers) and as side A (its filter, trackers from 0)."""
        if not handles:
            return
        self._as_b, self._ambiguous = _classify(self.cols, handles, 0, False)
        if self._ambiguous:
            logger.debug(
                "%s: client(s) %s need the step-by-step comparison",
                self.log.name, sorted(self._ambiguous),
            )
        if self.filter == 0 and not self._ambiguous:
            # Without a filter the two differ only where a reference could equal the
            # starting tracker value 0 before a handle's first VM_BIND (or op) -- exactly
            # what makes a handle ambiguous on side B.
            self._as_a = self._as_b
        else:
            self._as_a, _ = _classify(self.cols, handles, self.filter, True)

    def buckets(self, hb: int) -> dict[Any, list[int]]:
        bk = self._buckets.get(hb)
        if bk is None:
            bk = {}
            keys = self.cols.keys
            for j in self._as_b[hb]:
                k = keys[j]
                lst = bk.get(k)
                if lst is None:
                    bk[k] = [j]
                else:
                    lst.append(j)
            self._buckets[hb] = bk
        return bk


def _compare_client(
    A: _Side, ha: int, B: _Side, hb: int, keep_pairs: bool = True
) -> tuple[list[tuple[int, int]], int | None]:
    """IGT's compare_client(A, hA, B, hB) on the index: each selected A event takes the
    first not yet matched B event of its client with an equal SAME key, in B's storage
    order.  Returns (matched (i, j) pairs if ``keep_pairs``, first unmatched A position)."""
    if hb in B._ambiguous:
        return _compare_client_literal(A.cols, ha, B.cols, hb, A.filter)
    keys_a = A.cols.keys
    seq_b = B.cols.seqnos
    buckets = B.buckets(hb)
    ptr: dict[int, int] = {}
    pairs: list[tuple[int, int]] = []
    if B.unique_seqnos:
        # every B position is taken at most once through its bucket's cursor, so with unique
        # seqnos IGT's matched-seqno list never rejects a candidate
        for i in A._as_a[ha]:
            k = keys_a[i]
            lst = buckets.get(k)
            if lst is None:
                return pairs, i
            p = ptr.get(k, 0)
            if p == len(lst):
                return pairs, i
            ptr[k] = p + 1
            if keep_pairs:
                pairs.append((i, lst[p]))
        return pairs, None
    matched: set[int] = set()
    for i in A._as_a[ha]:
        k = keys_a[i]
        lst = buckets.get(k)
        if lst is None:
            return pairs, i
        p = ptr.get(k, 0)
        n = len(lst)
        while p < n and seq_b[lst[p]] in matched:
            p += 1
        if p == n:
            ptr[k] = p
            return pairs, i
        j = lst[p]
        matched.add(seq_b[j])
        ptr[k] = p + 1
        if keep_pairs:
            pairs.append((i, j))
    return pairs, None


def _field_diff(a: Event, b: Event) -> list[str]:
    diff = []
    if a.flags != b.flags:
        diff.append("flags")
    for f in _same_key_fields(int(a.type)):
        if getattr(a, f) != getattr(b, f):
            diff.append(f)
    return diff


def _mismatch(
    A: _Side, i: int, ha: int, B: _Side, hb: int, pairs: list[tuple[int, int]]
) -> EventLogMismatch:
    la, lb = A.log, B.log
    ev = la[i]
    matched_by = {j: i2 for i2, j in pairs}
    if hb in B._as_b:
        pool = B._as_b[hb]
    else:
        pool = range(len(B.cols.types))
    etype = int(ev.type)
    same_type = [j for j in pool if B.cols.types[j] == etype]
    elsewhere = not same_type
    if elsewhere:  # none in the client's chain: show equal-typed events of other chains
        same_type = [j for j, t in enumerate(B.cols.types) if t == etype]
    ranked = []
    for j in same_type:
        cand = lb[j]
        diff = _field_diff(ev, cand)
        ranked.append((len(diff), j in matched_by, j, cand, diff))
    ranked.sort(key=lambda r: (r[0], r[1], r[2]))
    lines = [
        f"{la.name} ({ev.seqno}): no matching event type {etype} found for client {ha}",
        f"  unmatched {la.name} event: {ev}",
        f"  '{la.name}' client {ha} is paired with '{lb.name}' client {hb}",
    ]
    tname = ev.type.name if isinstance(ev.type, EventType) else str(etype)
    if not ranked:
        lines.append(f"  {lb.name} has no {tname} event at all")
    else:
        if elsewhere:
            lines.append(
                f"  {lb.name} has no {tname} event counted for client {hb} (bind chains are "
                f"followed by position); nearest {tname} events of other clients or chains:"
            )
        else:
            lines.append(f"  nearest {lb.name} candidates:")
        for ndiff, used, j, cand, diff in ranked[:3]:
            notes = []
            if diff:
                notes.append("differs in " + ", ".join(diff))
            if used:
                notes.append(f"already matched to {la.name} ({la[matched_by[j]].seqno})")
            lines.append(f"    {cand}" + (f"  [{'; '.join(notes)}]" if notes else ""))
    return EventLogMismatch(
        "\n".join(lines),
        event=ev,
        log_name=la.name,
        other_name=lb.name,
        client_handle=ha,
        candidates=[r[3] for r in ranked[:3]],
    )


class _StrictMap:
    """A bijection between handles of two logs with lifetimes (create binds, destroy frees)."""

    def __init__(self, what: str, na: str, nb: str) -> None:
        self.what, self.na, self.nb = what, na, nb
        self.fwd: dict[Any, tuple[int, Event]] = {}
        self.rev: dict[Any, tuple[int, Event]] = {}

    def check(self, ka: Any, kb: Any, ea: Event, eb: Event) -> None:
        prev = self.fwd.get(ka)
        if prev is not None and prev[0] != kb:
            raise EventLogMismatch(
                f"strict: {self.na} {self.what} {ka[-1]} maps to {self.nb} {self.what} {kb[-1]} "
                f"at {ea} vs {eb}, but earlier to {prev[0][-1]} ({prev[1]})",
                event=ea, log_name=self.na, other_name=self.nb, candidates=[eb],
            )
        back = self.rev.get(kb)
        if back is not None and back[0] != ka:
            raise EventLogMismatch(
                f"strict: {self.nb} {self.what} {kb[-1]} stands for {self.na} {self.what} "
                f"{ka[-1]} at {ea} vs {eb}, but earlier for {back[0][-1]} ({back[1]})",
                event=ea, log_name=self.na, other_name=self.nb, candidates=[eb],
            )
        self.fwd[ka] = (kb, ea)
        self.rev[kb] = (ka, ea)

    def release(self, ka: Any, kb: Any) -> None:
        self.fwd.pop(ka, None)
        self.rev.pop(kb, None)


def _strict_check(
    A: _Side, ha: int, B: _Side, hb: int, pairs: list[tuple[int, int]],
    vms: _StrictMap, mds: _StrictMap,
) -> None:
    la, lb = A.log, B.log
    ta = A.cols.types
    for i, j in pairs:
        t = ta[i]
        if t not in (_VM, _EXEC_QUEUE, _VM_BIND, _METADATA):
            continue
        ea, eb = la[i], lb[j]
        if t == _METADATA:
            if ea.metadata_type != eb.metadata_type or ea.len != eb.len:
                raise EventLogMismatch(
                    f"strict: metadata type/len differ: {la.name} {ea} vs {lb.name} {eb}",
                    event=ea, log_name=la.name, other_name=lb.name, client_handle=ha,
                    candidates=[eb],
                )
            ka, kb = (ha, ea.metadata_handle), (hb, eb.metadata_handle)
            mds.check(ka, kb, ea, eb)
            if ea.flags & _DESTROY:
                mds.release(ka, kb)
        else:
            ka, kb = (ha, ea.vm_handle), (hb, eb.vm_handle)
            vms.check(ka, kb, ea, eb)
            if t == _VM and ea.flags & _DESTROY:
                vms.release(ka, kb)


def _pairings(log1: EventLog, c1: _Columns, c2: _Columns) -> list[tuple[int, int | None]]:
    """(position in log1, partner position in log2 or None) for each client creation."""
    by_flags: dict[int, list[int]] = {}
    for j, t in enumerate(c2.types):
        if t == _OPEN:
            by_flags.setdefault(c2.flags[j], []).append(j)
    out: list[tuple[int, int | None]] = []
    cursor = -1
    for i, t in enumerate(c1.types):
        if t != _OPEN or not (c1.flags[i] & _CREATE):
            continue
        lst = by_flags.get(c1.flags[i], [])
        p = bisect.bisect_right(lst, cursor)
        if p == len(lst):
            out.append((i, None))
            break
        cursor = lst[p]
        out.append((i, cursor))
    return out


def compare(log1: EventLog, log2: EventLog, filter: int = 0, strict: bool = False) -> None:
    """Assert that two logs describe the same per-client history, with IGT's verdicts.

    For the k-th client creation of ``log1`` (OPEN with CREATE) the k-th OPEN event of
    ``log2`` with exactly the same flags is its partner; then for each pair, in both
    directions, every event of the client on one side (filtered types excepted) must have its
    own counterpart on the other side with equal type, flags and compared fields, chosen
    greedily in storage order.  ``filter`` is IGT's bitmask of ``1 << type``.

    ``strict`` adds checks IGT does not make: paired client handles, VM handles and metadata
    handles form a consistent one-to-one mapping while the resources live (a handle may be
    reused after its destruction), and matched METADATA events agree on metadata type and
    length.

    Raises :class:`EventLogMismatch` naming the first unmatched event.
    """
    with _gc_paused():
        key_ids: dict[Any, int] = {}
        A1 = _Side(log1, filter, key_ids)
        A2 = _Side(log2, filter, key_ids)
        pairs = _pairings(log1, A1.cols, A2.cols)
        h1 = {A1.cols.refs[i] for i, _ in pairs}
        h2 = {A2.cols.refs[j] for _, j in pairs if j is not None}
        A1.classify(h1)
        A2.classify(h2)
        vms = _StrictMap("vm handle", log1.name, log2.name)
        mds = _StrictMap("metadata handle", log1.name, log2.name)
        live1: dict[int, int] = {}
        live2: dict[int, int] = {}
        last_j = -1
        last_i = -1
        for i, j in pairs:
            if j is None:
                ev = log1[i]
                raise EventLogMismatch(
                    f"{log2.name}: no client event with flags {flags_str(ev.flags)} left to pair with "
                    f"{log1.name} ({ev.seqno}) {ev}",
                    event=ev, log_name=log1.name, other_name=log2.name,
                    client_handle=A1.cols.refs[i],
                )
            ha, hb = A1.cols.refs[i], A2.cols.refs[j]
            if strict:
                _strict_clients(log1, A1.cols, last_i, i, live1, log2, A2.cols, last_j, j, live2, ha, hb)
                last_i, last_j = i, j
            logger.debug("client: %d -> %d", ha, hb)
            got, miss = _compare_client(A1, ha, A2, hb, strict)
            if miss is not None:
                got, miss = _compare_client(A1, ha, A2, hb, True)
                raise _mismatch(A1, miss, ha, A2, hb, got)
            if strict:
                _strict_check(A1, ha, A2, hb, got, vms, mds)
            got, miss = _compare_client(A2, hb, A1, ha, False)
            if miss is not None:
                got, miss = _compare_client(A2, hb, A1, ha, True)
                raise _mismatch(A2, miss, hb, A1, ha, got)


def _strict_clients(
    log1: EventLog, c1: _Columns, last_i: int, i: int, live1: dict[int, int],
    log2: EventLog, c2: _Columns, last_j: int, j: int, live2: dict[int, int],
    ha: int, hb: int,
) -> None:
    for cols, lo, hi, live in ((c1, last_i, i, live1), (c2, last_j, j, live2)):
        for k in range(lo + 1, hi):
            if cols.types[k] == _OPEN and cols.flags[k] & _DESTROY:
                live.pop(cols.refs[k], None)
    if live1.get(ha, hb) != hb or live2.get(hb, ha) != ha:
        raise EventLogMismatch(
            f"strict: {log1.name} client {ha} is paired with {log2.name} client {hb} at "
            f"{log1[i]}, while {log1.name} client {ha} is still paired with "
            f"{log2.name} client {live1.get(ha, '-')} / {log2.name} client {hb} with "
            f"{log1.name} client {live2.get(hb, '-')}",
            event=log1[i], log_name=log1.name, other_name=log2.name, client_handle=ha,
        )
    live1[ha] = hb
    live2[hb] = ha


def _compare_reference(log1: EventLog, log2: EventLog, filter: int = 0) -> None:
    """IGT's compare run literally (quadratic); the tests check the fast path against it."""
    key_ids: dict[Any, int] = {}
    c1, c2 = _columns(log1, key_ids), _columns(log2, key_ids)
    for i, j in _pairings(log1, c1, c2):
        if j is None:
            raise EventLogMismatch(
                f"{log2.name}: no partner for client event {log1[i]}",
                event=log1[i], log_name=log1.name, other_name=log2.name,
            )
        ha, hb = c1.refs[i], c2.refs[j]
        for (la, ca, x), (lb, cb, y) in (((log1, c1, ha), (log2, c2, hb)), ((log2, c2, hb), (log1, c1, ha))):
            _, miss = _compare_client_literal(ca, x, cb, y, filter)
            if miss is not None:
                raise EventLogMismatch(
                    f"{la.name} ({ca.seqnos[miss]}): no matching event type {ca.types[miss]} "
                    f"found for client {x}",
                    event=la[miss], log_name=la.name, other_name=lb.name, client_handle=x,
                )


# ---------------------------------------------------------------------------------------------
# match_opposite

_OPPOSITE_KEY = {
    _OPEN: "client_handle",
    _VM: "vm_handle",
    _EXEC_QUEUE: "exec_queue_handle",
    _METADATA: "metadata_handle",
}
_OPPOSITE_UNPACK = {t: _payload_struct(t, [name]) for t, name in _OPPOSITE_KEY.items()}
_NO_OPPOSITE = frozenset((_VM_BIND, _VM_BIND_OP, _VM_BIND_UFENCE, _VM_BIND_OP_METADATA))


def match_opposite(log: EventLog, filter: int = 0) -> None:
    """Assert that every creation has a later, identical destruction (IGT
    ``xe_eudebug_event_log_match_opposite``).

    For each event with CREATE, unless its type is filtered or is VM_BIND, VM_BIND_OP,
    VM_BIND_UFENCE or VM_BIND_OP_METADATA: the first later event of the same type whose flags
    equal the creation's with CREATE and DESTROY toggled and NEED_ACK cleared, and whose key
    (OPEN client_handle, VM vm_handle, EXEC_QUEUE exec_queue_handle, METADATA
    metadata_handle) is equal, must exist, have the same ``len`` and the same bytes after the
    header.  A creation of any other type never has an opposite and fails.  (IGT also clears
    NEED_ACK in the examined creation events in place; this function leaves the log as it is.)
    """
    buf, offs = log._buf, log._offs
    n = len(offs)
    heads = [_HDR4(buf, off) for off in offs]
    index: dict[tuple[int, int, int], list[int]] = {}

    def key_of(k: int) -> int | None:
        ln, t = heads[k][0], heads[k][1]
        spec = _OPPOSITE_UNPACK.get(t)
        if spec is None:
            return None
        unpack, size = spec
        off = offs[k]
        if ln >= size:
            return unpack(buf, off + HEADER_SIZE)[0]
        return unpack(bytes(buf[off : off + ln]) + bytes(size - ln), HEADER_SIZE)[0]

    for k in range(n):
        key = key_of(k)
        if key is not None:
            index.setdefault((heads[k][1], heads[k][2], key), []).append(k)
    for k in range(n):
        ln, t, f, seqno = heads[k]
        if not f & _CREATE:
            continue
        if (filter >> t) & 1 or t in _NO_OPPOSITE:
            continue
        key = key_of(k)
        cand = index.get((t, (f ^ (_CREATE | _DESTROY)) & ~_NEED_ACK, key)) if key is not None else None
        m = None
        if cand:
            p = bisect.bisect_right(cand, k)
            if p < len(cand):
                m = cand[p]
        if m is None:
            ev = log[k]
            raise EventLogMismatch(
                f"no opposite event of type {t} found\n  {log.name}: creation without "
                f"destruction: {ev}",
                event=ev, log_name=log.name, other_name=log.name,
            )
        ln2 = heads[m][0]
        a, b = log[k], log[m]
        if ln != ln2:
            raise EventLogMismatch(
                f"{log.name}: create|destroy event len differs ({ln2}) vs ({ln}): {b} vs {a}",
                event=a, log_name=log.name, other_name=log.name, candidates=[b],
            )
        if bytes(a)[HEADER_SIZE:] != bytes(b)[HEADER_SIZE:]:
            raise EventLogMismatch(
                f"{log.name}: create|destroy event not maching ({b.seqno}) vs ({a.seqno})\n"
                f"  create:  {a}\n  destroy: {b}",
                event=a, log_name=log.name, other_name=log.name, candidates=[b],
            )
