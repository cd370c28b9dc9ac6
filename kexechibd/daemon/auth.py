"""Who may do what: root always; everyone else as polkit decides.

The polkit client speaks ``org.freedesktop.PolicyKit1.Authority`` directly
(``CheckAuthorization`` with a ``system-bus-name`` subject), the way logind
does, and lets polkit interact with the user only when the caller's message
carried ``ALLOW_INTERACTIVE_AUTHORIZATION``.  The action ids and their
defaults are in ``dbus/org.kexechib1.policy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType
from dbus_next.signature import Variant

from kexechibd import busutil
from kexechibd.errors import KexechibError

log = logging.getLogger("kexechibd.auth")

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
_POLKIT = busutil.Remote(POLKIT_NAME, POLKIT_PATH, POLKIT_INTERFACE)
# CheckAuthorizationFlags (polkit's org.freedesktop.PolicyKit1.Authority docs).
ALLOW_USER_INTERACTION = 0x1

ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"


class Action(enum.Enum):
    HIBERNATE = "org.kexechib1.hibernate"
    # Instead of HIBERNATE when the image goes anywhere but the configured
    # location (as logind asks hibernate-multiple-sessions instead of hibernate).
    HIBERNATE_OTHER_IMAGE = "org.kexechib1.hibernate-other-image"
    RESUME = "org.kexechib1.resume"
    JUMP_BACK = "org.kexechib1.jump-back"
    CANCEL = "org.kexechib1.cancel"
    INSPECT = "org.kexechib1.inspect"


class Verdict(enum.Enum):
    """polkit's answer, in logind's ``CanHibernate`` words."""

    YES = "yes"
    CHALLENGE = "challenge"
    NO = "no"


@dataclass(frozen=True)
class Caller:
    """Who sent a method call: the unique bus name, and whether the message
    allows interactive authorization."""

    sender: str
    interactive: bool = False


@dataclass(frozen=True)
class AuthResult:
    verdict: Verdict
    # Why, when it is not YES: shown to the caller in AccessDenied.
    detail: str = ""


class AccessDenied(KexechibError):
    """The standard D-Bus error for a refused call (as logind and every
    polkit-using service reply)."""

    name = "AccessDenied"

    @property
    def dbus_name(self) -> str:
        return ACCESS_DENIED


class Authorizer(Protocol):
    async def check(
        self, caller: Caller, action: Action, details: Mapping[str, str] | None = None
    ) -> AuthResult: ...


def denial(action: Action, result: AuthResult, caller: Caller) -> AccessDenied:
    """The AccessDenied a refused caller gets, saying what would help."""
    what = f"not authorized for {action.value}"
    if result.detail:
        return AccessDenied(f"{what}: {result.detail}")
    if result.verdict is Verdict.CHALLENGE and not caller.interactive:
        return AccessDenied(
            f"{what}: authentication is required; allow interactive authorization "
            "(kexechibctl does on a terminal) or ask an administrator"
        )
    if result.verdict is Verdict.CHALLENGE:
        return AccessDenied(f"{what}: authentication failed or was dismissed")
    return AccessDenied(f"{what} (polkit said no)")


class PolkitAuthorizer:
    """Root passes without asking; polkit decides for everyone else."""

    def __init__(
        self,
        bus: MessageBus,
        *,
        timeout: float = 25.0,
        interactive_timeout: float = 300.0,
    ) -> None:
        self._bus = bus
        self._timeout = timeout
        self._interactive_timeout = interactive_timeout
        self._ids = itertools.count(1)

    async def caller_uid(self, sender: str) -> int:
        reply = await self._bus.call(
            busutil.method_call(busutil.BUS_DAEMON, "GetConnectionUnixUser", "s", [sender])
        )
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            raise LookupError(f"the bus does not know the caller {sender}")
        uid = reply.body[0]
        assert isinstance(uid, int)
        return uid

    async def check(
        self, caller: Caller, action: Action, details: Mapping[str, str] | None = None
    ) -> AuthResult:
        try:
            uid = await self.caller_uid(caller.sender)
        except LookupError as e:
            return AuthResult(Verdict.NO, str(e))
        if uid == 0:
            return AuthResult(Verdict.YES)
        return await self._ask_polkit(caller, action, details or {})

    async def _ask_polkit(
        self, caller: Caller, action: Action, details: Mapping[str, str]
    ) -> AuthResult:
        cancellation_id = f"kexechibd-{next(self._ids)}"
        flags = ALLOW_USER_INTERACTION if caller.interactive else 0
        request = busutil.method_call(
            _POLKIT,
            "CheckAuthorization",
            "(sa{sv})sa{ss}us",
            [
                ["system-bus-name", {"name": Variant("s", caller.sender)}],
                action.value,
                dict(details),
                flags,
                cancellation_id,
            ],
        )
        timeout = self._interactive_timeout if caller.interactive else self._timeout
        try:
            reply = await asyncio.wait_for(self._bus.call(request), timeout)
        except TimeoutError:
            await self._cancel(cancellation_id)
            log.warning("polkit did not answer about %s within %.0f s", action.value, timeout)
            return AuthResult(Verdict.NO, f"polkit did not answer within {timeout:.0f} s")
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            error = getattr(reply, "error_name", None) or "no reply"
            text = reply.body[0] if reply is not None and reply.body else ""
            log.warning("polkit could not be asked about %s: %s %s", action.value, error, text)
            return AuthResult(
                Verdict.NO, f"polkit could not be asked ({error}); only root is authorized"
            )
        is_authorized, is_challenge, _details = reply.body[0]
        if is_authorized:
            return AuthResult(Verdict.YES)
        return AuthResult(Verdict.CHALLENGE if is_challenge else Verdict.NO)

    async def _cancel(self, cancellation_id: str) -> None:
        request = busutil.method_call(_POLKIT, "CancelCheckAuthorization", "s", [cancellation_id])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._bus.call(request), 5)
