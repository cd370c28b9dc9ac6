"""The Manager alone, without a bus: the state machine, one operation at a
time, cancellation, and how engine reports (from worker threads) become
property changes and PrepareForHibernate announcements."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import threading
from pathlib import Path

import pytest

from kexechibd.daemon.manager import Manager
from kexechibd.errors import (
    Busy,
    Cancelled,
    Failed,
    InvalidOption,
    KernelRefused,
    NotRunning,
    NotSupported,
    TooLate,
)
from kexechibd.kernel.abi import reboot_error
from kexechibd.operation import (
    CancelToken,
    HibernateOptions,
    Mode,
    Observer,
    ResumeOptions,
    Role,
    RoleDecision,
    State,
)
from tests.dbus.conftest import wait_thread_event
from tests.dbus.scripted_engine import SUPPORTED, make_image


class Recorder:
    """A ManagerListener that keeps everything it is told."""

    def __init__(self) -> None:
        self.changes: list[dict[str, object]] = []
        self.announced: list[bool] = []

    def properties_changed(self, changed):
        self.changes.append(dict(changed))

    async def prepare_for_hibernate(self, start):
        self.announced.append(start)

    def values(self, name):
        return [c[name] for c in self.changes if name in c]


def manager_for(engine, role=Role.ORIGIN, problem=""):
    manager = Manager(engine, RoleDecision(role, "test", problem=problem))
    recorder = Recorder()
    manager.add_listener(recorder)
    return manager, recorder


@pytest.fixture
def origin(engine):
    return manager_for(engine)


async def test_a_new_manager_is_idle_and_shows_the_engine(engine):
    manager, _ = manager_for(engine)
    assert manager.properties == {
        "State": "idle",
        "Role": "origin",
        "Backend": "model",
        "Support": "",
        "LastError": "",
        "ImageLocation": engine.image_location,
        "Progress": 0.0,
    }
    await manager.refresh_support()
    assert manager.get("Support") == "supported"


async def test_hibernate_walks_through_the_engines_states_and_ends_idle(origin, engine):
    manager, recorder = origin
    await manager.hibernate(HibernateOptions())
    assert recorder.values("State") == ["preparing", "loading", "jumping", "resuming", "idle"]
    assert recorder.announced == [True, False]
    assert manager.get("Progress") == 1.0
    assert manager.operation is None


async def test_only_one_operation_runs_at_a_time(origin, engine):
    manager, _ = origin
    engine.gate.clear()
    first = asyncio.create_task(manager.hibernate(HibernateOptions()))
    await wait_thread_event(engine.waiting)
    for second in (
        manager.hibernate(HibernateOptions()),
        manager.resume(Path("/x"), ResumeOptions()),
        manager.jump_back(),
    ):
        with pytest.raises(Busy, match="a hibernate is already running"):
            await second
    engine.gate.set()
    await first
    assert [c[0] for c in engine.operations] == ["hibernate"]


async def test_progress_is_published_in_steps_and_never_goes_back(origin, engine):
    manager, recorder = origin
    engine.steps = 500
    await manager.hibernate(HibernateOptions())
    progress = recorder.values("Progress")
    assert progress == sorted(progress)
    assert len(progress) <= 102  # 0, then steps of >= 1 %, then 1
    assert progress[-1] == 1.0


async def test_reports_from_worker_threads_arrive_in_order(origin, engine):
    manager, recorder = origin
    engine.steps = 50
    await manager.resume(make_image(Path(engine.image_location)), ResumeOptions(load_only=True))
    assert recorder.values("State") == ["loading", "idle"]
    assert recorder.values("Progress") == sorted(recorder.values("Progress"))


async def test_reports_after_an_operation_ended_are_dropped(origin, engine):
    manager, recorder = origin
    kept: list[Observer] = []

    async def hibernate(options, observer, cancel, *, support=None):
        kept.append(observer)

    engine.hibernate = hibernate
    await manager.hibernate(HibernateOptions())
    before = list(recorder.changes)
    late = threading.Thread(target=lambda: kept[0].set_state(State.SAVING))
    late.start()
    late.join()
    kept[0].set_progress(0.5, "late")
    await asyncio.sleep(0.05)
    assert recorder.changes == before
    assert manager.get("State") == "idle"


async def test_cancel_before_the_point_of_no_return(origin, engine):
    manager, recorder = origin
    engine.gate.clear()
    running = asyncio.create_task(manager.hibernate(HibernateOptions()))
    await wait_thread_event(engine.waiting)
    manager.cancel()
    with pytest.raises(Cancelled):
        await running
    assert manager.get("State") == "idle"
    assert manager.get("LastError").startswith("org.kexechib1.Error.Cancelled: ")
    assert recorder.announced == []


async def test_cancel_needs_a_running_operation(origin):
    manager, _ = origin
    with pytest.raises(NotRunning):
        manager.cancel()


async def test_cancel_after_the_point_of_no_return_is_too_late(origin, engine):
    manager, _ = origin
    engine.jump_gate.clear()
    running = asyncio.create_task(manager.hibernate(HibernateOptions()))
    await wait_thread_event(engine.committed)
    with pytest.raises(TooLate):
        manager.cancel()
    engine.jump_gate.set()
    await running
    assert manager.get("State") == "idle"


async def test_a_jump_the_kernel_refuses_still_announces_the_end(origin, engine):
    manager, recorder = origin
    engine.jump_failure = reboot_error(errno.EINVAL, "KEXEC")
    with pytest.raises(KernelRefused, match="no kexec image is loaded"):
        await manager.hibernate(HibernateOptions())
    assert recorder.announced == [True, False]  # false after failure, as logind does
    assert manager.get("State") == "failed"
    assert "KernelRefused" in manager.get("LastError")


async def test_an_unexpected_engine_error_is_failed_without_internals(origin, engine):
    manager, _ = origin
    engine.failure = ZeroDivisionError("division by zero")
    with pytest.raises(Failed) as failed:
        await manager.hibernate(HibernateOptions())
    assert "internal error (ZeroDivisionError: division by zero)" in str(failed.value)
    assert "log" in str(failed.value)


async def test_shutdown_cancels_the_running_operation_and_waits_for_it(origin, engine):
    manager, _ = origin
    engine.gate.clear()
    running = asyncio.create_task(manager.hibernate(HibernateOptions()))
    await wait_thread_event(engine.waiting)
    await manager.shutdown(grace=5)
    assert running.done()
    with pytest.raises(Cancelled):
        running.result()


async def test_hibernate_belongs_to_the_origin(engine):
    saver, _ = manager_for(engine, Role.SAVER)
    with pytest.raises(NotSupported, match="this is kernel B"):
        await saver.hibernate(HibernateOptions())
    restorer, _ = manager_for(engine, Role.RESTORER)
    with pytest.raises(NotSupported, match=f"waiting at {engine.image_location}"):
        await restorer.hibernate(HibernateOptions())
    assert engine.operations == []


async def test_a_missing_or_stale_saver_initramfs_refuses_hibernate_before_the_engine(engine):
    problem = "kernel B's initramfs /x is missing; build it with `kexechibctl saver build`"
    manager = Manager(engine, RoleDecision(Role.ORIGIN, "test"), saver_problems=lambda: [problem])
    assert await manager.hibernate_unavailable() == problem
    with pytest.raises(NotSupported, match="kexechibctl saver build"):
        await manager.hibernate(HibernateOptions(mode=Mode.CHECKPOINT))
    assert engine.calls == []
    fine = Manager(engine, RoleDecision(Role.ORIGIN, "test"), saver_problems=lambda: [])
    assert await fine.hibernate_unavailable() == ""


async def test_a_checkpoint_needs_kexec_jump_but_not_staged_loads(engine):
    # A mainline kernel with kexec jump: B saves and jumps back; only a later
    # resume in C would need staged loads (the engine decides the same way).
    engine.support_report = dataclasses.replace(SUPPORTED, staged_load=False)
    manager, _ = manager_for(engine)
    with pytest.raises(NotSupported, match="no staged-load support"):
        await manager.hibernate(HibernateOptions())
    await manager.hibernate(HibernateOptions(mode=Mode.CHECKPOINT))
    assert [call[0] for call in engine.calls] == ["hibernate"]
    engine.support_report = dataclasses.replace(SUPPORTED, kexec_jump=False)
    with pytest.raises(NotSupported, match="no CONFIG_KEXEC_JUMP"):
        await manager.hibernate(HibernateOptions(mode=Mode.CHECKPOINT))


async def test_the_saver_saves_and_only_the_saver(engine):
    origin, _ = manager_for(engine)
    with pytest.raises(NotSupported, match="only kernel B saves"):
        await origin.save()
    saver, recorder = manager_for(engine, Role.SAVER)
    await saver.save()
    assert recorder.values("State") == ["saving", "idle"]


async def test_a_saver_with_a_problem_shows_it_and_refuses_to_save(engine):
    saver, _ = manager_for(engine, Role.SAVER, problem="kexec_jump_back_entry= is missing")
    assert saver.get("State") == "failed"
    assert "kexec_jump_back_entry= is missing" in saver.get("LastError")
    with pytest.raises(NotSupported):
        await saver.save()
    assert engine.operations == []


async def test_a_broken_listener_does_not_stop_the_others(engine):
    manager, recorder = manager_for(engine)

    class Broken:
        def properties_changed(self, changed):
            raise RuntimeError("listener bug")

        async def prepare_for_hibernate(self, start):
            return None

    manager.remove_listener(recorder)
    manager.add_listener(Broken())
    manager.add_listener(recorder)
    await manager.hibernate(HibernateOptions())
    assert recorder.values("State")[-1] == "idle"


async def test_the_cancel_token_is_fresh_for_every_operation(origin, engine):
    manager, _ = origin
    tokens: list[CancelToken] = []
    original = engine.hibernate

    async def hibernate(options, observer, cancel, *, support=None):
        tokens.append(cancel)
        await original(options, observer, cancel)

    engine.hibernate = hibernate
    await manager.hibernate(HibernateOptions())
    await manager.hibernate(HibernateOptions())
    assert len(tokens) == 2 and tokens[0] is not tokens[1]
    assert not tokens[1].cancelled


# ------------------------------------------------------------ what logind may offer


async def test_every_verdict_on_hibernation_is_passed_to_the_availability_hooks(origin, engine):
    """How logind learns it (kexechibd.sleepconf): on CanHibernate, on
    Hibernate, and again after every operation."""
    manager, _ = origin
    told: list[str] = []
    manager.add_availability_hook(told.append)
    assert await manager.hibernate_unavailable() == ""
    await manager.hibernate(HibernateOptions())
    assert told == ["", "", ""]


async def test_an_image_location_the_next_boot_cannot_see_makes_hibernation_unavailable(
    origin, engine
):
    manager, _ = origin
    told: list[str] = []
    manager.add_availability_hook(told.append)
    engine.location_trouble = "/srv/image is not on the root filesystem"
    assert await manager.hibernate_unavailable() == "/srv/image is not on the root filesystem"
    with pytest.raises(NotSupported, match="cannot hibernate: /srv/image is not on the root"):
        await manager.hibernate(HibernateOptions())
    assert engine.operations == []
    # A checkpoint comes back to this system: it is not the next boot's business.
    assert await manager.hibernate_unavailable(checkpoint=True) == ""
    assert told == ["/srv/image is not on the root filesystem"] * 3


async def test_a_restorer_tells_logind_no_while_an_image_waits(engine):
    manager, _ = manager_for(engine, role=Role.RESTORER)
    told: list[str] = []
    manager.add_availability_hook(told.append)
    await manager.hibernate_unavailable()
    assert len(told) == 1 and "a valid image of an earlier boot is waiting" in told[0]


async def test_hibernating_to_power_off_into_another_image_is_refused_before_anything(
    origin, engine
):
    """The next boot resumes only the configured image."""
    manager, _ = origin
    with pytest.raises(InvalidOption, match="the next boot resumes only the image at"):
        await manager.hibernate(HibernateOptions(image="/srv/elsewhere"))
    assert engine.operations == []
    same = engine.image_location.replace("/image", "/./image")
    await manager.hibernate(HibernateOptions(image=same))
    await manager.hibernate(HibernateOptions(mode=Mode.CHECKPOINT, image="/srv/elsewhere"))
    assert len(engine.operations) == 2


async def test_a_failing_availability_hook_does_not_stop_hibernation(origin, engine):
    manager, _ = origin

    def broken(reason: str) -> None:
        raise OSError(30, "Read-only file system")

    manager.add_availability_hook(broken)
    await manager.hibernate(HibernateOptions())
    assert manager.state is State.IDLE
