"""Logging: the journal, with structured fields, when systemd connected our
stderr to it; plain lines on stderr otherwise.

Structured fields are passed as ``extra={"KEXECHIB_…": value}``; the journal
keeps them (``journalctl KEXECHIB_OPERATION=hibernate``), stderr shows only
the message.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from systemd.journal import JournalHandler

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def stderr_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """systemd.exec(5): ``JOURNAL_STREAM`` is ``device:inode`` of the journal
    stream it connected; it is ours only if stderr is still that stream."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):
        return False


def make_handler(
    identifier: str, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> logging.Handler:
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    if stderr_is_journal(stream, environ):
        journal: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=identifier)
        return journal
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"{identifier}: %(levelname)s: %(message)s"))
    return handler


def setup(level: str, identifier: str = "kexechibd") -> logging.Handler:
    """Route the ``kexechibd`` loggers to the journal or stderr."""
    handler = make_handler(identifier)
    root = logging.getLogger("kexechibd")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    root.propagate = False
    return handler


class ProgressLog:
    """Logs every 10 % of an operation's progress (a Manager listener).

    With ``--oneshot`` — kernel B's save, kernel C's resume early in boot
    (``kexechib-resume.service``) — there is no bus to watch ``Progress`` on:
    the log, on the console and in the journal, is where someone waiting
    sees how far it got.  State changes are logged by the Manager itself."""

    def __init__(self, operation: str) -> None:
        self._operation = operation
        self._log = logging.getLogger("kexechibd.progress")
        self._state = ""
        self._decile = 0

    def properties_changed(self, changed: Mapping[str, object]) -> None:
        state = changed.get("State")
        if isinstance(state, str) and state != self._state:
            self._state = state
            self._decile = 0
        progress = changed.get("Progress")
        if not isinstance(progress, float) or self._state in ("idle", "failed"):
            return
        decile = int(progress * 10 + 1e-9)
        if decile > self._decile:
            self._decile = decile
            self._log.info("%s: %s %d%%", self._operation, self._state, decile * 10)

    async def prepare_for_hibernate(self, start: bool) -> None:
        return None
