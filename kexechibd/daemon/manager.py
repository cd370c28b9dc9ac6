"""The daemon's core without D-Bus: the state machine behind ``/org/kexechib1``.

``Manager`` owns what the D-Bus object shows (the properties of DESIGN §5,
by their D-Bus names), runs one operation at a time (a second one gets
``Busy``), hands the engine a fresh ``CancelToken`` and an ``Observer`` per
operation, and turns the engine's reports into property changes for its
listeners (the D-Bus shell, the sd_notify status).  It knows nothing about
buses, callers or authorization: the shell authorizes first, then calls in.

Threading: every public method runs on the event loop.  The engine may
report from worker threads; those reports are queued onto the loop, in
order, and dropped once their operation has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Protocol

from kexechibd.errors import (
    BadImage,
    Busy,
    Cancelled,
    Failed,
    InvalidOption,
    KernelRefused,
    KexechibError,
    NotRunning,
    NotSupported,
    TooLate,
)
from kexechibd.image.meta import ImageError, ImageState, state_refusal
from kexechibd.kernel.abi import KernelError
from kexechibd.kernel.api import KernelGone, SupportReport
from kexechibd.operation import (
    CancelToken,
    Engine,
    HibernateOptions,
    ImageReport,
    Mode,
    ResumeOptions,
    Role,
    RoleDecision,
    State,
    hibernate_refusal,
)

log = logging.getLogger("kexechibd.manager")

# The D-Bus properties of org.kexechib1.Manager and their signatures.
PROPERTY_SIGNATURES: dict[str, str] = {
    "State": "s",
    "Role": "s",
    "Backend": "s",
    "Support": "s",
    "LastError": "s",
    "ImageLocation": "s",
    "Progress": "d",
}

# Progress is published in steps of at least this much (plus 0 and 1), so a
# chatty engine cannot flood the bus; every published value is signalled.
PROGRESS_STEP = 0.01


class ManagerListener(Protocol):
    def properties_changed(self, changed: Mapping[str, object]) -> None:
        """Some properties have new values (only those that changed)."""
        ...

    async def prepare_for_hibernate(self, start: bool) -> None:
        """Announce ``PrepareForHibernate(start)``; return once it has left."""
        ...


def end_with_the_kernel(gone: KernelGone) -> NoReturn:
    """The kernel under this process kexec'd away for good or powered off
    (only the machine model lets a process see that): nothing may happen
    after it — no reply, no signal, no state — so the process ends now."""
    log.info("the kernel under this process is gone (%s); the process ends with it", gone)
    logging.shutdown()
    os._exit(0)


def as_daemon_error(exc: BaseException) -> KexechibError:
    """What a caller is told about ``exc`` (the one place errors of the
    layers below become D-Bus errors): our named errors pass unchanged, the
    image library's become ``BadImage``, a kernel's refusal becomes
    ``KernelRefused`` with the kernel's own explanation, anything else is
    ``Failed`` (the traceback goes to the log)."""
    if isinstance(exc, KexechibError):
        return exc
    if isinstance(exc, ImageError):
        return BadImage(str(exc))
    if isinstance(exc, KernelError):
        return KernelRefused(str(exc))
    if isinstance(exc, asyncio.CancelledError):
        return Cancelled("the daemon stopped before the operation finished; nothing was changed")
    return Failed(f"internal error ({type(exc).__name__}: {exc}); the daemon's log has details")


def unexpected(exc: BaseException) -> bool:
    """Whether ``exc`` is a fault of ours, whose traceback belongs in the
    log, rather than an error the caller is told about by name."""
    return isinstance(as_daemon_error(exc), Failed) and not isinstance(exc, KexechibError)


def describe(error: KexechibError) -> str:
    """The ``LastError`` text: D-Bus error name, then the message."""
    return f"{error.dbus_name}: {error}"


def resume_refusal(report: ImageReport, *, force: bool) -> str:
    """Why ``Resume`` refuses the image ``Engine.inspect`` described, before
    anything is loaded ('' when it may go on): the reader's own rule
    (``state_refusal``), told before the operation starts."""
    if report.absent:
        return f"no image at {report.path}"
    if report.error or report.details is None:
        return report.error or f"the image at {report.path} cannot be read"
    refusal = state_refusal(ImageState(report.details.state), force=force)
    return f"{report.path}: {refusal}" if refusal else ""


@dataclass(eq=False)
class Operation:
    kind: str
    owner: str
    # The State it starts in; shown once it has started (``Manager._begin``).
    initial: State = State.IDLE
    token: CancelToken = field(default_factory=CancelToken)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # State, Progress and LastError say this operation runs.
    started: bool = False
    # PrepareForHibernate(true) went out and no matching false yet.
    announced: bool = False


class _OperationObserver:
    """The ``Observer`` one operation's engine call reports to."""

    def __init__(self, manager: Manager, op: Operation) -> None:
        self._manager = manager
        self._op = op

    def set_state(self, state: State) -> None:
        self._manager._from_engine(self._op, lambda: self._manager._engine_state(state))

    def set_progress(self, fraction: float, phase: str) -> None:
        self._manager._from_engine(
            self._op, lambda: self._manager._engine_progress(fraction, phase)
        )

    async def before_jump(self) -> None:
        await self._manager._announce(self._op, True)

    async def after_return(self) -> None:
        await self._manager._announce(self._op, False)


