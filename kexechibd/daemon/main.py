"""``kexechibd``: the process — arguments, configuration, logging, signals,
sd_notify, the bus connection — around the Manager and its D-Bus shell.

The engine is injected: ``main(runtime_factory=…)``.  The default factory
opens the kernel backend and the real engine, imported lazily so that this
module works (and can be tested with a stand-in engine) without them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import NameFlag, RequestNameReply
from dbus_next.errors import DBusError

from kexechibd import __version__, busutil, cmdline, sleepconf
from kexechibd import config as config_module
from kexechibd.busapi import BUS_NAME
from kexechibd.config import Config
from kexechibd.daemon import logs
from kexechibd.daemon.auth import PolkitAuthorizer
from kexechibd.daemon.manager import Manager
from kexechibd.daemon.notify import Notifier, StatusListener, status_text
from kexechibd.daemon.routing import admit
from kexechibd.daemon.service import ManagerService, hibernate_defaults
from kexechibd.errors import ConfigError, KexechibError
from kexechibd.kernel.abi import KernelError
from kexechibd.operation import Engine, ResumeOptions, Role
from kexechibd.role import detect_role, image_at

if TYPE_CHECKING:
    from kexechibd.cycle.engine import EngineSettings
    from kexechibd.image import ImageStore

log = logging.getLogger("kexechibd.main")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # sysexits.h EX_CONFIG; systemd shows it as "CONFIG"

# How long SIGTERM waits for a running operation to give up before we go.
STOP_GRACE = 20.0


@dataclass(frozen=True)
class Runtime:
    """What the daemon needs from the machine: the engine, and the two facts
    role detection reads from the kernel."""

    engine: Engine
    cmdline: str
    boot_id: str
    # Why kernel B's initramfs cannot serve (kexechibd.initramfs.check);
    # none: not checked (the machine model, and tests' stand-in engines).
    saver_problems: Callable[[], Sequence[str]] | None = None
    # kexechibd --initramfs: the image is reached through the resume record
    # (the engine's store), not through a filesystem.
    in_initramfs: bool = False


RuntimeFactory = Callable[..., Runtime]  # (config, image_store=None)

# Written by scripts/local-premount/kexechib after kexechibd --initramfs
# returned (nothing was jumped to); initramfs-tools moves /run into the booted
# system, where kexechib-resume.service finds it.
INITRAMFS_RAN = Path("/run/kexechib/initramfs-ran")

# How long --initramfs waits for the image's device (udev has settled and
# the root device has appeared by local-premount; a separate disk may lag).
INITRAMFS_DEVICE_WAIT = 10.0


def engine_settings(config: Config, image_store: ImageStore | None = None) -> EngineSettings:
    """What the engine takes from the configuration (and, in Debian's
    initramfs, the image store the resume record leads to)."""
    from kexechibd.cycle.engine import EngineSettings
    from kexechibd.initramfs.record import INSTALLED_INITRAMFS

    kernel, initrd = config.saver.files(os.uname().release)
    return EngineSettings(
        image_location=config.image.location,
        chunk_size=config.image.chunk_size,
        allow_plaintext=config.image.allow_plaintext,
        saver_kernel=kernel,
        saver_initrd=initrd,
        saver_cmdline=config.saver.cmdline,
        window_start=config.saver.window.start,
        window_size=config.saver.window.size,
        low_memory=config.saver.low_memory,
        image_store=image_store,
        next_initramfs=INSTALLED_INITRAMFS,
    )


def open_runtime(
    config: Config, image_store: ImageStore | None = None
) -> Runtime:  # pragma: no cover - needs the real backends
    # Imported here: the engine and the backends are heavy, and the D-Bus
    # shell is tested (and kexechibctl works) without them.
    from kexechibd.cycle.engine import KexecEngine
    from kexechibd.daemon.backend import open_kernel

    kernel = open_kernel(config)
    problems = None
    if config.daemon.backend == "linux" and image_store is None:
        from kexechibd.initramfs.check import check_saver

        saver_kernel, saver_initrd = config.saver.files(os.uname().release)

        def problems() -> Sequence[str]:
            return check_saver(saver_kernel, saver_initrd).problems

    return Runtime(
        KexecEngine(engine_settings(config, image_store), kernel),
        kernel.cmdline(),
        kernel.identity().boot_id,
        problems,
        in_initramfs=image_store is not None,
    )


def _settings_help() -> str:
    lines = []
    section = ""
    for s in config_module.SETTINGS:
        if s.section != section:
            section = s.section
            lines.append(f"  [{section}]")
        default = config_module.default_text(s.section, s.key) or '""'
        lines.append(f"    {s.key} = {s.allowed}   (default: {default})")
        lines.extend(
            textwrap.wrap(
                s.doc,
                72,
                initial_indent="        ",
                subsequent_indent="        ",
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


DESCRIPTION = """\
kexechibd hibernates this machine with kexec jump: the running kernel (A)
jumps into a small second kernel (B) that saves A's memory to an image and
powers off; a later boot (C) loads the image back and jumps into A, which
carries on.  The daemon offers this as org.kexechib1 on the system bus
(Hibernate, Resume, JumpBack, Cancel, CanHibernate, Inspect); kexechibctl(8)
and `systemctl hibernate` use it.
"""

EPILOG = f"""\
roles:
  At start the daemon decides which kernel it runs in:
    saver (B)     kexechib.role=save and kexec_jump_back_entry=0x... are on
                  the kernel command line; it saves A at once.
    restorer (C)  a valid image of an earlier boot is at [image] location;
                  it resumes it from Debian's initramfs with --initramfs
                  (scripts/local-premount/kexechib), before the root
                  filesystem is checked or mounted.
    origin (A)    otherwise: the user's system, which may Hibernate.

