"""Compare and match_opposite: IGT's verdicts on hand-built logs."""

from __future__ import annotations

import pytest

from xe_eudebug import log as log_mod
from xe_eudebug.events import EventFlags, EventType, filter_mask, make
from xe_eudebug.log import EventLog, EventLogMismatch, compare, match_opposite

C, D, S, A = EventFlags.CREATE, EventFlags.DESTROY, EventFlags.STATE_CHANGE, EventFlags.NEED_ACK
T = EventType


class Rec:
    """Builds a log with consecutive seqnos starting after ``seq0``."""

    def __init__(self, name: str, seq0: int = 0) -> None:
        self.log = EventLog(name, max_size=None)
        self.seq = seq0

    def add(self, type_, flags, /, **fields) -> int:
        self.seq += 1
        self.log.append(make(type_, flags, seqno=self.seq, **fields))
        return self.seq


def history(r: Rec, c: int, vm: int, q: int, md: int, *, extra_bind: bool = True) -> Rec:
    """One client's resource history; handles differ between client and debugger side."""
    r.add(T.OPEN, C, client_handle=c)
    r.add(T.VM, C, client_handle=c, vm_handle=vm)
    r.add(T.EXEC_QUEUE, C, client_handle=c, vm_handle=vm, exec_queue_handle=q, engine_class=4,
          lrc_handle=[q + 100])
    r.add(T.METADATA, C, client_handle=c, metadata_handle=md, type=1, len=8192)
    b = r.add(T.VM_BIND, S, client_handle=c, vm_handle=vm, flags=1, num_binds=1)
    o = r.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=b, addr=0x1A0000, range=0x10000, num_extensions=1)
    r.add(T.VM_BIND_OP_METADATA, C, vm_bind_op_ref_seqno=o, metadata_handle=7, metadata_cookie=11)
    r.add(T.VM_BIND_UFENCE, C | A, vm_bind_ref_seqno=b)
    if extra_bind:
        b2 = r.add(T.VM_BIND, S, client_handle=c, vm_handle=vm, num_binds=1)
        r.add(T.VM_BIND_OP, D, vm_bind_ref_seqno=b2, addr=0x1A0000, range=0x10000)
    r.add(T.EXEC_QUEUE, D, client_handle=c, vm_handle=vm, exec_queue_handle=q, engine_class=4,
          lrc_handle=[q + 100])
    r.add(T.METADATA, D, client_handle=c, metadata_handle=md, type=1, len=8192)
    r.add(T.VM, D, client_handle=c, vm_handle=vm)
    r.add(T.OPEN, D, client_handle=c)
    return r


def pair(**kw) -> tuple[EventLog, EventLog]:
    cl = history(Rec("client"), 5, 1, 2, 3, **kw)
    history(cl, 6, 1, 2, 4, **kw)
    db = history(Rec("debugger", 100), 40, 9, 8, 77, **kw)
    history(db, 41, 12, 13, 78, **kw)
    return cl.log, db.log


def edited(log: EventLog, etype, change, which: int = 0) -> EventLog:
    """Copy of ``log`` with ``change`` applied to the which-th event of type ``etype``."""
    out = EventLog(log.name, max_size=None)
    k = 0
    for e in log:
        if e.type == etype:
            if k == which:
                e = change(e)
            k += 1
        out.append(e)
    return out


def without(log: EventLog, pred) -> EventLog:
    out = EventLog(log.name, max_size=None)
    for e in log:
        if not pred(e):
            out.append(e)
    return out


def verdict(a: EventLog, b: EventLog, filter: int = 0, strict: bool = False) -> bool:
    try:
        compare(a, b, filter, strict)
    except EventLogMismatch:
        return False
    return True


def reference(a: EventLog, b: EventLog, filter: int = 0) -> bool:
    try:
        log_mod._compare_reference(a, b, filter)
    except EventLogMismatch:
        return False
    return True


def test_identical_histories_with_different_handles_match():
    cl, db = pair()
    compare(cl, db)
    compare(db, cl)
    cl.compare(db, strict=True)
    assert reference(cl, db)


