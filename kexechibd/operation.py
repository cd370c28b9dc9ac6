"""The contract between the daemon and the engine: what an operation is
(its options, states, cancel token, observer), the role it runs in, what
``Inspect`` reports, the one support rule, and the ``Engine`` protocol.

The shell (``kexechibd.daemon``) owns the bus, authorization, the one-operation-
at-a-time rule and the properties; an ``Engine`` (``kexechibd.cycle.engine``)
does the work (prepare, jump, save, resume) through a ``Kernel``.  Long work
runs in worker threads; the engine reports through an ``Observer`` whose
methods may be called from any thread.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kexechibd import compression as policy
from kexechibd.errors import Cancelled, InvalidOption
from kexechibd.image.meta import ImageMode
from kexechibd.kernel.api import SupportReport


class Role(enum.Enum):
    """Which of the three kernels this daemon runs in (DESIGN §1)."""

    ORIGIN = "origin"  # A: the user's system
    SAVER = "saver"  # B: jumped into from A, saves A
    RESTORER = "restorer"  # C: a fresh boot that may resume an image


@dataclass(frozen=True)
class RoleDecision:
    """Which kernel this is and why (``kexechibd.role.detect_role``)."""

    role: Role
    reason: str
    # B only: A's re-entry point from the command line (None when missing).
    jump_back_entry: int | None = None
    # Set when the role is certain but the daemon cannot do its job in it.
    problem: str = ""
    # Origin only: why the image at the location, damaged, is not resumed.
    damaged_image: str = ""


class State(enum.Enum):
    IDLE = "idle"
    PREPARING = "preparing"
    LOADING = "loading"
    JUMPING = "jumping"
    SAVING = "saving"
    RESUMING = "resuming"
    FAILED = "failed"


# What B does after the save: the image's own mode vocabulary, one home.
Mode = ImageMode


def hibernate_refusal(report: SupportReport, mode: Mode) -> str:
    """Why this kernel cannot hibernate in ``mode`` ('' when it can): the one
    support rule, for ``CanHibernate``, the daemon's check before it starts
    and the engine's.  A checkpoint needs kexec jump only; hibernating to
    power off also needs staged loads (C streams the image in with them)."""
    if mode is Mode.CHECKPOINT and report.can_jump and report.kexec_jump is True:
        return ""
    if report.can_hibernate:
        return ""
    # Never '' when refused: kexec jump may be unknown with nothing missing.
    return report.summary or "whether this kernel has kexec jump (CONFIG_KEXEC_JUMP) is unknown"


class CancelToken:
    """Set by ``Cancel``; checked by the engine at every safe point before
    the point of no return."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._point_of_no_return = threading.Event()

    def cancel(self) -> bool:
        """Request cancellation; False when it is too late."""
        if self._point_of_no_return.is_set():
            return False
        self._event.set()
        return True

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled on request; nothing was changed")

    def commit(self) -> None:
        """Pass the point of no return: from now on ``cancel`` fails."""
        self.check()
        self._point_of_no_return.set()

    @property
    def committed(self) -> bool:
        return self._point_of_no_return.is_set()


def _option(options: Mapping[str, object], key: str, kind: type, default: object) -> object:
    value = options.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidOption(
            f"option {key!r} must be of type {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _refuse_unknown(options: Mapping[str, object], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InvalidOption(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")


@dataclass(frozen=True)
class HibernateOptions:
    mode: Mode = Mode.POWEROFF
    compression: str = policy.DEFAULT
    level: int = policy.CODECS[policy.DEFAULT].default
    image: str = ""

    KEYS = ("mode", "compression", "level", "image")

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> HibernateOptions:
        """Validate caller-supplied options (already unwrapped from variants)."""
        _refuse_unknown(options, cls.KEYS)
        mode = str(_option(options, "mode", str, Mode.POWEROFF.value))
        try:
            parsed_mode = Mode(mode)
        except ValueError:
            raise InvalidOption(f"mode must be 'poweroff' or 'checkpoint', not {mode!r}") from None
        compression = str(_option(options, "compression", str, policy.DEFAULT))
        given = _option(options, "level", int, 0) if "level" in options else None
        try:
            level = policy.resolve(compression, given if isinstance(given, int) else None)
        except policy.PolicyError as e:
            raise InvalidOption(str(e)) from None
        image = str(_option(options, "image", str, ""))
        if image and not Path(image).is_absolute():
            # A relative path would be the daemon's working directory's business.
            raise InvalidOption(f"the image must be an absolute path, not {image!r}")
        return cls(parsed_mode, compression, level, image)