kernel command line:
  kexechib.role=save       this kernel is B: kexechibd saves A (it refuses
                           without kexec_jump_back_entry=, as A could not be
                           reached); kexechib-save.service runs only with it,
                           kexechib-resume.service only without it.
                           Hibernate puts it on B's command line.
  kexec_jump_back_entry=0xADDR
                           A's re-entry point, appended by the purgatory.
                           Without kexechib.role=save the kernel is taken for
                           an origin: some other kexec jump, not ours to save.
  kexechib.enable_kexec=1  allow real kexec_load, reboot and power-off calls,
                           as [kexec] enable_real_kexec = yes does.
                           Hibernate puts it on B's command line, so that B
                           can power off or jump back.
  noresume, kexechib.noresume
                           kexechibd --oneshot (kexechib-resume.service) does
                           not resume: it says so on the console and leaves
                           the image as it is.

configuration ({config_module.DEFAULT_PATH}, INI; every key is optional):
{_settings_help()}

environment:
  DBUS_SYSTEM_BUS_ADDRESS  the bus to use when --bus is not given
  KEXECHIB_PURGATORY       the purgatory object Hibernate loads ahead of
                           kernel B; it must name a file.  Without it the
                           first that exists of: the package's
                           data/purgatory.ro (a wheel),
                           /usr/lib/kexechibd/purgatory.ro (the Debian
                           package), the source tree's purgatory/purgatory.ro
  NOTIFY_SOCKET, WATCHDOG_USEC, JOURNAL_STREAM
                           set by systemd: readiness, watchdog, journal

signals:
  SIGTERM, SIGINT  cancel a running operation if it is still before its
                   point of no return, answer pending calls, release the
                   bus name and exit 0.

exit status:
  0   stopped on request (or --oneshot had nothing to do / succeeded, or
      --check: Hibernate would work)
  1   failure (the bus went away, the name was taken, --oneshot failed,
      --check: Hibernate would be refused)
  2   bad command-line usage
  78  invalid configuration file

files:
  {config_module.DEFAULT_PATH}      configuration
  /var/lib/kexechib/       state directory: the default image and model_dir
  /var/lib/kexechib/saver/initrd.img-RELEASE
                           kernel B's initramfs for each kernel release, as
                           `kexechibctl saver build` writes it; Hibernate is
                           refused while it is missing or stale
  /boot/vmlinuz-RELEASE    kernel B: by default the kernel A runs
  /etc/kernel/postinst.d/kexechibd, /etc/kernel/postrm.d/kexechibd
                           build (remove) it when a kernel is installed
                           (removed)
  /usr/lib/kexechibd/purgatory.ro
                           the purgatory, which runs between A's jump and B
  /usr/share/dbus-1/system.d/org.kexechib1.conf
                           bus policy
  /usr/share/dbus-1/system-services/org.kexechib1.service
                           bus activation
  /usr/share/dbus-1/interfaces/org.kexechib1.xml
                           the D-Bus interface
  /usr/share/polkit-1/actions/org.kexechib1.policy
                           polkit actions

