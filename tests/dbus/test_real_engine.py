"""The daemon with the real engine (KexecEngine) on a model machine: the
contract between the shell and the engine — role from the real inspect
result, support, configuration, errors before the jump, bad input, and the
bus answering while the engine works.  The full cycle over D-Bus (A frozen
while B saves and C resumes) is test_full_cycle.py's and the demo's."""

from __future__ import annotations

import asyncio
import threading

import pytest
from dbus_next.signature import Variant

from kexechibd.config import parse
from kexechibd.cycle.engine import KexecEngine
from kexechibd.daemon.main import engine_settings
from kexechibd.image import open_store
from kexechibd.model.bzimage import make_bzimage
from tests.dbus.conftest import (
    CallError,
    call,
    get_property,
    start_daemon,
    stop_daemon,
    wait_thread_event,
)
from tests.image_support import make_meta, page
from tests.sizes import KIB, MIB


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
    assert info["absent"] == Variant("b", True)


async def test_a_failure_before_the_jump_reaches_the_caller_and_nothing_jumps(
    real, client, signals
):
    with pytest.raises(CallError) as failed:
        await call(client, "Hibernate", "a{sv}", [{}])
    assert failed.value.name == "org.kexechib1.Error.NotSupported"
    assert "cannot read kernel B" in failed.value.text
    assert await get_property(client, "State") == "failed"
    assert signals.prepare_for_hibernate == []


@pytest.mark.parametrize(
    "options, words",
    [
        ({"compression": "lz4", "level": 20}, "lz4 levels go from 0 to 16, not 20"),
        ({"compression": "lz4", "level": -1}, "lz4 levels go from 0 to 16, not -1"),
        ({"compression": "none", "level": 3}, "none has no levels: its level is 0 only, not 3"),
        ({"compression": "zstd", "level": 23}, "zstd levels go from -7 to 22, not 23"),
        ({"level": -8}, "zstd levels go from -7 to 22, not -8"),
        ({"compression": "gzip"}, "compression 'gzip' is not one of zstd, lz4, none"),
    ],
)
async def test_a_bad_compression_is_refused_in_a_before_anything_is_loaded(
    real, kernel, client, signals, options, words
):
    variants = {
        key: Variant("i" if isinstance(value, int) else "s", value)
        for key, value in options.items()
    }
    with pytest.raises(CallError) as refused:
        await call(client, "Hibernate", "a{sv}", [variants])
    assert refused.value.name == "org.kexechib1.Error.InvalidOption"
    assert refused.value.text == words
    assert await get_property(client, "State") == "idle"
    assert not kernel.kexec_loaded()
    assert signals.prepare_for_hibernate == []


async def test_a_committed_image_of_another_boot_makes_the_daemon_a_restorer(
    system_bus, polkitd, kernel, settings, client
):
    with open_store(settings.image.location).writer(make_meta(boot_id="an-earlier-boot")) as w:
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


# ------------------------------------------------------------------ bad input, real engine


async def test_resume_of_a_missing_image_is_bad_image_and_the_daemon_keeps_serving(
    real, client, tmp_path
):
    with pytest.raises(CallError) as refused:
        await call(client, "Resume", "sa{sv}", [str(tmp_path / "nothing-here"), {}])
    assert refused.value.name == "org.kexechib1.Error.BadImage"
    assert f"no image at {tmp_path / 'nothing-here'}" in refused.value.text
    # Refused before the operation started: nothing to show for it.
    assert await get_property(client, "State") == "idle"
    assert await get_property(client, "LastError") == ""
    assert not real.engine.kernel.kexec_loaded()


async def test_resume_of_a_corrupt_image_is_bad_image_and_the_daemon_keeps_serving(
    real, client, tmp_path
):
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(b"\x7fELF" + b"\xff" * 60)
    corrupt.chmod(0o600)
    with pytest.raises(CallError) as refused:
        await call(client, "Resume", "sa{sv}", [str(corrupt), {}])
    assert refused.value.name == "org.kexechib1.Error.BadImage"
    assert "image truncated" in refused.value.text
    assert await get_property(client, "State") == "idle"
    assert await get_property(client, "LastError") == ""
    assert not real.engine.kernel.kexec_loaded()


