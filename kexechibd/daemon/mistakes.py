"""Callers' mistakes in the log: one short line, rate-limited, never a traceback.

Any user may send the daemon wrong calls; each gets its D-Bus error, but the
journal is shared, so what a caller can make the daemon write must stay
small whatever it sends: a line per sender per ``window`` seconds at most
(the rest counted and reported with the next line), at most ``burst`` lines
per window for all senders together (a caller may open many connections),
and every string from the caller shortened by ``shown``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

SHOWN_CHARS = 64


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, cut to about ``limit`` characters: what a message may
    echo of a caller's string."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text)} chars)"


class MistakeLog:
    def __init__(
        self,
        log: logging.Logger,
        *,
        window: float = 60.0,
        burst: int = 20,
        senders: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._window = window
        self._burst = burst
        self._max_senders = senders
        self._clock = clock
        # sender -> (start of its window, mistakes not logged in it)
        self._senders: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._window_start = -window
        self._lines = 0

    def note(self, sender: str, what: str, extra: Mapping[str, str] | None = None) -> bool:
        """Log ``what`` (already shortened) for ``sender`` unless it said
        too much lately; True when a line was written."""
        now = self._clock()
        if now - self._window_start >= self._window:
            self._window_start, self._lines = now, 0
        start, quiet = self._senders.pop(sender, (now - self._window, 0))
        if now - start < self._window or self._lines >= self._burst:
            self._remember(sender, start, quiet + 1)
            return False
        self._lines += 1
        self._remember(sender, now, 0)
        more = f" (and {quiet} more since)" if quiet else ""
        self._log.info(
            "refused a call from %s: %s%s",
            sender,
            what,
            more,
            extra={"KEXECHIB_CALLER": sender, **(extra or {})},
        )
        return True

    def _remember(self, sender: str, start: float, quiet: int) -> None:
        self._senders[sender] = (start, quiet)
        while len(self._senders) > self._max_senders:
            self._senders.popitem(last=False)
