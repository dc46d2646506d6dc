"""Debug logging of the library: ``xe-eudebug --debug`` and ``XE_EUDEBUG_DEBUG=1``.

Every module logs through ``logging.getLogger(__name__)``, so the loggers form one tree under
``xe_eudebug``:

==============================  ===============================================================
logger                          what it says at DEBUG (INFO: lifecycle; WARNING: trouble)
==============================  ===============================================================
``xe_eudebug.ioctl``            every call through the system-call seam, its result or errno
``xe_eudebug.debugger``         every event read, acks, stages, triggers, attach and detach
``xe_eudebug.client``           the client's process or thread, stages, pipe traffic
``xe_eudebug.session``          session set-up and teardown
``xe_eudebug.log``              compare pairings and verdicts
``xe_eudebug.device``           device selection
``xe_eudebug.sim.*``            the simulator (its own process: ``xe-eudebug sim -v``)
==============================  ===============================================================

:func:`enable` attaches one stderr handler to the ``xe_eudebug`` logger with a format that
tells forked clients and threads apart; nothing is attached unless asked, as a library should.
``XE_EUDEBUG_DEBUG=1`` (or ``true``/``yes``/``on``) asks at import time, so a script needs no
change to be debugged.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

__all__ = ["DEBUG_ENV", "FORMAT", "enable", "enable_from_env", "env_requests_debug"]

DEBUG_ENV = "XE_EUDEBUG_DEBUG"
#: Wall-clock time with milliseconds, pid and thread (forked clients log too), logger, message.
FORMAT = "%(asctime)s.%(msecs)03d %(process)d/%(threadName)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"

_ROOT = "xe_eudebug"
_handler: logging.Handler | None = None


def env_requests_debug(environ: dict[str, str] | None = None) -> bool:
    """Whether ``XE_EUDEBUG_DEBUG`` asks for debug logging."""
    value = (os.environ if environ is None else environ).get(DEBUG_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on", "debug")


def enable(level: int = logging.DEBUG, stream: TextIO | None = None) -> logging.Handler:
    """Send the library's log records at ``level`` and above to ``stream`` (stderr).

    Idempotent: a second call changes the level and keeps the one handler.  The ``xe_eudebug``
    logger stops propagating to the root logger, so an application's own root handler does not
    print every line twice."""
    global _handler
    logger = logging.getLogger(_ROOT)
    if _handler is None:
        _handler = logging.StreamHandler(stream or sys.stderr)
        _handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
        logger.addHandler(_handler)
    elif stream is not None and isinstance(_handler, logging.StreamHandler):
        _handler.setStream(stream)
    logger.setLevel(level)
    logger.propagate = False
    return _handler


def enable_from_env() -> bool:
    """:func:`enable` if ``XE_EUDEBUG_DEBUG`` asks for it; returns whether it did."""
    if env_requests_debug():
        enable()
        return True
    return False
