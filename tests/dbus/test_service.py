"""org.kexechib1.Manager over a real bus, called by a dbus-next client as
root: replies, properties, signals, one operation at a time, cancel, and
every kind of bad input."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest
from dbus_next.constants import MessageType
from dbus_next.message import Message
from dbus_next.signature import Variant

from kexechibd.busapi import BUS_NAME, OBJECT_PATH
from kexechibd.config import parse
from kexechibd.errors import BadImage, Failed, NotSupported
from kexechibd.image import ImageError
from kexechibd.kernel.abi import kexec_load_error, load_flags
from kexechibd.operation import HibernateOptions, Mode
from tests.dbus.conftest import (
    CallError,
    call,
    eventually,
    get_property,
    manager_call,
    start_daemon,
    stop_daemon,
    wait_thread_event,
)
from tests.dbus.scripted_engine import NO_KEXEC, make_image

# ------------------------------------------------------------------ hibernate


async def test_hibernate_replies_only_after_a_has_resumed(daemon, client, signals):
    daemon.engine.gate.clear()
    pending = asyncio.create_task(
        call(client, "Hibernate", "a{sv}", [{"mode": Variant("s", "checkpoint")}])
    )
    await wait_thread_event(daemon.engine.waiting)
    await asyncio.sleep(0.1)
    assert not pending.done()

    daemon.engine.gate.set()
    assert await asyncio.wait_for(pending, 10) == []
    assert daemon.engine.operations == [("hibernate", HibernateOptions(mode=Mode.CHECKPOINT))]
    await eventually(lambda: len(signals.prepare_for_hibernate) == 2)
    assert signals.prepare_for_hibernate == [True, False]
    assert await get_property(client, "State") == "idle"
    assert await get_property(client, "LastError") == ""


async def test_the_bus_stays_responsive_while_hibernate_waits(daemon, client):
    daemon.engine.gate.clear()
    pending = asyncio.create_task(call(client, "Hibernate", "a{sv}", [{}]))
    await wait_thread_event(daemon.engine.waiting)
    for _ in range(3):
        assert await asyncio.wait_for(call(client, "CanHibernate"), 2) == ["yes"]
        assert await asyncio.wait_for(get_property(client, "State"), 2) == "preparing"
        assert 0.0 < await asyncio.wait_for(get_property(client, "Progress"), 2) < 1.0
    assert not pending.done()
    daemon.engine.gate.set()
    await asyncio.wait_for(pending, 10)


async def test_every_property_change_is_signalled(daemon, client, signals):
    await call(client, "Hibernate", "a{sv}", [{}])
    await eventually(lambda: signals.values("State")[-1:] == ["idle"])
    assert signals.values("State") == ["preparing", "loading", "jumping", "resuming", "idle"]
    progress = signals.values("Progress")
    assert progress == sorted(progress) and progress[-1] == 1.0
    # What the signals said is what the properties are.
    for name in ("State", "Progress", "LastError"):
        assert await get_property(client, name) == daemon.manager.get(name)


async def test_a_second_hibernate_while_one_runs_is_busy(daemon, client):
    daemon.engine.gate.clear()
    first = asyncio.create_task(call(client, "Hibernate", "a{sv}", [{}]))
    await wait_thread_event(daemon.engine.waiting)
    with pytest.raises(CallError) as refused:
        await call(client, "Hibernate", "a{sv}", [{}])
    assert refused.value.name == "org.kexechib1.Error.Busy"
    assert "already running" in refused.value.text
    with pytest.raises(CallError) as refused:
        await call(client, "Resume", "sa{sv}", ["", {}])
    assert refused.value.name == "org.kexechib1.Error.Busy"
    daemon.engine.gate.set()
    await asyncio.wait_for(first, 10)
    assert [c[0] for c in daemon.engine.operations] == ["hibernate"]


# ------------------------------------------------------------------ cancel


async def test_cancel_before_the_point_of_no_return_fails_the_call_as_cancelled(
    daemon, client, signals
):
    daemon.engine.gate.clear()
    pending = asyncio.create_task(call(client, "Hibernate", "a{sv}", [{}]))
    await wait_thread_event(daemon.engine.waiting)
    assert await call(client, "Cancel") == []
    with pytest.raises(CallError) as cancelled:
        await asyncio.wait_for(pending, 10)
    assert cancelled.value.name == "org.kexechib1.Error.Cancelled"
    assert not daemon.engine.committed.is_set()
    assert signals.prepare_for_hibernate == []
    assert await get_property(client, "State") == "idle"
    assert (await get_property(client, "LastError")).startswith("org.kexechib1.Error.Cancelled")


async def test_cancel_with_nothing_running_is_not_running(daemon, client):
    with pytest.raises(CallError) as refused:
        await call(client, "Cancel")
    assert refused.value.name == "org.kexechib1.Error.NotRunning"


async def test_cancel_after_the_point_of_no_return_is_too_late(daemon, client):
    daemon.engine.jump_gate.clear()
    pending = asyncio.create_task(call(client, "Hibernate", "a{sv}", [{}]))
    await wait_thread_event(daemon.engine.committed)
    with pytest.raises(CallError) as refused:
        await call(client, "Cancel")
    assert refused.value.name == "org.kexechib1.Error.TooLate"
    daemon.engine.jump_gate.set()
    assert await asyncio.wait_for(pending, 10) == []


# ------------------------------------------------------------------ engine errors


@pytest.mark.parametrize(
    "failure, name, words",
    [
        (
            NotSupported("no CONFIG_KEXEC_JUMP"),
            "org.kexechib1.Error.NotSupported",
            "no CONFIG_KEXEC_JUMP",
        ),
        (
            BadImage("cannot preallocate the image: no space"),
            "org.kexechib1.Error.BadImage",
            "no space",
        ),
        (  # the image library's own error, mapped at the daemon's edge
            ImageError("no image at /var/lib/kexechib/image"),
            "org.kexechib1.Error.BadImage",
            "no image at",
        ),
        (
            kexec_load_error(errno.EPERM, load_flags(), 3),
            "org.kexechib1.Error.KernelRefused",
            "kernel lockdown",
        ),
        (Failed("the saver kernel is missing"), "org.kexechib1.Error.Failed", "saver kernel"),
        (RuntimeError("boom"), "org.kexechib1.Error.Failed", "internal error"),
    ],
)
async def test_an_engine_failure_reaches_the_caller_by_name_and_the_daemon_keeps_serving(
    daemon, client, signals, failure, name, words
):
    daemon.engine.failure = failure
    with pytest.raises(CallError) as failed:
        await call(client, "Hibernate", "a{sv}", [{}])
    assert failed.value.name == name
    assert words in failed.value.text
    assert "Traceback" not in failed.value.text
    assert await get_property(client, "State") == "failed"
    assert (await get_property(client, "LastError")).startswith(name)
    assert signals.prepare_for_hibernate == []
    daemon.engine.failure = None
    assert await call(client, "CanHibernate") == ["yes"]
    assert await call(client, "Hibernate", "a{sv}", [{}]) == []
    assert await get_property(client, "LastError") == ""


async def test_hibernate_is_not_supported_where_the_kernel_cannot(daemon, client):
    daemon.engine.support_report = NO_KEXEC
    assert await call(client, "CanHibernate") == ["na"]
    assert "no kexec in this kernel" in await get_property(client, "Support")
    with pytest.raises(CallError) as refused:
        await call(client, "Hibernate", "a{sv}", [{}])
    assert refused.value.name == "org.kexechib1.Error.NotSupported"
    assert "no kexec in this kernel" in refused.value.text
    assert daemon.engine.operations == []


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "member, signature, body",
    [
        ("Hibernate", "s", ["poweroff"]),
        ("Hibernate", "", []),
        ("Resume", "a{sv}", [{}]),
        ("Resume", "ss", ["/x", "y"]),
        ("CanHibernate", "s", ["x"]),
        ("Inspect", "i", [1]),
    ],
)
async def test_a_wrong_signature_is_invalid_args(daemon, client, member, signature, body):
    with pytest.raises(CallError) as refused:
        await call(client, member, signature, body)
    assert refused.value.name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert f"not ({signature})" in refused.value.text
    assert daemon.engine.operations == []


async def test_an_unknown_method_is_unknown_method(daemon, client):
    with pytest.raises(CallError) as refused:
        await call(client, "Suspend")
    assert refused.value.name == "org.freedesktop.DBus.Error.UnknownMethod"


@pytest.mark.parametrize(
    "options, words",
    [
        ({"speed": Variant("s", "fast")}, "unknown option(s) speed"),
        ({"level": Variant("s", "3")}, "'level' must be of type int"),
        ({"level": Variant("b", True)}, "'level' must be of type int"),
        ({"mode": Variant("u", 1)}, "'mode' must be of type str"),
        ({"mode": Variant("s", "suspend")}, "mode must be 'poweroff' or 'checkpoint'"),
        ({"compression": Variant("s", "gzip")}, "compression 'gzip' is not one of zstd, lz4, none"),
        ({"level": Variant("i", 99)}, "zstd levels go from -7 to 22, not 99"),
        (
            {"compression": Variant("s", "lz4"), "level": Variant("i", 20)},
            "lz4 levels go from 0 to 16, not 20",
        ),
        (
            {"compression": Variant("s", "none"), "level": Variant("i", 3)},
            "none has no levels: its level is 0 only, not 3",
        ),
        ({"image": Variant("s", "relative/image")}, "must be an absolute path"),
        # Only the declared D-Bus type (DESIGN §5).
        ({"level": Variant("x", 3)}, "'level' must be of type int (D-Bus 'i'), not 'x'"),
        ({"level": Variant("u", 3)}, "'level' must be of type int"),
        ({"image": Variant("o", "/tmp")}, "'image' must be of type str"),
    ],
)
async def test_bad_options_are_invalid_option(daemon, client, options, words):
    with pytest.raises(CallError) as refused:
        await call(client, "Hibernate", "a{sv}", [options])
    assert refused.value.name == "org.kexechib1.Error.InvalidOption"
    assert words in refused.value.text
    assert await get_property(client, "State") == "idle"


@pytest.mark.parametrize(
    "image, words",
    [
        ("/dev/zero", "neither a regular file nor a block device"),
        ("/proc/self/mem", "not its real path"),
        ("/proc/1/mem", "kernel interface"),
        ("/", "root directory"),
        ("/etc/shadow\n", "control character"),
        ("/tmp/image", "not root's alone"),
    ],
)
async def test_every_method_refuses_a_bad_image_path_before_starting(daemon, client, image, words):
    before = await get_property(client, "LastError")
    calls = [
        (
            "Hibernate",
            "a{sv}",
            [{"mode": Variant("s", "checkpoint"), "image": Variant("s", image)}],
        ),
        ("Resume", "sa{sv}", [image, {}]),
        ("Inspect", "s", [image]),
    ]
    for member, signature, body in calls:
        with pytest.raises(CallError) as refused:
            await call(client, member, signature, body)
        assert refused.value.name == "org.kexechib1.Error.InvalidOption", member
        assert words in refused.value.text, member
    assert await get_property(client, "State") == "idle"
    assert await get_property(client, "LastError") == before
    assert daemon.engine.operations == []


async def test_a_private_image_elsewhere_passes_the_path_check(daemon, client, tmp_path):
    image = make_image(tmp_path / "elsewhere")
    (info,) = await call(client, "Inspect", "s", [str(image)])
    assert info["valid"] == Variant("b", True)


async def test_resume_options_are_checked_too(daemon, client, tmp_path):
    image = make_image(tmp_path / "image")
    with pytest.raises(CallError) as refused:
        await call(client, "Resume", "sa{sv}", [str(image), {"load-only": Variant("s", "yes")}])
    assert refused.value.name == "org.kexechib1.Error.InvalidOption"


async def test_resume_of_a_missing_image_is_bad_image(daemon, client, tmp_path):
    with pytest.raises(CallError) as refused:
        await call(client, "Resume", "sa{sv}", [str(tmp_path / "nothing-here"), {}])
    assert refused.value.name == "org.kexechib1.Error.BadImage"
    assert "no image at" in refused.value.text
    assert not daemon.engine.committed.is_set()


async def test_resume_of_a_bad_image_is_refused_before_it_starts(daemon, client, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(b"\x7fELF" + b"\xff" * 60)
    corrupt.chmod(0o600)
    before = await get_property(client, "LastError")
    with pytest.raises(CallError) as refused:
        await call(client, "Resume", "sa{sv}", [str(corrupt), {}])
    assert refused.value.name == "org.kexechib1.Error.BadImage"
    assert await get_property(client, "State") == "idle"
    assert await get_property(client, "LastError") == before
    assert [c[0] for c in daemon.engine.operations] == []


async def test_resume_of_a_corrupt_image_is_bad_image(daemon, client, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(b"\x7fELF" + b"\xff" * 60)
    corrupt.chmod(0o600)
    with pytest.raises(CallError) as refused:
        await call(client, "Resume", "sa{sv}", [str(corrupt), {}])
    assert refused.value.name == "org.kexechib1.Error.BadImage"
    assert "offset 0" in refused.value.text
    assert await call(client, "CanHibernate") == ["yes"]


async def test_resume_needs_an_absolute_path(daemon, client):
    with pytest.raises(CallError) as refused:
        await call(client, "Resume", "sa{sv}", ["relative/image", {}])
    assert refused.value.name == "org.kexechib1.Error.InvalidOption"


async def test_resume_with_load_only_returns_after_loading(daemon, client, tmp_path):
    image = make_image(tmp_path / "image")
    await call(client, "Resume", "sa{sv}", [str(image), {"load-only": Variant("b", True)}])
    assert [c[:2] for c in daemon.engine.operations] == [("resume", image)]
    assert not daemon.engine.committed.is_set()


async def test_jump_back_with_no_peer_is_no_peer_and_changes_nothing(daemon, client):
    before = await get_property(client, "LastError")
    with pytest.raises(CallError) as refused:
        await call(client, "JumpBack")
    assert refused.value.name == "org.kexechib1.Error.NoPeer"
    assert await get_property(client, "State") == "idle"
    assert await get_property(client, "LastError") == before
    daemon.engine.peer = True
    assert await call(client, "JumpBack") == []
    assert await get_property(client, "State") == "idle"


async def test_properties_are_read_only(daemon, client):
    reply = await client.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface="org.freedesktop.DBus.Properties",
            member="Set",
            signature="ssv",
            body=["org.kexechib1.Manager", "State", Variant("s", "idle")],
        )
    )
    assert reply.message_type == MessageType.ERROR
    assert reply.error_name == "org.freedesktop.DBus.Error.PropertyReadOnly"


async def test_a_call_without_an_interface_header_still_works(daemon, client):
    msg = manager_call("CanHibernate")
    msg.interface = None
    reply = await client.call(msg)
    assert reply.message_type == MessageType.METHOD_RETURN
    assert reply.body == ["yes"]


# ------------------------------------------------------------------ inspect


async def test_inspect_reports_the_configured_image(daemon, client):
    make_image(Path(daemon.engine.image_location), boot_id="other")
    (info,) = await call(client, "Inspect", "s", [""])
    assert info["valid"] == Variant("b", True)
    assert info["boot-id"] == Variant("s", "other")
    assert info["data-pages"] == Variant("x", 4096)


async def test_inspect_of_an_absent_image_says_absent(daemon, client, tmp_path):
    (info,) = await call(client, "Inspect", "s", [str(tmp_path / "none")])
    assert info["valid"] == Variant("b", False)
    assert info["error"] == Variant("s", f"no image at {tmp_path / 'none'}")


# ------------------------------------------------------------------ configuration, roles


async def test_options_left_out_come_from_the_configuration(system_bus, engine, client):
    config = parse("[saver]\nmode = checkpoint\n[image]\ncompression = lz4\nlevel = 7\n")
    running = await start_daemon(system_bus, engine, config=config)
    try:
        await call(client, "Hibernate", "a{sv}", [{"level": Variant("i", 2)}])
    finally:
        assert await stop_daemon(running) == 0
    assert engine.operations == [
        ("hibernate", HibernateOptions(mode=Mode.CHECKPOINT, compression="lz4", level=2))
    ]


@pytest.mark.parametrize(
    "configured, given, chosen",
    [
        ("compression = zstd\nlevel = 19\n", {"compression": "lz4"}, ("lz4", 0)),
        ("compression = zstd\nlevel = 19\n", {"compression": "none"}, ("none", 0)),
        ("compression = lz4\nlevel = 7\n", {"compression": "zstd"}, ("zstd", 3)),
        ("compression = none\n", {"compression": "zstd"}, ("zstd", 3)),
    ],
)
async def test_another_codec_than_the_configured_one_gets_its_own_default_level(
    system_bus, engine, client, configured, given, chosen
):
    running = await start_daemon(system_bus, engine, config=parse(f"[image]\n{configured}"))
    try:
        options = {key: Variant("s", value) for key, value in given.items()}
        await call(client, "Hibernate", "a{sv}", [options])
    finally:
        assert await stop_daemon(running) == 0
    ((_, options),) = engine.operations
    assert (options.compression, options.level) == chosen


async def test_in_kernel_b_the_daemon_saves_at_once(system_bus, engine, client):
    running = await start_daemon(
        system_bus, engine, cmdline="kexechib.role=save kexec_jump_back_entry=0x1000"
    )
    try:
        await eventually(lambda: engine.operations == [("save",)])
        assert await get_property(client, "Role") == "saver"
        assert await call(client, "CanHibernate") == ["na"]
    finally:
        assert await stop_daemon(running) == 0


async def test_a_restorer_refuses_to_hibernate_over_the_waiting_image(system_bus, engine, client):
    make_image(Path(engine.image_location), boot_id="an-earlier-boot")
    running = await start_daemon(system_bus, engine)
    try:
        assert await get_property(client, "Role") == "restorer"
        assert await call(client, "CanHibernate") == ["na"]
        with pytest.raises(CallError) as refused:
            await call(client, "Hibernate", "a{sv}", [{}])
        assert refused.value.name == "org.kexechib1.Error.NotSupported"
        assert "resume it (kexechibctl resume) or discard it" in refused.value.text
        await call(client, "Resume", "sa{sv}", ["", {"load-only": Variant("b", True)}])
        assert engine.operations[-1][:2] == ("resume", Path(engine.image_location))
    finally:
        assert await stop_daemon(running) == 0