# Every field of IGT's equality table, plus the fields that decide membership.
SAME_FIELDS = [
    (T.OPEN, "flags"),
    (T.VM, "flags"),
    (T.EXEC_QUEUE, "flags"),
    (T.EXEC_QUEUE, "engine_class"),
    (T.EXEC_QUEUE, "width"),
    (T.METADATA, "flags"),
    (T.VM_BIND, "flags"),
    (T.VM_BIND, "num_binds"),
    (T.VM_BIND_OP, "flags"),
    (T.VM_BIND_OP, "addr"),
    (T.VM_BIND_OP, "range"),
    (T.VM_BIND_OP, "num_extensions"),
    (T.VM_BIND_UFENCE, "flags"),
    (T.VM_BIND_OP_METADATA, "flags"),
    (T.VM_BIND_OP_METADATA, "metadata_handle"),
    (T.VM_BIND_OP_METADATA, "metadata_cookie"),
    # membership
    (T.VM, "client_handle"),
    (T.EXEC_QUEUE, "client_handle"),
    (T.METADATA, "client_handle"),
    (T.VM_BIND, "client_handle"),
    (T.VM_BIND_OP, "vm_bind_ref_seqno"),
    (T.VM_BIND_UFENCE, "vm_bind_ref_seqno"),
    (T.VM_BIND_OP_METADATA, "vm_bind_op_ref_seqno"),
]


def alter(field):
    if field == "flags":  # header flags: every bit counts, NEED_ACK included
        return lambda e: e.with_header(flags=int(e.flags) ^ int(A))
    return lambda e: e.replace(**{field: getattr(e.payload, field) + 1000})


@pytest.mark.parametrize("side", ["client", "debugger"])
@pytest.mark.parametrize("etype,field", SAME_FIELDS, ids=[f"{t.name}.{f}" for t, f in SAME_FIELDS])
def test_altering_a_compared_field_fails(etype, field, side):
    cl, db = pair()
    if side == "client":
        cl = edited(cl, etype, alter(field))
    else:
        db = edited(db, etype, alter(field))
    with pytest.raises(EventLogMismatch):
        compare(cl, db)
    assert not reference(cl, db)


NOT_COMPARED = [
    (T.VM, "vm_handle"),
    (T.EXEC_QUEUE, "vm_handle"),
    (T.EXEC_QUEUE, "exec_queue_handle"),
    (T.EXEC_QUEUE, "lrc_handle"),
    (T.VM_BIND, "vm_handle"),
    (T.VM_BIND, "bind_flags"),
    (T.METADATA, "metadata_handle"),
    (T.METADATA, "type"),
    (T.METADATA, "len"),
]


@pytest.mark.parametrize("etype,field", NOT_COMPARED, ids=[f"{t.name}.{f}" for t, f in NOT_COMPARED])
def test_fields_igt_does_not_compare(etype, field):
    cl, db = pair()
    if field == "lrc_handle":
        change = lambda e: e.replace(lrc_handle=[1, 2], width=e.width)  # noqa: E731
    elif field == "bind_flags":
        change = lambda e: e.replace(flags=0)  # noqa: E731
    else:
        change = lambda e: e.replace(**{field: getattr(e.payload, field) + 1000})  # noqa: E731
    db = edited(db, etype, change)
    compare(cl, db)
    compare(db, cl)
    db2 = edited(db, etype, lambda e: e.with_header(reserved=5))
    compare(cl, db2)


def test_missing_event_fails_both_directions():
    cl, db = pair()
    short = without(db, lambda e: e.seqno == 103)  # debugger lacks a VM create
    assert not verdict(cl, short) and not verdict(short, cl)
    extra = EventLog("debugger", None)
    for e in db:
        extra.append(e)
    extra.append(make(T.VM, C, seqno=999, client_handle=40, vm_handle=50))
    with pytest.raises(EventLogMismatch, match=r"debugger \(999\)"):
        compare(cl, extra)  # found in the second direction of the pair


def test_client_pairing_is_positional_with_exact_flags():
    cl, db = pair()
    no_partner = without(db, lambda e: e.type == T.OPEN and e.flags == C and e.client_handle == 41)
    with pytest.raises(EventLogMismatch, match="no client event"):
        compare(cl, no_partner)
    ack = edited(db, T.OPEN, lambda e: e.with_header(flags=C | A))
    assert not verdict(cl, ack)


