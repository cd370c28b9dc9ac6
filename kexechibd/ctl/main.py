"""``kexechibctl``: control kexechibd over D-Bus, and image tools.

Long operations (hibernate, resume, jump-back) wait for the daemon's reply
— for hibernate that is after this system has resumed — and show progress
from the daemon's ``PropertiesChanged``.  Ctrl-C asks the daemon to cancel
(the caller who started an operation may always cancel it); a second
Ctrl-C leaves without waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from dbus_next.signature import Variant

from kexechibd import __version__
from kexechibd import compression as policy
from kexechibd.ctl import exits, humane, logind, offline, saver
from kexechibd.ctl.client import DaemonError, ManagerClient
from kexechibd.ctl.progress import Measure, display_for
from kexechibd.operation import Mode

STATUS_ORDER = ("State", "Progress", "LastError", "Role", "Backend", "Support", "ImageLocation")

EPILOG = f"""\
{exits.describe()}

--bus, --no-ask-password and --quiet may come anywhere on the command line.

Authorization: root may do everything; for other users polkit decides
(org.kexechib1.hibernate, .resume, .jump-back, .cancel, .inspect).  On a
terminal kexechibctl lets polkit ask for a password (--no-ask-password
prevents that).
"""


HIBERNATE_DESCRIPTION = """\
Hibernate this system and wait until it has resumed.

By default kexechibctl asks systemd-logind (HibernateWithFlags), as a desktop
does: logind checks polkit, other users' sessions and block inhibitors (for
root too), sends PrepareForSleep, and starts systemd-hibernate.service, which
runs `kexechibctl hibernate --direct` and the system-sleep hooks.  Meanwhile
kexechibctl shows kexechibd's progress; when logind sends PrepareForSleep(false)
it reports kexechibd's outcome.

