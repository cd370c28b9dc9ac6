"""logind offers hibernation exactly when kexechibd can: the real
systemd-logind 252 (tests/dbus/real_logind.py: in a private mount namespace
on the tests' bus) reading our shipped sleep.conf drop-in and the one a real
kexechibd (the scripted engine in place of the kernel work) writes."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_next.aio.message_bus import MessageBus
from dbus_next.message import Message

from kexechibd.ctl.client import ManagerClient
from kexechibd.sleepconf import NAME
from tests.dbus.buses import TestBus
from tests.dbus.conftest import (
    SYSTEM_PYTHON,
    busctl,
    ctl_argv,
    run,
    start_daemon,
    stop_daemon,
    system_python_unavailable,
)
from tests.dbus.fake_logind import FakeSystemdManager, serve_loaded_units, serve_systemd
from tests.dbus.real_logind import REPO, RealLogind, real_logind_unavailable
from tests.dbus.scripted_engine import NO_KEXEC, ScriptedEngine

LOGIND = ("org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager")


@pytest.fixture
def logind(system_bus: TestBus) -> Iterator[RealLogind]:
    reason = real_logind_unavailable()
    if reason:
        pytest.skip(reason=reason)
    running = RealLogind(system_bus)
    yield running
    running.stop()


async def ask(bus: TestBus, member: str, *args: str) -> str:
    """busctl's answer; the loop stays free for the stand-in systemd."""
    result = await run(busctl(bus, "call", *LOGIND, member, *args))
    return (result.stdout + result.stderr).strip()


async def test_until_kexechibd_has_checked_logind_offers_no_hibernation(system_bus, logind):
    assert await ask(system_bus, "CanHibernate") == 's "na"'
    assert await ask(system_bus, "CanHybridSleep") == 's "na"'
    assert await ask(system_bus, "CanSuspendThenHibernate") == 's "na"'
    assert await ask(system_bus, "HibernateWithFlags", "t", "1") == (
        'Call failed: Sleep verb "hibernate" not supported'
    )
    assert 'Sleep mode "hibernate" is disabled by configuration.' in logind.output()


async def test_logind_follows_kexechibds_verdict(system_bus, logind, tmp_path):
    """logind says yes only after systemd says hibernate.target is loaded: a
    stand-in answers that (systemd is not PID 1 here)."""
    systemd = await serve_loaded_units(system_bus.address, "hibernate_2etarget")
    engine = ScriptedEngine(image_location=str(tmp_path / "image"))
    running = await start_daemon(system_bus, engine, sleep_conf=logind.runtime_dir / NAME)
    try:
        assert await ask(system_bus, "CanHibernate") == 's "yes"'
        # Still refused: they would use the kernel's own hibernation.
        assert await ask(system_bus, "CanHybridSleep") == 's "na"'
        assert await ask(system_bus, "CanSuspendThenHibernate") == 's "na"'
        engine.support_report = NO_KEXEC
        kexechib = ("org.kexechib1", "/org/kexechib1", "org.kexechib1.Manager")
        result = await run(busctl(system_bus, "call", *kexechib, "CanHibernate"))
        assert result.stdout.strip() == 's "na"'
        assert await ask(system_bus, "CanHibernate") == 's "na"'
    finally:
        assert await stop_daemon(running) == 0
        systemd.disconnect()
    assert f"Skipping overridden file '/usr/lib/systemd/sleep.conf.d/{NAME}'." in logind.output()


