"""IGT's ported xe_eudebug_online subtests (``xe_eudebug/igt/online.py``) through pytest, on the
run's simulator: one test per registered subtest with IGT's forked client (test id
``NAME``), and with the client in a thread of this process (``NAME-th``) for the subtests whose
client and triggers do not depend on being another process.

IGT runs every online subtest with a forked client only; the thread variants check that the
framework's thread clients carry the same workloads (the debugger then targets this process).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from xe_eudebug.igt import online
from xe_eudebug.igt.registry import Skip, Subtest, subtests
from xe_eudebug.igt.runner import call

SUBTESTS = subtests(online.BINARY)

#: Ported subtests not run here, with the reason (registered all the same, for hardware).
NOT_RUN_ON_SIMULATOR: dict[str, str] = {}

#: Ported subtests run with a thread client too.
THREAD_VARIANTS = ("basic-breakpoint", "set-breakpoint", "resume-one", "interrupt-all", "tdctl-parameters",
                   "single-step", "debugger-reopen")


def _params() -> list[Any]:
    out = []
    for st in SUBTESTS:
        for thread in (False, True):
            if thread and st.name not in THREAD_VARIANTS:
                continue
            marks = []
            if st.name in NOT_RUN_ON_SIMULATOR:
                marks.append(pytest.mark.skip(reason=NOT_RUN_ON_SIMULATOR[st.name]))
            out.append(pytest.param(st, thread, id=f"{st.name}{'-th' if thread else ''}", marks=marks))
    return out


@pytest.fixture
def short_sigint_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """set-breakpoint-sigint-debugger loops for 60 s in IGT; 10 s here (time only: each loop
    is a full session, and one SIGINT that lands while events arrive is what it needs)."""
    monkeypatch.setattr(online, "SIGINT_LOOP_S", 10.0)


@pytest.mark.parametrize("st, thread", _params())
def test_online(st: Subtest, thread: bool, short_sigint_loop: None) -> None:
    if thread:
        st = dataclasses.replace(st, args={**st.args, "client_thread": True})
    try:
        call(st)
    except Skip as exc:
        pytest.skip(str(exc))
