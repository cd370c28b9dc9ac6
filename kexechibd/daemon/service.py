"""The D-Bus shell: ``org.kexechib1.Manager`` on ``/org/kexechib1`` (DESIGN §5).

Every method call that reaches the daemon is answered here, the standard
interfaces included (Peer, Introspectable, Properties; ObjectManager is not
offered: there is one object and it never comes or goes).  dbus-next's own
handlers for those answer some calls wrongly or not at all and log a
traceback that echoes the caller's strings for every mistake
(docs/DEVELOPING.md); its ``ServiceInterface`` is kept only to describe the
Manager's properties and to send ``PropertiesChanged``.  Method calls are
routed from one table (``routing.METHODS`` and ``routing.STANDARD``; the
decision is ``routing.route``, pure, in its own module), whose signatures also
decide, before dbus-next decodes a body, whether the body is worth decoding
(``busutil.connect(admit=…)``): a call with a wrong signature, to an unknown
method, or with a body over ``MAX_BODY`` is answered without being decoded.
The Manager's methods need what dbus-next's method decorator hides: the
caller's unique name and the ``ALLOW_INTERACTIVE_AUTHORIZATION`` flag (for
polkit), and replies that may arrive minutes later (``Hibernate`` answers
after A has resumed) while other calls are served.  A caller's mistake costs
the log at most one short line (``mistakes.MistakeLog``).

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
from pathlib import Path, PurePath
from typing import Any, cast

from dbus_next import introspection as intr
from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageFlag, MessageType, PropertyAccess
from dbus_next.message import Message
from dbus_next.service import ServiceInterface, dbus_property
from dbus_next.signature import Variant

from kexechibd import busutil, compression
from kexechibd.busapi import INTERFACE, OBJECT_PATH
from kexechibd.config import Config
from kexechibd.daemon.auth import Action, Authorizer, Caller, Verdict, denial
from kexechibd.daemon.inspect import report_fields
from kexechibd.daemon.manager import PROPERTY_SIGNATURES, Manager, as_daemon_error, unexpected
from kexechibd.daemon.mistakes import MistakeLog, shown
from kexechibd.daemon.routing import (
    FAILED,
    INTROSPECTABLE,
    METHODS,
    PEER,
    PREPARE_FOR_HIBERNATE,
    PROPERTY_READ_ONLY,
    SIGNALS,
    STANDARD,
    UNKNOWN_INTERFACE,
    UNKNOWN_PROPERTY,
    CallRefused,
    Member,
    Refusal,
    introspect,
    machine_id,
    route,
)
from kexechibd.errors import InvalidOption
from kexechibd.image.pathcheck import ImagePathRefused, check_image_path
from kexechibd.operation import HibernateOptions, ResumeOptions

log = logging.getLogger("kexechibd.service")


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


# An error's text is cut to this many characters: it may quote what the
# caller sent (an unknown option's name, a path).
MAX_ERROR_TEXT = 2048


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + "…"


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


# The D-Bus type of every option (DESIGN §5): an option is taken only as its
# declared type (a level as 'i', not as any integer; an image as a string,
# not an object path), as kexechibctl sends them.
HIBERNATE_OPTION_TYPES = {"mode": "s", "compression": "s", "level": "i", "image": "s"}
RESUME_OPTION_TYPES = {"load-only": "b", "force": "b"}
_PYTHON_TYPES = {"s": "str", "i": "int", "b": "bool"}


def check_option_types(options: Mapping[str, Variant], types: Mapping[str, str]) -> None:
    """Raise ``InvalidOption`` for an option of another D-Bus type than its
    declared one (unknown options are left to the options' own check, which
    names them all)."""
    for key, value in options.items():
        expected = types.get(key)
        if expected is not None and value.signature != expected:
            raise InvalidOption(
                f"option {key!r} must be of type {_PYTHON_TYPES[expected]} "
                f"(D-Bus '{expected}'), not {shown(value.signature)}"
            )


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
        self._mistakes = MistakeLog(log)
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
        await self._bus.call(busutil.method_call(busutil.BUS_DAEMON, "GetId"))

    # ---------------------------------------------------- dispatch

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type != MessageType.METHOD_CALL:
            return None  # replies and signals: dbus-next's business
        # The interface header is optional in a method call (dbus-next's
        # annotations say str, but it is None when absent).
        interface = cast("str | None", msg.interface)
        where = route(
            msg.path, interface, msg.member, msg.signature, busutil.undecoded_body_length(msg) or 0
        )
        if isinstance(where, Refusal):
            return self._refuse(msg, where)
        try:
            if where.interface == INTERFACE:
                self._start(msg, METHODS[where.member])
                return True
            if where.interface == PEER:
                return self._peer(msg, where.member)
            if where.interface == INTROSPECTABLE:
                return Message.new_method_return(msg, "s", [introspect(msg.path, self.interface)])
            return self._properties(msg, where.member)
        except CallRefused as refused:
            return self._refuse(msg, refused.refusal)

    def _refuse(self, msg: Message, refusal: Refusal) -> Message:
        self._mistakes.note(msg.sender or "", f"{refusal.error.rsplit('.', 1)[-1]}: {refusal.text}")
        return Message.new_error(msg, refusal.error, refusal.text)

    def _start(self, msg: Message, member: Member) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(msg, member))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    def _peer(self, msg: Message, member: str) -> Message:
        if member == "Ping":
            return Message.new_method_return(msg)
        ident = machine_id()
        if not ident:
            return Message.new_error(msg, FAILED, "this machine has no machine id")
        return Message.new_method_return(msg, "s", [ident])

    def _properties(self, msg: Message, member: str) -> Message:
        interface = str(msg.body[0])
        if member == "GetAll":
            if interface in ("", INTERFACE):
                values = {
                    name: Variant(sig, self._manager.get(name))
                    for name, sig in PROPERTY_SIGNATURES.items()
                }
                return Message.new_method_return(msg, "a{sv}", [values])
            if interface in STANDARD:
                return Message.new_method_return(msg, "a{sv}", [{}])
            raise CallRefused(UNKNOWN_INTERFACE, f"no interface {shown(interface)} here")
        name = str(msg.body[1])
        if interface not in ("", INTERFACE) and interface not in STANDARD:
            raise CallRefused(UNKNOWN_INTERFACE, f"no interface {shown(interface)} here")
        if interface in STANDARD or name not in PROPERTY_SIGNATURES:
            raise CallRefused(
                UNKNOWN_PROPERTY,
                f"no property {shown(name)}; {INTERFACE} has {', '.join(PROPERTY_SIGNATURES)}",
            )
        if member == "Set":
            raise CallRefused(PROPERTY_READ_ONLY, f"{name} is read-only")
        return Message.new_method_return(
            msg, "v", [Variant(PROPERTY_SIGNATURES[name], self._manager.get(name))]
        )

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
            reply = Message.new_error(msg, error.dbus_name, _bounded(str(error)))
        else:
            reply = Message.new_method_return(msg, "".join(sig for _, sig in member.out_args), body)
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            self._bus.send(reply)

    async def _authorize(
        self, caller: Caller, action: Action, details: Mapping[str, str] | None = None
    ) -> None:
        result = await self._authorizer.check(caller, action, details)
        if result.verdict is not Verdict.YES:
            self._mistakes.note(
                caller.sender,
                f"{action.value}: {result.verdict.value}",
                {"KEXECHIB_ACTION": action.value},
            )
            raise denial(action, result, caller)

    def _is_configured_image(self, image: object) -> bool:
        """Whether a caller's (unchecked) image argument names the configured
        image: empty, or the path the engine reads as the configured one
        ("/a//./b" is "/a/b"; ".." is kept, so a path through a symlink never
        passes for it)."""
        configured = PurePath(str(self._manager.get("ImageLocation")))
        return image == "" or (isinstance(image, str) and PurePath(image) == configured)

    async def _checked_image(self, image: str) -> Path:
        """The image a call names ('' is the configured one), checked by the
        one rule for every method (``pathcheck``): ``InvalidOption`` if no
        image may be there."""
        path = image or str(self._manager.get("ImageLocation"))
        try:
            await asyncio.to_thread(check_image_path, path)
        except ImagePathRefused as e:
            raise InvalidOption(str(e)) from None
        return Path(path)

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
        check_option_types(args[0], HIBERNATE_OPTION_TYPES)
        options = HibernateOptions.from_mapping(requested)
        await self._checked_image(options.image)
        await self._manager.hibernate(options, owner=caller.sender)
        return []

    async def _resume(self, caller: Caller, args: list[Any]) -> list[Any]:
        await self._authorize(
            caller, Action.RESUME, {"image": args[0] or str(self._manager.get("ImageLocation"))}
        )
        check_option_types(args[1], RESUME_OPTION_TYPES)
        options = ResumeOptions.from_mapping(unwrap_options(args[1]))
        image = await self._checked_image(args[0])
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
        image = await self._checked_image(args[0])
        report = await self._manager.inspect(image)
        return [to_vardict(report_fields(report))]
