"""ScriptedEngine — a TEST DOUBLE for the engine, not a model of anything.

It stands in for ``kexechibd.cycle.engine.KexecEngine`` (written in parallel)
until that lands, so that the D-Bus shell — bus, policy, authorization,
errors, properties, signals, the CLI — can be tested now.  It makes no
kexec call and touches no kernel: a test scripts what the next operation
does (block at a gate it controls, report progress and states from a
worker thread like the real engine, fail with any named error) and reads
back what the daemon asked of it.

Its "images" are small text files it invented (``make_image``); a real
image is the image format's business.  When the real engine lands, the
``engine`` fixture in ``conftest.py`` (the one place that builds this) is
switched to it on the machine model, and the tests that only need a
working engine keep running unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from kexechibd.errors import BadImage, NoPeer
from kexechibd.kernel.api import SupportReport
from kexechibd.operation import (
    CancelToken,
    HibernateOptions,
    ImageDetails,
    ImageReport,
    Observer,
    ResumeOptions,
    RoleDecision,
    State,
)

SUPPORTED = SupportReport(
    backend="model",
    kexec=True,
    cap_sys_boot=True,
    lockdown="none",
    kexec_load_disabled=False,
    kexec_jump=True,
    staged_load=True,
)
NO_KEXEC = SupportReport(
    backend="model",
    kexec=False,
    cap_sys_boot=True,
    lockdown="none",
    kexec_load_disabled=False,
    kexec_jump=None,
    staged_load=False,
)

IMAGE_MAGIC = "SCRIPTED-ENGINE-IMAGE"
CONSUMED_MAGIC = "SCRIPTED-ENGINE-CONSUMED"


def make_image(path: Path, boot_id: str = "boot-of-a", *, consumed: bool = False) -> Path:
    """Write a file this double accepts as an image made by ``boot_id``
    (private, as every image must be: kexechibd.image.pathcheck)."""
    magic = CONSUMED_MAGIC if consumed else IMAGE_MAGIC
    path.write_text(f"{magic} boot_id={boot_id}\n")
    path.chmod(0o600)
    return path


def scripted_details(state: str, boot_id: str) -> ImageDetails:
    """What a scripted image says about itself: its state and its boot."""
    return ImageDetails(
        state=state,
        format_version=1,
        kernel_release="",
        build_id="",
        machine_id="",
        boot_id=boot_id,
        created=0.0,
        mode="poweroff",
        compression="zstd",
        data_pages=4096,
        zero_pages=0,
        runs=1,
        chunks=1,
        stored_bytes=0,
        digest="",
    )


class ScriptedEngine:
    def __init__(
        self,
        *,
        backend: str = "model",
        image_location: str = "/nonexistent/kexechib/image",
        support: SupportReport = SUPPORTED,
    ) -> None:
        self._backend = backend
        self._image_location = image_location
        self.support_report = support
        # Script for the next operations:
        self.gate = threading.Event()  # operations wait here (in a worker thread) until set
        self.gate.set()
        self.jump_gate = threading.Event()  # hibernate waits here after the point of no return
        self.jump_gate.set()
        self.failure: BaseException | None = None  # raised before the point of no return
        self.jump_failure: BaseException | None = None  # raised by the "jump" (A still runs)
        self.peer = False  # JumpBack has a kernel to jump to
        self.location_trouble = ""  # what location_problem() says
        self.steps = 5  # progress reports per phase
        # What happened:
        self.calls: list[tuple[object, ...]] = []
        self.waiting = threading.Event()  # an operation reached the gate
        self.committed = threading.Event()  # an operation passed the point of no return
        self.released = threading.Event()  # the last operation left its worker thread

    @property
    def operations(self) -> list[tuple[object, ...]]:
        """The calls that would change something (everything but inspect)."""
        return [c for c in self.calls if c[0] != "inspect"]

    # --------------------------------------------------------- Engine protocol

    def assume_role(self, decision: RoleDecision) -> None:
        self.decision = decision

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def image_location(self) -> str:
        return self._image_location

    def support(self) -> SupportReport:
        return self.support_report

    def location_problem(self) -> str:
        return self.location_trouble

    async def hibernate(
        self,
        options: HibernateOptions,
        observer: Observer,
        cancel: CancelToken,
        *,
        support: SupportReport | None = None,
    ) -> None:
        self.calls.append(("hibernate", options))
        await self._work(observer, cancel, (State.PREPARING, State.LOADING))
        self._commit(cancel)
        await asyncio.to_thread(self.jump_gate.wait)
        await observer.before_jump()
        observer.set_state(State.JUMPING)
        if self.jump_failure is not None:
            # reboot(LINUX_REBOOT_CMD_KEXEC) refused: nothing froze, A runs on.
            raise self.jump_failure
        # Here A is frozen; B saves, powers off; C resumes A.  Nothing of
        # that is visible to the shell until A's reboot() returns.
        await observer.after_return()
        observer.set_state(State.RESUMING)

    async def resume(
        self, image: Path, options: ResumeOptions, observer: Observer, cancel: CancelToken
    ) -> None:
        self.calls.append(("resume", image, options))
        report = await asyncio.to_thread(self.inspect, image)
        if not report.valid:
            why = report.error or f"the image is {report.details and report.details.state}"
            raise BadImage(f"{why}; nothing was loaded")
        await self._work(observer, cancel, (State.LOADING,))
        if options.load_only:
            return
        self._commit(cancel)
        observer.set_state(State.JUMPING)
        # A real engine never returns from here: C is replaced by A.

    async def save(self, observer: Observer, cancel: CancelToken) -> None:
        self.calls.append(("save",))
        await self._work(observer, cancel, (State.SAVING,))
        self._commit(cancel)
        # A real engine powers off here (or jumps back in checkpoint mode).

    async def jump_back(self, observer: Observer) -> None:
        self.calls.append(("jump-back",))
        if not self.peer:
            raise NoPeer("there is no kernel to jump back to: hibernate in checkpoint mode first")
        await observer.before_jump()
        observer.set_state(State.JUMPING)
        await observer.after_return()

    def inspect(self, image: Path) -> ImageReport:
        """In the real engine's terms (KexecEngine.inspect)."""
        self.calls.append(("inspect", image))
        try:
            words = image.read_text(errors="replace").split()
        except FileNotFoundError:
            return ImageReport(str(image), error=f"no image at {image}")
        except OSError as e:
            return ImageReport(str(image), error=f"cannot open the image at {image}: {e.strerror}")
        fields = dict(w.partition("=")[::2] for w in words[1:])
        states = {IMAGE_MAGIC: "committed", CONSUMED_MAGIC: "consumed"}
        if words[:1] and words[0] in states:
            return ImageReport(
                str(image), details=scripted_details(states[words[0]], fields.get("boot_id", ""))
            )
        return ImageReport(str(image), error="not a kexechib image (bad magic at offset 0)")

    # --------------------------------------------------------- script

    async def _work(
        self, observer: Observer, cancel: CancelToken, states: tuple[State, ...]
    ) -> None:
        """Report states and progress from a worker thread, as the real
        engine does for its long steps; hold at the gate in the first phase."""
        self.released.clear()
        try:
            await asyncio.to_thread(self._steps, observer, cancel, states)
        finally:
            self.released.set()

    def _steps(self, observer: Observer, cancel: CancelToken, states: tuple[State, ...]) -> None:
        total = len(states) * self.steps
        done = 0
        for index, state in enumerate(states):
            observer.set_state(state)
            for step in range(self.steps):
                cancel.check()
                done += 1
                observer.set_progress(done / total, f"{state.value} {step + 1}/{self.steps}")
                if index == 0 and step == 0:
                    self._hold(cancel)
        if self.failure is not None:
            raise self.failure

    def _hold(self, cancel: CancelToken) -> None:
        self.waiting.set()
        while not self.gate.wait(0.01):
            cancel.check()
        cancel.check()

    def _commit(self, cancel: CancelToken) -> None:
        cancel.commit()
        self.committed.set()
