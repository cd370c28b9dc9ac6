"""Typed doors to the few dbus-next calls it leaves unannotated, shared by
the daemon and kexechibctl."""

from __future__ import annotations

import contextlib
from typing import Any, cast

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType


async def connect(address: str | None) -> MessageBus:
    """Connect to ``address``; None means the system bus
    (``$DBUS_SYSTEM_BUS_ADDRESS`` when set, as every D-Bus client does)."""
    bus = MessageBus(bus_address=cast(str, address), bus_type=BusType.SYSTEM)
    connected: MessageBus = await bus.connect()
    return connected


def disconnect(bus: MessageBus) -> None:
    cast(Any, bus).disconnect()


async def wait_for_disconnect(bus: MessageBus) -> None:
    await cast(Any, bus).wait_for_disconnect()


async def close(bus: MessageBus) -> None:
    """Disconnect and wait until the connection is gone."""
    disconnect(bus)
    with contextlib.suppress(Exception):
        await wait_for_disconnect(bus)