async def test_jump_back_with_no_peer_is_no_peer_and_the_daemon_keeps_serving(real, client):
    with pytest.raises(CallError) as refused:
        await call(client, "JumpBack")
    assert refused.value.name == "org.kexechib1.Error.NoPeer"
    assert "no checkpoint left kernel B waiting" in refused.value.text
    assert await get_property(client, "State") == "idle"
    assert await call(client, "CanHibernate") == ["yes"]


# ------------------------------------------------------------------ while the engine works


@pytest.fixture
def held(real, monkeypatch):
    """Holds the engine's worker inside the model's first kexec_load until
    the test releases it: a known point in the middle of a real operation,
    without timing.  (A wrapper around the model's call, not a model of it:
    the load itself is the model's.)"""
    kernel = real.engine.kernel
    gate = Gate(kernel.kexec_load)
    monkeypatch.setattr(kernel, "kexec_load", gate)
    yield gate
    gate.release.set()  # a failed test must not leave the worker stuck


class Gate:
    def __init__(self, call):
        self._call = call
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args):
        self.reached.set()
        self.release.wait()
        return self._call(*args)


async def hibernate_held_in_loading(held, settings, client) -> asyncio.Task[list[object]]:
    """Start a Hibernate the engine can carry up to the load of kernel B,
    where ``held`` stops it."""
    settings.saver.kernel.write_bytes(make_bzimage(kernel_size=128 * KIB, init_size=1 * MIB))
    settings.saver.initrd.write_bytes(b"")
    pending = asyncio.create_task(call(client, "Hibernate", "a{sv}", [{}]))
    await wait_thread_event(held.reached, 30)
    return pending


async def test_the_bus_answers_while_a_real_hibernate_loads_kernel_b(real, held, settings, client):
    pending = await hibernate_held_in_loading(held, settings, client)
    for _ in range(3):
        assert await asyncio.wait_for(call(client, "CanHibernate"), 5) == ["yes"]
        assert await asyncio.wait_for(get_property(client, "State"), 5) == "loading"
        (info,) = await asyncio.wait_for(call(client, "Inspect", "s", [""]), 5)
        assert info["valid"] == Variant("b", False)
    assert not pending.done()
    # Cancelled before the jump, so the model machine never leaves A.
    assert await call(client, "Cancel") == []
    held.release.set()
    with pytest.raises(CallError) as cancelled:
        await asyncio.wait_for(pending, 30)
    assert cancelled.value.name == "org.kexechib1.Error.Cancelled"


async def test_a_real_hibernate_cancelled_while_loading_kernel_b_leaves_nothing_loaded(
    real, held, settings, client
):
    pending = await hibernate_held_in_loading(held, settings, client)
    assert await call(client, "Cancel") == []
    held.release.set()
    with pytest.raises(CallError):
        await asyncio.wait_for(pending, 30)
    kernel = real.engine.kernel
    assert not kernel.kexec_loaded()
    assert kernel.machine.running == kernel.id
    assert await get_property(client, "State") == "idle"


async def test_the_bus_answers_while_a_real_resume_loads_the_image(real, held, settings, client):
    here = real.engine.kernel.identity()
    meta = make_meta(
        machine_id=here.machine_id, kernel_release=here.release, build_id=here.build_id
    )
    with open_store(settings.image.location).writer(meta) as w:
        w.add(0x100000, page(1))
        w.commit()
    pending = asyncio.create_task(
        call(client, "Resume", "sa{sv}", ["", {"load-only": Variant("b", True)}])
    )
    await wait_thread_event(held.reached, 30)
    for _ in range(3):
        assert await asyncio.wait_for(get_property(client, "State"), 5) == "loading"
        (info,) = await asyncio.wait_for(call(client, "Inspect", "s", [""]), 5)
        assert info["valid"] == Variant("b", True)
    assert not pending.done()
    held.release.set()
    assert await asyncio.wait_for(pending, 30) == []
    assert real.engine.kernel.kexec_loaded()
