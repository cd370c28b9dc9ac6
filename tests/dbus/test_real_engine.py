"""The daemon with the real engine (KexecEngine) on a model machine: the
contract between the shell and the engine — role from the real inspect
result, support, configuration, errors before the jump.  The full cycle
over D-Bus (A frozen while B saves and C resumes) is the demo's business."""

from __future__ import annotations

import pytest
from dbus_next.signature import Variant

from kexechibd.config import parse
from kexechibd.cycle.engine import KexecEngine
from kexechibd.daemon.main import engine_settings
from kexechibd.image import ImageStore
from tests.dbus.conftest import CallError, call, get_property, start_daemon, stop_daemon


@pytest.fixture
def settings(tmp_path):
    conf = parse(
        "[daemon]\nbackend = model\n"
        f"[image]\nlocation = {tmp_path / 'image'}\n"
        f"[saver]\nkernel = {tmp_path / 'no-kernel'}\ninitrd = {tmp_path / 'no-initrd'}\n"
        "window = 64M@256M\n"
    )
    return conf


@pytest.fixture
async def real(system_bus, polkitd, kernel, settings):
    engine = KexecEngine(engine_settings(settings), kernel)
    running = await start_daemon(
        system_bus, engine, kernel.cmdline(), kernel.identity().boot_id, config=settings
    )
    yield running
    assert await stop_daemon(running) == 0


async def test_the_real_engine_on_a_model_machine_is_an_origin_that_can_hibernate(real, client):
    assert await get_property(client, "Role") == "origin"
    assert await get_property(client, "Backend") == "model"
    assert await get_property(client, "Support") == "supported"
    assert await call(client, "CanHibernate") == ["yes"]
    (info,) = await call(client, "Inspect", "s", [""])
    assert info["valid"] == Variant("b", False)
    assert "no image at" in info["error"].value


async def test_a_failure_before_the_jump_reaches_the_caller_and_nothing_jumps(
    real, client, signals
):
    with pytest.raises(CallError) as failed:
        await call(client, "Hibernate", "a{sv}", [{}])
    assert failed.value.name == "org.kexechib1.Error.NotSupported"
    assert "cannot read kernel B" in failed.value.text
    assert await get_property(client, "State") == "failed"
    assert signals.prepare_for_hibernate == []


async def test_a_committed_image_of_another_boot_makes_the_daemon_a_restorer(
    system_bus, polkitd, kernel, settings, client
):
    from tests.test_image_helpers import make_meta, page

    with ImageStore(settings.image.location).writer(make_meta(boot_id="an-earlier-boot")) as w:
        w.add(0x100000, page(1))
        w.commit()
    engine = KexecEngine(engine_settings(settings), kernel)
    running = await start_daemon(
        system_bus, engine, kernel.cmdline(), kernel.identity().boot_id, config=settings
    )
    try:
        assert await get_property(client, "Role") == "restorer"
        assert await call(client, "CanHibernate") == ["na"]
        (info,) = await call(client, "Inspect", "s", [""])
        assert info["valid"] == Variant("b", True)
        assert info["boot-id"] == Variant("s", "an-earlier-boot")
    finally:
        assert await stop_daemon(running) == 0
