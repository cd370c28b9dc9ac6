"""sd_notify: READY, STATUS, STOPPING and the watchdog (systemd-python).

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.  The watchdog
is fed from the event loop itself, so a blocked loop — the one thing the
daemon must never have — gets the service restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

# (Imported by module path: the checkout's systemd/ directory of unit files
# would otherwise shadow the package for type checkers run from the top.)
from systemd.daemon import notify as sd_notify

from kexechibd.daemon.manager import Manager

log = logging.getLogger("kexechibd.notify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self.watchdog_interval = _watchdog_interval(env)

    def send(self, **fields: object) -> None:
        if not self.enabled:
            return
        # sd_notify's format: one KEY=value per line; a value cannot span lines.
        text = "\n".join(f"{key}={' '.join(str(value).split())}" for key, value in fields.items())
        if not sd_notify(text):
            log.debug("sd_notify(%s) was not delivered", text)

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def stopping(self) -> None:
        self.send(STOPPING=1, STATUS="stopping")

    async def feed_watchdog(self) -> None:
        """Send WATCHDOG=1 at half the interval systemd asked for, forever."""
        if self.watchdog_interval is None:
            return
        while True:
            self.send(WATCHDOG=1)
            await asyncio.sleep(self.watchdog_interval / 2)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between watchdog deadlines, when systemd wants pings from us
    (sd_watchdog_enabled(3): WATCHDOG_USEC, and WATCHDOG_PID if set)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", str(os.getpid())))
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 1_000_000


def status_text(manager: Manager) -> str:
    """One line for ``systemctl status``: the state, and what it is about."""
    state = manager.get("State")
    if state == "idle":
        return f"idle; role {manager.get('Role')}, backend {manager.get('Backend')}"
    if state == "failed":
        return f"failed: {manager.get('LastError')}"
    op = manager.operation
    progress = manager.get("Progress")
    assert isinstance(progress, float)
    phase = f" ({manager.phase})" if manager.phase else ""
    return f"{op.kind if op else 'working'}: {state} {progress:.0%}{phase}"


class StatusListener:
    """Mirrors the Manager's state into STATUS=."""

    def __init__(self, manager: Manager, notifier: Notifier) -> None:
        self._manager = manager
        self._notifier = notifier

    def properties_changed(self, changed: Mapping[str, object]) -> None:
        self._notifier.status(status_text(self._manager))

    async def prepare_for_hibernate(self, start: bool) -> None:
        return None
