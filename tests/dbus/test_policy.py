"""Unprivileged callers (setpriv) against the bus policy and the real
polkitd with our actions and the test rules of conftest.py:
nobody gets the action defaults (no session: allow_any), daemon gets YES,
bin gets NO.  A refused call changes nothing."""

from __future__ import annotations

import asyncio

import pytest

from tests.dbus.conftest import busctl, call, gdbus, run, wait_thread_event

DEST = ("org.kexechib1", "/org/kexechib1")


def assert_unchanged(daemon):
    assert daemon.engine.operations == []
    assert daemon.manager.get("State") == "idle"
    assert daemon.manager.get("LastError") == ""


@pytest.mark.parametrize(
    "user, answer", [("root", "yes"), ("nobody", "challenge"), ("daemon", "yes"), ("bin", "no")]
)
async def test_can_hibernate_answers_with_polkits_verdict_for_the_caller(
    daemon, system_bus, real_polkit, user, answer
):
    result = await run(gdbus("org.kexechib1.Manager.CanHibernate"), user=user, env=system_bus.env())
    assert result.stdout.strip() == f"('{answer}',)", result.stderr


async def test_a_caller_polkit_would_challenge_is_denied_without_interaction(
    daemon, system_bus, real_polkit
):
    result = await run(
        gdbus("org.kexechib1.Manager.Hibernate", "{}"), user="nobody", env=system_bus.env()
    )
    assert result.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr
    assert "authentication is required" in result.stderr
    assert_unchanged(daemon)


async def test_an_interactive_caller_without_an_agent_is_denied(daemon, system_bus, real_polkit):
    result = await run(
        gdbus("org.kexechib1.Manager.Hibernate", "{}", interactive=True),
        user="nobody",
        env=system_bus.env(),
    )
    assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr
    assert_unchanged(daemon)


async def test_a_caller_polkit_refuses_is_denied(daemon, system_bus, real_polkit):
    for member, args in (
        ("Hibernate", ["{}"]),
        ("Resume", ["''", "{}"]),
        ("JumpBack", []),
        ("Inspect", ["'/etc/shadow'"]),
    ):
        result = await run(
            gdbus(f"org.kexechib1.Manager.{member}", *args), user="bin", env=system_bus.env()
        )
        assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr, member
        assert "polkit said no" in result.stderr
    assert_unchanged(daemon)


@pytest.mark.parametrize(
    "member, args",
    [
        ("Hibernate", ["{'speed': <'fast'>}"]),
        ("Hibernate", ["{'mode': <'suspend'>}"]),
        ("Resume", ["'relative/image'", "{}"]),
        ("Resume", ["''", "{'load-only': <'yes'>}"]),
        ("Inspect", ["'relative/image'"]),
    ],
)
async def test_an_unauthorized_call_with_bad_arguments_is_denied_not_told_what_is_wrong(
    daemon, system_bus, real_polkit, member, args
):
    result = await run(
        gdbus(f"org.kexechib1.Manager.{member}", *args), user="bin", env=system_bus.env()
    )
    assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr
    assert "InvalidOption" not in result.stderr
    assert_unchanged(daemon)


async def hibernate_held(daemon, client):
    """A Hibernate by root, held at the scripted engine's gate until the
    test sets it."""
    daemon.engine.gate.clear()
    pending = asyncio.create_task(call(client, "Hibernate", "a{sv}", [{}]))
    await wait_thread_event(daemon.engine.waiting)
    return pending


async def test_an_unauthorized_call_while_busy_is_denied_not_told_busy(
    daemon, system_bus, real_polkit, client
):
    pending = await hibernate_held(daemon, client)
    for member, args in (("Hibernate", ["{}"]), ("Resume", ["''", "{}"]), ("JumpBack", [])):
        result = await run(
            gdbus(f"org.kexechib1.Manager.{member}", *args), user="bin", env=system_bus.env()
        )
        assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr, member
        assert "Busy" not in result.stderr and "already running" not in result.stderr
    daemon.engine.gate.set()
    assert await asyncio.wait_for(pending, 10) == []
    assert [c[0] for c in daemon.engine.operations] == ["hibernate"]