def test_extra_client_in_second_log_is_not_checked():
    """IGT pairs the clients of log1 only: a whole extra client in log2 goes unnoticed."""
    cl, db = pair()
    more = EventLog("debugger", None)
    for e in db:
        more.append(e)
    r = Rec("x", 500)
    history(r, 42, 1, 1, 1)
    for e in r.log:
        more.append(e)
    assert verdict(cl, more)
    assert not verdict(more, cl)


def test_duplicate_identical_events_need_distinct_counterparts():
    a = Rec("client")
    a.add(T.OPEN, C, client_handle=1)
    a.add(T.VM, C, client_handle=1, vm_handle=1)
    a.add(T.VM, C, client_handle=1, vm_handle=2)
    b = Rec("debugger", 10)
    b.add(T.OPEN, C, client_handle=9)
    b.add(T.VM, C, client_handle=9, vm_handle=5)
    assert not verdict(a.log, b.log) and not reference(a.log, b.log)
    b.add(T.VM, C, client_handle=9, vm_handle=5)
    assert verdict(a.log, b.log) and verdict(b.log, a.log)


def test_matched_set_is_by_seqno():
    """IGT remembers matched events by seqno: a log with a repeated seqno cannot use both."""
    a = Rec("client")
    a.add(T.OPEN, C, client_handle=1)
    a.add(T.VM, C, client_handle=1, vm_handle=1)
    a.add(T.METADATA, C, client_handle=1, metadata_handle=1)
    b = EventLog("debugger", None)
    b.append(make(T.OPEN, C, seqno=1, client_handle=9))
    b.append(make(T.VM, C, seqno=2, client_handle=9, vm_handle=1))
    b.append(make(T.METADATA, C, seqno=2, client_handle=9, metadata_handle=1))
    assert not verdict(a.log, b)
    assert not reference(a.log, b)
    b2 = without(b, lambda e: e.type == T.METADATA)
    b2.append(make(T.METADATA, C, seqno=3, client_handle=9, metadata_handle=1))
    assert verdict(a.log, b2)


def test_bind_chain_membership_is_positional():
    """An op counts for a client only if it references the latest VM_BIND of that client
    seen so far in its own log."""
    a = Rec("client")
    a.add(T.OPEN, C, client_handle=1)
    b1 = a.add(T.VM_BIND, S, client_handle=1, num_binds=1)
    a.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=b1, addr=0x1000, range=0x1000)
    b2 = a.add(T.VM_BIND, S, client_handle=1, num_binds=1)
    a.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=b2, addr=0x2000, range=0x1000)

    good = Rec("debugger", 10)
    good.add(T.OPEN, C, client_handle=7)
    d1 = good.add(T.VM_BIND, S, client_handle=7, num_binds=1)
    good.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=d1, addr=0x1000, range=0x1000)
    d2 = good.add(T.VM_BIND, S, client_handle=7, num_binds=1)
    good.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=d2, addr=0x2000, range=0x1000)
    assert verdict(a.log, good.log) and verdict(good.log, a.log)

    # both binds first, then the ops: the op of the first bind no longer belongs
    late = Rec("debugger", 10)
    late.add(T.OPEN, C, client_handle=7)
    d1 = late.add(T.VM_BIND, S, client_handle=7, num_binds=1)
    d2 = late.add(T.VM_BIND, S, client_handle=7, num_binds=1)
    late.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=d1, addr=0x1000, range=0x1000)
    late.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=d2, addr=0x2000, range=0x1000)
    assert not verdict(a.log, late.log) and not reference(a.log, late.log)

    # ops swapped between the two binds: IGT does not check which bind an op came from
    swapped = Rec("debugger", 10)
    swapped.add(T.OPEN, C, client_handle=7)
    d1 = swapped.add(T.VM_BIND, S, client_handle=7, num_binds=1)
    swapped.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=d1, addr=0x2000, range=0x1000)
    d2 = swapped.add(T.VM_BIND, S, client_handle=7, num_binds=1)
    swapped.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=d2, addr=0x1000, range=0x1000)
    assert verdict(a.log, swapped.log) and reference(a.log, swapped.log)


