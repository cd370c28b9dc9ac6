"""logind offers hibernation exactly when kexechibd can: the real
systemd-logind 252 (tests/dbus/real_logind.py: in a private mount namespace
on the tests' bus) reading our shipped sleep.conf drop-in and the one a real
kexechibd (the scripted engine in place of the kernel work) writes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

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
from tests.dbus.fake_logind import serve_loaded_units
from tests.dbus.real_logind import RealLogind, real_logind_unavailable
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
