# The shared test helpers (tests.support) must fail when they should: a leaked task is reported.
from __future__ import annotations

import asyncio

import pytest

from tests.support import assert_no_other_tasks, eventually, loop_passes


async def test_assert_no_other_tasks_waits_for_a_finishing_task() -> None:
    finishing = asyncio.ensure_future(asyncio.sleep(0.05))
    await assert_no_other_tasks(within=2.0)
    assert finishing.done()


async def test_assert_no_other_tasks_reports_a_leaked_task() -> None:
    leaked = asyncio.ensure_future(asyncio.Event().wait())
    try:
        with pytest.raises(AssertionError):
            await assert_no_other_tasks(within=0.1)
    finally:
        leaked.cancel()


async def test_loop_passes_after_every_timer_due_by_then() -> None:
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    due = loop.time() + 0.02
    loop.call_at(due, fired.append, 1)
    await loop_passes(due)
    assert fired == [1]


async def test_eventually_fails_when_the_condition_never_holds() -> None:
    with pytest.raises(AssertionError, match=r"never not reached within 0\.05 s"):
        await eventually(lambda: False, within=0.05, what="never")