--direct calls kexechibd's Hibernate itself: no inhibitors, no PrepareForSleep,
no sleep hooks.  --mode, --compression, --level and --image are kexechibd's
own options, which logind's Hibernate cannot carry: they need --direct, and
are refused without it rather than silently skipping logind's checks.
"""

DAEMON_ONLY_OPTIONS = ("mode", "compression", "level", "image")


def _global_options(parser: argparse.ArgumentParser, *, on_a_command: bool) -> None:
    """Options that apply to every command.  A command's parser takes them
    too (``kexechibctl status --bus ADDR``); there they default to nothing at
    all, so that they do not undo the same option given before the command."""
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if on_a_command else {}
    parser.add_argument(
        "--bus",
        metavar="ADDRESS",
        help="D-Bus address (default: $DBUS_SYSTEM_BUS_ADDRESS, else the system bus)",
        **unset,
    )
    parser.add_argument(
        "--no-ask-password",
        action="store_true",
        help="never let polkit ask for a password",
        **unset,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="show no progress", **unset)


def _on_every_command(parser: argparse.ArgumentParser) -> None:
    done: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if id(sub) not in done:  # an alias names the same parser
                    done.add(id(sub))
                    _global_options(sub, on_a_command=True)
                    _on_every_command(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kexechibctl",
        description="Control kexechibd, the kexec-jump hibernation daemon.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, on_a_command=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("status", help="show the daemon's state and what this kernel supports")
    commands.add_parser("can-hibernate", help="print yes, no, challenge or na (as logind's)")
    p = commands.add_parser(
        "hibernate",
        help="hibernate through logind; returns after the system has resumed",
        description=HIBERNATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--direct",
        action="store_true",
        help="ask kexechibd itself, not logind (what systemd-hibernate.service does)",
    )
    p.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        help="after saving: power off (default) or jump back (a checkpoint)",
    )
    p.add_argument("--compression", choices=policy.NAMES, help="image compression")
    p.add_argument("--level", type=int, help=f"compression level: {policy.summary()}")
    p.add_argument(
        "--image",
        metavar="PATH",
        help="where to write the image: to power off, only the configured one (the next boot "
        "resumes nothing else); a checkpoint may go elsewhere, which needs an administrator",
    )
    p = commands.add_parser("resume", help="verify and load an image, then jump into it")
    p.add_argument("image", help="the image (an empty string: the configured one)")
    p.add_argument("--load-only", action="store_true", help="load it but do not jump")
    p.add_argument("--force", action="store_true", help="resume even where the daemon would refuse")
    commands.add_parser("jump-back", help="jump to the other running kernel")
    commands.add_parser("cancel", help="cancel the running hibernate or resume")
    p = commands.add_parser("inspect", help="ask the daemon about an image")
    p.add_argument("image", nargs="?", default="", help="default: the configured image")
    offline.add_parser(commands)
    saver.add_parser(commands)
    _on_every_command(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`kexechibctl status | head -3`): what it did
        # not read, nobody wants, and a traceback would only go to a
        # terminal that did not ask.  Python flushes stdout again at exit:
        # let that go nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return exits.CLOSED_PIPE
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "hibernate" and not args.direct:
        given = [f"--{o}" for o in DAEMON_ONLY_OPTIONS if getattr(args, o) is not None]
        if given:
            parser.error(
                f"{', '.join(given)}: kexechibd's own options, which logind's Hibernate "
                "cannot carry; add --direct to ask kexechibd itself (without logind's "
                "inhibitor checks, PrepareForSleep and sleep hooks)"
            )
    if args.command == "image":
        return offline.run(args)
    if args.command == "saver":
        return saver.run(args)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return exits.INTERRUPTED


def _fail(error: DaemonError) -> int:
    if error.not_running:
        print(
            "kexechibctl: kexechibd is not running (nobody owns org.kexechib1 on this bus); "
            "start it with `systemctl start kexechibd`",
            file=sys.stderr,
        )
    else:
        print(f"kexechibctl: {error.message} [{error.name}]", file=sys.stderr)
    return exits.FAILURE


async def _run(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty() and not args.no_ask_password
    try:
        client = await ManagerClient.connect(args.bus, interactive=interactive)
    except (OSError, ValueError) as e:
        print(f"kexechibctl: cannot connect to the bus: {e}", file=sys.stderr)
        return exits.FAILURE
    try:
        return await COMMANDS[args.command](client, args)
    except DaemonError as e:
        return _fail(e)
    finally:
        await client.close()


async def _status(client: ManagerClient, args: argparse.Namespace) -> int:
    props = await client.properties()
    for name in STATUS_ORDER:
        value = props.get(name, "")
        if name == "Progress" and isinstance(value, float):
            value = f"{value:.0%}"
        print(f"{name + ':':15} {value}")
    if props.get("Backend") == "linux":  # the model boots no kernel B
        print(f"{'Saver:':15} {saver.summary()}")
        print(f"{'Resume at boot:':15} {saver.resume_summary()}")
        print(f"{'Image at rest:':15} {saver.protection_summary()}")
    return exits.OK


async def _can_hibernate(client: ManagerClient, args: argparse.Namespace) -> int:
    (answer,) = await client.call("CanHibernate")
    print(answer)
    return exits.OK if answer in ("yes", "challenge") else exits.FAILURE


def _options(args: argparse.Namespace) -> dict[str, Variant]:
    options: dict[str, Variant] = {}
    if getattr(args, "mode", None):
        options["mode"] = Variant("s", args.mode)
    if getattr(args, "compression", None):
        options["compression"] = Variant("s", args.compression)
    if getattr(args, "level", None) is not None:
        options["level"] = Variant("i", args.level)
    if getattr(args, "image", None) and args.command == "hibernate":
        options["image"] = Variant("s", args.image)
    if getattr(args, "load_only", False):
        options["load-only"] = Variant("b", True)
    if getattr(args, "force", False):
        options["force"] = Variant("b", True)
    return options


async def _long_call(
    client: ManagerClient,
    args: argparse.Namespace,
    operation: str,
    member: str,
    signature: str = "",
    body: Sequence[object] = (),
) -> int:
    """A call that may take minutes: progress while waiting, Ctrl-C cancels."""
    display, current = await _progress(client, args, operation)
    try:
        if not await _interruptible(client, display, client.call(member, signature, body)):
            return exits.INTERRUPTED
    except DaemonError:
        display.close()
        raise
    display.update(str(current["State"] or "idle"), 1.0)
    display.close()
    return exits.OK


async def _progress(
    client: ManagerClient,
    args: argparse.Namespace,
    operation: str,
    also: Callable[[Mapping[str, object]], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Show the daemon's State and Progress as they change (and tell ``also``)."""
    display = display_for(sys.stdout, operation, quiet=args.quiet)
    current: dict[str, Any] = {"State": "", "Progress": 0.0}
    measure = Measure()

    def on_change(changed: Mapping[str, object]) -> None:
        current.update(changed)
        if also is not None:
            also(changed)
        if "State" in changed or "Progress" in changed:
            display.update(*measure.change(changed))

    await client.watch(on_change)
    return display, current


