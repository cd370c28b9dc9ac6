"""How kexechibctl shows a running operation: a bar that redraws itself on
a terminal, plain lines (state changes and every 10 %) otherwise — for the
journal, pipes and scripts.

Progress is ``None`` where the daemon does not measure it: A cannot tell how
far preparing, loading kernel B or a jump has come, and a bar sitting at 0 %
would claim it could.  ``Measure`` decides from the daemon's signals."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Protocol, TextIO

BAR_WIDTH = 30


UNKNOWN = "unknown"


class Measure:
    """Whether the daemon measures the current state's progress: only once
    it reports progress within that state (a ``Progress`` change without a
    change of ``State``).  A new state starts unmeasured."""

    def __init__(self) -> None:
        self.state = ""
        self.progress = 0.0
        self.measured = False

    def change(self, changed: Mapping[str, object]) -> tuple[str, float | None]:
        state = str(changed.get("State", self.state))
        progress = changed.get("Progress")
        if isinstance(progress, int | float):
            self.progress = float(progress)
        if state != self.state:
            self.state, self.measured = state, False
        elif "Progress" in changed:
            self.measured = True
        return self.state, self.progress if self.measured else None


class Display(Protocol):
    def update(self, state: str, progress: float | None) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


class Silent:
    def update(self, state: str, progress: float | None) -> None:
        return None

    def message(self, text: str) -> None:
        return None

    def close(self) -> None:
        return None


class Lines:
    def __init__(self, stream: TextIO, operation: str) -> None:
        self._stream = stream
        self._operation = operation
        self._state = ""
        self._decile = -1

    def update(self, state: str, progress: float | None) -> None:
        if state != self._state:
            self._state = state
            self._decile = -1
            self._print(f"{self._operation}: {state}")
        if progress is None:
            return
        decile = int(progress * 10 + 1e-9)
        if decile > self._decile:
            if self._decile >= 0 or decile > 0:
                self._print(f"{self._operation}: {state} {decile * 10}%")
            self._decile = decile

    def message(self, text: str) -> None:
        self._print(f"{self._operation}: {text}")

    def close(self) -> None:
        return None

    def _print(self, text: str) -> None:
        print(text, file=self._stream, flush=True)


class Bar:
    def __init__(self, stream: TextIO, operation: str) -> None:
        self._stream = stream
        self._operation = operation
        self._drawn = False
        self._last = ""

    def update(self, state: str, progress: float | None) -> None:
        if progress is None:
            line = f"{self._operation} [{'?' * BAR_WIDTH}] {UNKNOWN} {state}"
        else:
            progress = min(1.0, max(0.0, progress))
            filled = round(progress * BAR_WIDTH)
            line = (
                f"{self._operation} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                f"{progress:4.0%} {state}"
            )
        width = shutil.get_terminal_size((80, 24)).columns - 1
        line = line[:width].ljust(min(width, max(len(self._last), len(line))))
        if line != self._last:
            self._stream.write("\r" + line)
            self._stream.flush()
            self._last = line
            self._drawn = True

    def message(self, text: str) -> None:
        self._end_line()
        print(f"{self._operation}: {text}", file=self._stream, flush=True)

    def close(self) -> None:
        self._end_line()

    def _end_line(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
            self._last = ""


def display_for(stream: TextIO, operation: str, *, quiet: bool = False) -> Display:
    if quiet:
        return Silent()
    if stream.isatty():
        return Bar(stream, operation)
    return Lines(stream, operation)
