"""Waiting for an observable fact in tests, with a deadline generous enough for a loaded machine
(a thread can be descheduled for hundreds of milliseconds) instead of a sleep."""

from __future__ import annotations

import time
from typing import Callable


def wait_for(cond: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``cond`` every 5 ms until it is true or ``timeout`` seconds passed; whether it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return bool(cond())
