"""The polkit client against a stand-in Authority (fake_polkit.py): the exact
request, the interactive flag, the verdicts, and polkit failing, hanging or
absent.  The real polkitd's answers are in test_policy.py."""

from __future__ import annotations

import asyncio
import os
import pty
import signal

import pytest

from kexechibd import busutil
from kexechibd.busapi import BUS_NAME
from kexechibd.daemon.auth import Action, Caller, PolkitAuthorizer, Verdict
from tests.dbus.buses import POLICY_CONF, TestBus
from tests.dbus.conftest import (
    call,
    ctl_argv,
    eventually,
    gdbus,
    run,
    start_daemon,
    stop_daemon,
    system_python_unavailable,
    wait_thread_event,
)
from tests.dbus.fake_polkit import FakeAuthority

# A bus like the others, where root may own polkit's name (the real bus
# policy lets only the polkitd user own it) and everyone may call it.
FAKE_POLKIT_POLICY = """\
  <policy user="root">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>
"""

DEST = ("org.kexechib1", "/org/kexechib1")


@pytest.fixture(scope="module")
def bus():
    test_bus = TestBus(includes=(POLICY_CONF,), extra_policy=FAKE_POLKIT_POLICY)
    yield test_bus
    test_bus.stop()


@pytest.fixture
async def authority(bus):
    connection = await busutil.connect(bus.address)
    fake = await FakeAuthority(connection).start()
    yield fake
    await busutil.close(connection)


@pytest.fixture
async def served(bus, engine):
    running = await start_daemon(bus, engine)
    yield running
    assert await stop_daemon(running) == 0
    assert not bus.has_owner(BUS_NAME)


async def test_the_request_names_the_caller_and_the_action(served, bus, authority):
    authority.verdicts["org.kexechib1.hibernate"] = (True, False)
    result = await run(
        gdbus("org.kexechib1.Manager.Hibernate", "{'mode': <'checkpoint'>}"),
        user="nobody",
        env=bus.env(),
    )
    assert result.returncode == 0, result.stderr
    (request,) = authority.requests
    assert request.subject_kind == "system-bus-name"
    assert request.subject["name"].startswith(":")
    assert request.action == "org.kexechib1.hibernate"
    assert request.details == {"mode": "checkpoint"}
    assert request.cancellation_id


async def test_polkit_may_interact_only_when_the_message_allows_it(served, bus, authority):
    await run(gdbus("org.kexechib1.Manager.Hibernate", "{}"), user="nobody", env=bus.env())
    await run(
        gdbus("org.kexechib1.Manager.Hibernate", "{}", interactive=True),
        user="nobody",
        env=bus.env(),
    )
    await run(
        gdbus("org.kexechib1.Manager.CanHibernate", interactive=True), user="nobody", env=bus.env()
    )
    assert [r.flags for r in authority.requests] == [0, 1, 0]


@pytest.mark.parametrize(
    "verdict, answer",
    [((True, False), "yes"), ((False, True), "challenge"), ((False, False), "no")],
)
async def test_can_hibernate_maps_the_verdict(served, bus, authority, verdict, answer):
    authority.verdicts["org.kexechib1.hibernate"] = verdict
    result = await run(gdbus("org.kexechib1.Manager.CanHibernate"), user="nobody", env=bus.env())
    assert result.stdout.strip() == f"('{answer}',)"


async def test_root_is_never_asked(served, bus, authority):
    result = await run(gdbus("org.kexechib1.Manager.CanHibernate"), env=bus.env())
    assert result.stdout.strip() == "('yes',)"
    assert authority.requests == []


async def test_resume_and_inspect_tell_polkit_which_image(served, bus, authority, tmp_path):
    image = str(tmp_path / "another-image")
    await run(
        gdbus("org.kexechib1.Manager.Resume", f"'{image}'", "{}"), user="nobody", env=bus.env()
    )
    await run(gdbus("org.kexechib1.Manager.Inspect", f"'{image}'"), user="nobody", env=bus.env())
    await run(
        gdbus("org.kexechib1.Manager.Inspect", "''"), user="nobody", env=bus.env()
    )  # configured: no question
    assert [(r.action, r.details) for r in authority.requests] == [
        ("org.kexechib1.resume", {"image": image}),
        ("org.kexechib1.inspect", {"image": image}),
    ]


