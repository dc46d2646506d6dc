"""The simulator server's event loop: one epoll set, led by one thread at a time.

The leader waits in epoll, reads what is ready and runs the handler inline: most calls never
sleep, so a call costs no thread switch.  A handler that is about to sleep (a blocking READ_EVENT,
WAIT_USER_FENCE, a syncobj wait, a producer on a full fifo, a release waiting for a discovery, a
memory request to the caller) calls `might_sleep()` first, as kernel code does before it blocks:
the lead passes to an idle thread of the pool (or a new one) and the sleeping call goes on in the
thread it started in, which joins the pool once its call returns.  So the loop never waits for a
call, an idle connection costs no thread, and a parked call costs one thread for as long as it
sleeps (leader/followers).  A handler that holds the lead longer than STALL and is found asleep
without having announced it (a contended lock, a kernel model that does not announce its sleeps)
loses it the same way, by the loop's watchdog thread: the loop is never stuck.  A handler that
is running (long work, or only preempted on a loaded machine) keeps the lead.

Handlers are registered per fd with the events they wait for; connections use EPOLLONESHOT so a
connection with a call in flight is not read again until its handler re-arms it.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from typing import Callable

log = logging.getLogger(__name__)

__all__ = ["EventLoop"]

MAX_EVENTS = 64        # events taken per epoll_wait: the ready list is served round robin
IDLE_THREADS = 4       # idle pool threads kept; more exit once their parked call returns
IDLE_EXIT = 10.0       # seconds an idle pool thread beyond the main one waits before it exits
STALL = 0.05           # seconds a handler may hold the lead without announcing a sleep

Handler = Callable[[int, int], None]


class EventLoop:
    """Leader/followers over one epoll set.  `tick()` runs on the leader after each round of
    events and at least every `interval()` seconds (both supplied by the owner)."""

    def __init__(self, tick: Callable[[], None], interval: Callable[[], float], name: str = "sim") -> None:
        self.epoll = select.epoll()
        self.handlers: dict[int, Handler] = {}
        self.pending: deque[tuple[int, int]] = deque()  # events taken from epoll, not yet handled
        self.leader = 0                                  # ident of the leading thread
        self.stopping = False
        self.name = name
        self._tick = tick
        self._interval = interval
        self._cv = threading.Condition()
        self._idle = 0          # pool threads waiting for the lead
        self._promote = 0       # leads handed to idle threads, not yet taken
        self._threads = 0       # pool threads besides the one that called run()
        self._seq = 0           # handlers started by leaders so far
        self._busy = 0          # the leader's thread while it runs a handler, else 0
        self._busy_tid = 0      # its kernel thread id (the watchdog reads its state)
        self._parked: set[int] = set()  # threads that gave up the lead inside a handler
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.add(self._wake_r, select.EPOLLIN, self._drain_wake)

    # -- registration (any thread) ---------------------------------------------------------------
    def add(self, fd: int, events: int, handler: Handler) -> None:
        self.handlers[fd] = handler
        self.epoll.register(fd, events)

    def rearm(self, fd: int, events: int) -> None:
        self.epoll.modify(fd, events)

    def remove(self, fd: int) -> None:
        """Forget `fd`; call before closing it (its number may then serve another file)."""
        self.handlers.pop(fd, None)
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def wake(self) -> None:
        """Make the leader run `tick()` soon (from any thread)."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or the loop is closed)

    def _drain_wake(self, fd: int, _mask: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    # -- the lead --------------------------------------------------------------------------------
    def parked(self) -> int:
        """Handlers (calls) that went on sleeping after they gave up the lead."""
        return len(self._parked)

    def is_leader(self) -> bool:
        return self.leader == threading.get_ident()

    def might_sleep(self) -> None:
        """The calling thread is about to block: if it leads the loop, another thread leads it
        from now on.  Cheap when the caller does not lead (every later sleep of a parked call)."""
        me = threading.get_ident()
        if self.leader == me:
            self._hand_off(me)

    def _hand_off(self, ident: int) -> None:
        with self._cv:
            if self.leader != ident:
                return
            self.leader = 0
            self._busy = 0
            self._parked.add(ident)
            if self._idle > self._promote:
                self._promote += 1
                self._cv.notify()
                return
            self._threads += 1
        threading.Thread(target=self._pool_thread, args=(True,), name=f"{self.name}-loop",
                         daemon=True).start()

    def run(self) -> None:
        """Serve until `stop()`: the calling thread leads first and stays in the pool."""
        self.leader = threading.get_ident()
        threading.Thread(target=self._watchdog, name=f"{self.name}-watchdog", daemon=True).start()
        self._serve(main=True)

    def start(self) -> None:
        """Serve in threads of the loop's own until `stop()` (the caller's thread stays free)."""
        with self._cv:
            self._threads += 1
        threading.Thread(target=self._pool_thread, args=(True, True), name=f"{self.name}-loop",
                         daemon=True).start()
        threading.Thread(target=self._watchdog, name=f"{self.name}-watchdog", daemon=True).start()

    def _watchdog(self) -> None:
        """Take the lead from a handler that has held it for STALL without announcing a sleep."""
        seen = -1
        while not self.stopping:
            time.sleep(STALL)
            busy, seq, tid = self._busy, self._seq, self._busy_tid
            if busy and seq == seen:
                if _asleep(tid):
                    self._hand_off(busy)
                    seen = -1
            else:
                seen = seq if busy else -1

    def stop(self) -> None:
        self.stopping = True
        with self._cv:
            self._cv.notify_all()
        self.wake()

    def close(self) -> None:
        self.epoll.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _pool_thread(self, lead: bool, main: bool = False) -> None:
        if lead:
            self.leader = threading.get_ident()
        try:
            self._serve(main)
        finally:
            with self._cv:
                self._threads -= 1

    def _serve(self, main: bool) -> None:
        me = threading.get_ident()
        tid = threading.get_native_id()
        while not self.stopping:
            if self.leader != me:
                if not self._follow(main):
                    return
                continue
            try:
                self._lead_once(me, tid)
            except Exception:  # a handler's bug must not end the loop
                log.exception("simulator event loop: handler failed")

    def _follow(self, main: bool) -> bool:
        """Wait in the pool until handed the lead (True) or no longer needed (False)."""
        with self._cv:
            self._parked.discard(threading.get_ident())
            if not main and self._idle >= IDLE_THREADS:
                return False
            self._idle += 1
            try:
                while not self._promote:
                    if self.stopping:
                        return False
                    if not self._cv.wait(IDLE_EXIT) and not main and not self._promote:
                        return False
                self._promote -= 1
                self.leader = threading.get_ident()
                return True
            finally:
                self._idle -= 1

    def _lead_once(self, me: int, tid: int) -> None:
        pending = self.pending
        if not pending:
            try:
                events = self.epoll.poll(self._interval(), MAX_EVENTS)
            except InterruptedError:
                events = []
            pending.extend(events)
        handlers = self.handlers
        try:
            while pending and self.leader == me:
                fd, mask = pending.popleft()
                handler = handlers.get(fd)
                if handler is not None:
                    self._seq += 1
                    self._busy_tid = tid
                    self._busy = me
                    handler(fd, mask)
                    if self._busy == me:
                        self._busy = 0
            if self.leader == me and not self.stopping:
                self._seq += 1
                self._busy_tid = tid
                self._busy = me
                self._tick()
        finally:
            if self._busy == me:
                self._busy = 0


def _asleep(tid: int) -> bool:
    """Whether thread `tid` of this process sleeps (state S or D), rather than runs or waits
    for a CPU (R)."""
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in (b"S", b"D")