@dataclass(frozen=True)
class ResumeOptions:
    load_only: bool = False
    force: bool = False

    KEYS = ("load-only", "force")

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> ResumeOptions:
        _refuse_unknown(options, cls.KEYS)
        load_only = _option(options, "load-only", bool, False)
        force = _option(options, "force", bool, False)
        return cls(bool(load_only), bool(force))


@dataclass(frozen=True)
class ImageDetails:
    """What a readable image says about itself (its header and index)."""

    state: str  # "committed" | "consumed" | "invalid"
    format_version: int
    kernel_release: str
    build_id: str
    machine_id: str
    boot_id: str
    created: float  # unix time of the jump
    mode: str
    compression: str
    data_pages: int
    zero_pages: int
    runs: int
    chunks: int
    stored_bytes: int
    digest: str


@dataclass(frozen=True)
class ImageReport:
    """``Engine.inspect``: the verdict on an image, never raised.  Exactly
    one of three: ``absent`` (a prepared file or partition that holds no
    image yet), ``error`` (it cannot be read or checked), ``details``."""

    path: str
    absent: bool = False
    error: str = ""
    details: ImageDetails | None = None

    @property
    def valid(self) -> bool:
        """Committed and intact: it can be resumed."""
        return self.details is not None and self.details.state == "committed"


class Observer(Protocol):
    """How the engine reports.  ``set_state``/``set_progress`` may be called
    from worker threads; the ``async`` hooks run on the event loop."""

    def set_state(self, state: State) -> None: ...

    def set_progress(self, fraction: float, phase: str) -> None: ...

    async def before_jump(self) -> None:
        """Last moment before the kernel freezes everything: emit
        ``PrepareForHibernate(true)`` and make sure it left."""
        ...

    async def after_return(self) -> None:
        """Back in A after a jump (resume or jump-back)."""
        ...


class Engine(Protocol):
    def assume_role(self, decision: RoleDecision) -> None:
        """The role the daemon decided at its start (``kexechibd.role``),
        before any operation: the engine acts in it and decides no other."""
        ...

    @property
    def backend(self) -> str: ...

    @property
    def image_location(self) -> str: ...

    def support(self) -> SupportReport: ...

    def location_problem(self) -> str:
        """Why the next boot would not find an image at the configured
        location ('' when it would): Hibernate to power off refuses then."""
        ...

    async def hibernate(
        self,
        options: HibernateOptions,
        observer: Observer,
        cancel: CancelToken,
        *,
        support: SupportReport | None = None,
    ) -> None:
        """Full cycle from A; returns after A has resumed (or jumped back).
        ``support``: the report the caller's check has just read (a kernel
        is asked once per Hibernate); None: the engine reads it."""
        ...

    async def resume(
        self, image: Path, options: ResumeOptions, observer: Observer, cancel: CancelToken
    ) -> None:
        """Verify and load ``image``, then jump; returns only on failure or with load-only."""
        ...

    async def save(self, observer: Observer, cancel: CancelToken) -> None:
        """Role B: save A and power off or jump back as the parameters say."""
        ...

    async def jump_back(self, observer: Observer) -> None:
        """Jump to the peer kernel; returns when this kernel is jumped back into."""
        ...

    def inspect(self, image: Path) -> ImageReport:
        """Metadata and verdict of an image (never raises for a bad image)."""
        ...
