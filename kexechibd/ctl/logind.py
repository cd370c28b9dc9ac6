"""``kexechibctl hibernate`` through logind, as a desktop hibernates.

logind (systemd 252, src/login/logind-dbus.c) checks polkit, other sessions
and inhibitor locks, emits ``PrepareForSleep(true)``, replies, and starts
hibernate.target, whose systemd-hibernate.service runs ``kexechibctl
hibernate --direct`` (our drop-in).  It emits ``PrepareForSleep(false)``
when that job has ended: after this system has resumed, or after a failure.
logind's reply says nothing about the outcome, so we follow kexechibd's
``PropertiesChanged`` for progress and read its ``LastError`` at the end.

``HibernateWithFlags`` with ``SD_LOGIND_ROOT_CHECK_INHIBITORS``: without it
logind lets root (CAP_SYS_BOOT) through a block inhibitor; a desktop user
is stopped by one, and so is kexechibctl, even as root.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kexechibd import busutil
from kexechibd.ctl.client import DaemonError, ManagerClient

LOGIND = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
LOGIND_MANAGER = "org.freedesktop.login1.Manager"
# systemd src/basic/login-util.h (252): root, too, is held by block inhibitors.
SD_LOGIND_ROOT_CHECK_INHIBITORS = 1 << 0

_UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
_NO_LOGIND = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
)


def explain(error: DaemonError) -> str:
    """What kexechibctl says when logind refuses or is not there."""
    if error.name in _NO_LOGIND:
        return (
            "systemd-logind is not running on this bus, so it cannot check inhibitors "
            "and sessions; `kexechibctl hibernate --direct` asks kexechibd without it"
        )
    return f"logind refused: {error.message} [{error.name}]"


class SleepWatch:
    """``PrepareForSleep`` from logind and the Manager's property changes, as
    one hibernation goes by."""

    def __init__(self) -> None:
        self.prepared = asyncio.Event()  # PrepareForSleep(true) seen
        self.done = asyncio.Event()  # PrepareForSleep(false) after it
        self.started = False  # kexechibd left idle: it did hibernate (or try)

    def on_prepare_for_sleep(self, start: bool) -> None:
        if start:
            self.prepared.set()
        elif self.prepared.is_set():
            self.done.set()

    def on_kexechib_change(self, changed: Mapping[str, object]) -> None:
        if changed.get("State") not in (None, "idle", "failed"):
            self.started = True


async def watch_prepare_for_sleep(client: ManagerClient, watch: SleepWatch) -> None:
    def prepare_for_sleep(body: list[Any]) -> None:
        if isinstance(body[0], bool):
            watch.on_prepare_for_sleep(body[0])

    logind = busutil.Remote(LOGIND, LOGIND_PATH, LOGIND_MANAGER)
    if not await client.on_signal(logind, "PrepareForSleep", prepare_for_sleep):
        raise DaemonError("org.freedesktop.DBus.Error.Failed", "cannot watch PrepareForSleep")


async def ask_logind_to_hibernate(client: ManagerClient) -> None:
    """``HibernateWithFlags`` (systemd >= 248), else the older ``Hibernate``;
    a refusal raises ``DaemonError`` (see ``explain``)."""
    where = {"destination": LOGIND, "path": LOGIND_PATH, "interface": LOGIND_MANAGER}
    try:
        await client.call("HibernateWithFlags", "t", [SD_LOGIND_ROOT_CHECK_INHIBITORS], **where)
    except DaemonError as e:
        if e.name != _UNKNOWN_METHOD:
            raise
        await client.call("Hibernate", "b", [client.interactive], **where)


async def outcome(client: ManagerClient, watch: SleepWatch) -> str:
    """After ``PrepareForSleep(false)``: '' on success, else what went wrong."""
    if not watch.started:
        return (
            "logind's hibernation ended but kexechibd never started one; see "
            "`journalctl -u systemd-hibernate.service -u kexechibd.service`"
        )
    try:
        props = await client.properties()
    except DaemonError as e:
        return f"cannot ask kexechibd how it went: {e.message}"
    return str(props.get("LastError", ""))
