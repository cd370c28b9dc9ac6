"""Who answers a method call, decided from its header alone: the Manager's
methods and signals (``METHODS``, ``SIGNALS``), the standard interfaces the
object offers (``STANDARD``), ``route`` and, from it, ``admit`` (whether a
body is worth decoding: ``busutil.connect(admit=…)``); and the answers that
need no Manager (``introspect``, ``machine_id``).

Pure but for ``machine_id``, which reads the machine id file: no bus, no
Manager, no authorization.  ``service.py`` is the shell that applies it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from dbus_next import introspection as intr
from dbus_next.constants import ArgDirection
from dbus_next.service import ServiceInterface

from kexechibd import busutil
from kexechibd.busapi import INTERFACE, OBJECT_PATH
from kexechibd.daemon.mistakes import shown

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


PEER = "org.freedesktop.DBus.Peer"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PROPERTIES = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
FAILED = "org.freedesktop.DBus.Error.Failed"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
UNKNOWN_INTERFACE = "org.freedesktop.DBus.Error.UnknownInterface"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
UNKNOWN_PROPERTY = "org.freedesktop.DBus.Error.UnknownProperty"
PROPERTY_READ_ONLY = "org.freedesktop.DBus.Error.PropertyReadOnly"
LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"

# The standard interfaces the object offers: member -> input signature.
STANDARD: dict[str, dict[str, str]] = {
    PEER: {"Ping": "", "GetMachineId": ""},
    INTROSPECTABLE: {"Introspect": ""},
    PROPERTIES: {"Get": "ss", "GetAll": "s", "Set": "ssv"},
}
# Every interface the daemon answers, the Manager's first (a call without
# an interface header goes to the first that has its member).
INTERFACES: dict[str, dict[str, str]] = {
    INTERFACE: {name: member.in_signature for name, member in METHODS.items()},
    **STANDARD,
}
# No call of ours needs more: an image path is at most PATH_MAX (4096)
# bytes, the options a handful of short strings.  A larger body is refused
# before it is decoded, so no caller can keep the daemon busy decoding.
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Route:
    """A method call the daemon answers."""

    interface: str
    member: str


@dataclass(frozen=True)
class Refusal:
    """A method call answered with an error, from its header alone."""

    error: str
    text: str


class CallRefused(Exception):
    def __init__(self, error: str, text: str) -> None:
        super().__init__(text)
        self.refusal = Refusal(error, text)


def _is_ancestor(path: str) -> bool:
    return path == "/" or OBJECT_PATH.startswith(path + "/")


def route(
    path: str, interface: str | None, member: str, signature: str, body_length: int = 0
) -> Route | Refusal:
    """Who answers a method call, or the error it gets: decided from the
    header alone, so before its body is decoded."""
    if interface is None:
        interface = next((i for i, members in INTERFACES.items() if member in members), None)
        if interface is None:
            return Refusal(UNKNOWN_METHOD, f"no method {shown(member)} here")
    members = INTERFACES.get(interface)
    if members is None:
        return Refusal(UNKNOWN_INTERFACE, f"no interface {shown(interface)} here")
    # Peer belongs to the connection, not to an object.
    here = path == OBJECT_PATH or interface == PEER
    if not here and not (interface == INTROSPECTABLE and _is_ancestor(path)):
        return Refusal(UNKNOWN_OBJECT, f"no object at {shown(path)}; there is {OBJECT_PATH}")
    expected = members.get(member)
    if expected is None:
        return Refusal(
            UNKNOWN_METHOD,
            f"{interface} has no method {shown(member)}; it has {', '.join(members)}",
        )
    if signature != expected:
        return Refusal(
            INVALID_ARGS,
            f"{interface}.{member} takes arguments ({expected}), not ({shown(signature)[1:-1]})",
        )
    if body_length > MAX_BODY:
        return Refusal(
            LIMITS_EXCEEDED,
            f"{interface}.{member}: {body_length} bytes of arguments is more than "
            f"{MAX_BODY}; no call needs that much",
        )
    return Route(interface, member)


def admit(header: busutil.CallHeader) -> bool:
    """Whether a method call is worth decoding (``busutil.connect``): only
    a call that ``route`` sends somewhere."""
    route_ = route(
        header.path, header.interface, header.member, header.signature, header.body_length
    )
    return isinstance(route_, Route)


def introspect(path: str, manager: ServiceInterface) -> str:
    """The introspection XML of ``path``: the object, or one of its ancestors."""
    if path == OBJECT_PATH:
        node = intr.Node.default(path)
        node.interfaces = [i for i in node.interfaces if i.name != OBJECT_MANAGER]
        node.interfaces.append(manager.introspect())
    else:
        node = intr.Node(path)
        node.nodes = [intr.Node(OBJECT_PATH[len(path) :].lstrip("/").split("/")[0])]
    xml: str = node.tostring()
    return xml


MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


@functools.cache
def machine_id() -> str:
    """What Peer.GetMachineId answers: the machine id the bus daemon also
    uses ('' when there is none)."""
    for path in MACHINE_ID_FILES:
        try:
            ident = path.read_text().strip()
        except OSError:
            continue
        if ident:
            return ident
    return ""