async def test_an_unauthorized_call_with_bad_arguments_is_denied_not_told_why_they_are_bad(
    daemon, system_bus, real_polkit
):
    for member, args in (
        ("Hibernate", ["{'level': <int64 3>, 'image': <objectpath '/dev'>}"]),
        ("Resume", ["'/dev/zero'", "{}"]),
        ("Inspect", ["'/proc/self/mem'"]),
    ):
        result = await run(
            gdbus(f"org.kexechib1.Manager.{member}", *args), user="bin", env=system_bus.env()
        )
        assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr, member
        assert "InvalidOption" not in result.stderr


async def test_a_caller_polkit_authorizes_may_hibernate(daemon, system_bus, real_polkit):
    result = await run(
        gdbus("org.kexechib1.Manager.Hibernate", "{'mode': <'checkpoint'>}"),
        user="daemon",
        env=system_bus.env(),
    )
    assert result.returncode == 0, result.stderr
    assert [c[0] for c in daemon.engine.operations] == ["hibernate"]


async def test_an_active_session_user_may_hibernate_to_the_configured_image(
    daemon, system_bus, real_polkit
):
    configured = daemon.manager.get("ImageLocation")
    for options in ("{}", f"{{'image': <'{configured}'>}}"):
        result = await run(
            gdbus("org.kexechib1.Manager.Hibernate", options), user="sys", env=system_bus.env()
        )
        assert result.returncode == 0, result.stderr
    assert [c[0] for c in daemon.engine.operations] == ["hibernate", "hibernate"]


async def test_an_active_session_user_may_not_hibernate_to_another_image(
    daemon, system_bus, real_polkit
):
    # B would overwrite whatever the path names, as root: another disk, say.
    result = await run(
        gdbus("org.kexechib1.Manager.Hibernate", "{'image': <'/dev/sdb'>}"),
        user="sys",
        env=system_bus.env(),
    )
    assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr
    assert "org.kexechib1.hibernate-other-image" in result.stderr
    assert "authentication is required" in result.stderr
    assert_unchanged(daemon)


async def test_busctl_as_an_unprivileged_user_is_denied(daemon, system_bus, real_polkit):
    result = await run(
        busctl(system_bus, "call", *DEST, "org.kexechib1.Manager", "Hibernate", "a{sv}", "0"),
        user="nobody",
    )
    assert result.returncode != 0
    assert "Access denied" in result.stderr
    assert_unchanged(daemon)


async def test_others_cannot_cancel_an_operation_they_did_not_start(
    daemon, system_bus, real_polkit, client
):
    pending = await hibernate_held(daemon, client)
    result = await run(gdbus("org.kexechib1.Manager.Cancel"), user="nobody", env=system_bus.env())
    assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr
    assert not daemon.manager.operation.token.cancelled
    daemon.engine.gate.set()
    assert await asyncio.wait_for(pending, 10) == []


async def test_anyone_may_read_properties_and_inspect_the_configured_image(
    daemon, system_bus, real_polkit
):
    result = await run(
        busctl(system_bus, "get-property", *DEST, "org.kexechib1.Manager", "State"), user="nobody"
    )
    assert result.stdout.strip() == 's "idle"'
    result = await run(
        gdbus("org.kexechib1.Manager.Inspect", "''"), user="nobody", env=system_bus.env()
    )
    assert "'valid': <false>" in result.stdout


async def test_the_bus_refuses_setting_properties_to_others(daemon, system_bus):
    result = await run(
        busctl(system_bus, "set-property", *DEST, "org.kexechib1.Manager", "State", "s", "idle"),
        user="nobody",
    )
    assert result.returncode != 0
    assert "Access denied" in result.stderr


async def test_the_bus_refuses_interfaces_the_policy_does_not_open(daemon, system_bus):
    result = await run(
        [
            "dbus-send",
            f"--bus={system_bus.address}",
            "--print-reply",
            f"--dest={DEST[0]}",
            DEST[1],
            "org.freedesktop.DBus.ObjectManager.GetManagedObjects",
        ],
        user="nobody",
    )
    assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr


async def test_only_root_may_own_the_name(system_bus):
    request = [
        "dbus-send",
        f"--bus={system_bus.address}",
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.RequestName",
        "string:org.kexechib1",
        "uint32:4",
    ]
    refused = await run(request, user="nobody")
    assert "org.freedesktop.DBus.Error.AccessDenied" in refused.stderr
    assert "not allowed to own the service" in refused.stderr
    allowed = await run(request)
    assert "uint32 1" in allowed.stdout  # DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER
