"""Pure tests of EventLog storage: append, seqno lookup, sort, printing, transfer, save/load."""

from __future__ import annotations

import logging
import struct
import threading

import pytest

from xe_eudebug.events import EventFlags, EventType, decode, make
from xe_eudebug.log import (
    FILE_MAGIC,
    MAX_EVENT_LOG_SIZE,
    DuplicateSeqnoError,
    EventLog,
    EventLogFull,
)

C, D = EventFlags.CREATE, EventFlags.DESTROY


def vm(seqno, client=1, handle=1, flags=C):
    return make(EventType.VM, flags, seqno=seqno, client_handle=client, vm_handle=handle)


def test_append_iterate_in_storage_order():
    log = EventLog("debugger")
    evs = [vm(5), make(EventType.OPEN, C, seqno=2, client_handle=9), vm(7, handle=3)]
    log.append(evs[0])
    log.append(bytes(evs[1]))
    log.append(memoryview(bytearray(bytes(evs[2]))))
    assert len(log) == 3 and list(log) == evs
    assert log.head == sum(len(e) for e in evs) == len(log.raw)
    assert log.raw == b"".join(bytes(e) for e in evs)
    assert log[1] == evs[1] and log[-1] == evs[2] and log.raw_at(0) == bytes(evs[0])
    assert log.seqnos() == [5, 2, 7]
    with pytest.raises(IndexError):
        log[3]


def test_append_stores_only_len_bytes():
    log = EventLog("x")
    log.append(bytes(vm(1)) + b"\xee" * 30)  # a read buffer larger than the event
    assert log.head == 40 and log[0] == vm(1)


@pytest.mark.parametrize("seqno", [0, 10_000_000, 2**64 - 1])
def test_append_rejects_insane_seqno(seqno):
    log = EventLog("x")
    with pytest.raises(ValueError, match="seqno"):
        log.append(vm(seqno))
    assert len(log) == 0


def test_append_accepts_seqno_just_below_cap():
    log = EventLog("x")
    log.append(vm(9_999_999))
    assert log.find_seqno(9_999_999) == vm(9_999_999)


def test_append_rejects_bad_len():
    log = EventLog("x")
    with pytest.raises(ValueError, match="len"):
        log.append(vm(1).with_header(len=10))
    with pytest.raises(ValueError, match="len"):
        log.append(vm(1).with_header(len=41))
    assert log.head == 0


def test_capacity_is_strict_as_in_igt():
    log = EventLog("x", max_size=81)
    log.append(vm(1))
    log.append(vm(2))  # 80 < 81
    with pytest.raises(EventLogFull):
        log.append(vm(3))
    exact = EventLog("x", max_size=80)
    exact.append(vm(1))
    with pytest.raises(EventLogFull):  # head + len == max_size is refused too
        exact.append(vm(2))
    assert EventLog("x").max_size == MAX_EVENT_LOG_SIZE
    big = EventLog("x", max_size=None)
    big.extend(vm(i) for i in range(1, 100))
    assert len(big) == 99


def test_name_required_and_truncated():
    with pytest.raises(ValueError):
        EventLog("")
    assert EventLog("n" * 100).name == "n" * 79


def test_thread_safe_append():
    log = EventLog("debugger", max_size=None)
    per = 500

    def writer(k):
        for i in range(per):
            log.append(vm(k * per + i + 1, handle=k))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(log) == 4 * per
    assert sorted(log.seqnos()) == list(range(1, 4 * per + 1))
    for e in log:  # every stored event is intact
        assert e.vm_handle == (e.seqno - 1) // per


def test_find_seqno():
    log = EventLog("x")
    for s in (3, 10, 4):
        log.append(vm(s, handle=s))
    assert log.find_seqno(10).vm_handle == 10
    assert log.find_seqno(5) is None
    log.append(vm(5, handle=55))  # index follows appends
    assert log.find_seqno(5).vm_handle == 55
    with pytest.raises(ValueError):
        log.find_seqno(0)
    with pytest.raises(ValueError):
        log.find_seqno(10_000_000)


def test_find_seqno_duplicate_fails(caplog):
    log = EventLog("x")
    log.append(vm(3))
    log.append(vm(3, handle=2))
    with caplog.at_level(logging.INFO, logger="xe_eudebug.log"):
        with pytest.raises(DuplicateSeqnoError, match="seqno 3"):
            log.find_seqno(3)
    assert "event log 'x'" in caplog.text  # the log is printed first, as IGT does
    assert log.find_seqno(4) is None  # other seqnos still work


def test_sort_with_gaps():
    log = EventLog("debugger")
    order = [40, 3, 1000, 7, 8, 2]
    for s in order:
        log.append(vm(s, handle=s))
    log.append(make(EventType.EXEC_QUEUE, C, seqno=500, lrc_handle=[1, 2, 3]))
    before = log.head
    log.sort()
    assert log.seqnos() == sorted(order + [500])
    assert log.head == before
    assert [e.vm_handle for e in log if e.type == EventType.VM] == sorted(order)
    assert log.find_seqno(500).lrc_handle == [1, 2, 3]


def test_sort_empty_and_duplicates():
    empty = EventLog("x")
    empty.sort()
    assert len(empty) == 0
    log = EventLog("x")
    for s in (5, 2, 5):
        log.append(vm(s))
    raw = log.raw
    with pytest.raises(DuplicateSeqnoError, match="seqno 5"):
        log.sort()
    assert log.raw == raw