def test_op_of_another_clients_bind_does_not_count():
    cl, db = pair()
    # move client 40's first op under client 41's first bind (seqno of 41's bind)
    bind41 = next(e.seqno for e in db if e.type == T.VM_BIND and e.client_handle == 41)
    moved = edited(db, T.VM_BIND_OP, lambda e: e.replace(vm_bind_ref_seqno=bind41))
    assert not verdict(cl, moved)


def test_stale_bind_tracker_of_the_rescanned_log():
    """IGT rescans log2 from its start with the trackers left by the previous scan; an op
    placed before any VM_BIND and referencing seqno 0 only belongs while the tracker is 0."""
    a = Rec("client")
    a.add(T.OPEN, C, client_handle=1)
    b = a.add(T.VM_BIND, S, client_handle=1, num_binds=1)
    a.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=b, addr=0x1000, range=0x1000)
    a.add(T.VM_BIND, S, client_handle=1, num_binds=2)
    d = EventLog("debugger", None)
    d.append(make(T.VM_BIND_OP, C, seqno=1, vm_bind_ref_seqno=0, addr=0x1000, range=0x1000))
    d.append(make(T.OPEN, C, seqno=2, client_handle=9))
    d.append(make(T.VM_BIND, S, seqno=3, client_handle=9, num_binds=1))
    d.append(make(T.VM_BIND, S, seqno=4, client_handle=9, num_binds=2))
    assert reference(a.log, d) is False
    assert verdict(a.log, d) is False


@pytest.mark.parametrize(
    "filter,drop",
    [
        (filter_mask(T.VM_BIND), (T.VM_BIND, T.VM_BIND_OP, T.VM_BIND_UFENCE, T.VM_BIND_OP_METADATA)),
        (filter_mask(T.VM_BIND_OP), (T.VM_BIND_OP, T.VM_BIND_OP_METADATA)),
        (filter_mask(T.VM_BIND_OP, T.VM_BIND_UFENCE), (T.VM_BIND_UFENCE, T.VM_BIND_OP, T.VM_BIND_OP_METADATA)),
        (filter_mask(T.METADATA), (T.METADATA,)),
        (filter_mask(T.EXEC_QUEUE), (T.EXEC_QUEUE,)),
        (filter_mask(T.VM_BIND, T.VM, T.OPEN), (T.VM, T.VM_BIND, T.VM_BIND_OP)),
    ],
)
def test_filter_removes_types_and_their_chains(filter, drop):
    cl, db = pair()
    thin = without(db, lambda e: e.type in drop and not (e.type == T.OPEN and e.flags == C))
    assert not verdict(cl, thin)
    assert verdict(cl, thin, filter) and verdict(thin, cl, filter)
    assert reference(cl, thin, filter)


def test_filter_vm_bind_ignores_differing_ops():
    cl, db = pair()
    changed = edited(db, T.VM_BIND_OP, lambda e: e.replace(addr=0xDEAD000))
    assert not verdict(cl, changed)
    assert verdict(cl, changed, filter_mask(T.VM_BIND))


def test_filter_all_still_pairs_clients():
    cl, db = pair()
    only_one_open = without(db, lambda e: e.type == T.OPEN and e.client_handle == 41)
    assert verdict(cl, without(db, lambda e: e.type == T.VM), 0xFFF)
    assert not verdict(cl, only_one_open, 0xFFF)


def test_attention_and_unknown_events_are_never_compared():
    cl, db = pair()
    noisy = db.copy()
    noisy.append(make(T.EU_ATTENTION, S, seqno=900, client_handle=40, bitmask=b"\1"))
    noisy.append(make(T.PAGEFAULT, S, seqno=901, client_handle=40))
    noisy.append(make(200, C, seqno=902, body=b"x" * 8))
    assert verdict(cl, noisy) and verdict(noisy, cl)


