# Waiting in tests: one polling helper with a deadline, a check that no task was left behind,
# a loop-clock marker, and the count of open sockets.
#
# Strategy: a test waits for the condition it needs (``eventually``), never for a fixed time;
# a deadline only turns a hang into a clear failure.  To show that something did NOT happen,
# a test waits for a marker that is certain to come after it (a device answers in order; loop
# timers fire in due order) instead of sleeping and hoping.
from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

__all__ = ["assert_no_other_tasks", "eventually", "loop_passes", "socket_fds"]


async def eventually(predicate: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until true; AssertionError after ``within`` seconds (a hang guard)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what or 'condition'} not reached within {within} s")
        await asyncio.sleep(0.002)


async def assert_no_other_tasks(within: float = 2.0) -> None:
    """Every task but the caller's has finished (checked after a test's cleanup).

    A test server's accept task can still be closing its side of a refused or failed
    handshake for a moment after the server is closed; a task leaked by the code under test
    never finishes, so it still fails after ``within`` seconds.
    """
    me = asyncio.current_task()
    with contextlib.suppress(AssertionError):
        await eventually(lambda: asyncio.all_tasks() == {me}, within)
    assert asyncio.all_tasks() == {me}  # names the leftover tasks when it fails


async def loop_passes(when: float) -> None:
    """Return once the loop has run every timer due at or before loop time ``when``.

    A marker for timer-driven code: asyncio runs timers in order of due time, so a timer of
    ours due just after ``when`` fires only after all of those (e.g. cancelled writes that
    would have been due by then have had every chance to happen).
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    handle = loop.call_at(when + 1e-3, done.set_result, None)
    try:
        await done
    finally:
        handle.cancel()


def socket_fds() -> int:
    """Open socket file descriptors of this process."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return n
