"""Prints IGT's result line of every conformance subtest at the end of the session."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .test_igt_conformance import ONLINE_SUBTESTS, RESULTS, SIP_SUBTESTS, SUBTESTS

    if not RESULTS:
        return
    if any(name in RESULTS for name, _ in SUBTESTS):
        terminalreporter.section("IGT xe_eudebug on the simulator (xe-eudebug run --devices 2)")
        for name, _excluded in SUBTESTS:
            if name in RESULTS:
                terminalreporter.write_line(RESULTS[name])
    for binary, subtests in (("xe_eudebug_online", ONLINE_SUBTESTS),
                             ("xe_exec_sip_eudebug", SIP_SUBTESTS)):
        keys = [f"{binary}/{name}" for name, _ in subtests]
        if any(key in RESULTS for key in keys):
            terminalreporter.section(f"IGT {binary} on the simulator (xe-eudebug run)")
            for key in keys:
                if key in RESULTS:
                    terminalreporter.write_line(RESULTS[key])
