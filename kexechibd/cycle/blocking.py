"""Running a kernel call that may block for good, without holding up exit.

``reboot(LINUX_REBOOT_CMD_KEXEC)`` returns only when another kernel jumps
back, which may never happen (kernel B after a checkpoint waits for a jump
that may never come).  Such calls run in a daemon thread, not in the event
loop's executor, whose threads the interpreter joins on exit: SIGTERM must
still stop the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_daemon_thread(call: Callable[[], T]) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def deliver(outcome: Callable[[], None]) -> None:
        # Nobody waits any more once the loop is closed (the process is ending).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, outcome)

    def run() -> None:
        try:
            result = call()
        except BaseException as exc:
            error = exc
            deliver(lambda: future.set_exception(error))
        else:
            deliver(lambda: future.set_result(result))

    threading.Thread(target=run, name="kexechib-kernel-call", daemon=True).start()
    return await future
