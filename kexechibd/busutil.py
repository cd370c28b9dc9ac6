"""The one home of dbus-next's internals: typed doors to the calls it leaves
unannotated, shared by the daemon and kexechibctl, and the daemon's guard
against what dbus-next does with a message before anyone may look at it.

dbus-next (0.2.3, Debian 12's) decodes a message's whole body into Python
objects as soon as it arrives, before any handler sees its signature: a
method call carrying 4 million empty strings kept the event loop busy for
seconds and left the process 100 MB larger.  ``connect(address, admit=…)``
installs an unmarshaller that reads the fixed header and the header fields
first and asks ``admit`` whether the body is worth decoding; a body it does
not want is read from the socket in small pieces and dropped, never held
whole, and the message reaches the handlers with an empty body, marked
(``undecoded_body_length``) so that the handler can answer it with an error.
docs/DEVELOPING.md says what this becomes with dbus-fast.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from struct import unpack_from
from typing import Any, cast

from dbus_next._private.unmarshaller import MarshallerStreamEndError, Unmarshaller
from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageFlag, MessageType
from dbus_next.errors import InvalidMessageError
from dbus_next.message import Message
from dbus_next.signature import SignatureTree

# The D-Bus wire format (the specification's "Message Format"): a 16-byte
# fixed header (endianness, type, flags, version, body length, serial,
# length of the header-field array), the fields, padding to 8, the body.
_FIXED_HEADER = 16
_FIELD_PATH, _FIELD_INTERFACE, _FIELD_MEMBER = 1, 2, 3
_FIELD_DESTINATION, _FIELD_SENDER, _FIELD_SIGNATURE = 6, 7, 8
_HEADER_FIELDS = SignatureTree._get("a(yv)").types[0]
# A dropped body is read in pieces this large.
_DISCARD_CHUNK = 1 << 16


@dataclass(frozen=True)
class CallHeader:
    """What a method call's header says, before its body is decoded."""

    path: str
    interface: str | None
    member: str
    signature: str
    body_length: int
    sender: str


@dataclass(frozen=True)
class Remote:
    """An object on the bus to call: its owner, path and interface."""

    destination: str
    path: str
    interface: str


# The bus daemon itself (the specification's "Message Bus Messages").
BUS_DAEMON = Remote("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")


def method_call(
    to: Remote,
    member: str,
    signature: str = "",
    body: Sequence[Any] = (),
    *,
    flags: MessageFlag = MessageFlag.NONE,
) -> Message:
    """The method call ``member`` on ``to``, ready for ``bus.call``."""
    return Message(
        destination=to.destination,
        path=to.path,
        interface=to.interface,
        member=member,
        signature=signature,
        body=list(body),
        flags=flags,
    )


# Whether to decode the body of the method call with this header.
Admit = Callable[[CallHeader], bool]

_undecoded: weakref.WeakKeyDictionary[Message, int] = weakref.WeakKeyDictionary()


def undecoded_body_length(msg: Message) -> int | None:
    """The length of the body ``admit`` refused to decode (the message's
    ``body`` is then empty), or None for a message decoded as usual."""
    return _undecoded.get(msg)


class _GuardedUnmarshaller(Unmarshaller):
    """dbus-next's unmarshaller, asking ``admit`` before decoding a call's body.

    dbus-next calls ``_unmarshall`` again each time more bytes arrive, until
    a message is complete; what was read stays in ``self.buf``, so the
    header is parsed again (it is small) but a dropped body is not kept."""

    def __init__(self, stream: Any, sock: Any, admit: Admit) -> None:
        cast(Any, super()).__init__(stream, sock)
        self._admit = admit
        self._dropping: tuple[CallHeader, int, int, int] | None = None
        self._left = 0

    def _unmarshall(self) -> None:
        if self._dropping is None:
            parsed = self._read_header()
            if parsed is None:
                cast(Any, super())._unmarshall()
                return
            header, flags, serial, read = parsed
            self._dropping = (header, flags, serial, header.body_length)
            self._left = header.body_length - read
        self._drop_rest()
        header, flags, serial, length = self._dropping
        message = Message(
            destination=cast(str, None),
            path=header.path,
            interface=cast(str, header.interface),
            member=header.member,
            message_type=MessageType.METHOD_CALL,
            flags=MessageFlag(flags),
            sender=header.sender,
            signature=header.signature,
            body=[],
            serial=serial,
        )
        _undecoded[message] = length
        self.message = message

    def _read_header(self) -> tuple[CallHeader, int, int, int] | None:
        """The header of a method call whose body ``admit`` refuses, with
        its flags, serial and how many body bytes are already buffered;
        None for every other message (decoded as dbus-next does)."""
        raw = cast(Any, self)  # dbus-next's methods are unannotated
        self.offset = 0
        raw.read(_FIXED_HEADER, prefetch=True)
        endian = self.buf[0]
        if endian not in (ord("l"), ord("B")):
            raise InvalidMessageError("Expecting endianness as the first byte")
        self.endian = endian
        order = "<" if endian == ord("l") else ">"
        message_type, flags = self.buf[1], self.buf[2]
        body_length, serial, fields_length = unpack_from(order + "III", self.buf, 4)
        if message_type != MessageType.METHOD_CALL.value:
            return None
        end_of_header = _FIXED_HEADER + fields_length + raw._padding(fields_length, 8)
        raw.read(end_of_header, prefetch=True)
        self.offset = 12
        fields = {code: variant.value for code, variant in raw.read_argument(_HEADER_FIELDS)}
        header = CallHeader(
            path=str(fields.get(_FIELD_PATH, "")),
            interface=cast("str | None", fields.get(_FIELD_INTERFACE)),
            member=str(fields.get(_FIELD_MEMBER, "")),
            signature=str(fields.get(_FIELD_SIGNATURE, "")),
            body_length=body_length,
            sender=str(fields.get(_FIELD_SENDER, "")),
        )
        self.offset = 0
        if self._admit(header):
            return None
        return header, flags, serial, len(self.buf) - end_of_header

    def _drop_rest(self) -> None:
        while self._left > 0:
            want = min(self._left, _DISCARD_CHUNK)
            if self.sock is not None:
                try:
                    data = self.sock.recv(want)
                except BlockingIOError:
                    raise MarshallerStreamEndError() from None
            else:
                data = self.stream.read(want)
            if data == b"":
                raise EOFError()
            if data is None:
                raise MarshallerStreamEndError()
            self._left -= len(data)
        # The header stays in ``buf`` (small); the unmarshaller is replaced
        # once the message is handed on.


class _GuardedBus(MessageBus):
    def __init__(self, address: str | None, admit: Admit) -> None:
        self._admit = admit  # before __init__, which makes the first unmarshaller
        super().__init__(bus_address=cast(str, address), bus_type=BusType.SYSTEM)

    def _create_unmarshaller(self) -> Unmarshaller:
        sock = self._sock if self._negotiate_unix_fd else None
        return _GuardedUnmarshaller(self._stream, sock, self._admit)


async def connect(address: str | None, *, admit: Admit | None = None) -> MessageBus:
    """Connect to ``address``; None means the system bus
    (``$DBUS_SYSTEM_BUS_ADDRESS`` when set, as every D-Bus client does).
    With ``admit``, method calls whose header it refuses arrive undecoded
    (``undecoded_body_length``)."""
    if admit is None:
        bus = MessageBus(bus_address=cast(str, address), bus_type=BusType.SYSTEM)
    else:
        bus = _GuardedBus(address, admit)
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