async def _interruptible(client: ManagerClient, display: Any, work: Awaitable[object]) -> bool:
    """Wait for ``work``; the first Ctrl-C asks the daemon to cancel, the
    second stops waiting (False)."""
    loop = asyncio.get_running_loop()
    interrupts: list[asyncio.Task[None]] = []
    pending = asyncio.ensure_future(work)

    def on_interrupt() -> None:
        if not interrupts:
            display.message("cancelling (Ctrl-C again to stop waiting)")
            interrupts.append(loop.create_task(_cancel_quietly(client, display)))
        else:
            pending.cancel()

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        await pending
    except asyncio.CancelledError:
        display.close()
        return False
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return True


async def _cancel_quietly(client: ManagerClient, display: Any) -> None:
    try:
        await client.call("Cancel")
    except DaemonError as e:
        display.message(f"cannot cancel: {e.message}")


async def _hibernate(client: ManagerClient, args: argparse.Namespace) -> int:
    if args.direct:
        code = await _long_call(client, args, "hibernate", "Hibernate", "a{sv}", [_options(args)])
    else:
        code = await _hibernate_via_logind(client, args)
    if code == exits.OK and not args.quiet:
        print("hibernate: resumed")
    return code


async def _hibernate_via_logind(client: ManagerClient, args: argparse.Namespace) -> int:
    """logind decides and starts systemd-hibernate.service, which calls the
    daemon (kexechibd.ctl.logind); we show the daemon's progress meanwhile
    and report its outcome once logind says the system is back."""
    watch = logind.SleepWatch()
    display, _ = await _progress(client, args, "hibernate", watch.on_kexechib_change)
    try:
        await logind.watch_prepare_for_sleep(client, watch)
        await logind.ask_logind_to_hibernate(client)
    except DaemonError as e:
        display.close()
        print(f"kexechibctl: {logind.explain(e)}", file=sys.stderr)
        return exits.FAILURE
    if not await _interruptible(client, display, watch.done.wait()):
        return exits.INTERRUPTED
    error = await logind.outcome(client, watch)
    display.close()
    if error:
        print(f"kexechibctl: hibernate: {error}", file=sys.stderr)
        return exits.FAILURE
    return exits.OK


async def _resume(client: ManagerClient, args: argparse.Namespace) -> int:
    return await _long_call(
        client, args, "resume", "Resume", "sa{sv}", [args.image, _options(args)]
    )


async def _jump_back(client: ManagerClient, args: argparse.Namespace) -> int:
    return await _long_call(client, args, "jump-back", "JumpBack")


async def _cancel(client: ManagerClient, args: argparse.Namespace) -> int:
    await client.call("Cancel")
    return exits.OK


async def _inspect(client: ManagerClient, args: argparse.Namespace) -> int:
    (info,) = await client.call("Inspect", "s", [args.image])
    for key in sorted(info):
        print(f"{key + ':':15} {humane.annotate(key, _plain(info[key]))}")
    readable = "state" in info and "error" not in info and "absent" not in info
    return exits.for_image_state(str(_plain(info["state"])) if readable else None)


def _plain(value: object) -> object:
    if isinstance(value, Variant):
        return _plain(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


COMMANDS = {
    "status": _status,
    "can-hibernate": _can_hibernate,
    "hibernate": _hibernate,
    "resume": _resume,
    "jump-back": _jump_back,
    "cancel": _cancel,
    "inspect": _inspect,
}
