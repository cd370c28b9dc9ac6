"""A stand-in ``org.freedesktop.PolicyKit1.Authority`` — a TEST PEER.

The real polkitd runs in ``test_policy.py``; this peer exists for what the
real one cannot show: the exact request the daemon sends (subject, flags,
details, cancellation id), and polkit failing, hanging or being absent.
It speaks the interface at the message level: CheckAuthorization
``(sa{sv})sa{ss}us → (bba{ss})`` and CancelCheckAuthorization ``s``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType, NameFlag, RequestNameReply
from dbus_next.message import Message

from kexechibd.daemon.auth import POLKIT_INTERFACE, POLKIT_NAME, POLKIT_PATH


@dataclass
class Request:
    subject_kind: str
    subject: dict[str, object]
    action: str
    details: dict[str, str]
    flags: int
    cancellation_id: str


@dataclass
class FakeAuthority:
    bus: MessageBus
    # action id -> (is_authorized, is_challenge); anything else: (False, False)
    verdicts: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    error: str = ""  # reply with this D-Bus error instead
    delay: float = 0.0  # answer this much later
    requests: list[Request] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> FakeAuthority:
        self.bus.add_message_handler(self._on_message)
        reply = await self.bus.request_name(POLKIT_NAME, NameFlag.DO_NOT_QUEUE)
        assert reply == RequestNameReply.PRIMARY_OWNER
        return self

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type != MessageType.METHOD_CALL or msg.path != POLKIT_PATH:
            return None
        if msg.member == "CancelCheckAuthorization":
            self.cancelled.append(msg.body[0])
            return Message.new_method_return(msg)
        if msg.member != "CheckAuthorization" or msg.interface != POLKIT_INTERFACE:
            return None
        (kind, subject), action, details, flags, cancellation_id = msg.body
        self.requests.append(
            Request(
                kind,
                {k: v.value for k, v in subject.items()},
                action,
                dict(details),
                flags,
                cancellation_id,
            )
        )
        task = asyncio.get_running_loop().create_task(self._answer(msg, action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _answer(self, msg: Message, action: str) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error:
            self.bus.send(Message.new_error(msg, self.error, "the stand-in authority failed"))
            return
        authorized, challenge = self.verdicts.get(action, (False, False))
        self.bus.send(Message.new_method_return(msg, "(bba{ss})", [[authorized, challenge, {}]]))
