"""Prints IGT's result line of every conformance subtest at the end of the session."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .test_igt_conformance import ONLINE_SUBTESTS, RESULTS, SUBTESTS

    if not RESULTS:
        return
    if any(name in RESULTS for name, _ in SUBTESTS):
        terminalreporter.section("IGT xe_eudebug on the simulator (xe-eudebug run --devices 2)")
        for name, _excluded in SUBTESTS:
            if name in RESULTS:
                terminalreporter.write_line(RESULTS[name])
    online = [f"xe_eudebug_online/{name}" for name, _ in ONLINE_SUBTESTS]
    if any(key in RESULTS for key in online):
        terminalreporter.section("IGT xe_eudebug_online on the simulator (xe-eudebug run)")
        for key in online:
            if key in RESULTS:
                terminalreporter.write_line(RESULTS[key])
