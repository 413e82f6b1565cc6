"""What the fakes share: running a real adapter against one for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


@contextlib.asynccontextmanager
async def running(
    adapter: Any, within: float = 10.0, name: str | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``adapter.run()`` as a task (named ``name``) until the block ends, then cancel it and
    wait for it. The adapter sets ``adapter.ready`` (an asyncio.Event) once it is serving; if
    the task ends first, its start-up error is raised, and TimeoutError after ``within`` s."""
    task: asyncio.Task[None] = asyncio.create_task(adapter.run(), name=name)
    ready = asyncio.create_task(adapter.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=within, return_when="FIRST_COMPLETED")
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # raises what stopped it
        task.cancel()
        raise TimeoutError("the adapter did not become ready")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