def test_format_is_igt_printed_log(caplog):
    log = EventLog("client")
    log.append(make(EventType.OPEN, C, seqno=1, client_handle=3))
    log.append(vm(2, client=3, handle=1))
    text = log.format()
    assert text == (
        "event log 'client' (72 bytes):\n"
        "(1)       client(2):create: handle=3\n"
        "(2)           vm(3):create: client_handle=3, handle=1"
    )
    with caplog.at_level(logging.DEBUG, logger="xe_eudebug.log"):
        log.print(debug=True)
    assert [r.getMessage() for r in caplog.records] == text.split("\n")
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    assert EventLog("e").format() == "event log 'e' (0 bytes):"


def test_transfer_round_trip():
    log = EventLog("client")
    log.append(vm(1))
    log.append(make(EventType.EU_ATTENTION, EventFlags.STATE_CHANGE, seqno=2, bitmask=b"\x01\x02\x03"))
    data = log.to_bytes()
    assert struct.unpack("=I", data[:4])[0] == log.head and data[4:] == log.raw
    assert EventLog.transfer_size(data[:4]) == log.head
    back = EventLog.from_bytes(data, "client")
    assert back.raw == log.raw and list(back) == list(log) and back.name == "client"
    assert len(EventLog.from_bytes(EventLog("c").to_bytes())) == 0


def test_transfer_errors():
    log = EventLog("client")
    log.append(vm(1))
    data = log.to_bytes()
    with pytest.raises(ValueError):
        EventLog.from_bytes(data[:-1])
    with pytest.raises(ValueError):
        EventLog.from_bytes(data + b"\0")
    with pytest.raises(ValueError):
        EventLog.from_bytes(data[:3])
    with pytest.raises(ValueError):  # an event whose len runs past the end
        EventLog.from_bytes(struct.pack("=I", 40) + bytes(vm(1).with_header(len=48)))
    with pytest.raises(ValueError):  # len below the header size
        EventLog.from_bytes(struct.pack("=I", 40) + bytes(vm(1).with_header(len=0)))
    with pytest.raises(ValueError):  # announced size must stay below the capacity
        EventLog.from_bytes(data, max_size=40)


def test_save_load_round_trip(tmp_path):
    log = EventLog("debugger", max_size=None)
    log.append(vm(1))
    log.append(make(EventType.EXEC_QUEUE, C, seqno=2, lrc_handle=[9, 8]))
    log.append(make(77, 0, seqno=3, body=b"opaque"))
    p = tmp_path / "run.xelog"
    log.save(p)
    data = p.read_bytes()
    assert data.startswith(FILE_MAGIC) and log.raw in data
    back = EventLog.load(p)
    assert back.name == "debugger" and back.raw == log.raw and back.max_size is None
    assert [bytes(e) for e in back] == [bytes(e) for e in log]
    log2 = EventLog("c")
    log2.save(p)
    assert EventLog.load(p).max_size == MAX_EVENT_LOG_SIZE and len(EventLog.load(p)) == 0


def test_load_rejects_damaged_files(tmp_path):
    log = EventLog("debugger")
    log.append(vm(1))
    p = tmp_path / "a"
    log.save(p)
    good = p.read_bytes()
    cases = {
        "not an xe_eudebug": b"hello world" * 10,
        "checksum": good[:-10] + bytes([good[-10] ^ 1]) + good[-9:],
        "truncated": good[:-1],
        "version 2": good[:8] + struct.pack("<H", 2) + good[10:],
    }
    for what, data in cases.items():
        p.write_bytes(data)
        with pytest.raises(ValueError, match=what):
            EventLog.load(p)


def test_copy_is_independent():
    log = EventLog("a")
    log.append(vm(1))
    c = log.copy("b")
    c.append(vm(2))
    assert len(log) == 1 and len(c) == 2 and c.name == "b"


def test_iteration_decodes_typed_views():
    log = EventLog("a")
    log.append(make(EventType.METADATA, C, seqno=1, client_handle=2, metadata_handle=3, type=1, len=99))
    (e,) = list(log)
    assert e.len == 99 and e.base.len == 56 and decode(bytes(e)) == e


def test_layering_events_and_log_import_no_upper_layer():
    import subprocess
    import sys

    code = (
        "import sys, xe_eudebug.log, xe_eudebug.events\n"
        "bad = [m for m in ('xe_eudebug.client', 'xe_eudebug.debugger', 'xe_eudebug.session',"
        " 'xe_eudebug.device') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_append_rejects_short_raw_bytes():
    log = EventLog("x")
    raw = bytes(vm(1))[:20]
    raw = struct.pack("=I", 20) + raw[4:]
    with pytest.raises((ValueError, struct.error)):
        log.append(raw)
    assert len(log) == 0
    log.max_size = 50
    log.append(vm(1))
    with pytest.raises(EventLogFull):
        log.append(vm(2))


def test_find_seqno_dense_then_sparse():
    log = EventLog("x", max_size=None)
    for s in range(1, 300):
        log.append(vm(s, handle=s))
    assert log.find_seqno(150).vm_handle == 150 and log.find_seqno(300) is None
    log.append(vm(9_000_000, handle=7))  # too sparse for the direct table
    log.append(vm(299, handle=1))  # a repeat, seen after the switch
    assert log.find_seqno(9_000_000).vm_handle == 7
    assert log.find_seqno(42).vm_handle == 42 and log.find_seqno(8_999_999) is None
    with pytest.raises(DuplicateSeqnoError):
        log.find_seqno(299)