def test_mismatch_message_names_event_log_and_candidates():
    cl, db = pair()
    db = edited(db, T.VM_BIND_OP, lambda e: e.replace(range=0x20000))
    with pytest.raises(EventLogMismatch) as ei:
        compare(cl, db)
    ex = ei.value
    msg = str(ex)
    assert isinstance(ex, AssertionError)
    assert msg.startswith("client (6): no matching event type 7 found for client 5")
    assert "(6)   vm_bind_op(7):create: vm_bind_ref_seqno=5, addr=00000000001a0000, range=65536" in msg
    assert "'client' client 5 is paired with 'debugger' client 40" in msg
    assert "range=131072" in msg and "differs in range" in msg
    assert ex.log_name == "client" and ex.other_name == "debugger" and ex.client_handle == 5
    assert ex.event.seqno == 6 and ex.candidates and ex.candidates[0].range == 0x20000


def test_strict_vm_mapping():
    cl, db = pair()
    # second VM_BIND of client 40 claims another VM: IGT does not compare vm_handle
    bad = edited(db, T.VM_BIND, lambda e: e.replace(vm_handle=555), which=1)
    assert verdict(cl, bad)
    with pytest.raises(EventLogMismatch, match="strict: .*vm handle"):
        compare(cl, bad, strict=True)


@pytest.mark.parametrize("field", ["type", "len"])
def test_strict_metadata_type_and_len(field):
    cl, db = pair()
    bad = edited(db, T.METADATA, lambda e: e.replace(**{field: getattr(e.payload, field) + 1}))
    assert verdict(cl, bad)
    with pytest.raises(EventLogMismatch, match="strict: metadata type/len"):
        compare(cl, bad, strict=True)


def test_strict_metadata_handle_mapping():
    cl, db = pair()
    bad = edited(db, T.METADATA, lambda e: e.replace(metadata_handle=999), which=1)  # destroy
    assert verdict(cl, bad)
    with pytest.raises(EventLogMismatch, match="strict: .*metadata handle"):
        compare(cl, bad, strict=True)


def test_strict_allows_handle_reuse_after_destroy():
    a = Rec("client")
    for _ in range(2):
        a.add(T.OPEN, C, client_handle=5)
        a.add(T.VM, C, client_handle=5, vm_handle=1)
        a.add(T.VM, D, client_handle=5, vm_handle=1)
        a.add(T.OPEN, D, client_handle=5)
    b = Rec("debugger", 50)
    for vmh in (3, 4):
        b.add(T.OPEN, C, client_handle=8)
        b.add(T.VM, C, client_handle=8, vm_handle=vmh)
        b.add(T.VM, D, client_handle=8, vm_handle=vmh)
        b.add(T.OPEN, D, client_handle=8)
    compare(a.log, b.log, strict=True)


# --------------------------------------------------------------------------------------------
# match_opposite


def resources(r: Rec) -> Rec:
    r.add(T.OPEN, C, client_handle=3)
    r.add(T.VM, C, client_handle=3, vm_handle=1)
    r.add(T.EXEC_QUEUE, C, client_handle=3, vm_handle=1, exec_queue_handle=2, lrc_handle=[4, 5])
    r.add(T.METADATA, C, client_handle=3, metadata_handle=6, type=1, len=10)
    b = r.add(T.VM_BIND, S, client_handle=3, vm_handle=1, num_binds=1)
    r.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=b, addr=1, range=2)  # binds are not paired
    r.add(T.VM_BIND_UFENCE, C | A, vm_bind_ref_seqno=b)
    r.add(T.METADATA, D, client_handle=3, metadata_handle=6, type=1, len=10)
    r.add(T.EXEC_QUEUE, D, client_handle=3, vm_handle=1, exec_queue_handle=2, lrc_handle=[4, 5])
    r.add(T.VM, D, client_handle=3, vm_handle=1)
    r.add(T.OPEN, D, client_handle=3)
    return r


def test_match_opposite_positive():
    log = resources(Rec("debugger")).log
    match_opposite(log)
    log.match_opposite()


@pytest.mark.parametrize("etype", [T.OPEN, T.VM, T.EXEC_QUEUE, T.METADATA])
def test_match_opposite_missing_destroy(etype):
    log = without(resources(Rec("debugger")).log, lambda e: e.type == etype and e.flags == D)
    with pytest.raises(EventLogMismatch, match=f"no opposite event of type {int(etype)}"):
        match_opposite(log)
    match_opposite(log, filter_mask(etype))


