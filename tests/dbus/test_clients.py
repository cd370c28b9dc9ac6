"""The daemon as the field's own D-Bus tools see it: busctl (sd-bus), gdbus
(GLib) and dbus-send (libdbus), as root."""

from __future__ import annotations

import asyncio

from kexechibd.operation import Mode
from tests.dbus.conftest import busctl, eventually, gdbus, get_property, run, wait_thread_event

DEST = ("org.kexechib1", "/org/kexechib1")


def dbus_send(bus, member, *args):
    return [
        "dbus-send",
        f"--bus={bus.address}",
        "--print-reply",
        f"--dest={DEST[0]}",
        DEST[1],
        f"org.kexechib1.Manager.{member}",
        *args,
    ]


# ------------------------------------------------------------------ busctl


async def test_busctl_reads_properties_and_calls_methods(daemon, system_bus):
    result = await run(busctl(system_bus, "get-property", *DEST, "org.kexechib1.Manager", "State"))
    assert result.stdout.strip() == 's "idle"'
    result = await run(busctl(system_bus, "call", *DEST, "org.kexechib1.Manager", "CanHibernate"))
    assert result.stdout.strip() == 's "yes"'


async def test_busctl_hibernates_with_options(daemon, system_bus):
    result = await run(
        busctl(
            system_bus,
            "call",
            *DEST,
            "org.kexechib1.Manager",
            "Hibernate",
            "a{sv}",
            "2",
            "mode",
            "s",
            "checkpoint",
            "level",
            "i",
            "5",
        )
    )
    assert result.returncode == 0, result.stderr
    options = daemon.engine.operations[-1][1]
    assert (options.mode, options.level) == (Mode.CHECKPOINT, 5)


async def test_busctl_gets_the_daemons_message_for_a_bad_option(daemon, system_bus):
    result = await run(
        busctl(
            system_bus,
            "call",
            *DEST,
            "org.kexechib1.Manager",
            "Hibernate",
            "a{sv}",
            "1",
            "level",
            "s",
            "3",
        )
    )
    assert result.returncode != 0
    assert "'level' must be of type int" in result.stderr


async def test_busctl_introspects_all_standard_interfaces(daemon, system_bus):
    result = await run(busctl(system_bus, "introspect", *DEST))
    for name in (
        "org.kexechib1.Manager",
        "org.freedesktop.DBus.Introspectable",
        "org.freedesktop.DBus.Properties",
        "org.freedesktop.DBus.Peer",
    ):
        assert name in result.stdout


# ------------------------------------------------------------------ gdbus


async def test_gdbus_hibernates_and_sees_the_reply_after_resume(daemon, system_bus):
    daemon.engine.gate.clear()
    proc = asyncio.create_task(
        run(
            gdbus("org.kexechib1.Manager.Hibernate", "{'mode': <'poweroff'>}"), env=system_bus.env()
        )
    )
    await wait_thread_event(daemon.engine.waiting)
    assert not proc.done()
    daemon.engine.gate.set()
    result = await proc
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "()"


async def test_gdbus_sees_named_errors(daemon, system_bus):
    result = await run(
        gdbus("org.kexechib1.Manager.Hibernate", "{'speed': <'fast'>}"), env=system_bus.env()
    )
    assert result.returncode != 0
    assert "org.kexechib1.Error.InvalidOption" in result.stderr
    assert "unknown option(s) speed" in result.stderr
    result = await run(gdbus("org.kexechib1.Manager.JumpBack"), env=system_bus.env())
    assert "org.kexechib1.Error.NoPeer" in result.stderr


async def test_gdbus_monitor_sees_prepare_for_hibernate_and_property_changes(daemon, system_bus):
    monitor = await asyncio.create_subprocess_exec(
        "gdbus",
        "monitor",
        "--system",
        "--dest",
        DEST[0],
        env=system_bus.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(0.5)  # gdbus subscribes after it starts
        result = await run(gdbus("org.kexechib1.Manager.Hibernate", "{}"), env=system_bus.env())
        assert result.returncode == 0, result.stderr
        await eventually(lambda: daemon.manager.get("State") == "idle")
        await asyncio.sleep(0.3)
    finally:
        monitor.terminate()
        out, _ = await monitor.communicate()
    text = out.decode()
    assert "org.kexechib1.Manager.PrepareForHibernate (true,)" in text
    assert "org.kexechib1.Manager.PrepareForHibernate (false,)" in text
    assert "'State': <'jumping'>" in text
    assert text.index("(true,)") < text.index("'State': <'jumping'>") < text.index("(false,)")


# ------------------------------------------------------------------ dbus-send


async def test_dbus_send_calls_methods(daemon, system_bus):
    result = await run(dbus_send(system_bus, "CanHibernate"))
    assert 'string "yes"' in result.stdout
    result = await run(dbus_send(system_bus, "Inspect", "string:"))
    assert 'string "valid"' in result.stdout
    assert "boolean false" in result.stdout
    assert 'string "no image at' in result.stdout


async def test_dbus_send_with_a_wrong_signature_gets_invalid_args(daemon, system_bus):
    # dbus-send cannot build a{sv}; its dict:string:string is a{ss}.
    result = await run(dbus_send(system_bus, "Hibernate", "dict:string:string:mode,checkpoint"))
    assert result.returncode != 0
    assert "org.freedesktop.DBus.Error.InvalidArgs" in result.stderr
    assert "takes arguments (a{sv}), not (a{ss})" in result.stderr
    assert daemon.engine.operations == []


async def test_dbus_send_cancel_with_nothing_running(daemon, system_bus):
    result = await run(dbus_send(system_bus, "Cancel"))
    assert "org.kexechib1.Error.NotRunning" in result.stderr
    assert daemon.manager.get("State") == "idle"


async def test_all_three_tools_read_the_same_properties(daemon, system_bus, client):
    for name in ("Role", "Backend", "ImageLocation"):
        expected = await get_property(client, name)
        by_busctl = await run(
            busctl(system_bus, "get-property", *DEST, "org.kexechib1.Manager", name)
        )
        assert by_busctl.stdout.strip() == f's "{expected}"'
        by_send = await run(
            [
                "dbus-send",
                f"--bus={system_bus.address}",
                "--print-reply",
                f"--dest={DEST[0]}",
                DEST[1],
                "org.freedesktop.DBus.Properties.Get",
                "string:org.kexechib1.Manager",
                f"string:{name}",
            ]
        )
        assert f'string "{expected}"' in by_send.stdout