systemd units:
  kexechibd.service        this daemon, started by bus activation (or at boot
                           when enabled)
  kexechib-resume.service  early boot: kexechibd --oneshot tells logind whether
                           it can hibernate; reports an image the initramfs
                           left in place; without the initramfs hook, resumes
                           an image on a raw partition before anything is
                           mounted read-write
  /usr/share/initramfs-tools/hooks/kexechibd,
  /usr/share/initramfs-tools/scripts/local-premount/kexechib
                           put python3, kexechibd and the resume record into
                           Debian's initramfs and resume from it (kexechibd
                           --initramfs); run `update-initramfs -u -k all`
                           after the image location changes
  kexechib-save.target, kexechib-save.service
                           what a systemd kernel B boots into
                           (systemd.unit=kexechib-save.target): kexechibd
                           --oneshot saves A, then powers off or jumps back;
                           the initramfs `kexechibctl saver build` writes
                           runs kexechibd --oneshot from its own /init
  systemd-hibernate.service.d/kexechib.conf
                           `systemctl hibernate`, logind and desktops
                           hibernate through kexechibctl hibernate --direct,
                           with the system-sleep hooks
  systemd-logind.service.d/kexechib.conf
                           logind offers hibernation without swap room for
                           the kernel's own image
  systemd-hybrid-sleep.service.d/kexechib.conf,
  systemd-suspend-then-hibernate.service.d/kexechib.conf
                           refused with a message: they would use the
                           kernel's own hibernation

logind (sleep.conf.d(5)):
  /usr/lib/systemd/sleep.conf.d/10-kexechib.conf
                           AllowHibernation=no until kexechibd has checked;
                           hybrid-sleep and suspend-then-hibernate refused
  /run/systemd/sleep.conf.d/10-kexechib.conf
                           written by kexechibd (linux backend) at boot
                           (--oneshot), at start, on CanHibernate and
                           Hibernate and after each operation: hides the
                           file above, AllowHibernation=yes exactly when
                           kexechibd's CanHibernate is not na, else no with
                           the reason
  /usr/lib/tmpfiles.d/kexechib.conf
                           makes /run/systemd/sleep.conf.d, which
                           kexechibd.service may write (ReadWritePaths=)

see also:
  kexechibctl(8), kexechibd.conf(5), busctl(1) (busctl introspect org.kexechib1 /org/kexechib1),
  systemd-hibernate.service(8), systemd-logind.service(8),
  /usr/share/doc/kexechibd/DESIGN.md, /usr/share/doc/kexechibd/README.md
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kexechibd",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"configuration file (default: {config_module.DEFAULT_PATH} if it exists)",
    )
    parser.add_argument(
        "--bus",
        metavar="ADDRESS",
        help="D-Bus address to serve on (default: $DBUS_SYSTEM_BUS_ADDRESS, else the system bus)",
    )
    parser.add_argument(
        "--oneshot",
        action="store_true",
        help="do the role's automatic work without D-Bus and exit: save A in kernel B, "
        "resume the image in a restorer boot, nothing in A",
    )
    parser.add_argument(
        "--initramfs",
        action="store_true",
        help="--oneshot in Debian's initramfs (scripts/local-premount/kexechib): find the "
        "image through the hook's resume record by block address, before any filesystem "
        "is mounted; no bus, no journal, messages on the console",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="decide the role and what this kernel supports, tell logind (the sleep.conf "
        "drop-in, linux backend), print whether Hibernate would work and exit: 0 yes, "
        "1 no (for package scripts and after a configuration change)",
    )
    parser.add_argument("--debug", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None, *, runtime_factory: RuntimeFactory = open_runtime
) -> int:
    args = parse_args(argv)
    logs.setup("debug" if args.debug else "info")
    try:
        config = config_module.load(args.config)
    except ConfigError as e:
        log.error("%s", e)
        return EXIT_CONFIG
    if not args.debug:
        logging.getLogger("kexechibd").setLevel(logs.LEVELS[config.daemon.log_level])
    image_store = None
    if args.initramfs:
        args.oneshot = True
        found = early_image_store(config)
        if found is None:
            return EXIT_OK
        image_store = found
    try:
        runtime = (
            runtime_factory(config, image_store=image_store)
            if image_store is not None
            else runtime_factory(config)
        )
    except ImportError as e:
        log.error("the engine or the kernel backends are missing from this installation: %s", e)
        return EXIT_FAILURE
    except (KexechibError, KernelError) as e:
        log.error("cannot open the %s backend: %s", config.daemon.backend, e)
        return EXIT_FAILURE
    # Only a daemon that drives this machine's kernel speaks for it to logind
    # (not the model's, nor a test's stand-in engine).
    # (nor one in the initramfs: the booted system's kexechib-resume.service does)
    speaks = runtime.engine.backend == "linux" and not runtime.in_initramfs
    sleep_conf = sleepconf.RUNTIME_PATH if speaks else None
    return asyncio.run(
        Daemon(
            runtime,
            args.bus,
            oneshot=args.oneshot,
            check=args.check,
            config=config,
            sleep_conf=sleep_conf,
        ).run()
    )