async def test_hibernate_to_another_image_asks_for_the_admin_action_with_the_image(
    served, bus, authority, tmp_path
):
    configured = served.manager.get("ImageLocation")
    other = str(tmp_path / "elsewhere")
    folder, _, name = configured.rpartition("/")
    same = f"{folder}//./{name}"  # the configured path, as Path reads it
    for image in ("", configured, same, other, "relative"):
        await run(
            gdbus("org.kexechib1.Manager.Hibernate", f"{{'image': <'{image}'>}}"),
            user="nobody",
            env=bus.env(),
        )
    assert [(r.action, r.details) for r in authority.requests] == [
        ("org.kexechib1.hibernate", {"mode": "poweroff"}),
        ("org.kexechib1.hibernate", {"mode": "poweroff"}),
        ("org.kexechib1.hibernate", {"mode": "poweroff"}),
        ("org.kexechib1.hibernate-other-image", {"mode": "poweroff", "image": other}),
        ("org.kexechib1.hibernate-other-image", {"mode": "poweroff", "image": "relative"}),
    ]


async def test_a_polkit_error_denies_and_says_why(served, bus, authority):
    authority.error = "org.freedesktop.PolicyKit1.Error.Failed"
    result = await run(gdbus("org.kexechib1.Manager.Hibernate", "{}"), user="nobody", env=bus.env())
    assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr
    assert "polkit could not be asked (org.freedesktop.PolicyKit1.Error.Failed)" in result.stderr
    result = await run(gdbus("org.kexechib1.Manager.CanHibernate"), user="nobody", env=bus.env())
    assert result.stdout.strip() == "('no',)"
    assert served.engine.operations == []


async def test_without_polkit_only_root_is_authorized(served, bus):
    result = await run(gdbus("org.kexechib1.Manager.Hibernate", "{}"), user="nobody", env=bus.env())
    assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr
    assert "org.freedesktop.DBus.Error.ServiceUnknown" in result.stderr
    result = await run(gdbus("org.kexechib1.Manager.Hibernate", "{}"), env=bus.env())
    assert result.returncode == 0


class _Unprivileged(PolkitAuthorizer):
    """The authorizer as it treats any non-root caller (the caller here is
    this test's own root connection)."""

    async def caller_uid(self, sender: str) -> int:
        return 65534


async def test_a_hanging_polkit_times_out_and_the_check_is_cancelled(bus, authority):
    authority.delay = 5
    connection = await busutil.connect(bus.address)
    try:
        authorizer = _Unprivileged(connection, timeout=0.3)
        result = await authorizer.check(Caller(connection.unique_name), Action.CANCEL)
        assert result.verdict is Verdict.NO
        assert "did not answer" in result.detail
        await eventually(lambda: authority.cancelled == [authority.requests[0].cancellation_id])
    finally:
        await busutil.close(connection)


async def test_whoever_started_an_operation_may_cancel_it(served, bus, authority, anyone_ctl_env):
    # nobody may hibernate but not cancel; kexechibctl's Ctrl-C still cancels
    # the hibernate it started, from the same connection.
    reason = system_python_unavailable()
    if reason:
        pytest.skip(reason=reason)
    authority.verdicts["org.kexechib1.hibernate"] = (True, False)
    served.engine.gate.clear()
    proc = await asyncio.create_subprocess_exec(
        *ctl_argv(bus, "hibernate", "--direct", unprivileged=True),
        env=anyone_ctl_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_drop_to_nobody,
    )
    await wait_thread_event(served.engine.waiting, 20)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert "org.kexechib1.Error.Cancelled" in err.decode()
    assert [r.action for r in authority.requests] == ["org.kexechib1.hibernate"]
    assert served.manager.get("State") == "idle"
    # Anyone else is asked.
    root = await busutil.connect(bus.address)
    try:
        served.engine.gate.clear()
        pending = asyncio.create_task(call(root, "Hibernate", "a{sv}", [{}]))
        await wait_thread_event(served.engine.waiting)
        result = await run(gdbus("org.kexechib1.Manager.Cancel"), user="nobody", env=bus.env())
        assert "AccessDenied" in result.stderr
        assert authority.requests[-1].action == "org.kexechib1.cancel"
        served.engine.gate.set()
        await asyncio.wait_for(pending, 10)
    finally:
        await busutil.close(root)


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


@pytest.mark.parametrize("args, flags", [((), 1), (("--no-ask-password",), 0)])
async def test_kexechibctl_on_a_terminal_lets_polkit_ask(
    served, bus, authority, anyone_ctl_env, args, flags
):
    reason = system_python_unavailable()
    if reason:
        pytest.skip(reason=reason)
    primary, secondary = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            *ctl_argv(bus, *args, "hibernate", "--direct", unprivileged=True),
            env=anyone_ctl_env,
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            preexec_fn=_drop_to_nobody,
        )
        await asyncio.wait_for(proc.wait(), 20)
    finally:
        os.close(secondary)
        os.close(primary)
    assert [r.flags for r in authority.requests] == [flags]
