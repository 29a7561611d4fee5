# The test helpers other tests rely on must fail when they should: a leaked task is reported.
from __future__ import annotations

import asyncio

import pytest

from tests.fakes import assert_no_other_tasks


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