@pytest.mark.parametrize(
    "etype,change",
    [
        (T.VM, lambda e: e.replace(client_handle=9)),
        (T.EXEC_QUEUE, lambda e: e.replace(lrc_handle=[4, 6])),
        (T.EXEC_QUEUE, lambda e: e.replace(engine_class=1)),
        (T.METADATA, lambda e: e.replace(len=11)),
        (T.METADATA, lambda e: e.replace(type=2)),
    ],
)
def test_match_opposite_destroy_must_repeat_every_field(etype, change):
    log = edited(resources(Rec("debugger")).log, etype, change, which=1)
    with pytest.raises(EventLogMismatch, match="create|destroy event not maching"):
        match_opposite(log)


def test_match_opposite_len_must_agree():
    log = edited(resources(Rec("debugger")).log, T.EXEC_QUEUE, lambda e: e.replace(lrc_handle=[4]), which=1)
    with pytest.raises(EventLogMismatch, match="len differs"):
        match_opposite(log)


def test_match_opposite_destroy_must_come_later():
    r = Rec("debugger")
    r.add(T.VM, D, client_handle=3, vm_handle=1)
    r.add(T.VM, C, client_handle=3, vm_handle=1)
    with pytest.raises(EventLogMismatch, match="no opposite event of type 3"):
        match_opposite(r.log)


def test_match_opposite_key_and_flags():
    r = Rec("debugger")
    r.add(T.VM, C, client_handle=3, vm_handle=1)
    r.add(T.VM, D, client_handle=3, vm_handle=2)  # other key
    r.add(T.VM, D | S, client_handle=3, vm_handle=1)  # other flags
    with pytest.raises(EventLogMismatch):
        match_opposite(r.log)
    # NEED_ACK on the creation is ignored when looking for the destruction
    r2 = Rec("debugger")
    r2.add(T.METADATA, C | A, client_handle=3, metadata_handle=1)
    r2.add(T.METADATA, D, client_handle=3, metadata_handle=1)
    match_opposite(r2.log)
    # the key of a VM is vm_handle alone: the first later destroy of that handle is used
    r3 = Rec("debugger")
    r3.add(T.VM, C, client_handle=3, vm_handle=1)
    r3.add(T.VM, D, client_handle=4, vm_handle=1)
    r3.add(T.VM, D, client_handle=3, vm_handle=1)
    with pytest.raises(EventLogMismatch, match="not maching"):
        match_opposite(r3.log)


def test_match_opposite_other_created_types_fail():
    r = Rec("debugger")
    r.add(T.EU_ATTENTION, C, client_handle=1)
    r.add(T.EU_ATTENTION, D, client_handle=1)
    with pytest.raises(EventLogMismatch, match="type 5"):
        match_opposite(r.log)
    match_opposite(r.log, filter_mask(T.EU_ATTENTION))
    r2 = Rec("debugger")
    r2.add(T.VM_BIND_OP_METADATA, C, vm_bind_op_ref_seqno=1)
    r2.add(T.VM_BIND, C, client_handle=1)
    match_opposite(r2.log)  # bind family is skipped


def test_mismatch_message_points_at_events_outside_the_chain():
    a = Rec("client")
    a.add(T.OPEN, C, client_handle=1)
    b1 = a.add(T.VM_BIND, S, client_handle=1, num_binds=1)
    a.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=b1, addr=0x1000, range=0x1000)
    d = Rec("debugger", 10)
    d.add(T.OPEN, C, client_handle=7)
    d.add(T.VM_BIND, S, client_handle=7, num_binds=1)
    d.add(T.VM_BIND_OP, C, vm_bind_ref_seqno=99, addr=0x1000, range=0x1000)  # dangling
    with pytest.raises(EventLogMismatch) as ei:
        compare(a.log, d.log)
    msg = str(ei.value)
    assert "no VM_BIND_OP event counted for client 7" in msg
    assert "(13)   vm_bind_op(7):create: vm_bind_ref_seqno=99" in msg
    assert ei.value.candidates[0].vm_bind_ref_seqno == 99