def early_image_store(config: Config) -> ImageStore | None:
    """``--initramfs``: the store the resume record leads to, or None (and a
    line on the console when there is something to say) when there is none
    to look at: the boot goes on."""
    from kexechibd.image.meta import ImageError
    from kexechibd.initramfs import record

    try:
        found = record.load()
        if found is None:
            log.info("no resume record in this initramfs: nothing to resume")
            return None
        if found.location != str(config.image.location):
            say(
                f"kexechib: this initramfs records the image at {found.location}, but the "
                f"configuration names {config.image.location}; looking at neither (run "
                f"`{record.UPDATE_COMMAND}`)"
            )
            return None
        return record.store(found, wait=INITRAMFS_DEVICE_WAIT)
    except ImageError as e:
        say(f"kexechib: cannot look for an image: {e}; booting normally")
        return None


def say(message: str) -> None:
    """A message for whoever watches the boot: on stdout, which
    kexechib-resume.service sends to the console and the journal (the
    logging handler writes to the journal alone)."""
    print(message, flush=True)
    log.warning("%s", message)


class Daemon:
    """One run of the daemon: decide the role, then serve the bus (or, with
    ``oneshot``, do the role's automatic work) until stopped."""

    def __init__(
        self,
        runtime: Runtime,
        bus_address: str | None,
        *,
        oneshot: bool = False,
        check: bool = False,
        notifier: Notifier | None = None,
        handle_signals: bool = True,
        config: Config | None = None,
        sleep_conf: Path | None = None,
        initramfs_ran: Path | None = None,
    ) -> None:
        self._runtime = runtime
        self._initramfs_ran = INITRAMFS_RAN if initramfs_ran is None else initramfs_ran
        self._sleep_conf = sleep_conf
        self._config = Config() if config is None else config
        self._bus_address = bus_address
        self._oneshot = oneshot
        self._check = check
        self._notifier = Notifier() if notifier is None else notifier
        self._handle_signals = handle_signals
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()  # set once the name is owned
        self.manager: Manager | None = None

    def stop(self) -> None:
        """What SIGTERM does."""
        self._stop.set()

    async def start_manager(self) -> Manager:
        engine = self._runtime.engine
        # In the initramfs the location's filesystem is not mounted: the
        # engine reaches the image by block address.
        image = await asyncio.to_thread(
            image_at,
            Path(engine.image_location),
            engine.inspect,
            by_block_address=self._runtime.in_initramfs,
        )
        decision = detect_role(self._runtime.cmdline, image, self._runtime.boot_id)
        engine.assume_role(decision)
        log.info(
            "role %s: %s",
            decision.role.value,
            decision.reason,
            extra={"KEXECHIB_ROLE": decision.role.value},
        )
        if decision.problem:
            log.error("%s", decision.problem)
        manager = Manager(engine, decision, saver_problems=self._runtime.saver_problems)
        self.manager = manager
        report = await manager.refresh_support()
        log.info("backend %s: %s", engine.backend, report.summary)
        if self._sleep_conf is not None and decision.role is not Role.SAVER:
            manager.add_availability_hook(self._tell_logind)
            await manager.hibernate_unavailable()
        return manager

    def _tell_logind(self, unavailable: str) -> None:
        """Keep logind's AllowHibernation= in step with our verdict
        (kexechibd.sleepconf, DESIGN §6)."""
        assert self._sleep_conf is not None
        try:
            changed = sleepconf.write_sleep_conf(
                sleepconf.sleep_conf_text(unavailable), self._sleep_conf
            )
        except OSError as e:
            log.warning("cannot tell logind whether it may hibernate (%s): %s", self._sleep_conf, e)
            return
        if changed:
            log.info(
                "logind may hibernate: %s",
                f"no ({unavailable})" if unavailable else "yes",
                extra={"KEXECHIB_SLEEP_CONF": str(self._sleep_conf)},
            )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if self._handle_signals else ()
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            manager = await self.start_manager()
            if self._check:
                return await self._run_check(manager)
            if self._oneshot:
                return await self._run_oneshot(manager)
            return await self._serve(manager)
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self._stop.set()

    async def _connect(self, manager: Manager) -> tuple[MessageBus, ManagerService] | None:
        """Connect, export the object and own the name (None: could not)."""
        try:
            bus = await busutil.connect(self._bus_address, admit=admit)
        except (OSError, DBusError, ValueError) as e:
            log.error("cannot connect to the bus: %s", e)
            return None
        service = ManagerService(
            bus,
            manager,
            PolkitAuthorizer(bus),
            hibernate_defaults=hibernate_defaults(self._config),
        )
        service.export()
        try:
            reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        except DBusError as e:
            log.error("cannot own %s: %s", BUS_NAME, e.text)
            await busutil.close(bus)
            return None
        if reply != RequestNameReply.PRIMARY_OWNER:
            log.error("%s is already owned by another process; is kexechibd running?", BUS_NAME)
            await busutil.close(bus)
            return None
        return bus, service

    async def _serve(self, manager: Manager) -> int:
        manager.add_listener(StatusListener(manager, self._notifier))
        stop = asyncio.create_task(self._stop.wait())
        # SIGTERM is honoured even while the bus is slow to answer.
        connecting = asyncio.create_task(self._connect(manager))
        await asyncio.wait({stop, connecting}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            log.info("stopped before serving")
            return EXIT_OK
        connected = connecting.result()
        if connected is None:
            stop.cancel()
            return EXIT_FAILURE
        bus, service = connected
        log.info("serving %s", BUS_NAME)
        self._notifier.ready(status_text(manager))
        self.ready.set()
        watchdog = asyncio.create_task(self._notifier.feed_watchdog())
        if manager.role is Role.SAVER and not manager.decision.problem:
            manager.start_save()

        disconnected = asyncio.create_task(busutil.wait_for_disconnect(bus))
        await asyncio.wait({stop, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        lost = disconnected.done()
        stop.cancel()
        self._notifier.stopping()
        await manager.shutdown(STOP_GRACE)
        watchdog.cancel()
        if lost:
            log.error("the bus connection was lost")
            return EXIT_FAILURE
        await service.drain(5.0)
        with contextlib.suppress(DBusError, OSError):
            await service.flush()
            await bus.release_name(BUS_NAME)
        service.unexport()
        await busutil.close(bus)
        disconnected.cancel()
        log.info("stopped")
        return EXIT_OK

    async def _run_check(self, manager: Manager) -> int:
        """``--check``: the verdict logind was just told (start_manager)."""
        reason = await manager.hibernate_unavailable()
        print(f"kexechibd cannot hibernate: {reason}" if reason else "kexechibd can hibernate")
        return EXIT_FAILURE if reason else EXIT_OK

    async def _run_oneshot(self, manager: Manager) -> int:
        engine = self._runtime.engine
        if manager.role is Role.ORIGIN:
            if manager.decision.damaged_image:
                # A normal boot follows; say so where the user looks.
                say(
                    f"kexechib: the image at {engine.image_location} cannot be resumed "
                    f"({manager.decision.damaged_image}); booting normally and leaving it in "
                    "place (kexechibctl image verify / discard)"
                )
            log.info("nothing to do: %s", manager.decision.reason)
            return EXIT_OK
        if (
            manager.role is Role.RESTORER
            and not self._runtime.in_initramfs
            and await asyncio.to_thread(self._initramfs_ran.exists)
        ):
            # The initramfs looked at the image before the root was mounted
            # and said why it did not resume it; now it is too late to.
            say(
                f"kexechib: the initramfs did not resume the image at {engine.image_location} "
                "(its message is above); it is left in place: reboot to try again, or "
                "`kexechibctl image discard` it"
            )
            return EXIT_OK
        if manager.role is Role.RESTORER and cmdline.noresume(self._runtime.cmdline):
            say(
                f"kexechib: noresume given; the image at {engine.image_location} is left in "
                "place: boot without it to resume, or `kexechibctl image discard` it"
            )
            return EXIT_OK
        if manager.role is Role.SAVER:
            manager.add_listener(logs.ProgressLog("save"))
            work = manager.save()
        else:
            manager.add_listener(logs.ProgressLog("resume"))
            work = manager.resume(Path(engine.image_location), ResumeOptions())
        task = asyncio.create_task(work)
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await manager.shutdown(STOP_GRACE)
        stop.cancel()
        try:
            await task
        except KexechibError as e:
            log.error("%s", e, extra={"KEXECHIB_ERROR": e.dbus_name})
            return EXIT_FAILURE
        return EXIT_OK
