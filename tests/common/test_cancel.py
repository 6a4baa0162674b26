"""A cancel that Python 3.11's asyncio.wait_for drops (as redis-py's calls see it) still ends a loop."""

from __future__ import annotations

import asyncio

import pytest

from asyncwebrl.common.cancel import cancelling, end_if_cancelled


async def _loop(replies: asyncio.Queue, check: bool, rounds: list[int]) -> None:
    """A background loop like the buffer's sweeper: one awaited call per round, then a pause."""
    while True:
        await asyncio.wait_for(await replies.get(), timeout=5)
        rounds.append(1)
        if check:
            end_if_cancelled()
        await asyncio.sleep(0.01)


async def _cancel_as_the_reply_lands(check: bool) -> tuple[asyncio.Task, list[int]]:
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue = asyncio.Queue()
    rounds: list[int] = []
    reply = loop.create_future()
    await replies.put(reply)
    task = asyncio.create_task(_loop(replies, check, rounds))
    for _ in range(3):
        await asyncio.sleep(0)  # the task is now inside wait_for
    reply.set_result(b"OK")
    task.cancel()  # in the same loop iteration: wait_for returns the reply, and the cancel is lost
    await asyncio.sleep(0.1)
    return task, rounds


async def test_a_dropped_cancel_ends_the_loop_that_checks():
    task, rounds = await _cancel_as_the_reply_lands(check=True)
    assert task.done() and task.cancelled() and rounds == [1]


async def test_without_the_check_the_dropped_cancel_leaves_the_loop_running():
    """The failure the check exists for (seen in CI: a buffer that never exited)."""
    task, rounds = await _cancel_as_the_reply_lands(check=False)
    try:
        assert not task.done() and rounds == [1], "Python no longer drops the cancel: the check may be moot"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancelling_is_false_outside_a_cancelled_task():
    assert not cancelling()
    end_if_cancelled()
