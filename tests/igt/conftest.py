"""Prints IGT's result line of every conformance subtest at the end of the session."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .test_igt_conformance import RESULTS, SUBTESTS

    if not RESULTS:
        return
    terminalreporter.section("IGT xe_eudebug on the simulator (xe-eudebug run --devices 2)")
    for name, _excluded in SUBTESTS:
        if name in RESULTS:
            terminalreporter.write_line(RESULTS[name])