# Holds a sleep block inhibitor as another user (logind ignores the caller's
# own: manager_is_inhibited(..., ignore_uid=true, uid)); the test's polkit
# rules let "nobody" take it (org.freedesktop.login1.inhibit-block-sleep).
HOLDER = """
import asyncio, sys
from dbus_next.aio import MessageBus
from dbus_next.message import Message
async def main():
    bus = await MessageBus(bus_address=sys.argv[1], negotiate_unix_fd=True).connect()
    reply = await bus.call(Message(destination="org.freedesktop.login1",
        path="/org/freedesktop/login1", interface="org.freedesktop.login1.Manager",
        member="Inhibit", signature="ssss", body=["sleep", "test", "holding", "block"]))
    print(reply.message_type.name, reply.body, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


async def test_a_block_inhibitor_stops_kexechibctl_even_as_root(
    system_bus, real_polkit, logind, tmp_path, ctl_env
):
    """What `systemd-inhibit --what=sleep --mode=block` holds, taken with
    logind's own Inhibit by another user; kexechibctl's
    HibernateWithFlags(ROOT_CHECK_INHIBITORS) meets it, where root would
    otherwise pass (logind-dbus.c verify_shutdown_creds)."""
    reason = system_python_unavailable()
    if reason:
        pytest.skip(reason=reason)
    systemd = await serve_loaded_units(system_bus.address, "hibernate_2etarget")
    engine = ScriptedEngine(image_location=str(tmp_path / "image"))
    running = await start_daemon(system_bus, engine, sleep_conf=logind.runtime_dir / NAME)
    holder = await asyncio.create_subprocess_exec(
        *("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
        *(SYSTEM_PYTHON, "-c", HOLDER, system_bus.address),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        held = await asyncio.wait_for(holder.stdout.readline(), 10)
        assert held.startswith(b"METHOD_RETURN"), held
        result = await run(ctl_argv(system_bus, "--no-ask-password", "hibernate"), env=ctl_env)
        assert result.returncode == 1
        assert (
            "logind refused: Access denied to root due to active block inhibitor "
            "[org.freedesktop.DBus.Error.AccessDenied]" in result.stderr
        )
        assert engine.operations == []
    finally:
        holder.kill()
        await holder.wait()
        assert await stop_daemon(running) == 0
        systemd.disconnect()


def dropin_commands(
    bus: TestBus, hooks: Path
) -> tuple[list[tuple[list[str], bool]], dict[str, str]]:
    """systemd-hibernate.service's commands as our drop-in sets them, in
    systemd's order (ExecStartPre=, the last ExecStart=, ExecStopPost=; "-":
    failure ignored), and its Environment=; with this test's programs:
    kexechibctl from this checkout on the test bus, the hooks of ``hooks``."""
    settings: dict[str, list[str]] = {}
    for line in (
        (REPO / "systemd/systemd-hibernate.service.d/kexechib.conf").read_text().splitlines()
    ):
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key, []).append(value)

    def command(value: str) -> tuple[list[str], bool]:
        ignore = value.startswith("-")
        argv = shlex.split(value.lstrip("-").replace("$$", "$"))
        if argv[0] == "/usr/bin/kexechibctl":
            argv = ctl_argv(bus, *argv[1:])
        argv = [str(hooks) if a == "/usr/lib/systemd/system-sleep" else a for a in argv]
        return argv, ignore

    start = [v for v in settings["ExecStart"] if v][-1:]
    commands = [command(v) for v in (*settings["ExecStartPre"], *start, *settings["ExecStopPost"])]
    env = dict(v.split("=", 1) for v in settings.get("Environment", []))
    return commands, env


async def test_a_hibernation_through_logind_runs_our_dropin_between_prepare_for_sleep(
    system_bus, logind, tmp_path, ctl_env
):
    """kexechibctl → the real logind → hibernate.target: a stand-in systemd
    runs what our drop-in gives systemd-hibernate.service (the hooks through
    the real run-parts, kexechibctl --direct to the daemon) and reports the
    job's end, on which logind sends PrepareForSleep(false)."""
    hooks = tmp_path / "system-sleep"
    hooks.mkdir()
    log = tmp_path / "hooks.log"
    log.write_text("")
    hook = hooks / "50-test.sh"
    hook.write_text(f'#!/bin/sh\necho "$1 $2 $SYSTEMD_SLEEP_ACTION" >>{log}\n')
    hook.chmod(0o755)
    commands, environment = dropin_commands(system_bus, hooks)
    manager = FakeSystemdManager(commands, {**ctl_env, **environment})
    systemd = await serve_systemd(system_bus.address, manager, "hibernate_2etarget")
    engine = ScriptedEngine(image_location=str(tmp_path / "image"))
    running = await start_daemon(system_bus, engine, sleep_conf=logind.runtime_dir / NAME)
    listener = await MessageBus(bus_address=system_bus.address).connect()
    seen: list[tuple[bool, str]] = []  # PrepareForSleep, and what the hooks had logged by then

    def on_signal(msg: Message) -> None:
        if msg.member == "PrepareForSleep" and msg.interface == LOGIND[2]:
            seen.append((msg.body[0], log.read_text()))

    try:
        watcher = ManagerClient(listener, interactive=False)
        assert await watcher.add_match(
            f"type='signal',interface='{LOGIND[2]}',member='PrepareForSleep'"
        )
        watcher.add_handler(on_signal)
        result = await run(ctl_argv(system_bus, "--no-ask-password", "hibernate"), env=ctl_env)
        await manager.settle()
        assert result.returncode == 0, (result.stderr, manager.outputs, logind.output()[-2000:])
        assert result.stdout.splitlines()[-1] == "hibernate: resumed"
        assert manager.started == [("hibernate.target", "replace-irreversibly")]
        assert [c[0] for c in engine.operations] == ["hibernate"]
        assert seen == [
            (True, ""),  # before the job: no hook yet
            (False, "pre hibernate hibernate\npost hibernate hibernate\n"),
        ]
    finally:
        listener.disconnect()
        assert await stop_daemon(running) == 0
        systemd.disconnect()