class Manager:
    def __init__(
        self,
        engine: Engine,
        decision: RoleDecision,
        *,
        saver_problems: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self._engine = engine
        self._decision = decision
        self._saver_problems = saver_problems
        self._listeners: list[ManagerListener] = []
        self._op: Operation | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._phase = ""
        self._support: SupportReport | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._availability_hooks: list[Callable[[str], None]] = []
        self._props: dict[str, object] = {
            "State": State.IDLE.value,
            "Role": decision.role.value,
            "Backend": engine.backend,
            "Support": "",
            "LastError": describe(NotSupported(decision.problem)) if decision.problem else "",
            "ImageLocation": engine.image_location,
            "Progress": 0.0,
        }
        if decision.problem:
            self._props["State"] = State.FAILED.value

    # ------------------------------------------------------------ reading

    @property
    def role(self) -> Role:
        return self._decision.role

    @property
    def decision(self) -> RoleDecision:
        return self._decision

    @property
    def state(self) -> State:
        return State(self._props["State"])

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def properties(self) -> dict[str, object]:
        return dict(self._props)

    def get(self, name: str) -> object:
        return self._props[name]

    @property
    def operation(self) -> Operation | None:
        """The running operation, if any (``owner`` is who started it)."""
        return self._op

    def add_listener(self, listener: ManagerListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ManagerListener) -> None:
        self._listeners.remove(listener)

    # ------------------------------------------------------------ support

    async def refresh_support(self) -> SupportReport:
        """Ask the engine what the kernel supports (off the loop: it reads
        /proc and /sys) and publish the summary as ``Support``."""
        report = await asyncio.to_thread(self._engine.support)
        self._support = report
        self._publish({"Support": report.summary})
        return report

    def add_availability_hook(self, hook: Callable[[str], None]) -> None:
        """Call ``hook`` with the reason behind ``na`` ('' for none) each time
        it is decided anew: on ``CanHibernate``, ``Hibernate`` and after every
        operation (how logind learns it: ``kexechibd.sleepconf``)."""
        self._availability_hooks.append(hook)

    async def hibernate_unavailable(self, *, checkpoint: bool = False) -> str:
        """Why ``Hibernate`` cannot work here ('' when it can): the reason
        behind ``CanHibernate`` = ``na``.  A ``checkpoint`` needs kexec jump
        only, as the engine decides: staged loads are for resuming in C, and
        the image need not be where the next boot looks."""
        reason, report = await self._poweroff_unavailable()
        for hook in list(self._availability_hooks):
            try:
                hook(reason)
            except Exception:
                log.exception("telling whether hibernation is available failed")
        if checkpoint and report is not None and not hibernate_refusal(report, Mode.CHECKPOINT):
            return ""
        return reason

    async def _poweroff_unavailable(self) -> tuple[str, SupportReport | None]:
        if self._decision.problem:
            return self._decision.problem, None
        if self.role is Role.SAVER:
            return "this is kernel B (the saver); hibernate from the origin system", None
        if self.role is Role.RESTORER:
            return (
                f"a valid image of an earlier boot is waiting at {self._engine.image_location}; "
                "resume it (kexechibctl resume) or discard it first, since hibernating "
                "now would overwrite it"
            ), None
        if self._saver_problems is not None:
            # Before anything is loaded: B would boot without a saver, or
            # with one that does not match this kexechibd or kernel.
            problems = await asyncio.to_thread(self._saver_problems)
            if problems:
                return "; ".join(problems), None
        report = await self.refresh_support()
        refusal = hibernate_refusal(report, Mode.POWEROFF)
        if refusal:
            return f"{refusal}; see `kexechibctl status`", report
        problem = await asyncio.to_thread(self._engine.location_problem)
        return problem, report

    # ------------------------------------------------------------ operations

    async def hibernate(self, options: HibernateOptions, *, owner: str = "") -> None:
        """Full cycle from A.  Returns after A has resumed; raises a named
        error while A still runs."""
        self.check_free()
        elsewhere = options.image and Path(options.image) != Path(self._engine.image_location)
        if elsewhere and options.mode is Mode.POWEROFF:
            raise InvalidOption(
                f"the next boot resumes only the image at {self._engine.image_location} "
                f"([image] location), so it would never resume one at {options.image}; "
                "hibernate to the configured image, or use mode=checkpoint to save a "
                "checkpoint elsewhere"
            )
        reason = await self.hibernate_unavailable(checkpoint=options.mode is Mode.CHECKPOINT)
        if reason:
            raise NotSupported(f"cannot hibernate: {reason}")
        # The check above just read what the kernel supports: the engine
        # plans from that report rather than asking the kernel again.
        support = self._support
        await self._run(
            "hibernate",
            owner,
            State.PREPARING,
            lambda observer, token: self._engine.hibernate(
                options, observer, token, support=support
            ),
        )

    async def resume(self, image: Path, options: ResumeOptions, *, owner: str = "") -> None:
        """Verify and load ``image``, then jump; returns only on failure or
        with ``load-only``.  An image that cannot be resumed is refused
        before the operation starts (State and LastError stay)."""
        if self.role is Role.SAVER:
            raise NotSupported("cannot resume in kernel B (the saver); boot normally to resume")

        async def work(observer: _OperationObserver, token: CancelToken) -> None:
            refusal = resume_refusal(await self.inspect(image), force=options.force)
            if refusal:
                raise BadImage(f"{refusal}; nothing was loaded")
            await self._engine.resume(image, options, observer, token)

        await self._run("resume", owner, State.LOADING, work, eager=False)

    async def save(self, *, owner: str = "") -> None:
        """Role B: save A, then power off or jump back."""
        if self.role is not Role.SAVER:
            raise NotSupported(f"only kernel B saves an image; this is the {self.role.value}")
        if self._decision.problem:
            raise NotSupported(f"cannot save: {self._decision.problem}")
        await self._run("save", owner, State.SAVING, self._engine.save)

    async def jump_back(self, *, owner: str = "") -> None:
        """Jump to the peer kernel; returns when this kernel is jumped back
        into.  With no peer, ``NoPeer`` before the operation starts."""
        await self._run(
            "jump-back",
            owner,
            State.JUMPING,
            lambda observer, token: self._engine.jump_back(observer),
            eager=False,
        )

    async def inspect(self, image: Path) -> ImageReport:
        """Metadata and verdict of ``image``; not an operation, so it also
        answers while one runs."""
        return await asyncio.to_thread(self._engine.inspect, image)

    def start_save(self) -> asyncio.Task[None]:
        """Run the saver in the background (role B does this at start)."""
        task = asyncio.get_running_loop().create_task(self._save_in_background())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _save_in_background(self) -> None:
        try:
            await self.save()
        except KexechibError as e:
            log.error("saving A failed: %s", e, extra={"KEXECHIB_ERROR": e.dbus_name})

    def cancel(self) -> Operation:
        """Request cancellation of the running operation; its caller then
        gets ``Cancelled``.  Raises ``NotRunning`` or ``TooLate``."""
        op = self._op
        if op is None:
            raise NotRunning("no operation is running; nothing to cancel")
        if not op.token.cancel():
            raise TooLate(
                f"the {op.kind} has passed the point of no return and can no longer be cancelled"
            )
        log.info("cancel requested for %s", op.kind, extra={"KEXECHIB_OPERATION": op.kind})
        return op

    async def shutdown(self, grace: float) -> None:
        """Stop: cancel what can be cancelled and wait (up to ``grace``
        seconds) for the running operation to end."""
        op = self._op
        if op is None:
            return
        if not op.token.cancel():
            log.warning("stopping: the %s is past the point of no return; waiting for it", op.kind)
        try:
            await asyncio.wait_for(op.done.wait(), grace)
        except TimeoutError:
            log.error("stopping: the %s did not end within %.0f s", op.kind, grace)

    # ------------------------------------------------------------ internals

    def check_free(self) -> None:
        """Raise ``Busy`` while an operation runs."""
        if self._op is not None:
            who = f" (started by {self._op.owner})" if self._op.owner else ""
            raise Busy(
                f"a {self._op.kind} is already running{who}; wait for it to finish "
                "or cancel it (kexechibctl cancel)"
            )

    async def _run(
        self,
        kind: str,
        owner: str,
        initial: State,
        work: Callable[[_OperationObserver, CancelToken], Awaitable[None]],
        *,
        eager: bool = True,
    ) -> None:
        """Run ``work`` as the one operation.  ``eager``: it has started at
        once; otherwise only at the engine's first report, so that what the
        engine (or ``work``) refuses before reporting is a refusal that
        leaves State and LastError as they were."""
        self.check_free()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        op = Operation(kind, owner, initial)
        self._op = op
        self._phase = ""
        extra = {"KEXECHIB_OPERATION": kind, "KEXECHIB_CALLER": owner or "daemon"}
        if eager:
            self._begin(op)
        try:
            await work(_OperationObserver(self, op), op.token)
        except KernelGone as gone:
            end_with_the_kernel(gone)
        except BaseException as exc:
            error = as_daemon_error(exc)
            if not op.started and not unexpected(exc):
                log.info("%s refused: %s", kind, error, extra=extra)
                self._op = None
                op.done.set()
                raise
            if unexpected(exc):
                log.error("%s failed unexpectedly", kind, exc_info=exc, extra=extra)
            else:
                log.warning(
                    "%s failed: %s", kind, error, extra={**extra, "KEXECHIB_ERROR": error.dbus_name}
                )
            await self._end(op, error)
            if isinstance(exc, asyncio.CancelledError) or error is exc:
                raise
            raise error from exc
        else:
            log.info("%s finished", kind, extra=extra)
            await self._end(op, None)

    def _begin(self, op: Operation) -> None:
        """``op`` has started: say so (once)."""
        if op.started or self._op is not op:
            return
        op.started = True
        owner = op.owner
        extra = {"KEXECHIB_OPERATION": op.kind, "KEXECHIB_CALLER": owner or "daemon"}
        log.info("%s started%s", op.kind, f" by {owner}" if owner else "", extra=extra)
        self._publish({"State": op.initial.value, "Progress": 0.0, "LastError": ""})

    async def _end(self, op: Operation, error: KexechibError | None) -> None:
        if op.announced:
            # logind's convention: false after resume *or failure*.
            await self._announce(op, False)
        self._op = None
        if error is None:
            self._publish({"State": State.IDLE.value, "Progress": 1.0, "LastError": ""})
        elif isinstance(error, Cancelled):
            self._publish({"State": State.IDLE.value, "LastError": describe(error)})
        else:
            self._publish({"State": State.FAILED.value, "LastError": describe(error)})
        op.done.set()
        if self._availability_hooks:
            # What the kernel or the image allow may have changed with it.
            try:
                await self.hibernate_unavailable()
            except Exception:
                log.exception("could not check again whether hibernation is available")

    def _from_engine(self, op: Operation, apply: Callable[[], None]) -> None:
        """Run ``apply`` on the loop if ``op`` is still the running operation."""

        def guarded() -> None:
            if self._op is op:
                self._begin(op)
                apply()

        if threading.get_ident() == self._loop_thread:
            guarded()
            return
        loop = self._loop
        if loop is None:
            return
        # A closed loop means the daemon is gone: nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(guarded)

    def _engine_state(self, state: State) -> None:
        if state.value != self._props["State"]:
            log.info("state %s", state.value, extra={"KEXECHIB_STATE": state.value})
        self._publish({"State": state.value})

    def _engine_progress(self, fraction: float, phase: str) -> None:
        if math.isnan(fraction):
            return
        fraction = min(1.0, max(0.0, fraction))
        if phase != self._phase:
            self._phase = phase
            log.debug("phase %s", phase, extra={"KEXECHIB_PHASE": phase})
        last = self._props["Progress"]
        assert isinstance(last, float)
        if fraction in (0.0, 1.0) or abs(fraction - last) >= PROGRESS_STEP:
            self._publish({"Progress": fraction})

    async def _announce(self, op: Operation, start: bool) -> None:
        if self._op is not op or op.announced == start:
            return
        self._begin(op)
        op.announced = start
        for listener in list(self._listeners):
            await listener.prepare_for_hibernate(start)

    def _publish(self, values: Mapping[str, object]) -> None:
        changed = {k: v for k, v in values.items() if self._props[k] != v}
        if not changed:
            return
        self._props.update(changed)
        for listener in list(self._listeners):
            try:
                listener.properties_changed(changed)
            except Exception:
                log.exception("a property listener failed")
