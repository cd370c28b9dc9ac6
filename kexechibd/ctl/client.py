"""kexechibctl's side of the bus: calls to org.kexechib1.Manager and a
watch on its ``PropertiesChanged``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageFlag, MessageType
from dbus_next.message import Message
from dbus_next.signature import Variant

from kexechibd import busutil
from kexechibd.busapi import BUS_NAME, INTERFACE, OBJECT_PATH

PROPERTIES = "org.freedesktop.DBus.Properties"

# What a caller is told when nobody serves the name (no activation here).
_NOT_RUNNING = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
)


class DaemonError(Exception):
    """An error reply: ``name`` is the D-Bus error name, the message is the
    daemon's (which says what to do)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message

    @property
    def not_running(self) -> bool:
        return self.name in _NOT_RUNNING


class ManagerClient:
    def __init__(self, bus: MessageBus, *, interactive: bool) -> None:
        self.bus = bus
        self.interactive = interactive
        self._watchers: list[Callable[[Message], Any]] = []

    @classmethod
    async def connect(cls, address: str | None, *, interactive: bool) -> ManagerClient:
        return cls(await busutil.connect(address), interactive=interactive)

    async def close(self) -> None:
        for handler in self._watchers:
            self.bus.remove_message_handler(handler)
        await busutil.close(self.bus)

    async def call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[object] = (),
        *,
        interface: str = INTERFACE,
        destination: str = BUS_NAME,
        path: str = OBJECT_PATH,
    ) -> list[Any]:
        """Call kexechibd (or ``destination``); an error reply raises
        ``DaemonError`` with its name and text."""
        flags = MessageFlag.NONE
        if self.interactive:
            flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
        to = busutil.Remote(destination, path, interface)
        reply = await self.bus.call(busutil.method_call(to, member, signature, body, flags=flags))
        if reply is None:
            raise DaemonError("org.freedesktop.DBus.Error.NoReply", "no reply")
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise DaemonError(reply.error_name or "", text or (reply.error_name or "failed"))
        return list(reply.body)

    async def properties(self) -> dict[str, object]:
        (values,) = await self.call("GetAll", "s", [INTERFACE], interface=PROPERTIES)
        assert isinstance(values, dict)
        return {name: variant.value for name, variant in values.items()}

    def add_handler(self, handler: Callable[[Message], Any]) -> None:
        """Have ``handler`` see every message (removed on ``close``)."""
        self.bus.add_message_handler(handler)
        self._watchers.append(handler)

    async def add_match(self, rule: str) -> bool:
        """Ask the bus for the signals ``rule`` matches; False if it refused."""
        reply = await self.bus.call(
            busutil.method_call(busutil.BUS_DAEMON, "AddMatch", "s", [rule])
        )
        return reply is not None and reply.message_type != MessageType.ERROR

    async def on_signal(
        self,
        source: busutil.Remote,
        member: str,
        handler: Callable[[list[Any]], None],
        *,
        arg0: str | None = None,
    ) -> bool:
        """Have ``handler`` see the body of every signal ``member`` that
        ``source`` sends (with that first argument, when ``arg0`` is given):
        the bus's match rule and our own filter say the same thing.  False
        if the bus refused the match."""
        rule = (
            f"type='signal',sender='{source.destination}',path='{source.path}',"
            f"interface='{source.interface}',member='{member}'"
        ) + (f",arg0='{arg0}'" if arg0 is not None else "")
        if not await self.add_match(rule):
            return False

        def filtered(msg: Message) -> None:
            if (
                msg.message_type == MessageType.SIGNAL
                and (msg.path, msg.interface, msg.member) == (source.path, source.interface, member)
                and msg.body
                and (arg0 is None or msg.body[0] == arg0)
            ):
                handler(list(msg.body))

        self.add_handler(filtered)
        return True

    async def watch(self, on_change: Callable[[Mapping[str, object]], None]) -> None:
        """Call ``on_change`` with every PropertiesChanged of the Manager."""

        def changed(body: list[Any]) -> None:
            values: dict[str, Variant] = body[1]
            on_change({name: variant.value for name, variant in values.items()})

        manager = busutil.Remote(BUS_NAME, OBJECT_PATH, PROPERTIES)
        # Refused: no progress display; the call itself still works.
        await self.on_signal(manager, "PropertiesChanged", changed, arg0=INTERFACE)
