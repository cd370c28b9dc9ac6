"""``KexecEngine``: the work behind Hibernate, Resume, JumpBack and the saver.

Every blocking step runs in a worker thread (``asyncio.to_thread``) so the
bus stays responsive; the engine reports states and progress to an
``Observer``.  Before the point of no return every failure undoes what was
loaded; after it, there is nothing left to undo.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from kexechibd import encryption, mounts
from kexechibd.cycle import kexec_ops
from kexechibd.cycle.blocking import in_daemon_thread
from kexechibd.cycle.decisions import after_return, location_refusal, worst_case
from kexechibd.cycle.facts import KernelFacts
from kexechibd.cycle.loader import check_destinations, check_identity, describe, stream_load
from kexechibd.cycle.params import SaveParams, read_params
from kexechibd.cycle.prepare import SaverFiles, SaverLoad, load_saver, plan_saver_load
from kexechibd.cycle.saver import save_image
from kexechibd.cycle.window import Window, choose_window
from kexechibd.errors import BadImage, Failed, KernelRefused, KexechibError, NoPeer, NotSupported
from kexechibd.image import ImageError, ImageState, ImageStore, Pinned, open_store
from kexechibd.initramfs import record
from kexechibd.kernel import abi
from kexechibd.kernel.api import Kernel, SupportReport
from kexechibd.operation import (
    CancelToken,
    HibernateOptions,
    ImageDetails,
    ImageReport,
    Mode,
    Observer,
    ResumeOptions,
    Role,
    RoleDecision,
    State,
    hibernate_refusal,
)
from kexechibd.purgatory import default_purgatory_path
from kexechibd.role import detect_role, image_at

log = logging.getLogger("kexechibd.engine")


@dataclass(frozen=True)
class EngineSettings:
    """What the engine needs from the configuration."""

    image_location: Path
    chunk_size: int
    saver_kernel: Path
    saver_initrd: Path | None
    saver_cmdline: str
    window_start: int
    window_size: int
    low_memory: bool
    purgatory: Path | None = None
    # In Debian's initramfs (kexechibd --initramfs): the image at
    # image_location, reached by block address from the resume record,
    # since no filesystem is mounted (kexechibd/initramfs/record.py).
    image_store: ImageStore | None = None
    # Where the next boot's initramfs is, whose resume record Hibernate
    # checks ({release}: this kernel's); None: not checked.
    next_initramfs: str | None = None
    # [image] allow_plaintext: an image that is not encrypted on a system
    # whose storage is (kexechibd.encryption).
    allow_plaintext: bool = False


def _refused(exc: abi.KernelError) -> KernelRefused:
    return KernelRefused(str(exc))


class KexecEngine:
    def __init__(
        self, settings: EngineSettings, kernel: Kernel, *, role: RoleDecision | None = None
    ):
        self.settings = settings
        self.kernel = kernel
        self._decision = role
        self._peer_alive = False  # a checkpoint left B waiting to be re-entered

    # ------------------------------------------------------------ properties

    def assume_role(self, decision: RoleDecision) -> None:
        self._decision = decision

    @property
    def decision(self) -> RoleDecision:
        """The daemon's decision; without a daemon, the same function's, on
        first use (``kexechibd.role.detect_role``)."""
        if self._decision is None:
            image = image_at(
                self.settings.image_location,
                self.inspect,
                by_block_address=self.settings.image_store is not None,
            )
            self._decision = detect_role(
                self.kernel.cmdline(), image, self.kernel.identity().boot_id
            )
        return self._decision

    @property
    def role(self) -> Role:
        return self.decision.role

    @property
    def backend(self) -> str:
        return self.kernel.backend

    @property
    def image_location(self) -> str:
        return str(self.settings.image_location)

    def support(self) -> SupportReport:
        return self.kernel.probe()

    @property
    def _boots_this_machine(self) -> bool:
        """Whether the kernels are this machine's: its mounts and its boot
        order (kexechib-resume.service) matter.  The model's machine has
        neither; the host's would say nothing about it."""
        return self.kernel.backend == "linux"

    def location_problem(self) -> str:
        if not self._boots_this_machine:
            return ""
        location = self.settings.image_location
        return mounts.early_boot_problem_of(location) or self._plaintext_refusal(location)

    def _plaintext_refusal(self, location: Path) -> str:
        """Why the image of this system must not go to ``location`` in the
        clear ('' when it may); the model's machine has no disks."""
        if not self._boots_this_machine:
            return ""
        return encryption.plaintext_refusal_of(
            location, allow_plaintext=self.settings.allow_plaintext
        )

    def _store(self, image: Path) -> ImageStore:
        if self.settings.image_store is not None and image == self.settings.image_location:
            return self.settings.image_store
        return open_store(image)

    # ------------------------------------------------------------ A: hibernate

    async def hibernate(
        self,
        options: HibernateOptions,
        observer: Observer,
        cancel: CancelToken,
        *,
        support: SupportReport | None = None,
    ) -> None:
        if self.role is not Role.ORIGIN:
            raise NotSupported(
                f"Hibernate is for the running system; this is kernel {self.role.value}"
            )
        facts = await asyncio.to_thread(KernelFacts.read, self.kernel, support)
        refusal = hibernate_refusal(facts.support, options.mode)
        if refusal:
            raise NotSupported(f"this kernel cannot hibernate with kexechibd: {refusal}")
        observer.set_state(State.PREPARING)
        window = self._choose_window(facts)
        params = self._save_params(options, window, facts)
        location = Path(params.image_location)
        pinned = await asyncio.to_thread(self._check_location, location, window, facts)
        if options.mode is Mode.POWEROFF:
            await asyncio.to_thread(self._check_next_boot, location, facts.identity.release)
        if pinned is not None:
            params = dataclasses.replace(params, image_file=pinned.file, image_seal=pinned.seal)
        plan = await asyncio.to_thread(self._plan_saver, window, facts)
        cancel.check()
        observer.set_state(State.LOADING)
        try:
            await asyncio.to_thread(
                load_saver,
                self.kernel,
                plan,
                params,
                staged=facts.support.staged_load,
                checkpoint=cancel.check,
            )
        except abi.KernelError as exc:
            raise _refused(exc) from None
        try:
            cancel.commit()
        except KexechibError:
            await asyncio.to_thread(self._unload_quietly)
            raise
        observer.set_state(State.JUMPING)
        log.info("jumping to kernel B", extra={"KEXECHIB_HIBERNATE_ID": params.hibernate_id})
        await observer.before_jump()
        try:
            await in_daemon_thread(self.kernel.reboot_kexec)
        except abi.KernelError as exc:
            await asyncio.to_thread(self._unload_quietly)
            raise _refused(exc) from None
        observer.set_state(State.RESUMING)
        try:
            outcome = await asyncio.to_thread(self._after_return, params)
            log.info("back in A: %s", outcome, extra={"KEXECHIB_HIBERNATE_ID": params.hibernate_id})
        finally:
            await observer.after_return()

    def _check_location(self, location: Path, window: Window, facts: KernelFacts) -> Pinned | None:
        """Kernel B must be able to write the image, and a slot must hold
        the worst case (every page incompressible): after the jump, B could
        only jump back with "cannot" or "no room".  Returns what B writes
        by (None for a plain file, which B reaches by its path): a prepared
        file's block map, and a sealed file's seal, made now, as late as it
        can be, since A is frozen from the jump on and nothing can move the
        blocks before B writes."""
        refusal = self._plaintext_refusal(location)
        if refusal:
            raise NotSupported(refusal)
        try:
            pinned = open_store(location).pin_for_saver()
        except ImageError as exc:
            raise NotSupported(f"the image location cannot be used: {exc}") from None
        refusal = location_refusal(
            location,
            worst_case(facts.memory_map, window),
            capacity=pinned.capacity if pinned is not None else None,
            prepared_file=pinned is not None and pinned.file is not None,
            successors_share_files=self.kernel.successors_share_files,
        )
        if refusal:
            raise NotSupported(refusal)
        return pinned

    def _choose_window(self, facts: KernelFacts) -> Window:
        s = self.settings
        return choose_window(
            s.window_start, s.window_size, facts.memory_map, low_memory=s.low_memory
        )

    def _save_params(
        self, options: HibernateOptions, window: Window, facts: KernelFacts
    ) -> SaveParams:
        s = self.settings
        location = Path(options.image) if options.image else s.image_location
        return SaveParams(
            hibernate_id=uuid.uuid4().hex,
            mode=options.mode.value,
            image_location=str(location),
            compression=options.compression,
            level=options.level,
            chunk_size=s.chunk_size,
            origin=facts.identity,
            created=time.time(),
            window=window.spans,
            vmcoreinfo=facts.vmcoreinfo,
        )

    def _plan_saver(self, window: Window, facts: KernelFacts) -> SaverLoad:
        s = self.settings
        try:
            files = SaverFiles(
                kernel=s.saver_kernel.read_bytes(),
                initrd=s.saver_initrd.read_bytes() if s.saver_initrd else b"",
                extra_cmdline=s.saver_cmdline,
            )
        except OSError as exc:
            raise NotSupported(
                f"cannot read kernel B ({exc.filename}): {exc.strerror}; set [saver] kernel and "
                "initrd in the configuration"
            ) from None
        try:
            purgatory = (s.purgatory or default_purgatory_path()).read_bytes()
        except OSError as exc:
            raise NotSupported(f"cannot read the purgatory: {exc}") from None
        return plan_saver_load(
            files,
            window,
            facts.memory_map,
            vmcoreinfo=facts.vmcoreinfo,
            purgatory=purgatory,
            acpi_rsdp=facts.acpi_rsdp,
        )

    def _after_return(self, params: SaveParams) -> str:
        """Back in A after ``reboot_kexec`` returned 0: resumed from an image,
        or jumped back to by B after a checkpoint (or a failed save); what
        that means is ``decisions.after_return``'s."""
        store = open_store(params.image_location)
        try:
            with store.open() as reader:
                mine = reader.meta.hibernate_id == params.hibernate_id
                state: ImageState | None = reader.summary.state
        except (ImageError, OSError):
            mine, state = False, None  # missing or unreadable
        outcome = after_return(mine, state, Mode(params.mode))
        if outcome.withdraw_image:
            self._wipe(store)
        if outcome.unload:
            self._unload_quietly()
        self._peer_alive = outcome.peer_alive
        if outcome.failure:
            raise Failed(outcome.failure)
        return outcome.summary

    @staticmethod
    def _wipe(store: ImageStore) -> None:
        """The image is never to be resumed: none of the memory it holds may
        stay on the disk either (issue 16).  Timed, for the journal: the
        cost is a write of the image's size.  When the wipe fails (a disk
        error midway), the image is at least invalidated."""
        started = time.monotonic()
        try:
            wiped = store.wipe()
        except (ImageError, OSError) as exc:
            # At least make sure no boot resumes it (that may fail too, and
            # then the caller hears of it).
            log.error("could not wipe the image at %s: %s; invalidating it", store.path, exc)
            store.invalidate()
            return
        log.info(
            "image wiped: %d MiB of %s overwritten with zeros in %.2f s",
            wiped >> 20,
            store.path,
            time.monotonic() - started,
        )

    def _unload_quietly(self) -> None:
        kexec_ops.discard_staged(self.kernel)
        try:
            kexec_ops.unload(self.kernel)
        except abi.KernelError as exc:
            log.warning("could not unload the kexec image: %s", exc)

    # ------------------------------------------------------------ B: save

    async def save(self, observer: Observer, cancel: CancelToken) -> None:
        decision = self.decision
        if decision.role is not Role.SAVER:
            raise NotSupported("only kernel B saves images")
        entry = decision.jump_back_entry
        if entry is None:
            raise NotSupported(f"cannot save: {decision.problem}")
        observer.set_state(State.SAVING)
        # A's entry is known: every failure must end in a jump back, since
        # A is frozen and nothing else would ever wake it.
        try:
            params, page_map = await asyncio.to_thread(read_params, self.kernel.rootfs())
            summary = await asyncio.to_thread(
                save_image,
                self.kernel,
                params,
                page_map,
                entry,
                progress=observer.set_progress,
                checkpoint=cancel.check,
            )
        except Exception as exc:
            log.error("saving failed: %s; jumping back to A", exc)
            await self._jump_to(entry)
            raise
        log.info("image committed: %s", describe(summary))
        if params.mode == Mode.POWEROFF.value:
            observer.set_state(State.JUMPING)
            try:
                await in_daemon_thread(self.kernel.power_off)
            except abi.KernelError as exc:
                # A sees a committed image it did not ask to keep, and
                # withdraws it (``_after_return``).
                log.error("powering off failed: %s; jumping back to A", exc)
        await self._jump_to(entry)

    def _check_next_boot(self, location: Path, release: str) -> None:
        """The next boot must look for the image where B will write it:
        the resume record in its initramfs must describe this file (inode,
        size, extents) or partition (DESIGN §6.4).  A machine whose next
        boot has no initramfs file here (the lab boots its kernels from
        outside) is not checked."""
        if not self._boots_this_machine or self.settings.next_initramfs is None:
            return
        path = Path(self.settings.next_initramfs.format(release=release))
        try:
            problems = record.next_boot_problems(location, path)
        except ImageError as exc:
            raise NotSupported(f"cannot check what the next boot resumes: {exc}") from None
        if problems is None:
            log.info("not checking the next boot's resume record: no %s", path)
        elif problems:
            raise NotSupported("; ".join(problems))

    async def _jump_to(self, entry: int) -> None:
        """B → A with the jump-back helper; returns when A jumps to B again."""
        try:
            await asyncio.to_thread(kexec_ops.load_jump_back_helper, self.kernel, entry)
            await in_daemon_thread(self.kernel.reboot_kexec)
        except abi.KernelError as exc:
            raise _refused(exc) from None

    # ------------------------------------------------------------ C: resume

    async def resume(
        self, image: Path, options: ResumeOptions, observer: Observer, cancel: CancelToken
    ) -> None:
        if self.role is Role.SAVER:
            raise NotSupported("kernel B cannot resume images; it saves them")
        store = self._store(image)
        if self._boots_this_machine:
            # A real A: its disks must be as it left them (DESIGN §6.4).
            if store.through_filesystem:
                raise NotSupported(
                    f"cannot resume {image}: this boot reached the image file through its "
                    "filesystem, which it has therefore mounted, and mounting replays the "
                    "hibernated system's journal and cleans up its orphan files behind its "
                    "back; the image is resumed from the initramfs, before the root is "
                    "checked or mounted (initramfs-tools with kexechibd's hook: "
                    f"`{record.UPDATE_COMMAND}`). The image is left in place "
                    "(kexechibctl image discard)"
                )
            refusal = mounts.resume_refusal(await asyncio.to_thread(mounts.read_mounts))
            if refusal:
                raise NotSupported(f"cannot resume {image}: {refusal}")
        observer.set_state(State.LOADING)
        await asyncio.to_thread(self._load_image, store, options, observer, cancel)
        if options.load_only:
            return
        consumed = False
        try:
            cancel.commit()
            observer.set_state(State.JUMPING)
            await asyncio.to_thread(store.mark_consumed)
            consumed = True
            await in_daemon_thread(self.kernel.reboot_kexec)
        except Exception as exc:
            # Nothing was jumped to: the system must stay as it was, with
            # A's image neither loaded (a later reboot would enter A without
            # the image saying so) nor marked consumed.
            await asyncio.to_thread(self._undo_resume, store, consumed)
            if isinstance(exc, abi.KernelError):
                raise _refused(exc) from None
            if isinstance(exc, (ImageError, OSError)):
                raise Failed(
                    f"could not mark {store.path} as being resumed ({exc}); nothing was "
                    "jumped to and the image is still resumable"
                ) from None
            raise

    def _undo_resume(self, store: ImageStore, consumed: bool) -> None:
        self._unload_quietly()
        if consumed:
            try:
                store.mark_committed()
            except (ImageError, OSError) as exc:
                log.warning("could not mark %s resumable again: %s", store.path, exc)

    def _load_image(
        self, store: ImageStore, options: ResumeOptions, observer: Observer, cancel: CancelToken
    ) -> None:
        try:
            reader = store.open()
        except ImageError as exc:
            raise BadImage(str(exc)) from None
        except OSError as exc:
            raise BadImage(f"cannot read {store.path}: {exc.strerror or exc}") from None
        with reader:
            try:
                reader.require_resumable(force=options.force)
                check_identity(reader, self.kernel, force=options.force)
                pages = check_destinations(reader, self.kernel.memory_map())
            except ImageError as exc:
                raise BadImage(f"{store.path}: {exc}") from None
            report = stream_load(
                self.kernel,
                reader,
                total_pages=pages,
                progress=observer.set_progress,
                checkpoint=cancel.check,
            )
        log.info(
            "image loaded: %d calls, %d segments, %d pages",
            report.calls,
            report.segments,
            report.pages,
        )

    # ------------------------------------------------------------ jump back

    async def jump_back(self, observer: Observer) -> None:
        decision = self.decision
        if decision.role is Role.SAVER:
            entry = decision.jump_back_entry
            if entry is None:
                raise NoPeer(f"there is no kernel to jump back to: {decision.problem}")
            observer.set_state(State.JUMPING)
            await self._jump_to(entry)
            return
        if not (self._peer_alive and self.kernel.kexec_loaded()):
            raise NoPeer("there is no kernel to jump to: no checkpoint left kernel B waiting")
        observer.set_state(State.JUMPING)
        await observer.before_jump()
        try:
            await in_daemon_thread(self.kernel.reboot_kexec)
        except abi.KernelError as exc:
            raise _refused(exc) from None
        finally:
            await observer.after_return()

    # ------------------------------------------------------------ inspect

    def inspect(self, image: Path) -> ImageReport:
        store = self._store(image)
        try:
            if not store.exists():  # a prepared file or partition with no image yet
                return ImageReport(str(image), absent=True)
            with store.open() as reader:
                meta, summary = reader.meta, reader.summary
        except (ImageError, OSError) as exc:
            return ImageReport(str(image), error=str(exc))
        return ImageReport(
            str(image),
            details=ImageDetails(
                state=summary.state,
                format_version=summary.format_version,
                kernel_release=meta.kernel_release,
                build_id=meta.build_id,
                machine_id=meta.machine_id,
                boot_id=meta.boot_id,
                created=meta.created,
                mode=meta.mode,
                compression=summary.compression,
                data_pages=summary.data_pages,
                zero_pages=summary.zero_pages,
                runs=summary.runs,
                chunks=summary.chunks,
                stored_bytes=summary.stored_bytes,
                digest=summary.digest,
            ),
        )
