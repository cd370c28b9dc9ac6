"""The D-Bus shell: ``org.kexechib1.Manager`` on ``/org/kexechib1`` (DESIGN §5).

Properties and ``PropertiesChanged`` use dbus-next's ``ServiceInterface``
machinery (with the standard Introspectable, Properties and Peer interfaces
it provides).  Method calls are dispatched here, from one table
(``METHODS``) that also feeds introspection, because the shell needs what
dbus-next's method decorator hides: the caller's unique name and the
``ALLOW_INTERACTIVE_AUTHORIZATION`` flag (for polkit), an ``InvalidArgs``
reply for a wrong signature, and replies that may arrive minutes later
(``Hibernate`` answers after A has resumed) while other calls are served.

Order of checks for every call: signature → authorization → arguments →
the operation.  Authorization comes before anything that depends on the
daemon's state or on what the arguments mean, so a caller who may not do
something learns nothing from trying: AccessDenied, never Busy or
InvalidOption.  (The price: an authorized caller may be asked for a
password and then told Busy.)  A refused or malformed call changes nothing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, cast

from dbus_next import introspection as intr
from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import ArgDirection, MessageFlag, MessageType, PropertyAccess
from dbus_next.message import Message
from dbus_next.service import ServiceInterface, dbus_property
from dbus_next.signature import Variant

from kexechibd import compression
from kexechibd.busapi import INTERFACE, OBJECT_PATH
from kexechibd.config import Config
from kexechibd.daemon.auth import Action, Authorizer, Caller, Verdict, denial
from kexechibd.daemon.inspect import report_fields
from kexechibd.daemon.manager import PROPERTY_SIGNATURES, Manager, as_daemon_error, unexpected
from kexechibd.errors import InvalidOption
from kexechibd.operation import HibernateOptions, ResumeOptions

log = logging.getLogger("kexechibd.service")

INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"


@dataclass(frozen=True)
class Member:
    """A method or signal of the interface: name and named arguments."""

    name: str
    in_args: tuple[tuple[str, str], ...] = ()
    out_args: tuple[tuple[str, str], ...] = ()

    @property
    def in_signature(self) -> str:
        return "".join(sig for _, sig in self.in_args)

    def method_introspection(self) -> intr.Method:
        return intr.Method(
            self.name,
            [_arg(sig, ArgDirection.IN, name) for name, sig in self.in_args],
            [_arg(sig, ArgDirection.OUT, name) for name, sig in self.out_args],
        )

    def signal_introspection(self) -> intr.Signal:
        return intr.Signal(
            self.name, [_arg(sig, ArgDirection.OUT, name) for name, sig in self.out_args]
        )


def _arg(signature: str, direction: ArgDirection, name: str) -> intr.Arg:
    # dbus-next annotates ``direction`` as a list; it takes one ArgDirection.
    return intr.Arg(signature, direction, name)  # type: ignore[arg-type]


METHODS: dict[str, Member] = {
    m.name: m
    for m in (
        Member("Hibernate", in_args=(("options", "a{sv}"),)),
        Member("Resume", in_args=(("image", "s"), ("options", "a{sv}"))),
        Member("JumpBack"),
        Member("Cancel"),
        Member("CanHibernate", out_args=(("result", "s"),)),
        Member("Inspect", in_args=(("image", "s"),), out_args=(("info", "a{sv}"),)),
    )
}
PREPARE_FOR_HIBERNATE = Member("PrepareForHibernate", out_args=(("start", "b"),))
SIGNALS = (PREPARE_FOR_HIBERNATE,)


def _read_only_property(name: str) -> Any:
    """A dbus-next property whose value is the Manager's property ``name``.

    Built rather than written with the decorator so the D-Bus signature
    comes from ``PROPERTY_SIGNATURES`` (dbus-next reads it from the return
    annotation, which mypy would take for a type name)."""

    def getter(self: ManagerInterface) -> object:
        return self.manager.get(name)

    getter.__name__ = name
    getter.__annotations__ = {"return": PROPERTY_SIGNATURES[name]}
    return dbus_property(access=PropertyAccess.READ, name=name)(getter)


class ManagerInterface(ServiceInterface):
    State = _read_only_property("State")
    Role = _read_only_property("Role")
    Backend = _read_only_property("Backend")
    Support = _read_only_property("Support")
    LastError = _read_only_property("LastError")
    ImageLocation = _read_only_property("ImageLocation")
    Progress = _read_only_property("Progress")

    def __init__(self, manager: Manager) -> None:
        super().__init__(INTERFACE)
        self.manager = manager

    def introspect(self) -> intr.Interface:
        interface = super().introspect()
        interface.methods = [m.method_introspection() for m in METHODS.values()]
        interface.signals = [s.signal_introspection() for s in SIGNALS]
        return interface


# ------------------------------------------------------------------ variants


def hibernate_defaults(config: Config) -> dict[str, object]:
    """The Hibernate options the configuration sets ([saver] mode, [image]
    compression and level)."""
    return {
        "mode": config.saver.mode.value,
        "compression": config.image.compression,
        "level": config.image.level,
    }


def unwrap_options(options: Mapping[str, Variant]) -> dict[str, object]:
    return {key: value.value for key, value in options.items()}


def to_variant(value: object) -> Variant:
    """A D-Bus variant for a plain Python value from ``Engine.inspect``."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return Variant("b", value)
    if isinstance(value, int):
        return Variant("x" if -(1 << 63) <= value < (1 << 63) else "t", value)
    if isinstance(value, float):
        return Variant("d", value)
    if isinstance(value, str | PurePath):
        return Variant("s", str(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return Variant("ay", bytes(value))
    if isinstance(value, Mapping):
        return Variant("a{sv}", to_vardict(value))
    if isinstance(value, list | tuple):
        if all(isinstance(v, str) for v in value):
            return Variant("as", list(value))
        return Variant("av", [to_variant(v) for v in value])
    raise TypeError(f"cannot send a {type(value).__name__} over D-Bus")


def to_vardict(values: Mapping[Any, object]) -> dict[str, Variant]:
    return {str(k): to_variant(v) for k, v in values.items() if v is not None}


# ------------------------------------------------------------------ service


Handler = Callable[[Caller, list[Any]], Awaitable[list[Any]]]


class ManagerService:
    """Exports the Manager on a bus and answers its method calls."""

    def __init__(
        self,
        bus: MessageBus,
        manager: Manager,
        authorizer: Authorizer,
        *,
        hibernate_defaults: Mapping[str, object] | None = None,
    ) -> None:
        self._bus = bus
        self._manager = manager
        self._authorizer = authorizer
        # Options a Hibernate call leaves out come from the configuration.
        self._hibernate_defaults = dict(hibernate_defaults or {})
        self.interface = ManagerInterface(manager)
        self._calls: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Handler] = {
            "Hibernate": self._hibernate,
            "Resume": self._resume,
            "JumpBack": self._jump_back,
            "Cancel": self._cancel,
            "CanHibernate": self._can_hibernate,
            "Inspect": self._inspect,
        }
        assert self._handlers.keys() == METHODS.keys()

    def export(self) -> None:
        self._bus.export(OBJECT_PATH, self.interface)
        self._bus.add_message_handler(self._on_message)
        self._manager.add_listener(self)

    def unexport(self) -> None:
        self._manager.remove_listener(self)
        self._bus.remove_message_handler(self._on_message)
        self._bus.unexport(OBJECT_PATH, self.interface)

    async def drain(self, timeout: float) -> None:
        """Wait for calls in flight to be answered (at shutdown)."""
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=timeout)

    # ---------------------------------------------------- manager listener

    def properties_changed(self, changed: Mapping[str, object]) -> None:
        self.interface.emit_properties_changed(dict(changed))

    async def prepare_for_hibernate(self, start: bool) -> None:
        self._bus.send(
            Message.new_signal(OBJECT_PATH, INTERFACE, PREPARE_FOR_HIBERNATE.name, "b", [start])
        )
        await self.flush()

    async def flush(self) -> None:
        """Return once everything sent so far has reached the bus daemon: it
        handles a connection's messages in order, so the reply to a call sent
        after them proves they were routed (before the kernel freezes us)."""
        await self._bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetId",
            )
        )

    # ---------------------------------------------------- dispatch

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type != MessageType.METHOD_CALL or msg.path != OBJECT_PATH:
            return None
        # The interface header is optional in a method call (dbus-next's
        # annotations say str, but it is None when absent).
        interface = cast("str | None", msg.interface)
        if interface != INTERFACE and not (interface is None and msg.member in METHODS):
            return None  # standard interfaces: dbus-next answers those
        member = METHODS.get(msg.member)
        if member is None:
            return Message.new_error(
                msg,
                "org.freedesktop.DBus.Error.UnknownMethod",
                f"{INTERFACE} has no method {msg.member!r}; it has {', '.join(METHODS)}",
            )
        if msg.signature != member.in_signature:
            return Message.new_error(
                msg,
                INVALID_ARGS,
                f"{INTERFACE}.{member.name} takes arguments ({member.in_signature}), "
                f"not ({msg.signature})",
            )
        task = asyncio.get_running_loop().create_task(self._answer(msg, member))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return True

    async def _answer(self, msg: Message, member: Member) -> None:
        caller = Caller(
            msg.sender or "",
            bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION),
        )
        try:
            body = await self._handlers[member.name](caller, list(msg.body))
        except Exception as exc:
            error = as_daemon_error(exc)
            if unexpected(exc):
                log.error("%s from %s failed", member.name, caller.sender, exc_info=exc)
            reply = Message.new_error(msg, error.dbus_name, str(error))
        else:
            reply = Message.new_method_return(msg, "".join(sig for _, sig in member.out_args), body)
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            self._bus.send(reply)

    async def _authorize(
        self, caller: Caller, action: Action, details: Mapping[str, str] | None = None
    ) -> None:
        result = await self._authorizer.check(caller, action, details)
        if result.verdict is not Verdict.YES:
            log.info(
                "refused %s for %s: %s",
                action.value,
                caller.sender,
                result.verdict.value,
                extra={"KEXECHIB_ACTION": action.value, "KEXECHIB_CALLER": caller.sender},
            )
            raise denial(action, result, caller)

    def _is_configured_image(self, image: object) -> bool:
        """Whether a caller's (unchecked) image argument names the configured
        image: empty, or the path the engine reads as the configured one
        ("/a//./b" is "/a/b"; ".." is kept, so a path through a symlink never
        passes for it)."""
        configured = PurePath(str(self._manager.get("ImageLocation")))
        return image == "" or (isinstance(image, str) and PurePath(image) == configured)

    def _image_path(self, image: str) -> Path:
        path = Path(image or str(self._manager.get("ImageLocation")))
        if not path.is_absolute():
            raise InvalidOption(f"the image must be an absolute path, not {image!r}")
        return path

    # ---------------------------------------------------- methods

    async def _hibernate(self, caller: Caller, args: list[Any]) -> list[Any]:
        requested = compression.overlay(self._hibernate_defaults, unwrap_options(args[0]))
        # polkit rules may look at the mode; the options are not checked yet,
        # so it is passed as the caller wrote it.
        details = {"mode": str(requested["mode"])} if "mode" in requested else {}
        image = requested.get("image", "")
        if self._is_configured_image(image):
            await self._authorize(caller, Action.HIBERNATE, details)
        else:
            # Root writes the image wherever the caller says -- another disk,
            # a system file -- so that is an administrator's decision, not
            # the active session's.
            details["image"] = str(image)
            await self._authorize(caller, Action.HIBERNATE_OTHER_IMAGE, details)
        options = HibernateOptions.from_mapping(requested)
        await self._manager.hibernate(options, owner=caller.sender)
        return []

    async def _resume(self, caller: Caller, args: list[Any]) -> list[Any]:
        await self._authorize(
            caller, Action.RESUME, {"image": args[0] or str(self._manager.get("ImageLocation"))}
        )
        image = self._image_path(args[0])
        options = ResumeOptions.from_mapping(unwrap_options(args[1]))
        await self._manager.resume(image, options, owner=caller.sender)
        return []

    async def _jump_back(self, caller: Caller, args: list[Any]) -> list[Any]:
        await self._authorize(caller, Action.JUMP_BACK)
        await self._manager.jump_back(owner=caller.sender)
        return []

    async def _cancel(self, caller: Caller, args: list[Any]) -> list[Any]:
        op = self._manager.operation
        # Whoever started an operation may cancel it: they were authorized
        # to start it (this is what kexechibctl does on Ctrl-C).
        if op is None or op.owner != caller.sender:
            await self._authorize(caller, Action.CANCEL)
        self._manager.cancel()
        return []

    async def _can_hibernate(self, caller: Caller, args: list[Any]) -> list[Any]:
        if await self._manager.hibernate_unavailable():
            return ["na"]
        result = await self._authorizer.check(
            Caller(caller.sender, interactive=False), Action.HIBERNATE
        )
        return [result.verdict.value]

    async def _inspect(self, caller: Caller, args: list[Any]) -> list[Any]:
        # The configured image is public knowledge (like the properties);
        # probing other paths as root is not.
        if not self._is_configured_image(args[0]):
            await self._authorize(caller, Action.INSPECT, {"image": args[0]})
        image = self._image_path(args[0])
        report = await self._manager.inspect(image)
        return [to_vardict(report_fields(report))]
